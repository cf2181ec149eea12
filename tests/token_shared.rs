//! Three TokenManagers, as in three courier replicas, sharing one upstream token through a
//! real Redis, against the simulator over real HTTP: one token request where one would do
//! (start, each lifetime, each revocation), every answer a token the upstream accepts, and
//! tokens still served, one request per replica, while Redis is down. Then two whole couriers
//! on one Redis: after a token endpoint outage, and while one of them backs off on credentials
//! the endpoint refuses, each is served within about a second of the other having a new token.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use courier::actors::{GetToken, Token, TokenCell, TokenManager, TokenSettings};
use courier::logging::{LogCapture, LogTarget, Logging};
use courier::metrics::Metrics;
use courier::shared::SharedRedis;
use courier::simulator::{FaultsPatch, SimConfig, Simulator};
use courier::upstream;
use futures_util::future::join_all;
use secrecy::SecretString;
use serde_json::json;
use slog::o;
use support::redis::RedisServer;
use support::{body, count, Pair, PairBuilder};

const REPLICAS: usize = 3;
/// Bound of every wait for something to happen.
const PATIENCE: Duration = Duration::from_secs(15);

/// The simulator, three replicas' TokenManagers and the Redis connection they share.
struct Cluster {
    sim: Simulator,
    replicas: Vec<(Addr<TokenManager>, Arc<TokenCell>)>,
    shared: Arc<SharedRedis>,
    metrics: Arc<Metrics>,
    logs: LogCapture,
    logging: Option<Logging>,
    http: awc::Client,
    api_key: String,
}

impl Cluster {
    /// Starts the simulator (tokens living `ttl`) and three TokenManagers sharing `redis`.
    async fn start(ttl: Duration, redis: &RedisServer) -> Cluster {
        let sim_config =
            SimConfig { token_ttl: ttl, rate_limit_per_minute: 1_000_000, rate_burst: 100_000, ..SimConfig::default() };
        let sim = Simulator::start(sim_config.clone()).await.expect("simulator starts");
        let metrics = Arc::new(Metrics::new());
        let logs = LogCapture::default();
        let logging = Logging::start(slog::Level::Debug, LogTarget::Capture(logs.clone()), metrics.log_dropped.clone());
        let log = logging.logger.clone();
        let url = SecretString::from(redis.url());
        let shared = Arc::new(
            SharedRedis::connect(&url, "courier", Duration::from_secs(2), metrics.clone(), &log)
                .await
                .expect("Redis answers"),
        );
        let settings = TokenSettings {
            url: format!("{}/oauth/token", sim.base_url()),
            client_id: sim_config.client_id.clone(),
            client_secret: SecretString::from(sim_config.client_secret.clone()),
            timeout: Duration::from_secs(5),
            tls: upstream::tls_config(None).expect("TLS roots"),
        };
        let replicas = (0..REPLICAS)
            .map(|replica| {
                let cell = Arc::new(TokenCell::default());
                let manager = TokenManager::new(
                    settings.clone(),
                    cell.clone(),
                    metrics.clone(),
                    &log.new(o!("replica" => replica)),
                )
                .with_shared(Some(shared.clone()))
                .start();
                (manager, cell)
            })
            .collect();
        let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        Cluster { sim, replicas, shared, metrics, logs, logging: Some(logging), http, api_key: sim_config.api_key }
    }

    /// Waits until every replica holds a token.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.replicas.iter().all(|(_, cell)| cell.is_ready()) {
            assert!(Instant::now() < deadline, "replicas not ready within {PATIENCE:?}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Token requests the upstream has received.
    fn token_requests(&self) -> u64 {
        self.sim.stats().token.total
    }

    /// Asks every replica for a token at once (`rejected` per replica), expecting from each
    /// one that is valid when it arrives.
    async fn ask_all(&self, rejected: impl Fn(usize) -> Option<u64>) -> Vec<Arc<Token>> {
        let asks = self.replicas.iter().enumerate().map(|(i, (manager, _))| {
            let ask = manager.send(GetToken { rejected: rejected(i), trace: courier::trace::Parent::NONE });
            async move {
                match ask.await.expect("mailbox open") {
                    Ok(token) => {
                        assert!(token.is_valid_at(Instant::now()), "replica {i} handed out an expired token");
                        token
                    }
                    Err(unavailable) => panic!("replica {i} got no token: {unavailable}"),
                }
            }
        });
        join_all(asks).await
    }

    /// The status the upstream answers a process call sent with `token`.
    async fn upstream_status(&self, token: &Token) -> u16 {
        let response = self
            .http
            .post(format!("{}/process", self.sim.base_url()))
            .insert_header(("x-api-key", self.api_key.as_str()))
            .insert_header(("authorization", token.authorization.clone()))
            .send_json(&json!({"data": {"input": "token check", "format": "text"}, "options": {}}))
            .await
            .expect("simulator answers");
        response.status().as_u16()
    }

    /// Asserts that the upstream accepts every token.
    async fn assert_accepted(&self, tokens: &[Arc<Token>]) {
        let statuses = join_all(tokens.iter().map(|token| self.upstream_status(token))).await;
        for (i, (status, token)) in statuses.into_iter().zip(tokens).enumerate() {
            assert_eq!(status, 200, "replica {i}'s token (generation {})", token.generation);
        }
    }

    fn shared_uses(&self) -> u64 {
        self.metrics.token_shared_uses.get()
    }

    /// Stops logging and returns everything logged.
    fn log_text(&mut self) -> String {
        drop(self.logging.take());
        self.logs.text()
    }
}

/// Revokes every token issued so far.
fn revoke(sim: &Simulator) {
    sim.set_faults(FaultsPatch { revoke_tokens: true, ..FaultsPatch::default() });
}

fn generations(tokens: &[Arc<Token>]) -> Vec<u64> {
    tokens.iter().map(|t| t.generation).collect()
}

#[actix_rt::test]
async fn three_replicas_cost_one_token_request_at_start_and_per_lifetime() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(1);
    // Lifetimes are counted from before the first token is fetched.
    let started = Instant::now();
    let cluster = Cluster::start(ttl, &redis).await;
    cluster.wait_ready().await;
    assert_eq!(cluster.token_requests(), 1, "one replica fetched, the others adopted");
    assert_eq!(cluster.shared_uses(), (REPLICAS - 1) as u64);

    let run_for = Duration::from_millis(4500);
    let mut served = 0;
    while started.elapsed() < run_for {
        let tokens = cluster.ask_all(|_| None).await;
        cluster.assert_accepted(&tokens).await;
        served += tokens.len();
        // Steady demand, not synchronisation: time passing is what this test is about.
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let lifetimes = (elapsed.as_secs_f64() / ttl.as_secs_f64()).ceil() as u64;
    let tokens = cluster.token_requests();
    assert!(
        tokens <= lifetimes + 1,
        "{tokens} token requests for {REPLICAS} replicas in {elapsed:?} ({lifetimes} lifetimes)"
    );
    assert!(tokens >= lifetimes - 1, "tokens were refreshed: {tokens} in {elapsed:?}");
    assert_eq!(cluster.sim.stats().process.unauthorized, 0);
    // The others adopted each refresh (but perhaps not yet the very last one).
    assert!(cluster.shared_uses() >= (REPLICAS as u64 - 1) * tokens.saturating_sub(2));
    assert!(served > 100, "{served}");
    cluster.sim.stop().await;
}

#[actix_rt::test]
async fn a_revocation_seen_by_every_replica_costs_one_token_request() {
    let redis = RedisServer::start();
    let mut cluster = Cluster::start(Duration::from_secs(3600), &redis).await;
    cluster.wait_ready().await;
    let before = cluster.ask_all(|_| None).await;
    let first = before[0].generation;
    assert_eq!(generations(&before), vec![first; REPLICAS], "all replicas hold the same token");

    revoke(&cluster.sim);
    assert_eq!(cluster.upstream_status(&before[0]).await, 401, "the shared token is revoked");
    let after = cluster.ask_all(|i| Some(before[i].generation)).await;
    let second = after[0].generation;
    assert!(second > first);
    assert_eq!(generations(&after), vec![second; REPLICAS], "all replicas end on the same new generation");
    assert_eq!(cluster.token_requests(), 2, "one request at start, one for the revocation");
    assert_eq!(cluster.shared_uses(), 2 * (REPLICAS - 1) as u64);
    cluster.assert_accepted(&after).await;

    // The token lives in Redis (that is the point), but never in a log line.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let doc: String = redis::cmd("GET").arg("{courier}:token").query_async(&mut conn).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["generation"], second);
    let secret = doc["access_token"].as_str().expect("access_token in the shared document").to_owned();
    let logs = cluster.log_text();
    assert!(!logs.contains(&secret), "the access token was logged");
    let adopted = logs.lines().filter(|line| line.contains("\"token_adopted\"")).count();
    assert_eq!(adopted, 2 * (REPLICAS - 1), "{logs}");
    cluster.sim.stop().await;
}

#[actix_rt::test]
async fn without_redis_each_replica_fetches_alone_and_sharing_resumes_after() {
    let mut redis = RedisServer::start();
    let cluster = Cluster::start(Duration::from_secs(3600), &redis).await;
    cluster.wait_ready().await;
    let shared = cluster.ask_all(|_| None).await;
    assert_eq!(cluster.token_requests(), 1);

    redis.kill();
    revoke(&cluster.sim);
    let alone = cluster.ask_all(|i| Some(shared[i].generation)).await;
    assert_eq!(cluster.token_requests(), 1 + REPLICAS as u64, "each replica fetched its own token");
    assert!(!cluster.shared.is_up(), "shared state is degraded");
    for token in &alone {
        assert!(token.generation > shared[0].generation, "generations never go backwards");
    }
    cluster.assert_accepted(&alone).await;

    redis.restart();
    // Shared state retries Redis at most once a second; wait until it is back. (By then more
    // than a second has passed since the replicas' rejections, so a new one is not "too soon".)
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ping = cluster
            .shared
            .run("test_ping", |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await;
        if ping.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "shared state not restored within {PATIENCE:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    let uses = cluster.shared_uses();
    revoke(&cluster.sim);
    let again = cluster.ask_all(|i| Some(alone[i].generation)).await;
    assert_eq!(cluster.token_requests(), 2 + REPLICAS as u64, "sharing again: one request for the revocation");
    assert_eq!(cluster.shared_uses(), uses + (REPLICAS - 1) as u64);
    let newest_alone = alone.iter().map(|t| t.generation).max().unwrap();
    let generation = again[0].generation;
    assert!(generation > newest_alone, "the restarted counter continued above {newest_alone}, not from 1");
    assert_eq!(generations(&again), vec![generation; REPLICAS]);
    cluster.assert_accepted(&again).await;
    cluster.sim.stop().await;
}

/// A courier on the shared Redis, beside `first` (on its simulator) or alone.
fn replica(redis: &RedisServer) -> PairBuilder {
    PairBuilder::default().env("REDIS_URL", redis.url())
}

/// Waits (bounded) until `name{labels}` on `pair` reaches `at_least`.
async fn until_metric(pair: &Pair, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let deadline = Instant::now() + PATIENCE;
    while pair.metric(name, labels).await < at_least {
        assert!(Instant::now() < deadline, "{name}{labels:?} never reached {at_least}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn after_a_token_endpoint_outage_both_replicas_are_served_within_seconds_on_one_token() {
    let redis = RedisServer::start();
    let a = replica(&redis).start().await;
    let b = replica(&redis).start_beside(&a).await;
    for pair in [&a, &b] {
        assert_eq!(pair.process(body("before")).await.status, 200);
    }
    a.faults(json!({"revoke_tokens": true, "token_failure": true})).await;
    for pair in [&a, &b] {
        assert_eq!(pair.process(body("revoked")).await.error_code(), "upstream_auth_unavailable");
    }
    // The outage lasts until both have asked the endpoint in vain three times.
    for pair in [&a, &b] {
        until_metric(pair, "courier_token_refreshes_total", &[("result", "failure")], 3.0).await;
    }
    let issued = count(&a.sim_stats().await, &["token", "ok"]);

    a.faults(json!({"token_failure": false})).await;
    let (lag_a, lag_b) = futures_util::join!(
        a.until_served("upstream_auth_unavailable", Duration::from_millis(20), Duration::from_secs(3)),
        b.until_served("upstream_auth_unavailable", Duration::from_millis(20), Duration::from_secs(3)),
    );
    println!(
        "two replicas after a token endpoint outage: served {:.0} ms and {:.0} ms after the endpoint was back",
        lag_a.as_secs_f64() * 1e3,
        lag_b.as_secs_f64() * 1e3
    );
    let after = a.sim_stats().await;
    assert_eq!(count(&after, &["token", "ok"]), issued + 1, "one replica fetched, the other adopted it: {after}");
    let adopted =
        a.metric("courier_token_shared_uses_total", &[]).await + b.metric("courier_token_shared_uses_total", &[]).await;
    assert_eq!(adopted, 2.0, "one adoption at start, one after the outage");
    b.stop().await;
    a.stop().await;
}

#[actix_rt::test]
async fn a_replica_backing_off_adopts_the_token_another_replica_stored_within_seconds() {
    let redis = RedisServer::start();
    let a = replica(&redis).start().await;
    // B's client secret is one the endpoint no longer accepts (a rotation it has not caught up
    // with): it can only get a token by adopting A's. At start it adopts A's first token.
    let b = replica(&redis).sim(|s| s.client_secret = "retired-secret".into()).start_beside(&a).await;
    assert_eq!(b.process(body("adopted at start")).await.status, 200);

    a.faults(json!({"revoke_tokens": true})).await;
    assert_eq!(b.process(body("revoked")).await.error_code(), "upstream_auth_unavailable");
    // B's refreshes are refused and back off exponentially; once a wait is longer than a second,
    // it looks in Redis in between, about once a second.
    until_metric(&b, "courier_token_refreshes_total", &[("result", "rejected")], 1.0).await;
    until_metric(&b, "courier_token_shared_looks_total", &[("result", "none")], 1.0).await;
    let answer = b.process(body("backing off")).await;
    assert_eq!(answer.error_code(), "upstream_auth_unavailable");

    // A gets a new token (its request meets the revocation and refreshes); B is served soon after.
    assert_eq!(a.process(body("refresh")).await.status, 200);
    let lag = b.until_served("upstream_auth_unavailable", Duration::from_millis(20), Duration::from_secs(3)).await;
    println!("replica B served {:.0} ms after replica A stored a new token", lag.as_secs_f64() * 1e3);
    assert!(lag <= Duration::from_secs(3), "{lag:?}");
    assert_eq!(b.metric("courier_token_shared_uses_total", &[]).await, 2.0, "B adopted, twice");
    let ready = b.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    b.stop().await;
    a.stop().await;
}
