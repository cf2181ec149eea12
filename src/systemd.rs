//! Telling a service manager when courier serves and when it stops: systemd's `Type=notify`
//! protocol (`sd_notify(3)`, a datagram to the unix socket named by `NOTIFY_SOCKET`), through
//! the sd-notify crate.
//!
//! Why: with `Type=notify`, `systemctl start courier` returns, and units ordered after courier
//! start, only once courier has bound its listeners and answers requests, not when the process
//! was merely spawned (`Type=exec`); a configuration error then fails the start itself. On
//! SIGTERM, `STOPPING=1` tells systemd the drain has begun, so `systemctl status` shows
//! "deactivating" with our status line rather than a process that ignores its signal.
//!
//! `READY=1` is sent when both listeners are bound (connections are accepted from then on), not
//! when the upstream token arrives: readiness for traffic is `/readyz`'s job, and a token
//! endpoint that is down at boot must not make systemd kill courier for a slow start.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, or a `Type=` other than notify) nothing is
//! sent. A notification that cannot be sent is logged and otherwise ignored: courier serves the
//! same whether or not its manager heard it.

use std::net::SocketAddr;

use sd_notify::NotifyState;
use slog::{warn, Logger};

/// Tells the service manager that courier serves, with a status line naming its listeners.
pub fn ready(gateway: SocketAddr, admin: SocketAddr, log: &Logger) {
    let status = format!("serving: gateway {gateway}, admin {admin}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)], "ready", log);
}

/// Tells the service manager that a graceful stop has begun.
pub fn stopping(log: &Logger) {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: letting in-flight requests finish")], "stopping", log);
}

fn send(states: &[NotifyState<'_>], state: &'static str, log: &Logger) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(log, "service_manager_notify_failed"; "state" => state, "error" => %error);
    }
}
