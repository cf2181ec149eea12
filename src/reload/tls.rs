//! The listeners' TLS material, reloaded with the secrets: the gateway's certificate, key and
//! client CA, the admin listener's certificate and key. They are read and checked by the same
//! [`TlsFiles::load`] as at start, in the same all-or-nothing reload as the secrets: a
//! certificate without its new key (the two files are rarely replaced in one step) fails the
//! reload, the old pair stays in use, and the next change or SIGHUP tries again.
//!
//! **Connections are not dropped.** A new certificate is published ([`Published`]) and each
//! *new* connection's handshake uses it; a connection already open keeps the session it
//! negotiated, whatever its age. The gateway publishes a whole rustls `ServerConfig` (the
//! certificate and the client certificate verifier together, so the CA and the certificate
//! change in one step; a fresh config also forgets resumable sessions, which were verified
//! against the old CA). The admin listener's `ServerConfig` is fixed by actix-web's server,
//! so its certificate is swapped under it through a resolver that reads the published key.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use slog::{warn, Logger};

use super::sources::Problem;
use crate::config::{Config, LoadedTls, TlsExpiry, TlsFiles};
use crate::metrics::{Metrics, TlsCertificate};
use crate::published::Published;

/// The TLS files a reload reads (`None`: that listener is plain HTTP).
#[derive(Clone, Debug, Default)]
pub struct TlsSources {
    /// The gateway listener's files.
    pub gateway: Option<TlsFiles>,
    /// The admin listener's files.
    pub admin: Option<TlsFiles>,
}

/// What a reload read of the TLS files, each valid.
#[derive(Default)]
pub struct TlsRead {
    /// The gateway listener's material.
    pub gateway: Option<LoadedTls>,
    /// The admin listener's material.
    pub admin: Option<LoadedTls>,
}

/// Where the listeners read their current TLS material; `None`: that listener is plain.
#[derive(Clone, Default)]
pub struct TlsCells {
    /// The gateway's server configuration, read at each new connection.
    pub gateway: Option<Arc<Published<Arc<ServerConfig>>>>,
    /// The admin listener's certificate and key, read at each new connection.
    pub admin: Option<Arc<Published<Arc<CertifiedKey>>>>,
}

/// The digests of the material in use, to tell what a reload changed, and its expiry.
pub(super) struct TlsCurrent {
    gateway: Option<([u8; 32], TlsExpiry)>,
    admin: Option<([u8; 32], TlsExpiry)>,
}

impl TlsSources {
    /// The TLS files of `config`.
    pub fn from_config(config: &Config) -> TlsSources {
        let files = |listener: &Option<crate::config::ListenerTls>| listener.as_ref().map(|l| l.files.clone());
        TlsSources { gateway: files(&config.tls.gateway), admin: files(&config.tls.admin) }
    }

    /// The files, with the variable that names each.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = Vec::new();
        for listener in [&self.gateway, &self.admin].into_iter().flatten() {
            files.push((listener.vars.cert, listener.cert_file.as_path()));
            files.push((listener.vars.key, listener.key_file.as_path()));
            if let Some(ca) = &listener.client_ca_file {
                files.push((listener.vars.client_ca, ca.as_path()));
            }
        }
        files
    }

    /// Reads and checks every file (blocking), adding each problem to `problems`.
    pub fn read(&self, problems: &mut Vec<Problem>) -> TlsRead {
        let mut load = |files: &Option<TlsFiles>| {
            files.as_ref()?.load().map_err(|found| problems.extend(found.into_iter().map(problem))).ok()
        };
        TlsRead { gateway: load(&self.gateway), admin: load(&self.admin) }
    }
}

fn problem((var, problem): (&'static str, String)) -> Problem {
    Problem { var, problem }
}

impl TlsCells {
    /// The cells of the listeners `config` serves over TLS, holding the material read at start.
    pub fn from_config(config: &Config) -> TlsCells {
        TlsCells {
            gateway: config.tls.gateway.as_ref().map(|l| Arc::new(Published::new(l.loaded.server_config(None)))),
            admin: config.tls.admin.as_ref().map(|l| Arc::new(Published::new(l.loaded.certified_key.clone()))),
        }
    }
}

impl TlsCurrent {
    pub(super) fn from_config(config: &Config) -> TlsCurrent {
        let current = |listener: &Option<crate::config::ListenerTls>| {
            listener.as_ref().map(|l| (l.loaded.digest, l.loaded.expiry))
        };
        TlsCurrent { gateway: current(&config.tls.gateway), admin: current(&config.tls.admin) }
    }

    /// Shows when the material in use expires in `courier_tls_certificate_expiry_timestamp_seconds`
    /// (0 for a listener without TLS), and warns of material already expired: the listener still
    /// serves it (there is nothing better to serve), and callers refuse it.
    pub(super) fn expose(&self, metrics: &Metrics, log: &Logger, now: i64) {
        let gateway = self.gateway.map(|(_, expiry)| expiry);
        let admin = self.admin.map(|(_, expiry)| expiry);
        let ends = [
            (TlsCertificate::Gateway, gateway.map(|e| e.certificate)),
            (TlsCertificate::GatewayClientCa, gateway.and_then(|e| e.client_ca)),
            (TlsCertificate::Admin, admin.map(|e| e.certificate)),
        ];
        for (certificate, end) in ends {
            metrics.tls_certificate_expiry.with_label_values(&[certificate.as_str()]).set(end.unwrap_or(0) as f64);
            if let Some(end) = end.filter(|end| *end <= now) {
                warn!(log, "tls_certificate_expired";
                    "certificate" => certificate.as_str(), "var" => certificate.var(), "not_after" => end);
            }
        }
    }

    /// Publishes what changed, naming it in `changed`.
    pub(super) fn apply(&mut self, cells: &TlsCells, read: TlsRead, changed: &mut Vec<&'static str>) {
        if let (Some(loaded), Some(cell)) = (read.gateway, &cells.gateway) {
            if self.gateway.map(|(digest, _)| digest) != Some(loaded.digest) {
                cell.publish(loaded.server_config(None));
                self.gateway = Some((loaded.digest, loaded.expiry));
                changed.push("tls");
            }
        }
        if let (Some(loaded), Some(cell)) = (read.admin, &cells.admin) {
            if self.admin.map(|(digest, _)| digest) != Some(loaded.digest) {
                cell.publish(loaded.certified_key.clone());
                self.admin = Some((loaded.digest, loaded.expiry));
                changed.push("admin_tls");
            }
        }
    }
}
