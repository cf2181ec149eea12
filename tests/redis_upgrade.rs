//! Upgrading across the key layout change (every key `{courier}:…`, a Redis Cluster hash tag):
//! a replica of this version does not see a queue left under the old names (`courier:…`) and
//! says so at start, and scripts/redis-hash-tags.lua moves the jobs and quota counts over, so
//! no queued job is lost. Against a real `redis-server`; the script runs through `redis-cli`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier::jobs::redis::{RedisSettings, RedisStore};
use courier::jobs::{Job, JobStatus, JobStore, JobWork, StatusDoc, Timestamp};
use redis::aio::MultiplexedConnection;
use secrecy::SecretString;
use serde_json::Value;
use support::redis::RedisServer;
use support::{read_answer, Answer, Pair, PairBuilder};

async fn run(conn: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Every key in the Redis.
async fn all_keys(conn: &mut MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap()
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

/// A job as a runner has not taken it yet.
fn queued_job(id: &str) -> Job {
    let created_at = Timestamp(SystemTime::now());
    Job {
        doc: StatusDoc {
            request_id: id.into(),
            status: JobStatus::Pending,
            result: None,
            upstream_request_id: None,
            error: None,
            created_at,
            completed_at: None,
            attempts: 0,
            takeovers: 0,
            callback: None,
        },
        owner: None,
        work: Some(JobWork {
            body: r#"{"data":{"input":"queued before the upgrade","format":"text"}}"#.into(),
            cache_key: None,
            callback_url: None,
            client: 0,
            deadline_unix_ms: u64::try_from(created_at.0.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
                + 600_000,
            handoffs: 0,
            trace: None,
        }),
    }
}

#[actix_rt::test]
async fn the_upgrade_script_moves_jobs_and_quota_counts_of_the_layout_before_hash_tags() {
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // A job queued by a version before the hash tags, and its quota count: stored as today,
    // under the old names.
    let store = RedisStore::connect(&SecretString::from(redis.url()), RedisSettings::default()).await.unwrap();
    store.submit(&queued_job("old-1")).await.unwrap();
    drop(store);
    run(&mut conn, &["RENAME", "{courier}:jobs", "courier:jobs"]).await;
    run(&mut conn, &["RENAME", "{courier}:job:old-1", "courier:job:old-1"]).await;
    run(&mut conn, &["HSET", "courier:quota:day:0", "total", "7"]).await;
    run(&mut conn, &["PEXPIRE", "courier:quota:day:0", "600000"]).await;

    // A replica of this version does not see the old queue, and says so at start.
    let pair = PairBuilder::default().env("REDIS_URL", redis.url()).start().await;
    assert_eq!(get(&pair, "/api/external/status/old-1").await.status, 404);
    let logs = pair.stop().await.text();
    assert!(logs.contains("legacy_jobs_queued") && logs.contains(r#""jobs":1"#), "{logs}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-hash-tags.lua");
    let port = redis.port().to_string();
    let output = Command::new("redis-cli").args(["-p", &port, "--eval", script, ",", "courier"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n1\n1\n", "{output:?}");

    let pair = PairBuilder::default().env("REDIS_URL", redis.url()).start().await;
    let mut last = Value::Null;
    eventually("the moved job completes", async || {
        last = get(&pair, "/api/external/status/old-1").await.body;
        last["status"] == "completed"
    })
    .await;
    assert_eq!(last["result"]["processed_data"], "QUEUED BEFORE THE UPGRADE");
    let total: String =
        redis::cmd("HGET").arg("{courier}:quota:day:0").arg("total").query_async(&mut conn).await.unwrap();
    assert_eq!(total, "7");
    let ttl: i64 = redis::cmd("PTTL").arg("{courier}:quota:day:0").query_async(&mut conn).await.unwrap();
    assert!(ttl > 0, "the window's expiry is kept: {ttl}");
    let left: Vec<String> = all_keys(&mut conn).await.into_iter().filter(|k| k.starts_with("courier:")).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!pair.stop().await.text().contains("legacy_jobs_queued"));
}
