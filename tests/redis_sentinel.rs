//! Redis behind Sentinel, against real servers: a primary, a replica and three Sentinels on
//! loopback, two couriers finding the primary through the Sentinels, under sync load over the
//! shared budget and async jobs accepted only once the replica holds them
//! (`COURIER_REDIS_MIN_REPLICAS=1`) with callbacks. The primary is killed (SIGKILL): the couriers
//! follow the failover by themselves, every 202 reaches a final state and its signed callback
//! (a repeat counted), the upstream's limit is never exceeded, and the old primary, back as a
//! replica, never sees a command from courier.

mod support;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::receiver::Receiver;
use support::redis::RedisServer;
use support::sentinel::Sentinel;
use support::{read_answer, Pair, PairBuilder};

const MASTER: &str = "courier-m";
const SECRET: &str = "whsec_sentinel_7c1e";

/// Commands only a client of courier's kind sends to a primary: a restarted old primary that
/// shows any of them in its command statistics was written to or read by courier. (A replica
/// applies its primary's scripts as their effects, never as `EVAL`/`EVALSHA`, and the
/// Sentinels send none of these.)
const COURIER_COMMANDS: [&str; 7] = [
    "cmdstat_evalsha",
    "cmdstat_eval",
    "cmdstat_xreadgroup",
    "cmdstat_xautoclaim",
    "cmdstat_hmget",
    "cmdstat_get",
    "cmdstat_wait",
];

/// One answer of the load.
struct Outcome {
    at: Instant,
    sync: bool,
    status: u16,
    code: String,
    request_id: String,
}

/// Sends, until `stop`, every 50 ms a sync request to each courier in turn and every fourth
/// tick an async job (with its own request id); records every answer.
async fn load(couriers: Rc<Vec<Pair>>, hook: String, stop: Rc<Cell<bool>>, outcomes: Rc<RefCell<Vec<Outcome>>>) {
    let mut tick = actix_rt::time::interval(Duration::from_millis(50));
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while !stop.get() {
        tick.tick().await;
        n += 1;
        let (couriers, outcomes, hook) = (couriers.clone(), outcomes.clone(), hook.clone());
        tasks.push(actix_rt::spawn(async move {
            let pair = &couriers[n % couriers.len()];
            let sync = !n.is_multiple_of(4);
            let request_id = format!("sentinel-{n}");
            let body = match sync {
                true => json!({"data": {"input": request_id}}),
                false => json!({"data": {"input": request_id}, "options": {"async": true, "callback_url": hook}}),
            };
            let headers = [("x-request-id", request_id.as_str()), ("x-request-timeout", "2")];
            let answer = pair.process_with(body, &headers).await;
            let code = if answer.status.is_success() { String::new() } else { answer.error_code().to_owned() };
            outcomes.borrow_mut().push(Outcome {
                at: Instant::now(),
                sync,
                status: answer.status.as_u16(),
                code,
                request_id,
            });
        }));
    }
    for task in tasks {
        task.await.expect("load task");
    }
}

async fn shared_state(pair: &Pair) -> String {
    let Ok(mut response) = pair.http.get(pair.admin_url("/readyz")).send().await else { return String::new() };
    let body: Value = response.json().await.unwrap_or_default();
    body["checks"]["shared_state"].as_str().unwrap_or_default().to_owned()
}

/// Polls `check` every 50 ms until it holds, for at most `bound`; returns when it held.
async fn until<F: std::future::Future<Output = bool>>(
    bound: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> Instant {
    let started = Instant::now();
    loop {
        if check().await {
            return Instant::now();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts three Sentinels watching `primary` and waits (bounded) until each knows the replica
/// and the two other Sentinels (a failover needs them to agree).
async fn sentinels(primary: &RedisServer) -> Vec<Sentinel> {
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(MASTER, primary.port())).collect();
    until(Duration::from_secs(20), "the Sentinels know the replica and each other", || async {
        sentinels.iter().all(|s| {
            s.master_field(MASTER, "num-slaves").as_deref() == Some("1")
                && s.master_field(MASTER, "num-other-sentinels").as_deref() == Some("2")
        })
    })
    .await;
    sentinels
}

#[actix_rt::test]
async fn couriers_follow_a_sentinel_failover_without_losing_an_accepted_job() {
    let test_started = Instant::now();
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinels = sentinels(&primary).await;
    let addrs: Vec<String> = sentinels.iter().map(Sentinel::addr).collect();
    let receiver = Receiver::start(&[]).await;

    let builder = || {
        PairBuilder::default()
            // The host is never used: the Sentinels name the primary; the URL gives the database.
            .env("REDIS_URL", "redis://named-by-sentinel.invalid/0")
            .env("REDIS_SENTINELS", addrs.join(","))
            .env("REDIS_SENTINEL_MASTER", MASTER)
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

    let stop = Rc::new(Cell::new(false));
    let outcomes = Rc::new(RefCell::new(Vec::new()));
    let running = actix_rt::spawn(load(couriers.clone(), receiver.url("/hook"), stop.clone(), outcomes.clone()));
    actix_rt::time::sleep(Duration::from_secs(2)).await;

    // The primary dies.
    let old_port = primary.port();
    primary.kill();
    let killed = Instant::now();
    // Sampled every 50 ms: when the Sentinels name the replica, and when each courier, having
    // been degraded, is shared again.
    let (mut switched, mut degraded, mut recovered) = (None, [false; 2], [None; 2]);
    while switched.is_none() || recovered.iter().any(Option::is_none) {
        let waited = killed.elapsed();
        assert!(waited < Duration::from_secs(20), "after {waited:?}: switched {switched:?}, degraded {degraded:?}");
        if switched.is_none() && sentinels.iter().all(|s| s.primary_port(MASTER) == replica.port()) {
            switched = Some(Instant::now());
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
    let switched = switched.expect("switched");
    let recovered: Vec<Instant> = recovered.into_iter().map(|at| at.expect("recovered")).collect();

    // The old primary comes back (empty, as a primary) and the Sentinels make it a replica of
    // the new one; with a replica again, jobs are accepted again.
    primary.restart();
    let rejoined =
        until(Duration::from_secs(20), "the old primary becomes a replica", || async { primary.is_replicating() })
            .await;
    let accepting = until(Duration::from_secs(10), "jobs are accepted again", || async {
        outcomes.borrow().iter().any(|o| !o.sync && o.status == 202 && o.at > rejoined)
    })
    .await;
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    stop.set(true);
    running.await.expect("load");

    // Every answer was one a client can act on: sync 200 or 429 (the shared budget), async 202 or
    // 503 job_store_unavailable (nothing accepted).
    let outcomes = outcomes.take();
    let mut tally: BTreeMap<(bool, u16, String), usize> = BTreeMap::new();
    for o in &outcomes {
        *tally.entry((o.sync, o.status, o.code.clone())).or_default() += 1;
    }
    for ((sync, status, code), n) in &tally {
        let fine = if *sync {
            *status == 200 || *status == 429
        } else {
            *status == 202 || (*status == 503 && code == "job_store_unavailable")
        };
        assert!(fine, "{n} answers {status} {code} (sync: {sync}); all: {tally:?}");
    }

    // Every accepted job reaches a final state; runs repeated after the failover are counted.
    let accepted: Vec<&Outcome> = outcomes.iter().filter(|o| !o.sync && o.status == 202).collect();
    let accepted_before_kill = accepted.iter().filter(|o| o.at < killed).count();
    assert!(accepted_before_kill >= 5, "too few jobs accepted before the kill: {accepted_before_kill}");
    let mut takeovers = 0;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for o in &accepted {
        let url = couriers[0].url(&format!("/api/external/status/{}", o.request_id));
        let deadline = Instant::now() + Duration::from_secs(30);
        let doc = loop {
            let answer = read_answer(couriers[0].http.get(&url).send().await.expect("status")).await;
            assert_eq!(answer.status, 200, "an accepted job is known: {answer:?}");
            if matches!(answer.body["status"].as_str(), Some("completed" | "failed")) {
                break answer.body;
            }
            assert!(Instant::now() < deadline, "job {} is not final: {answer:?}", o.request_id);
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        };
        takeovers += doc["takeovers"].as_u64().unwrap_or(0);
        *by_status.entry(doc["status"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(by_status.get("completed").copied().unwrap_or(0), accepted.len(), "{by_status:?}");

    // Jobs answered 503 whose submit could not withdraw them (the primary died between the
    // write and the answer) may exist and run: counted, as the documentation says.
    let mut refused_but_run = 0;
    for o in outcomes.iter().filter(|o| !o.sync && o.status == 503) {
        let url = couriers[0].url(&format!("/api/external/status/{}", o.request_id));
        let answer = read_answer(couriers[0].http.get(&url).send().await.expect("status")).await;
        refused_but_run += usize::from(answer.status == 200);
    }

    // Every accepted job's callback arrives, signed; one may repeat when its delivery was
    // recorded on the old primary only (at least once), never more than once here.
    let accepted_ids: BTreeMap<&str, ()> = accepted.iter().map(|o| (o.request_id.as_str(), ())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let per_job = loop {
        let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
        for delivery in receiver.got() {
            assert!(delivery.signed_with(SECRET), "an unsigned callback");
            let id = delivery.json()["request_id"].as_str().unwrap_or_default().to_owned();
            *per_job.entry(id).or_default() += 1;
        }
        if accepted_ids.keys().all(|id| per_job.contains_key(*id)) {
            break per_job;
        }
        assert!(Instant::now() < deadline, "callbacks missing: {} of {} jobs", per_job.len(), accepted_ids.len());
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let repeated = per_job.values().filter(|n| **n > 1).count();
    assert!(per_job.values().all(|n| *n <= 2), "a callback came more than twice: {per_job:?}");

    // The upstream's limit held throughout.
    let stats = couriers[0].sim.stats();
    assert_eq!(stats.rate_limited_total, 0, "the upstream refused for its limit: {stats:?}");

    // Nothing of courier's reached the old primary since it came back.
    let commands = primary.info("commandstats");
    for command in COURIER_COMMANDS {
        assert!(!commands.contains(&format!("{command}:")), "the demoted primary got {command}:\n{commands}");
    }

    let mut changes = 0;
    for pair in Rc::try_unwrap(couriers).ok().expect("the load is over") {
        let logs = pair.stop().await;
        let lines = logs.lines();
        let position = |msg: &str| lines.iter().position(|l| l["event"] == msg);
        let (down, up) =
            (position("shared_state_degraded"), lines.iter().rposition(|l| l["event"] == "shared_state_restored"));
        assert!(down.is_some() && up > down, "courier was degraded by the kill and restored after it");
        let changed: Vec<&Value> = lines.iter().filter(|l| l["event"] == "redis_primary_changed").collect();
        assert!(!changed.is_empty(), "courier logged no change of primary");
        let to = format!("127.0.0.1:{}", replica.port());
        assert!(
            changed.iter().all(|l| l["to"] == to.as_str() && l["from"] == format!("127.0.0.1:{old_port}").as_str()),
            "{changed:?}"
        );
        changes += changed.len();
    }

    eprintln!(
        "sentinel failover: Sentinels switched {:?} after the kill; couriers shared again {:?} after the kill; \
         old primary rejoined as a replica {:?} after the kill, jobs accepted again {:?} after that; \
         {} answers {tally:?}; {} jobs accepted ({accepted_before_kill} before the kill), final {by_status:?}, \
         {takeovers} runs taken over; {} callbacks for {} jobs ({repeated} repeated); \
         {refused_but_run} jobs answered 503 exist anyway; \
         {changes} primary changes logged; upstream 429s {}; test took {:?}",
        switched - killed,
        recovered.iter().map(|at| *at - killed).collect::<Vec<_>>(),
        rejoined - killed,
        accepting - rejoined,
        outcomes.len(),
        accepted.len(),
        per_job.values().sum::<usize>(),
        per_job.len(),
        stats.rate_limited_total,
        test_started.elapsed(),
    );
    receiver.stop().await;
    drop(sentinels);
}
