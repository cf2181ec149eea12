//! The response cache's second level against a real Redis: two caches (two "replicas") share
//! one `SharedRedis`; answers, their age and TTL cross between them, purges reach Redis, and a
//! dead Redis costs a lookup at most the short read bound and heals by itself.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::cache::{CacheSettings, Entry, Lookup, ResponseCache};
use courier::key::Key;
use courier::metrics::Metrics;
use courier::shared::cache::{unix_ms_now, Purged, Record, SharedCache};
use courier::shared::SharedRedis;
use secrecy::SecretString;
use support::redis::RedisServer;

const TTL: Duration = Duration::from_secs(60);
const SWR: Duration = Duration::from_secs(30);
const STALE_IF_ERROR: Duration = Duration::from_secs(120);
/// TTL plus the longer window: how long any replica may serve an answer.
const KEEP: Duration = Duration::from_secs(180);

struct Fleet {
    redis: Arc<SharedRedis>,
    metrics: Arc<Metrics>,
    /// A plain connection of the test's own, to look at Redis without counting reads.
    probe: redis::aio::MultiplexedConnection,
    url: String,
}

impl Fleet {
    async fn start(server: &RedisServer) -> Fleet {
        let metrics = Arc::new(Metrics::new());
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let url = server.url();
        let redis = SharedRedis::connect(
            &SecretString::from(url.clone()),
            "courier",
            Duration::from_secs(2),
            metrics.clone(),
            &log,
        )
        .await
        .expect("connect to the test Redis");
        let probe = connect_probe(&url).await;
        Fleet { redis: Arc::new(redis), metrics, probe, url }
    }

    /// A new replica: an empty first level on the shared Redis.
    fn replica(&self) -> ResponseCache {
        let settings =
            CacheSettings { ttl: TTL, max_bytes: 1 << 20, stale_if_error: STALE_IF_ERROR, stale_while_revalidate: SWR };
        ResponseCache::new(settings, &self.metrics, Some(self.redis.clone()))
    }

    fn l2(&self) -> SharedCache {
        SharedCache::new(self.redis.clone(), &self.metrics)
    }

    fn reads(&self, result: &str) -> u64 {
        self.metrics.cache_l2_reads.with_label_values(&[result]).get()
    }

    async fn exists(&mut self, name: &str) -> bool {
        redis::cmd("EXISTS").arg(name).query_async::<u64>(&mut self.probe).await.expect("probe EXISTS") == 1
    }

    /// Waits (bounded) until the background write of `key` has reached Redis.
    async fn until_shared(&mut self, key: &Key) {
        let name = self.l2().name(key);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.exists(&name).await {
            assert!(Instant::now() < deadline, "{key:?} never reached Redis");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn connect_probe(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("a valid URL");
    client.get_multiplexed_async_connection().await.expect("probe connection")
}

fn key(n: u16) -> Key {
    Key::from_hex(&format!("{n:04x}").repeat(16)).unwrap()
}

/// Loads `key` on `cache` as if the upstream answered `result` with `upstream_id`.
async fn load(cache: &ResponseCache, key: Key, result: &[u8], upstream_id: &str) -> (Arc<Entry>, bool) {
    let entry = Arc::new(Entry::new(result, Some(upstream_id.into())));
    cache.load(key, None, async move { Ok::<_, ()>(entry) }).await.expect("the load succeeds")
}

/// A record stored `ago` on another replica.
fn record_from(ago: Duration, result: &[u8]) -> Record {
    Record {
        stored_at_ms: unix_ms_now() - ago.as_millis() as u64,
        upstream_request_id: Some("up-old".into()),
        result: result.to_vec().into(),
    }
}

#[actix_rt::test]
async fn an_answer_loaded_on_one_replica_is_a_fresh_hit_on_another() {
    let server = RedisServer::start();
    let mut fleet = Fleet::start(&server).await;
    let (a, b) = (fleet.replica(), fleet.replica());

    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Miss));
    assert_eq!(fleet.reads("miss"), 1);
    let (stored, loaded) = load(&a, key(1), br#"{"answer":42}"#, "up-1").await;
    assert!(loaded);
    fleet.until_shared(&key(1)).await;

    let Lookup::Fresh(there) = b.lookup(&key(1), Instant::now()).await else { panic!("not a fresh hit on B") };
    assert_eq!(&there.result[..], br#"{"answer":42}"#);
    assert_eq!(there.upstream_request_id.as_deref(), Some("up-1"));
    let skew = there.stored().max(stored.stored()) - there.stored().min(stored.stored());
    assert!(skew < Duration::from_millis(50), "B dates the answer from A's store ({skew:?} apart)");
    assert_eq!(fleet.reads("hit"), 1);

    // Now B has it in its first level: no second read.
    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Fresh(_)));
    assert_eq!(fleet.reads("hit"), 1);

    // Redis drops it when no replica could serve it any more.
    let name = fleet.l2().name(&key(1));
    assert_eq!(name, format!("{{courier}}:cache:{}", key(1).hex()));
    let pttl: i64 = redis::cmd("PTTL").arg(&name).query_async(&mut fleet.probe).await.unwrap();
    assert!(pttl > (KEEP - Duration::from_secs(5)).as_millis() as i64 && pttl <= KEEP.as_millis() as i64, "{pttl}");
}

#[actix_rt::test]
async fn age_and_freshness_count_from_the_original_store() {
    let server = RedisServer::start();
    let fleet = Fleet::start(&server).await;
    let (l2, b) = (fleet.l2(), fleet.replica());
    let write = |n: u16, ago: Duration| {
        let l2 = &l2;
        async move { l2.write(&key(n), &record_from(ago, b"\"x\""), Duration::from_secs(10)).await.unwrap() }
    };
    // 7.5 s: the record's store time is in whole milliseconds, so an age of exactly 7 s could
    // read as 6.999 s and show as 6.
    write(1, Duration::from_millis(7_500)).await;
    write(2, TTL + Duration::from_secs(10)).await;
    write(3, TTL + Duration::from_secs(40)).await;
    write(4, KEEP + Duration::from_secs(10)).await;

    let now = Instant::now();
    let Lookup::Fresh(fresh) = b.lookup(&key(1), now).await else { panic!("7 s old: fresh") };
    assert_eq!(fresh.age(now), 7);
    assert_eq!(fresh.upstream_request_id.as_deref(), Some("up-old"));
    assert!(matches!(b.lookup(&key(2), now).await, Lookup::Revalidate(_)), "past the TTL, within SWR");
    let Lookup::Expired(expired) = b.lookup(&key(3), now).await else { panic!("past SWR: expired") };
    assert!(b.usable_if_error(&expired, now), "still within stale-if-error");
    assert!(matches!(b.lookup(&key(4), now).await, Lookup::Miss), "older than any window: not served");
}

#[actix_rt::test]
async fn a_newer_answer_on_the_second_level_replaces_a_stale_one_here() {
    let server = RedisServer::start();
    let fleet = Fleet::start(&server).await;
    let (l2, b) = (fleet.l2(), fleet.replica());
    l2.write(&key(1), &record_from(TTL + Duration::from_secs(5), b"\"old\""), KEEP).await.unwrap();
    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Revalidate(e) if &e.result[..] == b"\"old\""));

    // Another replica refreshed it.
    l2.write(&key(1), &record_from(Duration::ZERO, b"\"new\""), KEEP).await.unwrap();
    let Lookup::Fresh(entry) = b.lookup(&key(1), Instant::now()).await else { panic!("the refresh is a hit") };
    assert_eq!(&entry.result[..], b"\"new\"");
    assert_eq!(fleet.reads("hit"), 2);
}

#[actix_rt::test]
async fn purges_remove_answers_from_the_second_level_for_every_replica() {
    let server = RedisServer::start();
    let mut fleet = Fleet::start(&server).await;
    let (a, b) = (fleet.replica(), fleet.replica());
    for n in 1..=3 {
        load(&a, key(n), b"1", "up").await;
        fleet.until_shared(&key(n)).await;
    }
    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Fresh(_)));

    assert!(a.purge(&key(1)).await);
    assert!(!fleet.exists(&fleet.l2().name(&key(1))).await);
    assert!(matches!(fleet.replica().lookup(&key(1), Instant::now()).await, Lookup::Miss), "gone for a new replica");
    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Fresh(_)), "B's first level keeps its copy");
    assert!(b.purge(&key(1)).await);
    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Miss));
    assert!(!a.purge(&key(1)).await, "nothing left anywhere");

    // Purge everything: more keys than one SCAN step, and nothing outside the cache's keys.
    let l2 = fleet.l2();
    for n in 100..1300 {
        l2.write(&key(n), &record_from(Duration::ZERO, b"2"), KEEP).await.unwrap();
    }
    let _: () = redis::cmd("SET").arg("{courier}:job:keep-me").arg("1").query_async(&mut fleet.probe).await.unwrap();
    assert_eq!(a.purge_all().await, Some(Purged { removed: 1202, complete: true }));
    let b2 = fleet.replica();
    for n in [2, 3, 100, 1299] {
        assert!(matches!(b2.lookup(&key(n), Instant::now()).await, Lookup::Miss), "{n}");
    }
    assert!(fleet.exists("{courier}:job:keep-me").await);
}

#[actix_rt::test]
async fn a_dead_redis_costs_a_lookup_at_most_the_short_bound_and_sharing_resumes_by_itself() {
    let mut server = RedisServer::start();
    let fleet = Fleet::start(&server).await;
    let (a, b) = (fleet.replica(), fleet.replica());

    // Frozen: the read is cut at the short bound (50 ms), far below the 2 s shared timeout.
    server.pause();
    let started = Instant::now();
    assert!(matches!(b.lookup(&key(1), Instant::now()).await, Lookup::Miss));
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    // Degraded now: Redis is not asked, the lookup costs nothing.
    let started = Instant::now();
    assert!(matches!(b.lookup(&key(2), Instant::now()).await, Lookup::Miss));
    assert!(started.elapsed() < Duration::from_millis(20), "{:?}", started.elapsed());
    assert!(!fleet.redis.is_up());
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fleet.redis.is_up() {
        assert!(Instant::now() < deadline, "did not recover from the pause");
        b.lookup(&key(3), Instant::now()).await;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    // Dead: misses at once, loads still work on the first level alone.
    server.kill();
    let failures = fleet.metrics.redis_errors.with_label_values(&["cache_get"]).get();
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in 10..20 {
        let started = Instant::now();
        assert!(matches!(b.lookup(&key(n), Instant::now()).await, Lookup::Miss));
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        let (_, loaded) = load(&b, key(n), b"3", "up").await;
        assert!(loaded);
        assert!(matches!(b.lookup(&key(n), Instant::now()).await, Lookup::Fresh(_)));
        assert!(Instant::now() < deadline);
    }
    assert!(fleet.reads("error") >= 11, "{}", fleet.reads("error"));
    assert!(fleet.metrics.redis_errors.with_label_values(&["cache_get"]).get() > failures, "a real failure");
    assert!(!fleet.redis.is_up());

    // Back (empty, same port): sharing resumes within a couple of seconds, without help.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 100;
    loop {
        load(&a, key(n), b"4", "up").await;
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        if matches!(b.lookup(&key(n), Instant::now()).await, Lookup::Fresh(_)) {
            break;
        }
        assert!(Instant::now() < deadline, "sharing did not resume");
        n += 1;
    }
    assert!(fleet.redis.is_up());
    let mut probe = connect_probe(&fleet.url).await;
    let name = fleet.l2().name(&key(n));
    assert_eq!(redis::cmd("EXISTS").arg(name).query_async::<u64>(&mut probe).await.unwrap(), 1);
}
