//! A fleet that knows its size: replicas count themselves with a heartbeat in Redis, and the
//! live count (not `COURIER_REPLICAS`) sizes the share each falls back to while Redis fails.
//! Scaling from two replicas to five and back under load keeps the upstream's limit (the
//! simulator never answers 429) and uses it (at least 90% of it over a measured interval once
//! the count has settled), also while Redis is down after the scale-down.

mod support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use courier::simulator::{SimConfig, Simulator};
use serde_json::{json, Value};
use support::process::{signal, wait_exit, Serving};
use support::redis::RedisServer;
use support::{read_answer, PairBuilder};

/// The upstream's limit, per minute, enforced by the simulator and configured in courier.
const LIMIT_PER_MINUTE: u32 = 600;
const PER_SECOND: f64 = LIMIT_PER_MINUTE as f64 / 60.0;
/// Requests offered per second: three times the limit, spread over the live replicas.
const OFFERED_PER_SECOND: u32 = 30;
/// How long each measured interval lasts once the count has settled.
const MEASURE: Duration = Duration::from_secs(4);
/// The share of the limit the upstream must get over a measured interval.
const USED_AT_LEAST: f64 = 0.9;

/// A `courier serve` of the fleet; `COURIER_REPLICAS` is left unset (1), so only the live
/// count can make the fallback shares add up to the limit.
fn env(sim: &Simulator, redis: &RedisServer) -> Vec<(&'static str, String)> {
    let mut env = support::process::sim_env(sim);
    env.extend([
        ("EXTERNAL_API_RATE_LIMIT", LIMIT_PER_MINUTE.to_string()),
        ("EXTERNAL_API_RATE_BURST", "5".into()),
        ("EXTERNAL_API_CACHE_TTL", "0".into()),
        ("REDIS_URL", redis.url()),
        ("COURIER_SHUTDOWN_GRACE", "5".into()),
    ]);
    env
}

/// Starts `n` replicas at once, off the test's thread (their start is read from their logs).
async fn start(env: &[(&'static str, String)], n: usize) -> Vec<Serving> {
    let starts: Vec<_> = (0..n)
        .map(|_| {
            let env = env.to_vec();
            actix_rt::task::spawn_blocking(move || Serving::start(&env))
        })
        .collect();
    let mut out = Vec::new();
    for started in starts {
        out.push(started.await.unwrap());
    }
    out
}

/// Answers of the load, by status (0: no answer, e.g. the replica was killed).
#[derive(Default, Debug)]
struct Tally {
    by_status: std::collections::BTreeMap<u16, u64>,
    bad: Vec<Value>,
}

/// Offers [`OFFERED_PER_SECOND`] requests per second, round-robin over the gateways in `live`,
/// each with a 2 s deadline, until `stop` is set; waits for every answer.
async fn load(live: Rc<RefCell<Vec<String>>>, stop: Rc<Cell<bool>>) -> Tally {
    let http = Rc::new(support::http_client(Duration::from_secs(10)));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let mut tick = actix_rt::time::interval(Duration::from_secs(1) / OFFERED_PER_SECOND);
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while !stop.get() {
        tick.tick().await;
        n += 1;
        let target = {
            let live = live.borrow();
            format!("http://{}/api/external/process", live[n % live.len()])
        };
        let (http, tally) = (http.clone(), tally.clone());
        tasks.push(actix_rt::spawn(async move {
            let request = json!({"data": {"input": format!("fleet {n}")}});
            let sent = http.post(&target).insert_header(("x-request-timeout", "2")).send_json(&request).await;
            let answer = match sent {
                Ok(response) => Some(read_answer(response).await),
                Err(_) => None,
            };
            let mut tally = tally.borrow_mut();
            match answer {
                Some(answer) => {
                    let status = answer.status.as_u16();
                    *tally.by_status.entry(status).or_default() += 1;
                    if status != 200 && status != 429 {
                        tally.bad.push(answer.body);
                    }
                }
                None => *tally.by_status.entry(0).or_default() += 1,
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Rc::try_unwrap(tally).unwrap().into_inner()
}

/// A replica's `/admin/state`.
async fn state(http: &awc::Client, admin: &str) -> Value {
    try_state(http, admin).await.unwrap_or_else(|e| panic!("/admin/state of {admin}: {e}"))
}

/// A replica's `/admin/state`, or why it could not be had (`Connect(Disconnected)` was seen once
/// in a CI rehearsal, from a pooled connection the admin listener closed as it was reused).
async fn try_state(http: &awc::Client, admin: &str) -> Result<Value, String> {
    let mut response = http.get(format!("http://{admin}/admin/state")).send().await.map_err(|e| format!("{e:?}"))?;
    response.json().limit(1 << 20).await.map_err(|e| format!("{e:?}"))
}

/// Waits (bounded by `bound`) until every replica's `/admin/state` satisfies `check`; returns
/// how long that took.
async fn until_all(
    http: &awc::Client,
    admins: &[String],
    bound: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    'poll: loop {
        for admin in admins {
            // A failed poll is polled again, within the same bound.
            let state = try_state(http, admin).await.unwrap_or_else(Value::String);
            if !check(&state) {
                assert!(
                    started.elapsed() < bound,
                    "{what}: not within {bound:?}: {}",
                    state.get("fleet").unwrap_or(&state)
                );
                actix_rt::time::sleep(Duration::from_millis(50)).await;
                continue 'poll;
            }
        }
        return started.elapsed();
    }
}

/// The replica counts `n` replicas and holds an upstream token (it serves).
fn counts(n: u64) -> impl Fn(&Value) -> bool {
    move |state| state["fleet"]["replicas"] == n && state["token"]["ready"] == true
}

/// The upstream's successful answers over [`MEASURE`], as a share of its limit.
async fn used_share(sim: &Simulator) -> f64 {
    let (before, started) = (sim.stats().process.ok, Instant::now());
    actix_rt::time::sleep(MEASURE).await;
    let got = (sim.stats().process.ok - before) as f64;
    got / (PER_SECOND * started.elapsed().as_secs_f64())
}

fn admins(replicas: &[Serving]) -> Vec<String> {
    replicas.iter().map(|r| r.admin.clone()).collect()
}

#[actix_rt::test]
async fn scaling_from_two_to_five_and_back_keeps_the_limit_and_uses_it() {
    let mut redis = RedisServer::start();
    let sim_config = SimConfig { rate_limit_per_minute: LIMIT_PER_MINUTE, rate_burst: 10, ..SimConfig::default() };
    let sim = Simulator::start(sim_config).await.unwrap();
    let env = env(&sim, &redis);
    let http = support::http_client(Duration::from_secs(10));
    let started = Instant::now();

    let mut replicas = start(&env, 2).await;
    until_all(&http, &admins(&replicas), Duration::from_secs(5), "two replicas count two", counts(2)).await;
    let mut response = http.get(format!("http://{}/metrics", replicas[0].admin)).send().await.unwrap();
    let metrics = response.body().limit(4 << 20).await.unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    for op in ["fleet_heartbeat", "fleet_leave"] {
        let series = format!("courier_redis_errors_total{{operation=\"{op}\"}} 0");
        assert!(metrics.lines().any(|l| l == series), "{series} missing");
    }
    assert_eq!(support::metric_value(&metrics, "courier_fleet_replicas", &[]), 2.0);

    let live = Rc::new(RefCell::new(replicas.iter().map(|r| r.gateway.clone()).collect::<Vec<_>>()));
    let stop = Rc::new(Cell::new(false));
    let run = actix_rt::spawn(load(live.clone(), stop.clone()));
    let at_two = used_share(&sim).await;

    // Scale out to five under load; the new ones get traffic once they serve.
    replicas.extend(start(&env, 3).await);
    until_all(&http, &admins(&replicas), Duration::from_secs(5), "five replicas count five", counts(5)).await;
    *live.borrow_mut() = replicas.iter().map(|r| r.gateway.clone()).collect();
    let at_five = used_share(&sim).await;

    // Scale in to two: two replicas stop gracefully and leave at once, one is killed and
    // drops out when its heartbeat expires.
    let stopping: Vec<Serving> = replicas.drain(2..).collect();
    *live.borrow_mut() = replicas.iter().map(|r| r.gateway.clone()).collect();
    let mut stopping = stopping.into_iter();
    let (mut a, mut b, mut killed) = (stopping.next().unwrap(), stopping.next().unwrap(), stopping.next().unwrap());
    signal(&a.child, libc::SIGTERM);
    signal(&b.child, libc::SIGTERM);
    let left = until_all(&http, &admins(&replicas), Duration::from_secs(5), "two left at once", counts(3)).await;
    assert!(
        left < Duration::from_millis(2500),
        "a graceful stop is counted at the next heartbeat, not after the TTL: {left:?}"
    );
    signal(&killed.child, libc::SIGKILL);
    let expired = until_all(&http, &admins(&replicas), Duration::from_secs(6), "a killed one expires", counts(2)).await;
    let exits = actix_rt::task::spawn_blocking(move || {
        for replica in [&mut a, &mut b, &mut killed] {
            wait_exit(&mut replica.child);
        }
    });
    let at_two_again = used_share(&sim).await;

    // Redis lost: each of the two falls back to half of the limit (the live count, not
    // COURIER_REPLICAS, which is unset: 1), so together they keep it and use it.
    redis.kill();
    until_all(&http, &admins(&replicas), Duration::from_secs(5), "degraded", |s| s["shared_state"] == "degraded").await;
    let degraded = used_share(&sim).await;
    for admin in admins(&replicas) {
        assert_eq!(state(&http, &admin).await["fleet"]["replicas"], 2, "the last count heard stays in force");
    }

    stop.set(true);
    let tally = run.await.unwrap();
    exits.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    eprintln!(
        "used: {:.0}% at two, {:.0}% at five, {:.0}% at two again, {:.0}% degraded; graceful stop counted in \
         {left:?}, a killed replica in {expired:?}; {} upstream requests in {elapsed:.1} s; 429 from the upstream: {}; \
         upstream answers: {:?}; courier's answers: {:?}",
        at_two * 100.0,
        at_five * 100.0,
        at_two_again * 100.0,
        degraded * 100.0,
        stats.process.total,
        stats.rate_limited_total,
        stats.process,
        tally.by_status,
    );
    assert!(tally.bad.is_empty(), "only 200 and 429 (courier's own refusals): {:?}", tally.bad);
    assert_eq!(stats.rate_limited_total, 0, "never over the limit: {stats:?}");
    assert!(stats.process.total as f64 <= 10.0 + PER_SECOND * elapsed, "{stats:?} in {elapsed:.1} s");
    for (share, when) in
        [(at_two, "at two"), (at_five, "at five"), (at_two_again, "at two again"), (degraded, "degraded")]
    {
        assert!(share >= USED_AT_LEAST, "{when}: the upstream got {:.0}% of its limit", share * 100.0);
    }

    // The first replica logged each size it heard, from the initial 1 up to five and back.
    let sizes: Vec<u64> = replicas[0]
        .logs
        .try_iter()
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|line| line["event"] == "fleet_size_changed")
        .map(|line| line["to"].as_u64().unwrap())
        .collect();
    assert!(sizes.contains(&5) && sizes.last() == Some(&2), "{sizes:?}");
}

#[actix_rt::test]
async fn a_replica_shows_its_place_and_a_stopped_one_leaves_the_count_at_once() {
    let redis = RedisServer::start();
    let first = PairBuilder::default().env("REDIS_URL", redis.url()).start().await;
    let second = PairBuilder::default().env("REDIS_URL", redis.url()).start_beside(&first).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let fleet = loop {
        let fleet = first.admin_get("/admin/state").await.body["fleet"].clone();
        if fleet["replicas"] == 2 {
            break fleet;
        }
        assert!(Instant::now() < deadline, "{fleet}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let other = second.admin_get("/admin/state").await.body["fleet"].clone();
    let (id, other_id) = (fleet["id"].as_str().unwrap(), other["id"].as_str().unwrap());
    assert_ne!(id, other_id, "each replica has its own id");
    assert!(id.len() <= 57 && id.rsplit_once('-').unwrap().1.len() == 16, "{id}");
    let ago = fleet["last_seen_seconds_ago"].as_f64().unwrap();
    assert!((0.0..2.0).contains(&ago), "the heartbeat answers every second: {fleet}");
    assert_eq!(first.metric("courier_fleet_replicas", &[]).await, 2.0);

    // The other replica counts one less at its next heartbeat, well before the TTL would
    // have dropped the stopped one.
    let stopped_at = Instant::now();
    let stopping = actix_rt::spawn(second.stop());
    loop {
        if first.admin_get("/admin/state").await.body["fleet"]["replicas"] == 1 {
            break;
        }
        assert!(stopped_at.elapsed() < Duration::from_millis(2500), "left at once, not after the TTL");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    stopping.await.unwrap();
    let logs = first.stop().await;
    let changes: Vec<(u64, u64)> = logs
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "fleet_size_changed")
        .map(|l| (l["from"].as_u64().unwrap(), l["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(changes.last(), Some(&(2, 1)), "{changes:?}");
}

#[actix_rt::test]
async fn without_redis_a_replica_is_alone() {
    let pair = PairBuilder::default().start().await;
    assert_eq!(pair.admin_get("/admin/state").await.body["fleet"], Value::Null);
    assert_eq!(pair.metric("courier_fleet_replicas", &[]).await, 1.0);
    pair.stop().await;
}
