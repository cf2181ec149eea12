//! Rotating the Redis ACL password without a restart, against a real `redis-server`: courier
//! reads `REDIS_URL_FILE` again on a reload (the file poll, or SIGHUP), checks the new password
//! with Redis before using it, and from then on opens every connection with it, so the old
//! password can be removed from the ACL user and courier's connections killed while it keeps
//! sharing state. A new password Redis refuses, or a URL that moves Redis, fails the reload and
//! keeps the old URL; a password refused later (removed under a running courier) is logged and
//! counted by reason. No password is ever logged.

mod support;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use courier::metrics::ReloadTrigger;
use serde_json::{json, Value};
use support::failover::shared_state;
use support::redis::{RedisCluster, RedisServer};
use support::sentinel::Sentinel;
use support::{body, read_answer, Answer, Pair, PairBuilder};

const PASSWORD_A: &str = "rot-pw-a-61f0c2";
const PASSWORD_B: &str = "rot-pw-b-9d47e8";
/// A password the ACL user never has.
const PASSWORD_WRONG: &str = "rot-pw-wrong-2c5a";

/// The ACL courier runs with: its own keys only, every command but the dangerous ones.
fn create_user(redis: &RedisServer) {
    let acl = ["ACL", "SETUSER", "courier", "on", &format!(">{PASSWORD_A}"), "~{courier}:*", "+@all", "-@dangerous"];
    redis.command(&acl).expect("the ACL user is created");
}

/// Runs one command on every node (ACL users are per node, in a Cluster too).
fn on_each(nodes: &[&RedisServer], args: &[&str]) {
    for node in nodes {
        node.command(args).unwrap_or_else(|| panic!("{args:?} on port {}", node.port()));
    }
}

/// Closes every connection of user courier on `redis`; how many there were.
fn kill_courier(redis: &RedisServer) -> u64 {
    let killed = redis.command(&["CLIENT", "KILL", "USER", "courier"]).expect("CLIENT KILL answers");
    killed.parse().expect("CLIENT KILL USER answers a count")
}

/// The rotation as documented, on every node: the user takes password B beside A, the file
/// gets B, the reload succeeds; then A is removed and every connection of courier's killed.
/// courier must then share state with B alone, and no reconnect may have been refused.
async fn rotate_then_remove_the_old_password(pair: &Pair, file: &UrlFile, nodes: &[&RedisServer], next_url: &str) {
    on_each(nodes, &["ACL", "SETUSER", "courier", &format!(">{PASSWORD_B}")]);
    file.write(next_url);
    pair.courier.reload_handle().request(ReloadTrigger::Signal);
    reloads(pair, "ok", 1.0).await;
    assert_eq!(event(pair, "credentials_reloaded", 1).await["changed"], "redis_credentials");
    on_each(nodes, &["ACL", "SETUSER", "courier", &format!("<{PASSWORD_A}")]);
    let killed: u64 = nodes.iter().map(|node| kill_courier(node)).sum();
    assert!(killed > 0, "courier had no connection to kill");
    eventually("courier shares state again", async || {
        pair.process(body("after the kill")).await.status == 200 && shared_state(pair).await == "shared"
    })
    .await;
    assert_eq!(job(pair, "after").await["processed_data"], "AFTER", "the job store works with the new password");
    assert_eq!(pair.metric("courier_redis_refusals_total", &[]).await, 0.0, "a reconnect used the removed password");
}

fn url(redis: &RedisServer, host: &str, password: &str) -> String {
    format!("redis://courier:{password}@{host}:{}/0", redis.port())
}

/// The URL file of one test, replaced atomically (write, then rename) as Kubernetes does.
struct UrlFile {
    dir: PathBuf,
}

impl UrlFile {
    fn new(test: &str, url: &str) -> UrlFile {
        let dir = std::env::temp_dir().join(format!("courier-redis-rotation-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = UrlFile { dir };
        file.write(url);
        file
    }

    fn path(&self) -> String {
        self.dir.join("redis-url").to_str().unwrap().to_owned()
    }

    fn write(&self, url: &str) {
        let next = self.dir.join("redis-url.next");
        std::fs::write(&next, format!("{url}\n")).unwrap();
        std::fs::rename(&next, self.dir.join("redis-url")).unwrap();
    }
}

impl Drop for UrlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts courier on `file`, polling it every `poll` seconds, with the cache on.
async fn start(file: &UrlFile, poll: &str) -> Pair {
    PairBuilder::default()
        .env("REDIS_URL_FILE", file.path())
        .env("COURIER_SECRET_POLL_INTERVAL", poll)
        .env("EXTERNAL_API_CACHE_TTL", "300")
        .start()
        .await
}

async fn get(pair: &Pair, path: &str) -> Answer {
    read_answer(pair.http.get(pair.url(path)).send().await.expect("courier answers")).await
}

/// Polls `check` every 20 ms until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits an async job and waits until it reads completed; returns its result.
async fn job(pair: &Pair, input: &str) -> Value {
    let accepted = pair.process(json!({"data": {"input": input}, "options": {"async": true}})).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let status_url = accepted.body["status_url"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    eventually("the job completes", async || {
        last = get(pair, &status_url).await.body;
        last["status"] == "completed"
    })
    .await;
    last["result"].clone()
}

/// Waits until `courier_config_reloads_total{result}` reaches `n` (whatever triggered them).
async fn reloads(pair: &Pair, result: &str, n: f64) {
    eventually(&format!("{n} reloads {result}"), async || {
        pair.metric("courier_config_reloads_total", &[("result", result)]).await >= n
    })
    .await;
}

/// Waits (bounded) for the `n`th (from 1) log line of `event`.
async fn event(pair: &Pair, event: &str, n: usize) -> Value {
    let mut found = Vec::new();
    eventually(&format!("log line {event} #{n}"), async || {
        found = pair.logs.lines().into_iter().filter(|line| line["event"] == event).collect();
        found.len() >= n
    })
    .await;
    found[n - 1].clone()
}

/// How many answers courier's second cache level holds in Redis.
fn cached_answers(redis: &RedisServer) -> usize {
    let keys = redis.command(&["KEYS", "{courier}:cache:*"]).expect("Redis answers the test");
    keys.lines().filter(|line| !line.is_empty()).count()
}

#[actix_rt::test]
async fn a_rotated_password_is_checked_then_used_so_the_old_one_can_be_removed() {
    let redis = RedisServer::start();
    create_user(&redis);
    let file = UrlFile::new("rotate", &url(&redis, "127.0.0.1", PASSWORD_A));
    let pair = start(&file, "0.05").await;
    assert_eq!(job(&pair, "before").await["processed_data"], "BEFORE");

    // The rotation, in the documented order: the user takes both passwords, the file gets
    // the new one, the reload (here the file poll) checks it and puts it in use. Requests keep
    // coming meanwhile (each a cache miss: a budget call, a cache read and write in Redis).
    let rotated = Cell::new(false);
    let load = async {
        let mut statuses = Vec::new();
        while !rotated.get() {
            statuses.push(pair.process(body(&format!("during {}", statuses.len()))).await.status.as_u16());
        }
        statuses
    };
    let rotation = async {
        redis.command(&["ACL", "SETUSER", "courier", &format!(">{PASSWORD_B}")]).unwrap();
        file.write(&url(&redis, "127.0.0.1", PASSWORD_B));
        reloads(&pair, "ok", 1.0).await;
        assert_eq!(job(&pair, "rotated").await["processed_data"], "ROTATED");
        rotated.set(true);
    };
    let (statuses, ()) = futures_util::future::join(load, rotation).await;
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200),
        "a request failed across the rotation: {statuses:?}"
    );
    assert_eq!(
        pair.metric("courier_redis_errors_total", &[]).await,
        0.0,
        "no Redis call failed because of the rotation"
    );
    let reloaded = event(&pair, "credentials_reloaded", 1).await;
    assert_eq!(
        (reloaded["changed"].as_str(), reloaded["trigger"].as_str()),
        (Some("redis_credentials"), Some("file_change"))
    );

    // The old password is removed and every connection of courier's is closed: whatever
    // reconnects now must use the new password.
    redis.command(&["ACL", "SETUSER", "courier", &format!("<{PASSWORD_A}")]).unwrap();
    assert!(kill_courier(&redis) > 0, "courier had no connection to kill");
    let cached = cached_answers(&redis);
    eventually("courier shares state again", async || {
        // Calls on the killed connections fail once (connection lost); the next ones reconnect.
        pair.process(body("after the kill")).await.status == 200 && shared_state(&pair).await == "shared"
    })
    .await;
    assert_eq!(job(&pair, "after").await["processed_data"], "AFTER", "the job store works with the new password");
    assert_eq!(pair.process(body("a new answer to cache")).await.status, 200);
    eventually("a new answer reaches Redis's cache", async || cached_answers(&redis) > cached).await;
    assert_eq!(
        pair.metric("courier_redis_refusals_total", &[]).await,
        0.0,
        "no connection reconnected with the removed password"
    );

    // A password Redis does not take fails the reload; the URL in use is kept.
    file.write(&url(&redis, "127.0.0.1", PASSWORD_WRONG));
    pair.courier.reload_handle().request(ReloadTrigger::Signal);
    reloads(&pair, "failed", 1.0).await;
    let failed = event(&pair, "credentials_reload_failed", 1).await;
    let errors = failed["errors"].as_str().unwrap();
    assert!(errors.starts_with("REDIS_URL_FILE: ") && errors.contains("WRONGPASS"), "{failed}");
    assert_eq!(pair.metric("courier_config_last_reload_successful", &[]).await, 0.0);
    assert!(kill_courier(&redis) > 0, "courier had no connection to kill");
    eventually("the old URL is still in use", async || {
        pair.process(body("kept")).await.status == 200 && shared_state(&pair).await == "shared"
    })
    .await;
    assert_eq!(job(&pair, "kept").await["processed_data"], "KEPT");

    // A URL naming another host (here the same Redis by another name) moves Redis: refused.
    file.write(&url(&redis, "localhost", PASSWORD_B));
    pair.courier.reload_handle().request(ReloadTrigger::Signal);
    reloads(&pair, "failed", 2.0).await;
    let failed = event(&pair, "credentials_reload_failed", 2).await;
    let errors = failed["errors"].as_str().unwrap();
    assert!(errors.starts_with("REDIS_URL_FILE: ") && errors.contains("moving Redis needs a restart"), "{failed}");
    assert!(!errors.contains("localhost") && !errors.contains("127.0.0.1"), "the URL is never quoted: {failed}");
    assert_eq!(pair.metric("courier_config_reloads_total", &[("result", "ok")]).await, 1.0);
    assert_eq!(shared_state(&pair).await, "shared");

    let logs = pair.stop().await.text();
    for password in [PASSWORD_A, PASSWORD_B, PASSWORD_WRONG] {
        assert!(!logs.contains(password), "a password was logged");
    }
}

#[actix_rt::test]
async fn a_password_removed_under_a_running_courier_is_logged_and_counted_as_a_refusal() {
    let redis = RedisServer::start();
    create_user(&redis);
    let file = UrlFile::new("refused", &url(&redis, "127.0.0.1", PASSWORD_A));
    let pair = start(&file, "0").await;
    assert_eq!(pair.metric("courier_redis_refusals_total", &[("reason", "acl_wrongpass")]).await, 0.0);
    assert!(pair.metrics().await.contains("courier_redis_refusals_total{reason=\"tls_unknown_issuer\"} 0"));

    // No rotation: the password is replaced at Redis only, and the connections closed.
    redis.command(&["ACL", "SETUSER", "courier", "resetpass", &format!(">{PASSWORD_B}")]).unwrap();
    assert!(kill_courier(&redis) > 0, "courier had no connection to kill");
    eventually("the refusal is counted", async || {
        let refused = pair.process(json!({"data": {"input": "refused"}, "options": {"async": true}})).await;
        assert_ne!(refused.status, 202, "a job was accepted without Redis: {refused:?}");
        pair.metric("courier_redis_refusals_total", &[("reason", "acl_wrongpass")]).await >= 1.0
    })
    .await;
    assert_eq!(shared_state(&pair).await, "degraded");
    eventually("the refusal is logged with its reason", async || {
        pair.logs.lines().iter().any(|line| {
            line["level"] == "WARNING"
                && line["error"] == "ACL: Redis refused the user name or password of REDIS_URL (WRONGPASS)"
        })
    })
    .await;
    assert_eq!(pair.process(body("served alone")).await.status, 200, "sync requests are still served");

    // Putting the running URL's password back at Redis heals it by itself.
    redis.command(&["ACL", "SETUSER", "courier", &format!(">{PASSWORD_A}")]).unwrap();
    eventually("shared state comes back", async || {
        pair.process(body("back")).await;
        shared_state(&pair).await == "shared"
    })
    .await;
    let logs = pair.stop().await.text();
    assert!(!logs.contains(PASSWORD_A) && !logs.contains(PASSWORD_B), "a password was logged");
}

#[actix_rt::test]
async fn with_sentinel_the_followed_primary_is_reached_with_the_rotated_password() {
    let primary = RedisServer::start();
    create_user(&primary);
    // With Sentinels, courier checks that the node they name is the primary (`ROLE`).
    primary.command(&["ACL", "SETUSER", "courier", "+role"]).unwrap();
    let sentinel = Sentinel::start("rotation", primary.port());
    // The host is never used: the Sentinel names the primary; the URL gives the credentials.
    let file = UrlFile::new("sentinel", &format!("redis://courier:{PASSWORD_A}@named-by-sentinel.invalid/0"));
    let pair = PairBuilder::default()
        .env("REDIS_URL_FILE", file.path())
        .env("REDIS_SENTINELS", sentinel.addr())
        .env("REDIS_SENTINEL_MASTER", "rotation")
        .env("COURIER_SECRET_POLL_INTERVAL", "0")
        .start()
        .await;
    assert_eq!(job(&pair, "before").await["processed_data"], "BEFORE");
    let next = format!("redis://courier:{PASSWORD_B}@named-by-sentinel.invalid/0");
    rotate_then_remove_the_old_password(&pair, &file, &[&primary], &next).await;
    let logs = pair.stop().await.text();
    assert!(!logs.contains(PASSWORD_A) && !logs.contains(PASSWORD_B), "a password was logged");
}

#[actix_rt::test]
async fn with_a_cluster_every_node_is_reached_with_the_rotated_password() {
    let cluster = RedisCluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    for node in &nodes {
        create_user(node);
    }
    let seed = cluster.nodes[0].port();
    let file = UrlFile::new("cluster", &format!("redis://courier:{PASSWORD_A}@127.0.0.1:{seed}/0"));
    let pair = PairBuilder::default()
        .env("REDIS_URL_FILE", file.path())
        .env("REDIS_CLUSTER", "true")
        .env("COURIER_SECRET_POLL_INTERVAL", "0")
        .start()
        .await;
    assert_eq!(job(&pair, "before").await["processed_data"], "BEFORE");
    let next = format!("redis://courier:{PASSWORD_B}@127.0.0.1:{seed}/0");
    rotate_then_remove_the_old_password(&pair, &file, &nodes, &next).await;
    let logs = pair.stop().await.text();
    assert!(!logs.contains(PASSWORD_A) && !logs.contains(PASSWORD_B), "a password was logged");
}
