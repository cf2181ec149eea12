//! Credential rotation without a restart: on SIGHUP, and when a watched file changes, courier
//! reads again the secrets given as `*_FILE` (the OAuth client secret, the API key, the
//! callback signing secret, the admin token, the Redis URL) and the clients file, and puts them
//! in use. A new admin token replaces the old one at once: the old one is refused from then on.
//!
//! **All or nothing.** Every file is read and validated before anything is replaced. One
//! unreadable file, empty secret, API key that cannot be a header, admin token too short to be
//! one, or malformed clients file fails the whole reload: every previous value stays in use,
//! one log line says what was wrong (variable, path, reason; never a value), and
//! `courier_config_reloads_total{result="failed"}` counts it. A reload that changes nothing is still a successful one.
//!
//! **Requests in flight are unaffected.** Nothing is torn down: new values are published
//! ([`Published`]) and each reader picks them up at its next read. An upstream attempt keeps
//! the API key it was sent with; a callback attempt the secret it was signed with; a request
//! already authenticated stays authenticated.
//!
//! **The Redis user and password.** A new `REDIS_URL_FILE` may change only the ACL user and
//! password ([`credentials::rotation`]): a URL that moves Redis (scheme and so TLS, host, port,
//! database) fails the reload, because the connections, the Sentinel follower and the Cluster's
//! slot map were made for one Redis; moving it needs a restart. New credentials are checked
//! before anything is replaced: one connection opened with them must answer `PING`
//! ([`RedisEndpoint::verify`]), so a password Redis refuses fails the reload and the old one
//! stays in use. Once published, every connection courier opens uses them, and its long-lived
//! connections are replaced at their next call (see `shared::rotating`), so the operator may
//! remove the old password from the ACL user as soon as the reload succeeded. A call in flight
//! finishes on the connection it started on.
//!
//! **The token.** A new client secret does not discard the token held: it was issued by the
//! upstream and stays valid until it expires or is refused. The next token is fetched with
//! the new secret (see [`SetClientSecret`]). So a wrong new secret shows up at the next
//! refresh (`courier_token_refreshes_total{result="rejected"}`), not at the reload; keep the
//! old secret valid at the upstream until a refresh with the new one has succeeded.
//!
//! The reloader is a task that owns the current values and the file stamps, fed by a
//! channel (SIGHUP, [`ReloadHandle::request`]) and a poll timer, so reloads never overlap.
//! File reads and `stat`s run on the blocking pool, never on an arbiter thread.
//!
//! The listeners' certificates, keys and client CA are read in the same all-or-nothing step and
//! reach new connections only: see [`tls`].

pub mod sources;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::Addr;
use actix_web::http::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use slog::{info, o, warn, Logger};
use tokio::sync::mpsc;

pub use crate::published::Published;
pub use sources::{Problem, Read, Sources, Stamps};
pub use tls::TlsCells;

use crate::actors::{SetClientSecret, TokenManager};
use crate::config::{AdminToken, Clients, Config};
use crate::metrics::{Metrics, ReloadResult, ReloadTrigger};
use crate::shared::credentials::{self, RedisCredentials};
use crate::shared::RedisEndpoint;

/// The credentials a reload replaces that requests read, published for lock-free reads.
pub struct Credentials {
    /// `X-API-Key`, marked sensitive.
    pub api_key: Arc<Published<HeaderValue>>,
    /// The client list; `None` runs courier open (and stays so: without a clients file there
    /// is nothing to reload).
    pub clients: Arc<Published<Option<Clients>>>,
    /// The admin token the locked admin routes require; `None`: they are open (loopback only).
    pub admin_token: Arc<Published<Option<AdminToken>>>,
}

impl Credentials {
    /// The credentials of `config` as read at start.
    pub fn from_config(config: &Config) -> Result<Credentials, String> {
        let api_key = sources::api_key_header(&config.api_key)
            .ok_or("EXTERNAL_API_KEY: has characters not allowed in a header")?;
        Ok(Credentials {
            api_key: Arc::new(Published::new(api_key)),
            clients: Arc::new(Published::new(config.clients.clone())),
            admin_token: Arc::new(Published::new(config.admin.token.as_ref().map(AdminToken::new))),
        })
    }
}

/// The callback signing secret as a reload replaces it.
pub type SecretCell = Arc<Published<SecretString>>;

/// Where a reload's new values go.
pub struct Targets {
    /// The API key and client list requests read.
    pub credentials: Arc<Credentials>,
    /// The TokenManager, which fetches tokens with the client secret.
    pub token_manager: Addr<TokenManager>,
    /// The callback signing secret, when callbacks are on.
    pub callback_secret: Option<SecretCell>,
    /// The quota windows, whose allocations follow the clients file.
    pub quota: Option<Arc<crate::actors::quota::Quota>>,
    /// Where Redis is, whose user and password `REDIS_URL_FILE` may rotate, and the bound of
    /// the check of new ones.
    pub redis: Option<(RedisEndpoint, Duration)>,
    /// The listeners' TLS material.
    pub tls: TlsCells,
}

/// The values in use, to tell what a reload changed.
struct Current {
    client_secret: SecretString,
    api_key: SecretString,
    callback_secret: Option<SecretString>,
    clients: Option<Clients>,
    admin_token: Option<SecretString>,
    redis_url: Option<SecretString>,
    tls: tls::TlsCurrent,
}

struct Request {
    trigger: ReloadTrigger,
}

/// Asks the reloader for a reload. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Request>,
}

impl ReloadHandle {
    /// Asks for a reload and returns at once. Requests that arrive while one is waiting
    /// are folded into it (two SIGHUPs in a row reload once more, not twice).
    pub fn request(&self, trigger: ReloadTrigger) {
        let _ = self.tx.try_send(Request { trigger });
    }
}

/// The reloader: owns the values in use and the stamps of the watched files.
pub struct Reloader {
    sources: Sources,
    stamps: Stamps,
    current: Current,
    targets: Targets,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl Reloader {
    /// A reloader starting from the values of `config` (those in use at start).
    pub fn new(config: &Config, targets: Targets, metrics: Arc<Metrics>, log: &Logger) -> Reloader {
        let sources = Sources::from_config(config);
        let current = Current {
            client_secret: config.client_secret.clone(),
            api_key: config.api_key.clone(),
            callback_secret: config.jobs.callback_secret.clone(),
            clients: config.clients.clone(),
            admin_token: config.admin.token.clone(),
            redis_url: config.redis_url.clone(),
            tls: tls::TlsCurrent::from_config(config),
        };
        Reloader {
            stamps: sources.stamps(),
            sources,
            current,
            targets,
            metrics,
            log: log.new(o!("actor" => "reloader")),
        }
    }

    /// Runs the reloader on the current arbiter: reloads on request, and when a watched
    /// file's stamp changes, checked every `poll` (never when `None`).
    pub fn start(self, poll: Option<Duration>) -> ReloadHandle {
        let (tx, rx) = mpsc::channel(1);
        // The request series of the clients in use exist from the start (and a new client's
        // from the reload that adds it, below).
        let names = self.current.clients.as_ref().map(Clients::names);
        self.metrics.add_clients(names.as_deref());
        self.current.tls.expose(&self.metrics, &self.log, unix_now());
        let files: Vec<&str> = self.sources.files().into_iter().map(|(var, _)| var).collect();
        info!(self.log, "credential_reload_ready";
            "files" => files.join(","), "poll_interval" => poll.map_or(0.0, |p| p.as_secs_f64()));
        actix_rt::spawn(self.run(rx, poll));
        ReloadHandle { tx }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Request>, poll: Option<Duration>) {
        let watching = poll.filter(|_| !self.sources.files().is_empty());
        let mut ticks = watching.map(|every| {
            let mut ticks = actix_rt::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let tick = async {
                match ticks.as_mut() {
                    Some(ticks) => ticks.tick().await,
                    None => std::future::pending().await,
                }
            };
            let request = tokio::select! {
                request = rx.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
                _ = tick => {
                    let sources = self.sources.clone();
                    let Ok(stamps) = actix_rt::task::spawn_blocking(move || sources.stamps()).await else { continue };
                    if stamps == self.stamps {
                        continue;
                    }
                    Request { trigger: ReloadTrigger::FileChange }
                }
            };
            self.reload(request.trigger).await;
        }
    }

    /// Reads everything, and puts it in use only if all of it is valid.
    async fn reload(&mut self, trigger: ReloadTrigger) -> ReloadResult {
        let sources = self.sources.clone();
        // Stamped before reading: a write after the stamp is seen by the next poll.
        let read = actix_rt::task::spawn_blocking(move || (sources.stamps(), sources.read())).await;
        let (stamps, read) = match read {
            Ok(done) => done,
            Err(_) => {
                let problem = Problem { var: "-", problem: "the read did not finish".into() };
                return self.failed(trigger, &[problem]);
            }
        };
        self.stamps = stamps;
        match read {
            Ok(read) => self.apply(trigger, read).await,
            Err(problems) => self.failed(trigger, &problems),
        }
    }

    async fn apply(&mut self, trigger: ReloadTrigger, read: Read) -> ReloadResult {
        let client_secret = read.client_secret.filter(|new| differs(new, &self.current.client_secret));
        let api_key = read.api_key.filter(|(new, _)| differs(new, &self.current.api_key));
        let callback_secret = read
            .callback_secret
            .filter(|new| self.current.callback_secret.as_ref().is_none_or(|old| differs(new, old)));
        let admin_token =
            read.admin_token.filter(|new| self.current.admin_token.as_ref().is_none_or(|old| differs(new, old)));
        let clients = match (read.clients, &self.current.clients) {
            (Some(next), Some(current)) => Some(current.merged(next)).filter(|merged| !merged.same_as(current)),
            (next, _) => next,
        };
        // The steps that can fail go first, so a failure leaves everything as it was.
        let redis = match self.redis_credentials(read.redis_url).await {
            Ok(redis) => redis,
            Err(problem) => return self.failed(trigger, &[problem]),
        };
        if let Some(secret) = &client_secret {
            if self.targets.token_manager.send(SetClientSecret(secret.clone())).await.is_err() {
                let problem =
                    Problem { var: "EXTERNAL_OAUTH_CLIENT_SECRET_FILE", problem: "token manager stopped".into() };
                return self.failed(trigger, &[problem]);
            }
        }
        let mut changed = Vec::new();
        if let Some(secret) = client_secret {
            self.current.client_secret = secret;
            changed.push("client_secret");
        }
        if let Some((key, header)) = api_key {
            self.targets.credentials.api_key.publish(header);
            self.current.api_key = key;
            changed.push("api_key");
        }
        if let (Some(secret), Some(cell)) = (callback_secret, &self.targets.callback_secret) {
            cell.publish(secret.clone());
            self.current.callback_secret = Some(secret);
            changed.push("callback_secret");
        }
        if let Some(token) = admin_token {
            self.targets.credentials.admin_token.publish(Some(AdminToken::new(&token)));
            self.current.admin_token = Some(token);
            changed.push("admin_token");
        }
        if let (Some((url, credentials)), Some((endpoint, _))) = (redis, &self.targets.redis) {
            // From now on every connection opens with them (see `shared::rotating`).
            endpoint.credentials().publish(credentials);
            self.current.redis_url = Some(url);
            changed.push("redis_credentials");
        }
        let mut active_clients = None;
        if let Some(clients) = clients {
            active_clients = Some(clients.entries().iter().filter(|c| c.is_active()).count());
            self.metrics.add_clients(Some(&clients.names()));
            if let Some(quota) = &self.targets.quota {
                let (names, allocs) = crate::actors::quota::allocations(Some(&clients));
                quota.set_clients(names, allocs);
            }
            self.targets.credentials.clients.publish(Some(clients.clone()));
            self.current.clients = Some(clients);
            changed.push("clients");
        }
        self.current.tls.apply(&self.targets.tls, read.tls, &mut changed);
        self.current.tls.expose(&self.metrics, &self.log, unix_now());
        self.count(trigger, ReloadResult::Ok);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.metrics.config_last_reload_success.set(unix);
        let changed = if changed.is_empty() { "none".to_owned() } else { changed.join(",") };
        info!(self.log, "credentials_reloaded";
            "trigger" => trigger.as_str(), "changed" => changed, "clients_active" => active_clients);
        ReloadResult::Ok
    }

    /// The new Redis URL and its credentials, when it changes them and Redis takes them; `None`
    /// when it changes nothing. A URL that moves Redis, or credentials Redis refuses, fail the
    /// reload.
    async fn redis_credentials(
        &self,
        next: Option<SecretString>,
    ) -> Result<Option<(SecretString, RedisCredentials)>, Problem> {
        let (Some(next), Some(current)) = (next, &self.current.redis_url) else { return Ok(None) };
        let problem = |problem: String| Problem { var: sources::REDIS_URL_VAR, problem };
        let Some(credentials) = credentials::rotation(current, &next).map_err(|why| problem(why.into()))? else {
            return Ok(None);
        };
        let Some((endpoint, timeout)) = &self.targets.redis else {
            return Err(problem("Redis is not in use by this process".into()));
        };
        endpoint.verify(&credentials, *timeout).await.map_err(|why| {
            problem(format!("checking the new user and password with Redis failed: {why} (the URL in use is kept)"))
        })?;
        Ok(Some((next, credentials)))
    }

    fn failed(&self, trigger: ReloadTrigger, problems: &[Problem]) -> ReloadResult {
        self.count(trigger, ReloadResult::Failed);
        let errors: Vec<String> = problems.iter().map(ToString::to_string).collect();
        warn!(self.log, "credentials_reload_failed";
            "trigger" => trigger.as_str(), "errors" => errors.join("; "), "kept" => "every previous value");
        ReloadResult::Failed
    }

    fn count(&self, trigger: ReloadTrigger, result: ReloadResult) {
        self.metrics.config_reloads.with_label_values(&[result.as_str(), trigger.as_str()]).inc();
        self.metrics.config_last_reload_successful.set(i64::from(result == ReloadResult::Ok));
    }
}

/// Whether two secrets differ (compared in memory only; neither is ever printed).
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn differs(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() != b.expose_secret()
}
