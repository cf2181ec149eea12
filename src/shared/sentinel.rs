//! Finding the Redis primary through Sentinel, and following it when it changes.
//!
//! With `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER`, the address in `REDIS_URL` is not used:
//! the Sentinels name the primary (`SENTINEL get-master-addr-by-name`), and `REDIS_URL` only
//! gives how to talk to it (scheme, user, password, database). A Sentinel's word is checked
//! before it is used: the named node must say `ROLE` master, so a Sentinel that has not seen a
//! failover yet cannot send courier to a demoted node.
//!
//! A [`Target`] is where courier's connections go. A fixed one (plain `REDIS_URL`) never
//! changes. A followed one asks the Sentinels again every second, and at once (at most every
//! [`MIN_RECHECK`]) when a connection reports a broken link or a `READONLY` answer (the node
//! it talks to was demoted). A new primary gets a new generation; [`super::conn::RedisConn`]
//! notices the generation before its next call and connects to the new primary, dropping the
//! old connection: no call made after the switch goes to the old node, and a demoted node that
//! still answers refuses writes (`READONLY`) until the switch. Calls in flight when the
//! primary dies fail, are counted and make the replica degraded for a second, as in any Redis
//! outage; the first call after the switch restores shared mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisError, RedisResult, Value};
use slog::{info, o, warn, Logger};
use tokio::sync::Notify;

/// How often a followed target asks the Sentinels whether the primary changed.
const RECHECK: Duration = Duration::from_secs(1);

/// The least time between two checks asked for by failing calls.
const MIN_RECHECK: Duration = Duration::from_millis(100);

/// Builds the client of a data node at a host and port (the TLS and credentials of
/// `REDIS_URL` applied).
pub type NodeClient = Arc<dyn Fn(&str, u16) -> RedisResult<Client> + Send + Sync>;

/// The Sentinels to ask and the name of the primary they watch.
#[derive(Clone)]
pub struct SentinelSettings {
    /// `host:port` of each Sentinel, asked in this order.
    pub sentinels: Vec<String>,
    /// The master name the Sentinels monitor (`sentinel monitor <name> ...`).
    pub master: String,
    /// The Sentinels' own user and password, if they ask for one.
    pub auth: Option<crate::config::SentinelAuth>,
    /// With `REDIS_SENTINEL_TLS`: `REDIS_URL`'s connection (its TLS: CA, client certificate),
    /// whose address and credentials are replaced by each Sentinel's; `None`: plain TCP.
    pub tls: Option<ConnectionInfo>,
}

/// A data node courier talks to now.
struct Node {
    generation: u64,
    addr: String,
    client: Client,
}

/// Where courier's Redis connections go: one fixed address, or the primary the Sentinels name.
pub struct Target {
    node: ArcSwap<Node>,
    follow: Option<Follow>,
}

/// What a followed target needs to ask again.
struct Follow {
    settings: SentinelSettings,
    node_client: NodeClient,
    timeout: Duration,
    wake: Notify,
    base: std::time::Instant,
    /// Milliseconds since `base` of the last check asked for by a failing call.
    last_asked_ms: AtomicU64,
    /// The last check found no primary (one warning per spell, not one per check).
    lost: AtomicBool,
    log: Logger,
}

impl Target {
    /// A target that never moves: the client of `REDIS_URL`.
    pub fn fixed(client: Client) -> Arc<Target> {
        let addr = client.get_connection_info().addr.to_string();
        Arc::new(Target { node: ArcSwap::from_pointee(Node { generation: 0, addr, client }), follow: None })
    }

    /// A target that follows the primary the Sentinels name: asks them now (an error when no
    /// Sentinel names a primary that answers as one within `timeout` each) and then every
    /// second, on the current tokio runtime, for as long as the target lives.
    pub async fn sentinel(
        settings: SentinelSettings,
        node_client: NodeClient,
        timeout: Duration,
        log: &Logger,
    ) -> Result<Arc<Target>, String> {
        let (addr, client) = resolve(&settings, &node_client, timeout).await?;
        let log = log.new(o!("component" => "sentinel", "master" => settings.master.clone()));
        info!(log, "redis_primary_found"; "primary" => &addr);
        let follow = Follow {
            settings,
            node_client,
            timeout,
            wake: Notify::new(),
            base: std::time::Instant::now(),
            last_asked_ms: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            log,
        };
        let target = Arc::new(Target {
            node: ArcSwap::from_pointee(Node { generation: 0, addr, client }),
            follow: Some(follow),
        });
        tokio::spawn(watch(Arc::downgrade(&target)));
        Ok(target)
    }

    /// The generation of the current node and its client.
    pub fn current(&self) -> (u64, Client) {
        let node = self.node.load();
        (node.generation, node.client.clone())
    }

    /// The generation of the current node (it grows by one per change of primary).
    pub fn generation(&self) -> u64 {
        self.node.load().generation
    }

    /// The `host:port` courier talks to now.
    pub fn address(&self) -> String {
        self.node.load().addr.clone()
    }

    /// A call failed in a way that may mean the primary moved: ask the Sentinels soon.
    /// Nothing for a fixed target, or when an error is not of that kind.
    pub fn saw(&self, e: &RedisError) {
        let Some(follow) = &self.follow else { return };
        if !may_have_moved(e) {
            return;
        }
        let now = follow.base.elapsed().as_millis() as u64;
        let last = follow.last_asked_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) >= MIN_RECHECK.as_millis() as u64
            && follow.last_asked_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            follow.wake.notify_one();
        }
    }

    /// Asks the Sentinels once and switches to the primary they name if it changed.
    async fn check(&self, follow: &Follow) {
        match resolve(&follow.settings, &follow.node_client, follow.timeout).await {
            Ok((addr, client)) => {
                if follow.lost.swap(false, Ordering::AcqRel) {
                    info!(follow.log, "redis_primary_found"; "primary" => &addr);
                }
                let old = self.node.load();
                if old.addr != addr {
                    let generation = old.generation + 1;
                    warn!(follow.log, "redis_primary_changed"; "from" => &old.addr, "to" => &addr,
                        "generation" => generation);
                    self.node.store(Arc::new(Node { generation, addr, client }));
                }
            }
            Err(why) => {
                if !follow.lost.swap(true, Ordering::AcqRel) {
                    warn!(follow.log, "redis_primary_unknown"; "error" => why);
                }
            }
        }
    }
}

/// Checks the primary every [`RECHECK`], or sooner when a call asks, until the target is gone
/// (it may outlive its last user by one wait).
async fn watch(weak: Weak<Target>) {
    loop {
        let Some(target) = weak.upgrade() else { return };
        let Some(follow) = &target.follow else { return };
        tokio::select! {
            () = follow.wake.notified() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
        target.check(follow).await;
    }
}

/// Whether an error may mean the primary moved: the link broke, or the node refused a write
/// because it is a replica now.
pub fn may_have_moved(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || demoted(e)
}

/// Whether a node refused a write because it is a replica (also from inside a Lua script,
/// whose error carries the code in its text).
pub fn demoted(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::ReadOnly
        || e.code() == Some("READONLY")
        || e.detail().is_some_and(|d| d.contains("READONLY") || d.contains("read only replica"))
}

/// Asks each Sentinel in turn for the primary, and takes the first answer whose node says it
/// is a primary. Each Sentinel and the check of the node are bounded by `timeout`. The error
/// names the Sentinels' addresses and what failed, never a password.
pub async fn resolve(
    settings: &SentinelSettings,
    node_client: &NodeClient,
    timeout: Duration,
) -> Result<(String, Client), String> {
    let mut failures = Vec::new();
    for sentinel in &settings.sentinels {
        let asked = ask_sentinel(sentinel, settings, timeout);
        let named = match bounded(timeout, asked, sentinel_refusal).await {
            Ok(Some(named)) => named,
            Ok(None) => {
                failures.push(format!("{sentinel}: does not know master {:?}", settings.master));
                continue;
            }
            Err(why) => {
                failures.push(format!("{sentinel}: {why}"));
                continue;
            }
        };
        let (host, port) = named;
        let addr = format!("{host}:{port}");
        let client = match node_client(&host, port) {
            Ok(client) => client,
            Err(_) => {
                failures.push(format!("{sentinel} named {addr}, which cannot be addressed"));
                continue;
            }
        };
        match bounded(timeout, role(&client, timeout), super::describe).await {
            Ok(role) if role == "master" => return Ok((addr, client)),
            Ok(role) => failures.push(format!("{sentinel} named {addr}, which is a {role}")),
            Err(why) => failures.push(format!("{sentinel} named {addr}: {why}")),
        }
    }
    Err(format!("no Sentinel named a working primary ({})", failures.join("; ")))
}

async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = RedisResult<T>>,
    describe: fn(&RedisError) -> String,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

/// What a Sentinel's refusal means: its own password (not `REDIS_URL`'s) is missing or wrong.
fn sentinel_refusal(e: &RedisError) -> String {
    use super::refusal::Refusal;
    match Refusal::of(e) {
        Some(Refusal::NoAuth) => {
            "the Sentinel requires a password and REDIS_SENTINEL_PASSWORD is not set (NOAUTH)".into()
        }
        Some(Refusal::WrongPass) => {
            "the Sentinel refused REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD (WRONGPASS)".into()
        }
        _ => super::describe(e),
    }
}

fn short_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout)
}

/// `SENTINEL get-master-addr-by-name`: the primary's host and port, `None` when the Sentinel
/// does not monitor `master`.
async fn ask_sentinel(
    sentinel: &str,
    settings: &SentinelSettings,
    timeout: Duration,
) -> RedisResult<Option<(String, u16)>> {
    let mut info: ConnectionInfo = format!("redis://{sentinel}/").parse()?;
    if let (Some(template), ConnectionAddr::Tcp(host, port)) = (&settings.tls, &info.addr) {
        info = node_info(template, host, *port);
    }
    info.redis.db = 0;
    info.redis.username = settings.auth.as_ref().and_then(|auth| auth.username.clone());
    info.redis.password =
        settings.auth.as_ref().map(|auth| secrecy::ExposeSecret::expose_secret(&auth.password).to_owned());
    let client = Client::open(info)?;
    let mut conn = client.get_multiplexed_async_connection_with_config(&short_config(timeout)).await?;
    let named: Option<(String, u16)> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&settings.master).query_async(&mut conn).await?;
    Ok(named)
}

/// What a node says it is (`master`, `slave`, `sentinel`).
async fn role(client: &Client, timeout: Duration) -> RedisResult<String> {
    let mut conn = client.get_multiplexed_async_connection_with_config(&short_config(timeout)).await?;
    let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
    Ok(match role {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
            Some(Value::SimpleString(name)) => name.clone(),
            _ => "node of unknown role".into(),
        },
        _ => "node of unknown role".into(),
    })
}

/// The client of the data node at `host:port`, with everything else from `template` (the
/// `REDIS_URL`: TLS or not, user, password, database).
pub fn node_client(template: &ConnectionInfo, host: &str, port: u16) -> RedisResult<Client> {
    Client::open(node_info(template, host, port))
}

/// `template` (scheme, TLS, credentials, database) at `host:port`.
fn node_info(template: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let mut info = template.clone();
    info.addr = match &template.addr {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: *insecure, tls_params: tls_params.clone() }
        }
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_the_urls_credentials_and_database_at_the_named_address() {
        let template: ConnectionInfo = "redis://user:hunter2@old.example:6379/3".parse().unwrap();
        let client = node_client(&template, "10.0.0.7", 6380).unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.addr.to_string(), "10.0.0.7:6380");
        assert_eq!((info.redis.db, info.redis.username.as_deref()), (3, Some("user")));
        assert_eq!(info.redis.password.as_deref(), Some("hunter2"));
    }

    #[test]
    fn broken_links_and_readonly_answers_mean_the_primary_may_have_moved() {
        let readonly = RedisError::from((redis::ErrorKind::ReadOnly, "READONLY", "replica".to_string()));
        assert!(may_have_moved(&readonly) && demoted(&readonly));
        let in_script = RedisError::from((
            redis::ErrorKind::ResponseError,
            "script error",
            "READONLY You can't write against a read only replica. script: 1f2e".to_string(),
        ));
        assert!(demoted(&in_script));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(may_have_moved(&refused) && !demoted(&refused));
        let other = RedisError::from((redis::ErrorKind::ResponseError, "WRONGTYPE", "no".to_string()));
        assert!(!may_have_moved(&other));
    }

    #[actix_rt::test]
    async fn no_sentinel_answering_is_an_error_naming_each_without_secrets() {
        let settings =
            SentinelSettings { sentinels: vec!["127.0.0.1:1".into()], master: "m".into(), auth: None, tls: None };
        let template: ConnectionInfo = "redis://:hunter2@127.0.0.1:1/0".parse().unwrap();
        let make: NodeClient = Arc::new(move |host, port| node_client(&template, host, port));
        let Err(err) = resolve(&settings, &make, Duration::from_millis(300)).await else { panic!("resolved") };
        assert!(err.starts_with("no Sentinel named a working primary (127.0.0.1:1: "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
