//! Two courier replicas on one real Redis share their lockouts: wrong keys counted through either
//! add up to one threshold, a source locked out through one is refused by the other within a
//! second, and a lift through one lets the source in at the other; a valid key from another
//! source is served by both throughout. With Redis gone, each replica locks out on its own count.
//! The shared table's Lua script decides as the local table does, step by step, on one script
//! of wrong keys over made-up hours.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::config::LockoutConfig;
use courier::security::table::{Strike, Table};
use courier::security::Source;
use courier::shared::lockout::{Failed, Rules, SharedLockouts};
use courier::shared::SharedRedis;
use serde_json::Value;
use support::redis::RedisServer;
use support::security::client_from;
use support::{read_answer, Answer, Pair, PairBuilder};

const ADMIN_TOKEN: &str = "admin-token-lockout-redis-0123";
const GUESS: &str = "Bearer a-guess-of-a-key";
const ALPHA: &str = "Bearer alpha-key";
/// Bound of every wait for a replica to learn of a change.
const PATIENCE: Duration = Duration::from_secs(5);

async fn process_from(pair: &Pair, client: &awc::Client, authorization: &str) -> Answer {
    support::security::process_from(pair, client, Some(authorization)).await
}

/// Polls with the valid key from `client` until the answer's status is `status` (bounded).
async fn until_status(pair: &Pair, client: &awc::Client, status: u16) -> Answer {
    let started = Instant::now();
    loop {
        let answer = process_from(pair, client, ALPHA).await;
        if answer.status == status {
            return answer;
        }
        assert!(started.elapsed() < PATIENCE, "no {status} within {PATIENCE:?}: {answer:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lockout_lines(pair_logs: &courier::logging::LogCapture) -> Vec<Value> {
    pair_logs.lines().into_iter().filter(|line| line["event"] == "auth_lockout").collect()
}

async fn replicas(redis: &RedisServer, tag: &str) -> (Pair, Pair, std::path::PathBuf) {
    let clients = support::two_clients_file(&format!("lockout-redis-{tag}"));
    let builder = || {
        PairBuilder::default()
            .env("REDIS_URL", redis.url())
            .env("COURIER_CLIENTS_FILE", clients.to_str().unwrap())
            .env("COURIER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("COURIER_AUTH_LOCKOUT_THRESHOLD", "4")
            .env("COURIER_AUTH_LOCKOUT_BASE", "600")
            .env("COURIER_AUTH_LOCKOUT_MAX", "3600")
    };
    let a = builder().start().await;
    let b = builder().start_beside(&a).await;
    (a, b, clients)
}

#[actix_rt::test]
async fn two_replicas_share_the_count_the_lockout_and_its_lift() {
    let redis = RedisServer::start();
    let (a, b, clients) = replicas(&redis, "shared").await;
    let guesser = client_from("127.0.0.6");
    let honest = client_from("127.0.0.1");
    // Two wrong keys at each replica: neither reaches the threshold of 4 alone.
    for replica in [&a, &a, &b, &b] {
        assert_eq!(process_from(replica, &guesser, GUESS).await.status, 401);
    }
    // The fourth, counted in Redis, locked the source out of both.
    for replica in [&b, &a] {
        let answer = until_status(replica, &guesser, 429).await;
        assert_eq!(answer.body["error"]["code"], "auth_locked_out", "{answer:?}");
        let wait: u64 = answer.header("retry-after").unwrap().parse().unwrap();
        assert!((590..=600).contains(&wait), "{wait}");
    }
    for replica in [&a, &b] {
        assert_eq!(process_from(replica, &honest, ALPHA).await.status, 200, "another source is served");
    }
    let state = read_answer(
        a.http.get(a.admin_url("/admin/state")).bearer_auth(ADMIN_TOKEN).send().await.expect("admin answers"),
    )
    .await;
    assert_eq!(state.body["lockouts"]["locked"][0]["source"], "127.0.0.6", "{state:?}");
    assert_eq!(state.body["lockouts"]["locked"][0]["shared"], true, "{state:?}");
    // The shared table: the source's hash and the set of lockouts, both with the hash tag.
    let mut keys: Vec<String> = redis.command(&["KEYS", "*lockout*"]).unwrap().lines().map(str::to_owned).collect();
    keys.sort();
    assert_eq!(keys, ["{courier}:lockout:127.0.0.6", "{courier}:lockouts"]);
    let locked_at_a = Instant::now();
    while a.metric("courier_auth_locked_sources", &[]).await < 1.0 {
        assert!(locked_at_a.elapsed() < PATIENCE, "the gauge never counted the lockout");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    // Lifted through A: B lets the source in within a second or so.
    let lifted = a.http.delete(a.admin_url("/admin/lockouts/127.0.0.6")).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(lifted.expect("admin answers").status(), 200);
    until_status(&b, &guesser, 200).await;
    assert_eq!(process_from(&a, &guesser, ALPHA).await.status, 200);

    let (a_logs, b_logs) = (a.stop().await, b.stop().await);
    // One lockout, logged once, by the replica whose wrong key began it.
    let (a_lines, b_lines) = (lockout_lines(&a_logs), lockout_lines(&b_logs));
    assert!(a_lines.is_empty(), "{a_lines:?}");
    assert_eq!(b_lines.len(), 1, "{b_lines:?}");
    assert_eq!((b_lines[0]["scope"].as_str(), b_lines[0]["source"].as_str()), (Some("shared"), Some("127.0.0.6")));
    let lifts: Vec<Value> = a_logs.lines().into_iter().filter(|l| l["event"] == "auth_lockout_lifted").collect();
    assert_eq!((lifts.len(), lifts[0]["shared"].as_str()), (1, Some("ok")), "{lifts:?}");
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());
}

#[actix_rt::test]
async fn without_redis_each_replica_locks_out_on_its_own_count() {
    let mut redis = RedisServer::start();
    let (a, b, clients) = replicas(&redis, "alone").await;
    redis.kill();
    let guesser = client_from("127.0.0.7");
    for _ in 0..4 {
        assert_eq!(process_from(&a, &guesser, GUESS).await.status, 401);
    }
    let answer = process_from(&a, &guesser, ALPHA).await;
    assert_eq!((answer.status.as_u16(), &answer.body["error"]["code"]), (429, &serde_json::json!("auth_locked_out")));
    // B never saw a wrong key from it and cannot learn of A's lockout: it serves the valid key.
    assert_eq!(process_from(&b, &guesser, ALPHA).await.status, 200);
    let a_logs = a.stop().await;
    b.stop().await;
    let lines = lockout_lines(&a_logs);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["scope"], "local");
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());
}

#[actix_rt::test]
async fn the_shared_script_decides_as_the_local_table_does() {
    let redis = RedisServer::start();
    let config = LockoutConfig {
        threshold: 3,
        window: Duration::from_secs(60),
        base: Duration::from_secs(30),
        max: Duration::from_secs(300),
        max_sources: 100,
    };
    let metrics = Arc::new(courier::metrics::Metrics::new());
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let url = secrecy::SecretString::from(redis.url());
    let conn =
        SharedRedis::connect(&url, "courier", Duration::from_secs(2), metrics, &log).await.expect("Redis answers");
    let rules = Rules { threshold: 3, window_ms: 60_000, base_ms: 30_000, max_ms: 300_000, keep: 100 };
    let shared = SharedLockouts::new(Arc::new(conn), rules);
    let mut table = Table::new(&config).unwrap();
    // Wrong keys (source, seconds from the start): spread wider than the window, then the
    // threshold, a wrong key while locked out, probation and doubling to the cap, strikes
    // forgotten after a clean spell, and a second source alongside.
    let script: &[(u8, u64)] = &[
        (1, 0),
        (1, 10),
        (1, 70),
        (1, 80),
        (1, 85),
        (1, 90),
        (2, 91),
        (1, 116),
        (1, 150),
        (1, 211),
        (1, 330),
        (1, 570),
        (1, 871),
        (2, 900),
        (2, 901),
        (1, 1500),
        (1, 1510),
        (1, 1520),
    ];
    let t0_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let t0 = Instant::now();
    let mut strikes_seen = Vec::new();
    for &(last, at) in script {
        let source = Source::of(IpAddr::from([10, 0, 0, last]));
        let local = table.fail(source, t0 + Duration::from_secs(at));
        let remote = shared.fail(&source.to_string(), t0_ms + at as i64 * 1000).await.expect("the script answers");
        let until_ms = |until: Instant| t0_ms + until.duration_since(t0).as_millis() as i64;
        let expected = match local {
            Strike::Counted(_) => {
                Failed { locked: false, until_ms: remote.until_ms, strikes: remote.strikes, new: false }
            }
            Strike::Locked { until, strike } => {
                Failed { locked: true, until_ms: until_ms(until), strikes: strike, new: true }
            }
            Strike::AlreadyLocked(until) => {
                Failed { locked: true, until_ms: until_ms(until), strikes: remote.strikes, new: false }
            }
        };
        assert_eq!(remote, expected, "10.0.0.{last} at {at} s: the table said {local:?}");
        if let Strike::Locked { strike, until } = local {
            strikes_seen.push((strike, until.duration_since(t0 + Duration::from_secs(at)).as_secs()));
        }
    }
    // What the script went through: the threshold, doubling to the cap, forgotten strikes.
    assert_eq!(strikes_seen, [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (1, 30)]);
    let listed = shared.list(t0_ms + 1520 * 1000).await.unwrap();
    assert_eq!(listed.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["10.0.0.1"]);
}
