use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::future::join_all;

use super::*;
use crate::shared::cache::{unix_ms_now, Record};

const MS: Duration = Duration::from_millis(1);

fn cache(ttl: Duration, max_bytes: u64, sie: Duration, swr: Duration) -> ResponseCache {
    let settings = CacheSettings { ttl, max_bytes, stale_if_error: sie, stale_while_revalidate: swr };
    ResponseCache::new(settings, &Arc::new(Metrics::new()), None)
}

fn key(n: u8) -> Key {
    Key::from_hex(&format!("{n:02x}").repeat(32)).unwrap()
}

#[actix_rt::test]
async fn freshness_follows_ttl_then_the_stale_windows() {
    let c = cache(Duration::from_secs(10), 1 << 20, Duration::from_secs(30), Duration::from_secs(5));
    assert!(matches!(c.lookup(&key(1), Instant::now()).await, Lookup::Miss));
    c.insert(key(1), Arc::new(Entry::new(b"{}", None))).await;
    let now = Instant::now();
    assert!(matches!(c.lookup(&key(1), now).await, Lookup::Fresh(_)));
    assert!(matches!(c.lookup(&key(1), now + Duration::from_secs(12)).await, Lookup::Revalidate(_)));
    let Lookup::Expired(entry) = c.lookup(&key(1), now + Duration::from_secs(20)).await else { panic!() };
    assert!(c.usable_if_error(&entry, now + Duration::from_secs(20)));
    assert!(!c.usable_if_error(&entry, now + Duration::from_secs(41)));
}

#[actix_rt::test]
async fn concurrent_loads_of_one_key_run_once_and_share_a_failure() {
    let c = Arc::new(cache(Duration::from_secs(10), 1 << 20, Duration::ZERO, Duration::ZERO));
    let runs = Arc::new(AtomicUsize::new(0));
    let attempt = |fail: bool| {
        let (c, runs) = (c.clone(), runs.clone());
        async move {
            c.load(key(2), None, async move {
                runs.fetch_add(1, Ordering::SeqCst);
                actix_rt::time::sleep(50 * MS).await;
                if fail {
                    Err("upstream down")
                } else {
                    Ok(Arc::new(Entry::new(b"1", None)))
                }
            })
            .await
        }
    };
    let failures = join_all((0..10).map(|_| attempt(true))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(failures.iter().all(|r| r.as_ref().is_err_and(|e| **e == "upstream down")));
    assert!(matches!(c.lookup(&key(2), Instant::now()).await, Lookup::Miss), "a failure is not stored");

    let answers = join_all((0..10).map(|_| attempt(false))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let fresh = answers.iter().filter(|r| r.as_ref().unwrap().1).count();
    assert_eq!(fresh, 1, "one caller loaded, nine were coalesced");
}

#[actix_rt::test]
async fn a_stale_entry_stays_until_replaced_and_a_newer_one_is_kept() {
    let c = cache(Duration::from_millis(50), 1 << 20, Duration::from_secs(60), Duration::ZERO);
    let old = Arc::new(Entry::new(b"\"old\"", None));
    c.insert(key(3), old.clone()).await;
    actix_rt::time::sleep(60 * MS).await;
    // A failed refresh leaves the old entry where it was, for stale-if-error.
    let failed = c.load(key(3), Some(&old), async { Err::<Arc<Entry>, _>("down") }).await;
    assert!(failed.is_err());
    assert!(matches!(c.lookup(&key(3), Instant::now()).await, Lookup::Expired(e) if Arc::ptr_eq(&e, &old)));
    let (entry, loaded) =
        c.load(key(3), Some(&old), async { Ok::<_, ()>(Arc::new(Entry::new(b"\"new\"", None))) }).await.unwrap();
    assert!(loaded);
    assert_eq!(&entry.result[..], b"\"new\"");
    // Someone still holding the old entry does not fetch again while the new one is fresh.
    let (kept, loaded) =
        c.load(key(3), Some(&old), async { Ok::<_, ()>(Arc::new(Entry::new(b"\"newer\"", None))) }).await.unwrap();
    assert!(!loaded);
    assert_eq!(&kept.result[..], b"\"new\"");
}

#[actix_rt::test]
async fn the_byte_bound_holds() {
    let metrics = Arc::new(Metrics::new());
    let settings = CacheSettings {
        ttl: Duration::from_secs(60),
        max_bytes: 64 * 1024,
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
    };
    let c = ResponseCache::new(settings, &metrics, None);
    let body = vec![b'x'; 1000];
    for n in 0..=255u8 {
        c.insert(key(n), Arc::new(Entry::new(&body, None))).await;
    }
    c.export(&metrics).await;
    assert!(metrics.cache_bytes.get() <= 64 * 1024, "{}", metrics.cache_bytes.get());
    assert!(metrics.cache_entries.get() > 30 && metrics.cache_entries.get() < 64);
    assert!(metrics.cache_evictions.with_label_values(&["size"]).get() > 150);
}

#[test]
fn a_record_carries_the_store_time_between_replicas() {
    let entry = Entry::new(b"[1]", Some("up-7".into()));
    let record = entry.to_record();
    assert!(unix_ms_now().abs_diff(record.stored_at_ms) < 1000);
    let seven_seconds_ago = Record { stored_at_ms: unix_ms_now() - 7_000, ..record };
    let there = Entry::from_record(seven_seconds_ago).unwrap();
    assert_eq!((&there.result[..], there.upstream_request_id.as_deref()), (&b"[1]"[..], Some("up-7")));
    assert_eq!(there.age(Instant::now()), 7);
    // A store time from the future (a clock ahead of ours) counts as now, never negative.
    let ahead = Record { stored_at_ms: unix_ms_now() + 60_000, ..entry.to_record() };
    assert_eq!(Entry::from_record(ahead).unwrap().age(Instant::now()), 0);
}

#[actix_rt::test]
async fn an_entry_leaves_when_its_windows_have_passed_since_it_was_stored_not_since_it_arrived() {
    let c = cache(Duration::from_millis(100), 1 << 20, Duration::from_millis(100), Duration::ZERO);
    let record = Entry::new(b"1", None).to_record();
    let old = Entry::from_record(Record { stored_at_ms: record.stored_at_ms - 150, ..record }).unwrap();
    c.insert(key(4), Arc::new(old)).await;
    assert!(matches!(c.lookup(&key(4), Instant::now()).await, Lookup::Expired(_)));
    actix_rt::time::sleep(80 * MS).await;
    assert!(matches!(c.lookup(&key(4), Instant::now()).await, Lookup::Miss), "gone 200 ms after it was stored");
}

#[actix_rt::test]
async fn without_a_second_level_purges_are_local() {
    let c = cache(Duration::from_secs(10), 1 << 20, Duration::ZERO, Duration::ZERO);
    c.insert(key(5), Arc::new(Entry::new(b"1", None))).await;
    assert!(c.purge(&key(5)).await);
    assert!(!c.purge(&key(5)).await);
    assert_eq!(c.purge_all().await, None);
}

#[test]
fn an_entry_keeps_its_store_time_exactly_before_and_after_the_clock_origin() {
    let now = Instant::now();
    for stored in [now.checked_sub(Duration::from_secs(3600)), Some(now), Some(now + Duration::from_secs(5))] {
        let Some(stored) = stored else { continue };
        let entry = Entry::stored_at(Bytes::from_static(b"1"), None, stored);
        assert_eq!(entry.stored(), stored);
    }
}
