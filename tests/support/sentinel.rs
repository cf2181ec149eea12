//! A Redis Sentinel for one test, on a free loopback port: the same `redis-server` program run
//! with `--sentinel` (all the Debian package `redis-sentinel` adds is a service around it), its
//! configuration file in a directory of its own, killed and the directory removed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{answers, command, free_port, listens, TlsFiles, START_TIMEOUT};

/// A Redis Sentinel watching master `master` at `primary_port`, on a free port, with the
/// given down-after and failover timeouts; killed on drop. Its configuration file (which the
/// Sentinel rewrites as it learns) lives in a temporary directory removed on drop.
pub struct Sentinel {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Sentinel {
    /// Starts a Sentinel (quorum 2, down after 1 s, failover timeout 5 s).
    pub fn start(master: &str, primary_port: u16) -> Sentinel {
        Sentinel::start_with(master, primary_port, "", None)
    }

    /// The same, with more lines of configuration (e.g. `requirepass …`), serving TLS only
    /// with `tls` and reaching the primary over TLS (`tls-replication`) when given.
    pub fn start_with(master: &str, primary_port: u16, extra: &str, tls: Option<&TlsFiles>) -> Sentinel {
        for attempt in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("courier-sentinel-{}-{port}-{attempt}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("sentinel dir");
            let conf = dir.join("sentinel.conf");
            let listen = match tls {
                None => format!("port {port}\n"),
                Some(tls) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-auth-clients {}\ntls-replication yes\n",
                    tls.cert.display(),
                    tls.key.display(),
                    tls.client_ca.display(),
                    if tls.auth_clients { "yes" } else { "no" },
                ),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndaemonize no\nprotected-mode no\ndir {dir}\nlogfile \"\"\n\
                     sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {master} 1000\n\
                     sentinel failover-timeout {master} 5000\n\
                     sentinel parallel-syncs {master} 1\n{extra}",
                    dir = dir.display()
                ),
            )
            .expect("sentinel config");
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .args(["--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel runs (Debian package redis-server)");
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if if tls.is_some() { listens(port) } else { answers(port) } {
                    return Sentinel { child: Some(child), port, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sentinel on port {port} did not answer within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("redis sentinel did not start on any of 5 free ports");
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `SENTINEL <args...>` on this Sentinel, the raw reply as text.
    pub fn ask(&self, args: &[&str]) -> String {
        let mut full = vec!["SENTINEL"];
        full.extend_from_slice(args);
        command(self.port, &full).unwrap_or_default()
    }

    /// A field of `SENTINEL master <master>` (e.g. `num-slaves`, `num-other-sentinels`).
    pub fn master_field(&self, master: &str, field: &str) -> Option<String> {
        let reply = self.ask(&["master", master]);
        let mut lines = reply.lines();
        while let Some(line) = lines.next() {
            if line == field {
                return lines.next().map(str::to_owned);
            }
        }
        None
    }

    /// The port of the primary this Sentinel names for `master` (0 when it names none).
    pub fn primary_port(&self, master: &str) -> u16 {
        let reply = self.ask(&["get-master-addr-by-name", master]);
        reply.lines().nth(1).and_then(|p| p.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
