//! What a reload reads, and how a change is noticed without reading.
//!
//! Only what came from a file can change while courier runs: the secrets given as
//! `<VARIABLE>_FILE` and the clients file. A secret given inline in the environment is fixed
//! for the life of the process (the environment of a running process cannot be changed).
//!
//! A change is noticed by polling a stamp of each file (`stat`: device, inode, size, mtime and
//! ctime, following symlinks), not by inotify. Why: Kubernetes and Docker mount secrets as a
//! symlink into a directory that is swapped atomically (`..data`), which an inotify watch on
//! the file path misses unless the whole directory is watched and the events decoded; inotify
//! is also unreliable on network and overlay filesystems. A `stat` of four files every few
//! seconds costs nothing measurable, follows the symlink swap (the inode changes), needs no
//! extra thread or dependency, and has one bounded delay: the poll interval.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use actix_web::http::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{read_secret_file, redis_url_problem, token_problem, Clients, Config, SecretSource};

/// The files a reload reads. A `None` is a value that cannot change (given inline, or not
/// configured).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `EXTERNAL_OAUTH_CLIENT_SECRET_FILE`.
    pub client_secret: Option<PathBuf>,
    /// `EXTERNAL_API_KEY_FILE`.
    pub api_key: Option<PathBuf>,
    /// `COURIER_CALLBACK_SECRET_FILE`, when callbacks are on.
    pub callback_secret: Option<PathBuf>,
    /// `COURIER_CLIENTS_FILE`.
    pub clients: Option<PathBuf>,
    /// `COURIER_ADMIN_TOKEN_FILE`.
    pub admin_token: Option<PathBuf>,
    /// `REDIS_URL_FILE`.
    pub redis_url: Option<PathBuf>,
    /// The listeners' certificates, keys and client CA (`COURIER_TLS_*`, `COURIER_ADMIN_TLS_*`).
    pub tls: super::tls::TlsSources,
}

/// The variable names of the sources, in [`Sources::files`] order.
const CLIENT_SECRET_VAR: &str = "EXTERNAL_OAUTH_CLIENT_SECRET_FILE";
const API_KEY_VAR: &str = "EXTERNAL_API_KEY_FILE";
const CALLBACK_SECRET_VAR: &str = "COURIER_CALLBACK_SECRET_FILE";
const CLIENTS_VAR: &str = "COURIER_CLIENTS_FILE";
const ADMIN_TOKEN_VAR: &str = "COURIER_ADMIN_TOKEN_FILE";
/// The variable naming the Redis URL's file.
pub const REDIS_URL_VAR: &str = "REDIS_URL_FILE";

/// One thing wrong with what a reload read: the variable and the problem, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The variable naming the file, e.g. `EXTERNAL_API_KEY_FILE`.
    pub var: &'static str,
    /// What is wrong (a path and a reason; never file content).
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

/// Everything a reload read, each value valid. `None` for sources that are not files.
#[derive(Default)]
pub struct Read {
    /// The OAuth client secret.
    pub client_secret: Option<SecretString>,
    /// The API key, and the header built from it.
    pub api_key: Option<(SecretString, HeaderValue)>,
    /// The callback signing secret.
    pub callback_secret: Option<SecretString>,
    /// The clients file, parsed (positions not yet merged with the current list).
    pub clients: Option<Clients>,
    /// The admin token.
    pub admin_token: Option<SecretString>,
    /// The Redis URL (a valid one; whether it may replace the one in use is the reloader's
    /// question).
    pub redis_url: Option<SecretString>,
    /// The listeners' TLS material.
    pub tls: super::tls::TlsRead,
}

/// What `stat` says about one file; equal stamps mean the file was not replaced or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamps of every source file (`None` for one that cannot be read), in a fixed order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamps(Vec<Option<Stamp>>);

impl Sources {
    /// The sources of `config`: its secrets that came from files, and its clients file.
    pub fn from_config(config: &Config) -> Sources {
        let file = |source: &SecretSource| match source {
            SecretSource::File(path) => Some(path.clone()),
            SecretSource::Inline => None,
        };
        let jobs = &config.jobs;
        Sources {
            client_secret: file(&config.client_secret_source),
            api_key: file(&config.api_key_source),
            callback_secret: jobs.callback_secret.as_ref().and_then(|_| file(&jobs.callback_secret_source)),
            clients: config.clients_file.clone(),
            admin_token: config.admin.token.as_ref().and_then(|_| file(&config.admin.token_source)),
            redis_url: config.redis_url.as_ref().and_then(|_| file(&config.redis_url_source)),
            tls: super::tls::TlsSources::from_config(config),
        }
    }

    /// The files, with the variable that names each.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        [
            (CLIENT_SECRET_VAR, &self.client_secret),
            (API_KEY_VAR, &self.api_key),
            (CALLBACK_SECRET_VAR, &self.callback_secret),
            (CLIENTS_VAR, &self.clients),
            (ADMIN_TOKEN_VAR, &self.admin_token),
            (REDIS_URL_VAR, &self.redis_url),
        ]
        .into_iter()
        .filter_map(|(var, path)| path.as_deref().map(|p| (var, p)))
        .chain(self.tls.files())
        .collect()
    }

    /// Stamps every file (blocking: a `stat` each).
    pub fn stamps(&self) -> Stamps {
        Stamps(self.files().into_iter().map(|(_, path)| stamp(path)).collect())
    }

    /// Reads and validates every file (blocking). Every problem is reported, not only the
    /// first, so one failed reload shows everything to fix.
    pub fn read(&self) -> Result<Read, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut secret = |var: &'static str, path: &Option<PathBuf>| {
            let path = path.as_deref()?;
            read_secret_file(path).map_err(|problem| problems.push(Problem { var, problem })).ok()
        };
        let client_secret = secret(CLIENT_SECRET_VAR, &self.client_secret);
        let api_key = secret(API_KEY_VAR, &self.api_key);
        let callback_secret = secret(CALLBACK_SECRET_VAR, &self.callback_secret);
        let admin_token = secret(ADMIN_TOKEN_VAR, &self.admin_token);
        let redis_url = secret(REDIS_URL_VAR, &self.redis_url);
        let api_key = api_key.and_then(|key| match api_key_header(&key) {
            Some(header) => Some((key, header)),
            None => {
                let problem = "has characters not allowed in a header".to_owned();
                problems.push(Problem { var: API_KEY_VAR, problem });
                None
            }
        });
        let clients = self.clients.as_deref().and_then(|path| {
            Clients::load(path).map_err(|problem| problems.push(Problem { var: CLIENTS_VAR, problem })).ok()
        });
        let admin_token = admin_token.and_then(|token| match token_problem(&token) {
            None => Some(token),
            Some(problem) => {
                problems.push(Problem { var: ADMIN_TOKEN_VAR, problem });
                None
            }
        });
        let redis_url = redis_url.and_then(|url| match redis_url_problem(url.expose_secret()) {
            None => Some(url),
            Some(problem) => {
                problems.push(Problem { var: REDIS_URL_VAR, problem });
                None
            }
        });
        let tls = self.tls.read(&mut problems);
        if problems.is_empty() {
            Ok(Read { client_secret, api_key, callback_secret, clients, admin_token, redis_url, tls })
        } else {
            Err(problems)
        }
    }
}

/// The `X-API-Key` header for `key`, marked sensitive; `None` when it cannot be a header.
pub fn api_key_header(key: &SecretString) -> Option<HeaderValue> {
    let mut header = HeaderValue::from_str(key.expose_secret()).ok()?;
    header.set_sensitive(true);
    Some(header)
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::key_sha256_hex;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("courier-sources-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn clients_file(key: &str) -> String {
        format!("[[client]]\nname = \"billing\"\nkey_sha256 = \"{}\"\n", key_sha256_hex(key))
    }

    #[test]
    fn reads_every_file_source() {
        let dir = Dir::new("reads");
        let sources = Sources {
            client_secret: Some(dir.write("secret", "s3cret\n")),
            api_key: Some(dir.write("key", "key-1")),
            callback_secret: Some(dir.write("callback", "whsec")),
            clients: Some(dir.write("clients.toml", &clients_file("k-billing"))),
            admin_token: Some(dir.write("admin", "admin-token-0123456789\n")),
            redis_url: Some(dir.write("redis", "redis://courier:pw-2@127.0.0.1:6379/0\n")),
            ..Sources::default()
        };
        let read = sources.read().unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(read.admin_token.unwrap().expose_secret(), "admin-token-0123456789");
        assert_eq!(read.redis_url.unwrap().expose_secret(), "redis://courier:pw-2@127.0.0.1:6379/0");
        assert_eq!(read.client_secret.unwrap().expose_secret(), "s3cret");
        assert_eq!(read.api_key.unwrap().1.as_bytes(), b"key-1");
        assert_eq!(read.callback_secret.unwrap().expose_secret(), "whsec");
        assert_eq!(read.clients.unwrap().authenticate(b"k-billing"), Some((0, "billing")));
    }

    #[test]
    fn reports_every_problem_and_no_value() {
        let dir = Dir::new("problems");
        let sources = Sources {
            client_secret: Some(dir.write("secret", "")),
            api_key: Some(dir.write("key", "bad\u{7}key-value")),
            callback_secret: Some(dir.0.join("missing")),
            clients: Some(dir.write("clients.toml", "[[client]]\nname = \"x\"\n")),
            admin_token: Some(dir.write("admin", "short-admin")),
            redis_url: Some(dir.write("redis", "http://courier:leaked-pw@127.0.0.1/")),
            ..Sources::default()
        };
        let problems = sources.read().err().expect("nothing valid");
        let vars: Vec<&str> = problems.iter().map(|p| p.var).collect();
        assert_eq!(
            vars,
            [CLIENT_SECRET_VAR, CALLBACK_SECRET_VAR, API_KEY_VAR, CLIENTS_VAR, ADMIN_TOKEN_VAR, REDIS_URL_VAR]
        );
        let text: String = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
        assert!(text.contains("is empty") && text.contains("cannot read") && text.contains("not allowed"), "{text}");
        assert!(!text.contains("key-value") && !text.contains("short-admin") && !text.contains("leaked-pw"), "{text}");
    }

    #[test]
    fn inline_secrets_are_not_sources() {
        let sources = Sources { clients: Some(PathBuf::from("/x")), ..Sources::default() };
        assert_eq!(sources.files(), vec![(CLIENTS_VAR, Path::new("/x"))]);
        assert!(Sources::default().read().is_ok());
    }

    #[test]
    fn a_stamp_changes_when_a_file_is_replaced_or_written() {
        let dir = Dir::new("stamps");
        let path = dir.write("key", "key-1");
        let sources = Sources { api_key: Some(path.clone()), ..Sources::default() };
        let first = sources.stamps();
        assert_eq!(sources.stamps(), first, "nothing changed");
        // Replaced by rename, as Kubernetes and careful editors do: a new inode.
        let next = dir.write("key.tmp", "key-2");
        std::fs::rename(&next, &path).unwrap();
        let second = sources.stamps();
        assert_ne!(second, first);
        // Written in place with a different length.
        std::fs::write(&path, "key-three").unwrap();
        assert_ne!(sources.stamps(), second);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sources.stamps(), Stamps(vec![None]));
    }
}
