//! A Redis Cluster losing the primary of courier's slot, against real servers: three primaries
//! with a replica each (`cluster-node-timeout` 1 s), two couriers reaching it through a node
//! that holds none of courier's keys, under sync load over the shared budget and async jobs
//! accepted only once the slot's replica holds them (`COURIER_REDIS_MIN_REPLICAS=1`) with
//! callbacks. The slot's primary is killed (SIGKILL) and the cluster promotes its replica by
//! itself: the couriers follow without a restart, every 202 reaches a final state and its signed
//! callback (a repeat counted), the upstream's limit is never exceeded, and the old primary,
//! back as a replica of its successor, never sees a command from courier.

mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use support::failover::{shared_state, until, verdict, Load, COURIER_COMMANDS};
use support::receiver::Receiver;
use support::redis::{cli, RedisCluster};
use support::PairBuilder;

const SECRET: &str = "whsec_cluster_4d2a";

/// The cluster's `cluster-node-timeout`: a primary unreachable this long is marked failed.
const NODE_TIMEOUT_MS: u32 = 1000;

#[actix_rt::test]
async fn couriers_follow_a_killed_cluster_primary_without_losing_an_accepted_job() {
    let test_started = Instant::now();
    let mut cluster = RedisCluster::start_with_node_timeout(NODE_TIMEOUT_MS);
    let slot: u16 = cli(cluster.nodes[0].port(), &["CLUSTER", "KEYSLOT", "{courier}:jobs"]).trim().parse().unwrap();
    let (primary, replica) = cluster.primary_and_replica_of(slot);
    let seed = (0..cluster.nodes.len()).find(|&i| i != primary && i != replica).unwrap();
    let receiver = Receiver::start(&[]).await;

    let builder = || {
        PairBuilder::default()
            .env("REDIS_URL", cluster.nodes[seed].url())
            .env("REDIS_CLUSTER", "true")
            .env("COURIER_REDIS_MIN_REPLICAS", "1")
            .env("COURIER_REDIS_WAIT_TIMEOUT", "0.5")
            .env("COURIER_REPLICAS", "2")
            .env("COURIER_JOB_LEASE", "2")
            .env("EXTERNAL_API_RATE_LIMIT", "600")
            .env("EXTERNAL_API_RATE_BURST", "5")
            .env("COURIER_CALLBACK_SECRET", SECRET)
            .env("COURIER_CALLBACK_ALLOW", "127.0.0.1")
            .sim(|sim| {
                sim.rate_limit_per_minute = 600;
                sim.rate_burst = 10;
            })
    };
    let first = builder().start().await;
    let second = builder().start_beside(&first).await;
    let couriers = Rc::new(vec![first, second]);
    for pair in couriers.iter() {
        assert_eq!(shared_state(pair).await, "shared");
    }

    let load_started = Instant::now();
    let load = Load::start(couriers.clone(), receiver.url("/hook"), "cluster");
    until(Duration::from_secs(20), "jobs are accepted before the kill", || async { load.accepted() >= 8 }).await;

    // The primary of courier's slot dies.
    cluster.nodes[primary].kill();
    let killed = Instant::now();
    // Sampled every 50 ms: when the replica says it is the primary, and when each courier,
    // having been degraded, is shared again.
    let (mut promoted, mut degraded, mut recovered) = (None, [false; 2], [None; 2]);
    while promoted.is_none() || recovered.iter().any(Option::is_none) {
        let waited = killed.elapsed();
        assert!(waited < Duration::from_secs(20), "after {waited:?}: promoted {promoted:?}, degraded {degraded:?}");
        if promoted.is_none() && cluster.nodes[replica].command(&["ROLE"]).is_some_and(|r| r.starts_with("master")) {
            promoted = Some(Instant::now());
        }
        for (i, pair) in couriers.iter().enumerate() {
            match shared_state(pair).await.as_str() {
                "degraded" => degraded[i] = true,
                "shared" if degraded[i] && recovered[i].is_none() => recovered[i] = Some(Instant::now()),
                _ => {}
            }
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = promoted.expect("promoted");
    let recovered: Vec<Instant> = recovered.into_iter().map(|at| at.expect("recovered")).collect();

    // The old primary comes back (empty; its nodes.conf kept) and the cluster makes it a
    // replica of its successor; with a replica again, jobs are accepted again.
    cluster.nodes[primary].restart();
    let rejoined = until(Duration::from_secs(20), "the old primary becomes a replica", || async {
        cluster.nodes[primary].is_replicating()
    })
    .await;
    let accepting =
        until(Duration::from_secs(10), "jobs are accepted again", || async { load.accepted_after(rejoined) }).await;
    let answers = load.finish().await;
    let load_ended = Instant::now();
    let load_took = load_ended - load_started;
    let received = couriers[0].sim.stats().received;

    // Every answer one a client can act on, every accepted job completed and called back.
    let verdict = verdict(&couriers, &receiver, SECRET, &answers, killed).await;

    // Sync requests were served through the failover: the longest wait from one 200 to the
    // next around the kill stays short (a call the cluster cannot take fails at once and
    // courier degrades; it is not held by the cluster connection's retries, which took 1.4 s
    // with the redis crate's default retry waits).
    let mut served: Vec<Instant> = answers.iter().filter(|a| a.sync && a.status == 200).map(|a| a.at).collect();
    served.sort();
    // The end of the load closes the last wait: sync requests must not stop being served.
    served.push(load_ended);
    let last_before = served.iter().rev().find(|at| **at < killed).copied().expect("a sync 200 before the kill");
    let sync_gap = served
        .iter()
        .filter(|at| **at >= last_before)
        .zip(served.iter().filter(|at| **at >= last_before).skip(1))
        .map(|(a, b)| *b - *a)
        .max()
        .expect("the load went on after the kill");
    assert!(sync_gap < Duration::from_secs(1), "no sync request was served for {sync_gap:?}");
    // New jobs refused (503, nothing accepted) from the kill on: while Redis was out, and then
    // while the new primary had no replica to acknowledge a job.
    let shared_again = recovered.iter().max().copied().expect("recovered");
    let refused = |from: Instant, to: Instant| {
        answers.iter().filter(|a| !a.sync && a.status == 503 && a.at >= from && a.at < to).count()
    };
    let (refused_out, refused_unreplicated) = (refused(killed, shared_again), refused(shared_again, accepting));

    // The upstream's limit held throughout.
    let stats = couriers[0].sim.stats();
    assert_eq!(stats.rate_limited_total, 0, "the upstream refused for its limit: {stats:?}");

    // Nothing of courier's ran on the old primary since it came back. Calls sent to it while
    // it still held its old slot map are refused by the node itself (MOVED, CLUSTERDOWN):
    // counted in `rejected_calls`, not run.
    let commands = cluster.nodes[primary].info("commandstats");
    let mut refused_by_old = 0;
    for line in commands.lines().filter(|l| COURIER_COMMANDS.iter().any(|c| l.starts_with(&format!("{c}:")))) {
        let field = |name: &str| -> u64 {
            let value = line.split([':', ',']).find_map(|kv| kv.strip_prefix(&format!("{name}=")));
            value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        assert_eq!(field("calls"), 0, "the demoted primary ran a command of courier's:\n{commands}");
        refused_by_old += field("rejected_calls");
    }

    for pair in Rc::try_unwrap(couriers).ok().expect("the load is over") {
        let logs = pair.stop().await;
        let lines = logs.lines();
        let down = lines.iter().position(|l| l["event"] == "shared_state_degraded");
        let up = lines.iter().rposition(|l| l["event"] == "shared_state_restored");
        assert!(down.is_some() && up > down, "courier was degraded by the kill and restored after it");
    }

    eprintln!(
        "cluster failover: replica promoted {:?} after the kill; couriers shared again {:?} after the kill; \
         longest wait between sync 200s around the kill {sync_gap:?}; \
         old primary rejoined as a replica {:?} after the kill, jobs accepted again {:?} after that; \
         jobs refused 503: {refused_out} until shared again, {refused_unreplicated} more until accepted again; \
         {} answers {:?}; \
         {} jobs accepted ({} before the kill), final {:?}, {} runs taken over; \
         {} callbacks for {} jobs ({} repeated); {} jobs answered 503 exist anyway; \
         {refused_by_old} calls refused by the old primary; upstream: {received} calls in {load_took:?} of load (budget 10/s, burst 5), 429s {}; test took {:?}",
        promoted - killed,
        recovered.iter().map(|at| *at - killed).collect::<Vec<_>>(),
        rejoined - killed,
        accepting - rejoined,
        answers.len(),
        verdict.tally,
        verdict.accepted,
        verdict.accepted_before_kill,
        verdict.by_status,
        verdict.takeovers,
        verdict.callbacks,
        verdict.called_back,
        verdict.repeated,
        verdict.refused_but_run,
        stats.rate_limited_total,
        test_started.elapsed(),
    );
    receiver.stop().await;
    drop(cluster);
}
