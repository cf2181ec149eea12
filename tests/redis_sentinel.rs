//! Redis behind Sentinel, against real servers: a primary, a replica and three Sentinels on
//! loopback, two couriers finding the primary through the Sentinels, under sync load over the
//! shared budget and async jobs accepted only once the replica holds them
//! (`COURIER_REDIS_MIN_REPLICAS=1`) with callbacks. The primary is killed (SIGKILL): the couriers
//! follow the failover by themselves, every 202 reaches a final state and its signed callback
//! (a repeat counted), the upstream's limit is never exceeded, and the old primary, back as a
//! replica, never sees a command from courier. Sentinels that ask for a password get theirs;
//! Sentinels serving TLS are asked over TLS.

mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::failover::{shared_state, until, verdict, Load, COURIER_COMMANDS};
use support::receiver::Receiver;
use support::redis::{refused_start, RedisServer, TlsFiles};
use support::sentinel::Sentinel;
use support::PairBuilder;

const MASTER: &str = "courier-m";
const SECRET: &str = "whsec_sentinel_7c1e";

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

    let load = Load::start(couriers.clone(), receiver.url("/hook"), "sentinel");
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
    // Sentinel's own pace, not courier's: it asks a replica for INFO every 10 s, converts a
    // returning old primary only once it has reported itself a primary for 8 s (two INFOs
    // apart), and the new primary delays the full sync by 5 s (`repl-diskless-sync-delay`): up
    // to ~26 s. A CI rehearsal once took more than 20.
    let rejoined =
        until(Duration::from_secs(40), "the old primary becomes a replica", || async { primary.is_replicating() })
            .await;
    let accepting =
        until(Duration::from_secs(10), "jobs are accepted again", || async { load.accepted_after(rejoined) }).await;
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let answers = load.finish().await;

    // Every answer one a client can act on, every accepted job completed and called back.
    let verdict = verdict(&couriers, &receiver, SECRET, &answers, killed).await;

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
         {} answers {:?}; {} jobs accepted ({} before the kill), final {:?}, \
         {} runs taken over; {} callbacks for {} jobs ({} repeated); \
         {} jobs answered 503 exist anyway; \
         {changes} primary changes logged; upstream 429s {}; test took {:?}",
        switched - killed,
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
    drop(sentinels);
}

/// Sentinels that ask for a password (`requirepass` in sentinel.conf) get their own, not the data
/// nodes'; without it, or with a wrong one, courier does not start, with one line naming the
/// Sentinel and never the password.
#[actix_rt::test]
async fn sentinels_that_ask_for_a_password_get_their_own() {
    const SENTINEL_PASSWORD: &str = "sentinel-pw-51c2";
    const WRONG: &str = "not-the-sentinel-pw";
    let primary = RedisServer::start();
    let sentinel = Sentinel::start_with(MASTER, primary.port(), &format!("requirepass {SENTINEL_PASSWORD}\n"), None);
    let addr = sentinel.addr();
    let url = "redis://named-by-sentinel.invalid/0";
    let (sentinels, master) = (("REDIS_SENTINELS", addr.as_str()), ("REDIS_SENTINEL_MASTER", MASTER));
    let prefix = format!("courier: cannot start: REDIS_SENTINELS: no Sentinel named a working primary ({addr}: ");

    let without = refused_start(url, &[sentinels, master], &[SENTINEL_PASSWORD]);
    assert_eq!(
        without,
        format!("{prefix}the Sentinel requires a password and REDIS_SENTINEL_PASSWORD is not set (NOAUTH))")
    );
    let wrong =
        refused_start(url, &[sentinels, master, ("REDIS_SENTINEL_PASSWORD", WRONG)], &[SENTINEL_PASSWORD, WRONG]);
    let refused = "the Sentinel refused REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD (WRONGPASS))";
    assert_eq!(wrong, format!("{prefix}{refused}"));

    let with_password = [sentinels, master, ("REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD)];
    let logs = served_through(url, &with_password, primary.port()).await;
    assert!(!logs.text().contains(SENTINEL_PASSWORD));
}

/// Sentinels serving TLS only (`REDIS_SENTINEL_TLS=true`): asked with `REDIS_URL`'s
/// (`rediss://`) CA, as the data node is; asked in plain TCP they answer nothing, and courier
/// does not start, saying so.
#[actix_rt::test]
async fn sentinels_serving_tls_are_asked_over_tls() {
    let pki = support::tls::Pki::new("sentinel-tls");
    let (ca, ca_file) = pki.ca("ca");
    let server = pki.for_names("redis", &ca, &["localhost", "127.0.0.1"]);
    let files = TlsFiles { cert: server.cert, key: server.key, client_ca: ca_file.clone(), auth_clients: false };
    let primary = RedisServer::start_tls(&files, &[]);
    let sentinel = Sentinel::start_with(MASTER, primary.port(), "", Some(&files));
    let addr = sentinel.addr();
    let url = "rediss://named-by-sentinel.invalid/0";
    let ca_path = ca_file.display().to_string();
    let settings = [("REDIS_SENTINELS", addr.as_str()), ("REDIS_SENTINEL_MASTER", MASTER), ("REDIS_CA_FILE", &ca_path)];

    let plain = refused_start(url, &settings, &[]);
    let prefix = format!("courier: cannot start: REDIS_SENTINELS: no Sentinel named a working primary ({addr}: ");
    assert!(plain.starts_with(&prefix), "{plain}");

    let over_tls = [settings[0], settings[1], settings[2], ("REDIS_SENTINEL_TLS", "true")];
    served_through(url, &over_tls, primary.port()).await;
}

/// A courier with `REDIS_URL` and `settings` shares state through the primary the Sentinels name
/// (on `primary_port`) and serves a request; its logs.
async fn served_through(url: &str, settings: &[(&str, &str)], primary_port: u16) -> courier::logging::LogCapture {
    let mut builder = PairBuilder::default().env("REDIS_URL", url);
    for (name, value) in settings {
        builder = builder.env(name, *value);
    }
    let pair = builder.start().await;
    assert_eq!(shared_state(&pair).await, "shared");
    assert_eq!(pair.process(support::body("through the primary the Sentinels named")).await.status, 200);
    let logs = pair.stop().await;
    let found = logs.lines().into_iter().find(|l| l["event"] == "redis_primary_found").expect("primary found");
    assert_eq!(found["primary"], format!("127.0.0.1:{primary_port}"));
    logs
}
