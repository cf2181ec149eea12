//! Redis as production runs it: TLS with a private CA, mutual TLS, and ACL users, against real
//! `redis-server`s serving TLS only, with certificates made in the test (rcgen). Two couriers
//! share the budget, the token, the cache, quota counts and jobs through a TLS Redis as an ACL
//! user limited to courier's keys, and every key they write carries the `{courier}` hash tag.
//! A certificate refused either way and an ACL refusal stop the start with one line saying
//! which, never the password; a password changed under a running courier is logged and counted.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{ClientTlsConfig, TlsCertificates};
use serde_json::{json, Value};
use support::failover::shared_state;
use support::redis::{RedisCluster, RedisServer, TlsFiles};
use support::tls::{Ca, Leaf, Pki};
use support::{body, count, read_answer, Answer, Pair, PairBuilder};

const PASSWORD: &str = "acl-pw-3b9e1d";
/// The ACL courier runs with: its own keys only, every command but the dangerous ones.
const ACL: &[&str] = &["ACL", "SETUSER", "courier", "on", ">acl-pw-3b9e1d", "~{courier}:*", "+@all", "-@dangerous"];

/// A Redis serving TLS only with a certificate from `ca` for localhost and 127.0.0.1, asking
/// clients for a certificate from `ca` when `mutual`.
fn tls_redis(pki: &Pki, ca: &(Ca, PathBuf), mutual: bool) -> RedisServer {
    let server = pki.for_names("redis", &ca.0, &["localhost", "127.0.0.1"]);
    let files = TlsFiles { cert: server.cert, key: server.key, client_ca: ca.1.clone(), auth_clients: mutual };
    RedisServer::start_tls(&files, &[])
}

/// The test's own connection to a TLS Redis, as the default user.
async fn admin(redis: &RedisServer, ca: &PathBuf, client: Option<&Leaf>) -> MultiplexedConnection {
    let certificates = TlsCertificates {
        client_tls: client.map(|leaf| ClientTlsConfig {
            client_cert: std::fs::read(&leaf.cert).unwrap(),
            client_key: std::fs::read(&leaf.key).unwrap(),
        }),
        root_cert: Some(std::fs::read(ca).unwrap()),
    };
    let client = redis::Client::build_with_tls(redis.tls_url("localhost", None), certificates).unwrap();
    client.get_multiplexed_async_connection().await.expect("the test reaches its TLS Redis")
}

async fn run(conn: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Every key in the Redis (SCAN, so never blocking it).
async fn all_keys(conn: &mut MultiplexedConnection) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(conn).await.unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
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

/// Submits an async job on `to` and waits until `from` reads it completed; returns the result.
async fn job_through(to: &Pair, from: &Pair, input: &str) -> Value {
    let accepted = to.process(json!({"data": {"input": input}, "options": {"async": true}})).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    eventually("the job completes", async || {
        last = get(from, &url).await.body;
        last["status"] == "completed"
    })
    .await;
    last["result"].clone()
}

#[actix_rt::test]
async fn a_fleet_shares_everything_over_tls_as_an_acl_user_and_every_key_carries_the_hash_tag() {
    let pki = Pki::new("fleet");
    let ca = pki.ca("private");
    let redis = tls_redis(&pki, &ca, false);
    let mut probe = admin(&redis, &ca.1, None).await;
    run(&mut probe, ACL).await;
    let replica = || {
        PairBuilder::default()
            .env("REDIS_URL", redis.tls_url("localhost", Some(&format!("courier:{PASSWORD}"))))
            .env("REDIS_CA_FILE", ca.1.to_str().unwrap())
            .env("EXTERNAL_API_CACHE_TTL", "300")
            .env("EXTERNAL_API_QUOTAS", "1000000/day")
    };
    let a = replica().start().await;
    let b = replica().start_beside(&a).await;
    assert_eq!((shared_state(&a).await, shared_state(&b).await), ("shared".into(), "shared".into()));
    assert_eq!(count(&a.sim_stats().await, &["token", "total"]), 1, "b adopted a's token through Redis");

    // A sync answer fetched by a is a hit on b, from the shared level.
    let first = a.process(body("over tls")).await;
    assert_eq!((first.status.as_u16(), first.header("x-cache")), (200, Some("MISS")), "{first:?}");
    eventually("a's answer reaches Redis", async || {
        all_keys(&mut probe).await.iter().any(|k| k.starts_with("{courier}:cache:"))
    })
    .await;
    let second = b.process(body("over tls")).await;
    assert_eq!((second.status.as_u16(), second.header("x-cache")), (200, Some("HIT")), "{second:?}");
    assert_eq!(count(&a.sim_stats().await, &["process", "total"]), 1);

    // A job accepted by a is run and read through Redis, whichever replica runs it.
    assert_eq!(job_through(&a, &b, "tls job").await["processed_data"], "TLS JOB");

    let keys = all_keys(&mut probe).await;
    assert!(keys.iter().all(|k| k.starts_with("{courier}:")), "a key without courier's hash tag: {keys:?}");
    for family in ["{courier}:budget:", "{courier}:token", "{courier}:cache:", "{courier}:quota:", "{courier}:job:"] {
        assert!(keys.iter().any(|k| k.starts_with(family)), "no {family} key in {keys:?}");
    }
    assert!(keys.iter().any(|k| k == "{courier}:jobs"), "{keys:?}");
    assert_eq!(a.metric("courier_redis_errors_total", &[]).await, 0.0, "the ACL let every call through");
    assert_eq!(b.metric("courier_redis_errors_total", &[]).await, 0.0, "the ACL let every call through");
    for pair in [a, b] {
        let logs = pair.stop().await.text();
        assert!(!logs.contains(PASSWORD), "the password was logged");
    }
}

#[actix_rt::test]
async fn mutual_tls_carries_sync_and_async_requests() {
    let pki = Pki::new("mutual");
    let ca = pki.ca("private");
    let client = pki.for_names("courier", &ca.0, &["courier"]);
    let redis = tls_redis(&pki, &ca, true);
    let pair = PairBuilder::default()
        .env("REDIS_URL", redis.tls_url("127.0.0.1", None))
        .env("REDIS_CA_FILE", ca.1.to_str().unwrap())
        .env("REDIS_CLIENT_CERT_FILE", client.cert.to_str().unwrap())
        .env("REDIS_CLIENT_KEY_FILE", client.key.to_str().unwrap())
        .start()
        .await;
    assert_eq!(shared_state(&pair).await, "shared");
    assert_eq!(pair.process(body("mutual")).await.status, 200);
    assert_eq!(job_through(&pair, &pair, "mutual job").await["processed_data"], "MUTUAL JOB");
    let mut probe = admin(&redis, &ca.1, Some(&client)).await;
    assert!(all_keys(&mut probe).await.iter().any(|k| k == "{courier}:jobs"));
    pair.stop().await;
}

fn refused_start(redis_url: &str, extra: &[(&str, &PathBuf)]) -> String {
    support::redis::refused_start(redis_url, extra, &[PASSWORD])
}

const NOT_TRUSTED: &str = "courier: cannot start: REDIS_URL: cannot connect to Redis: TLS: Redis's certificate is \
                           not issued by a trusted CA (the system roots or REDIS_CA_FILE)";
const CLIENT_REFUSED: &str = "courier: cannot start: REDIS_URL: cannot connect to Redis: TLS: Redis refused \
                              courier's client certificate (none given, or not one Redis trusts: REDIS_CLIENT_CERT_FILE)";

#[test]
fn a_certificate_refused_either_way_stops_the_start_with_one_line_saying_which() {
    let pki = Pki::new("refused");
    let ca = pki.ca("private");
    let other = pki.ca("other");
    let stranger = pki.for_names("stranger", &other.0, &["courier"]);
    let client = pki.for_names("courier", &ca.0, &["courier"]);
    let redis = tls_redis(&pki, &ca, true);
    // 127.0.0.1, not localhost: with ::1 refused too, which error is reported would be a race.
    let url = redis.tls_url("127.0.0.1", Some(&format!("courier:{PASSWORD}")));

    // Redis's certificate, from a CA courier does not trust: another CA's file, or none.
    let with_client = [("REDIS_CLIENT_CERT_FILE", &client.cert), ("REDIS_CLIENT_KEY_FILE", &client.key)];
    let wrong_ca = [&[("REDIS_CA_FILE", &other.1)][..], &with_client[..]].concat();
    assert_eq!(refused_start(&url, &wrong_ca), NOT_TRUSTED);
    assert_eq!(refused_start(&url, &with_client), NOT_TRUSTED, "the system roots do not hold the private CA");

    // courier's certificate, missing or from a CA Redis does not trust.
    assert_eq!(refused_start(&url, &[("REDIS_CA_FILE", &ca.1)]), CLIENT_REFUSED);
    let strange_client = [
        ("REDIS_CA_FILE", &ca.1),
        ("REDIS_CLIENT_CERT_FILE", &stranger.cert),
        ("REDIS_CLIENT_KEY_FILE", &stranger.key),
    ];
    assert_eq!(refused_start(&url, &strange_client), CLIENT_REFUSED);
}

#[actix_rt::test]
async fn an_acl_refusal_stops_the_start_with_one_line_saying_which() {
    let pki = Pki::new("acl");
    let ca = pki.ca("private");
    let redis = tls_redis(&pki, &ca, false);
    let mut probe = admin(&redis, &ca.1, None).await;
    run(&mut probe, ACL).await;
    run(&mut probe, &["ACL", "SETUSER", "elsewhere", "on", ">acl-pw-3b9e1d", "~other:*", "+@all"]).await;
    let trust = [("REDIS_CA_FILE", &ca.1)];

    let wrong = redis.tls_url("127.0.0.1", Some("courier:not-the-password"));
    let line = refused_start(&wrong, &trust);
    assert_eq!(
        line,
        "courier: cannot start: REDIS_URL: cannot connect to Redis: ACL: Redis refused the user name or password of \
         REDIS_URL (WRONGPASS)"
    );
    assert!(!line.contains("not-the-password"));

    let elsewhere = redis.tls_url("127.0.0.1", Some(&format!("elsewhere:{PASSWORD}")));
    let line = refused_start(&elsewhere, &trust);
    assert!(
        line.starts_with("courier: cannot start: REDIS_URL: ")
            && line.ends_with("ACL: the Redis user may not run a command or use a key courier needs (NOPERM)"),
        "{line}"
    );
}

#[actix_rt::test]
async fn a_password_changed_under_a_running_replica_is_logged_and_counted() {
    let pki = Pki::new("rotated");
    let ca = pki.ca("private");
    let redis = tls_redis(&pki, &ca, false);
    let mut probe = admin(&redis, &ca.1, None).await;
    run(&mut probe, ACL).await;
    let pair = PairBuilder::default()
        .env("REDIS_URL", redis.tls_url("localhost", Some(&format!("courier:{PASSWORD}"))))
        .env("REDIS_CA_FILE", ca.1.to_str().unwrap())
        .start()
        .await;
    assert_eq!(job_through(&pair, &pair, "before").await["processed_data"], "BEFORE");

    // The password changes and courier's connections are closed: every reconnect is refused.
    run(&mut probe, &["ACL", "SETUSER", "courier", "resetpass", ">another-password"]).await;
    run(&mut probe, &["CLIENT", "KILL", "USER", "courier"]).await;
    let refused = pair.process(json!({"data": {"input": "refused"}, "options": {"async": true}})).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "job_store_unavailable"), "{refused:?}");
    eventually("the replica degrades", async || shared_state(&pair).await == "degraded").await;
    assert!(pair.metric("courier_redis_errors_total", &[]).await > 0.0);
    eventually("a refusal is logged as one", async || pair.logs.text().contains("WRONGPASS")).await;
    assert_eq!(pair.process(body("served alone")).await.status, 200, "sync requests are still served");
    let logs = pair.stop().await.text();
    assert!(!logs.contains(PASSWORD) && !logs.contains("another-password"), "a password was logged");
}

/// A Redis Cluster serving TLS only (to clients, on its bus and for replication), as clustered
/// managed Redis runs: two couriers reach it through `rediss://` and one seed node, trusting the
/// private CA, follow the slot map to the primary of courier's slot over TLS, and share the
/// token, the cache and jobs there.
#[actix_rt::test]
async fn a_cluster_serving_tls_only_is_shared_over_tls() {
    let pki = Pki::new("cluster");
    let ca = pki.ca("ca");
    let server = pki.for_names("redis", &ca.0, &["localhost", "127.0.0.1"]);
    let files = TlsFiles { cert: server.cert, key: server.key, client_ca: ca.1.clone(), auth_clients: false };
    let cluster = RedisCluster::start_tls(&files, &ca.1);
    let slot: u16 = cluster.cli(0, &["CLUSTER", "KEYSLOT", "{courier}:jobs"]).trim().parse().unwrap();
    let (primary, _) = cluster.primary_and_replica_of(slot);
    let seed = (primary + 1) % 3;
    let env = || {
        PairBuilder::default()
            .env("REDIS_URL", cluster.nodes[seed].tls_url("127.0.0.1", None))
            .env("REDIS_CLUSTER", "true")
            .env("REDIS_CA_FILE", ca.1.display().to_string())
            .env("EXTERNAL_API_CACHE_TTL", "300")
    };
    let a = env().start().await;
    let b = env().start_beside(&a).await;
    assert_eq!((shared_state(&a).await, shared_state(&b).await), ("shared".into(), "shared".into()));
    assert_eq!(count(&a.sim_stats().await, &["token", "total"]), 1, "b adopted a's token through the cluster");

    let first = a.process(body("clustered over TLS")).await;
    assert_eq!((first.status.as_u16(), first.header("x-cache")), (200, Some("MISS")), "{first:?}");
    eventually("a's answer reaches the slot's primary", async || {
        cluster.cli(primary, &["KEYS", "{courier}:cache:*"]).contains("{courier}:cache:")
    })
    .await;
    let second = b.process(body("clustered over TLS")).await;
    assert_eq!((second.status.as_u16(), second.header("x-cache")), (200, Some("HIT")), "{second:?}");
    assert_eq!(job_through(&a, &b, "over tls").await["processed_data"], "OVER TLS");
    assert_eq!(a.metric("courier_redis_errors_total", &[]).await, 0.0);
    a.stop().await;
    b.stop().await;
}
