//! courier on a Redis Cluster started by the test (three primaries with a replica each, from
//! Debian's `redis-server` and `redis-cli --cluster create`): two replicas share the budget, the
//! token, the cache (a purge included) and jobs through it, every key in the slot of courier's
//! hash tag, though the node courier is given holds none of it; then the replica of that slot's
//! primary takes over (`CLUSTER FAILOVER`) and courier follows without a restart. A resharding
//! that moves courier's slot to another primary is followed through its ASK redirections.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::failover::shared_state;
use support::redis::{cli, RedisCluster};
use support::{body, count, read_answer, Answer, Pair, PairBuilder};

async fn get(pair: &Pair, path: &str) -> Answer {
    read_answer(pair.http.get(pair.url(path)).send().await.expect("courier answers")).await
}

/// Polls `check` every 20 ms until it holds, for at most `bound`; returns how long it took.
async fn within(bound: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < bound, "{what} did not happen within {bound:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Submits a job on `to` (bounded retries while the store says it is unavailable) and waits
/// until `from` reads it completed; returns its result and how long acceptance took.
async fn job_through(to: &Pair, from: &Pair, input: &str) -> (Value, Duration) {
    let mut url = String::new();
    let accepted = within(Duration::from_secs(20), "a job is accepted", async || {
        let answer = to.process(json!({"data": {"input": input}, "options": {"async": true}})).await;
        match answer.status.as_u16() {
            202 => url = answer.body["status_url"].as_str().unwrap().to_owned(),
            503 => assert_eq!(answer.error_code(), "job_store_unavailable", "{answer:?}"),
            _ => panic!("{answer:?}"),
        }
        !url.is_empty()
    })
    .await;
    let mut last = Value::Null;
    within(Duration::from_secs(20), "the job completes", async || {
        last = get(from, &url).await.body;
        last["status"] == "completed"
    })
    .await;
    (last["result"].clone(), accepted)
}

#[actix_rt::test]
async fn a_fleet_shares_state_through_a_cluster_and_follows_a_failover() {
    let cluster = RedisCluster::start();
    let slot: u16 = cli(cluster.nodes[0].port(), &["CLUSTER", "KEYSLOT", "{courier}:jobs"]).trim().parse().unwrap();
    let (primary, replica) = cluster.primary_and_replica_of(slot);
    let seed = (0..cluster.nodes.len()).find(|&i| i != primary && i != replica).unwrap();
    let replica_env = || {
        PairBuilder::default()
            .env("REDIS_URL", cluster.nodes[seed].url())
            .env("REDIS_CLUSTER", "true")
            .env("EXTERNAL_API_CACHE_TTL", "300")
            .env("EXTERNAL_API_QUOTAS", "1000000/day")
    };
    let a = replica_env().start().await;
    let b = replica_env().start_beside(&a).await;
    assert_eq!((shared_state(&a).await, shared_state(&b).await), ("shared".into(), "shared".into()));
    assert_eq!(count(&a.sim_stats().await, &["token", "total"]), 1, "b adopted a's token");

    let first = a.process(body("clustered")).await;
    assert_eq!((first.status.as_u16(), first.header("x-cache")), (200, Some("MISS")), "{first:?}");
    let on_primary = || cli(cluster.nodes[primary].port(), &["KEYS", "*"]);
    within(Duration::from_secs(10), "a's answer reaches the cluster", async || {
        on_primary().contains("{courier}:cache:")
    })
    .await;
    let second = b.process(body("clustered")).await;
    assert_eq!((second.status.as_u16(), second.header("x-cache")), (200, Some("HIT")), "{second:?}");
    assert_eq!(job_through(&a, &b, "before failover").await.0["processed_data"], "BEFORE FAILOVER");
    let keys = on_primary();
    assert!(keys.lines().all(|k| k.starts_with("{courier}:")), "{keys}");
    for family in ["{courier}:token", "{courier}:quota:", "{courier}:job:", "{courier}:jobs"] {
        assert!(keys.contains(family), "no {family} key on the slot's primary: {keys}");
    }
    for other in (0..cluster.nodes.len()).filter(|&i| i != primary && i != replica) {
        assert_eq!(cli(cluster.nodes[other].port(), &["DBSIZE"]).trim(), "0", "node {other} holds no key");
    }
    // A purge of the cache scans the node of the slot, not a random one.
    let purged = a.http.delete(a.admin_url("/admin/cache")).send().await.unwrap();
    assert_eq!(purged.status(), 200);
    assert!(!on_primary().contains("{courier}:cache:"), "the purge reached the slot's node");

    // The slot's replica takes over; courier follows without a restart.
    assert_eq!(cli(cluster.nodes[replica].port(), &["CLUSTER", "FAILOVER"]).trim(), "OK");
    within(Duration::from_secs(20), "the replica becomes primary", async || {
        cli(cluster.nodes[replica].port(), &["ROLE"]).starts_with("master")
    })
    .await;
    within(Duration::from_secs(20), "sync requests are served", async || {
        a.process(body("after failover")).await.status == 200 && b.process(body("after failover")).await.status == 200
    })
    .await;
    let (result, took) = job_through(&b, &a, "after failover").await;
    assert_eq!(result["processed_data"], "AFTER FAILOVER");
    within(Duration::from_secs(10), "both replicas share state again", async || {
        shared_state(&a).await == "shared" && shared_state(&b).await == "shared"
    })
    .await;
    let keys = cli(cluster.nodes[replica].port(), &["KEYS", "{courier}:job*"]);
    assert!(keys.lines().count() >= 3, "the jobs live on the new primary: {keys}");
    let errors = a.metric("courier_redis_errors_total", &[]).await + b.metric("courier_redis_errors_total", &[]).await;
    eprintln!("a job was accepted {took:?} after the failover completed; Redis errors counted: {errors}");
    a.stop().await;
    b.stop().await;
}

/// A resharding moves courier's slot to another primary while courier serves: the keys migrate
/// a few at a time (`CLUSTER SETSLOT … MIGRATING/IMPORTING`, `MIGRATE`), so courier's calls meet
/// ASK redirections to the new node, which counts their `ASKING`. Every request is answered
/// 200 throughout, and courier ends with its state on the new node, shared, without a restart.
#[actix_rt::test]
async fn a_slot_migrating_to_another_primary_is_followed_through_ask_redirections() {
    let cluster = RedisCluster::start();
    let port = |i: usize| cluster.nodes[i].port();
    let slot = cli(port(0), &["CLUSTER", "KEYSLOT", "{courier}:jobs"]).trim().to_owned();
    let (from, _) = cluster.primary_and_replica_of(slot.parse().unwrap());
    let to = (0..cluster.nodes.len())
        .find(|&i| i != from && cli(port(i), &["ROLE"]).starts_with("master"))
        .expect("another primary");
    let id = |i: usize| cli(port(i), &["CLUSTER", "MYID"]).trim().to_owned();
    let a = PairBuilder::default()
        .env("REDIS_URL", cluster.seed_url())
        .env("REDIS_CLUSTER", "true")
        .env("EXTERNAL_API_CACHE_TTL", "300")
        .env("EXTERNAL_API_QUOTAS", "1000000/day")
        .start()
        .await;
    for i in 0..10 {
        assert_eq!(a.process(body(&format!("before {i}"))).await.status, 200);
    }
    let asking = || {
        let stats = cli(port(to), &["INFO", "commandstats"]);
        let line = stats.lines().find(|l| l.starts_with("cmdstat_asking:")).unwrap_or("calls=0,");
        line.split(['=', ',']).nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)
    };
    let asked_before = asking();

    assert_eq!(cli(port(to), &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id(from)]).trim(), "OK");
    assert_eq!(cli(port(from), &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id(to)]).trim(), "OK");
    let (mut moved, mut served) = (0, 0);
    loop {
        let keys = cli(port(from), &["CLUSTER", "GETKEYSINSLOT", &slot, "3"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let to_port = port(to).to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        migrate.extend(&keys);
        assert_eq!(cli(port(from), &migrate).trim(), "OK", "{keys:?}");
        moved += keys.len();
        // Between two batches: misses (the budget's script, the cache's and quota's writes)
        // whose keys are now on one node, now on the other.
        for _ in 0..2 {
            let answer = a.process(body(&format!("during {served}"))).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            served += 1;
        }
    }
    for node in [to, from] {
        assert_eq!(cli(port(node), &["CLUSTER", "SETSLOT", &slot, "NODE", &id(to)]).trim(), "OK");
    }
    let asked = asking() - asked_before;
    eprintln!("moved {moved} keys, served {served} requests during the migration, {asked} ASKING on the new node");
    assert!(moved >= 3 && asked > 0, "the migration redirected nothing: {moved} keys, {asked} ASKING");

    within(Duration::from_secs(10), "courier's state lives on the new node", async || {
        a.process(body("after the migration")).await.status == 200 && shared_state(&a).await == "shared"
    })
    .await;
    assert_eq!(cli(port(from), &["DBSIZE"]).trim(), "0", "nothing left on the old node");
    let keys = cli(port(to), &["KEYS", "*"]);
    assert!(keys.contains("{courier}:cache:") && keys.contains("{courier}:quota:"), "{keys}");
    a.stop().await;
}
