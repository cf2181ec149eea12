use bytes::Bytes;

use super::*;
use crate::cache::entry::ENTRY_OVERHEAD;
use crate::metrics::Metrics;

const KEEP: Duration = Duration::from_secs(60);

fn key(n: u16) -> Key {
    Key::from_hex(&format!("{n:04x}").repeat(16)).unwrap()
}

fn entry(size: usize, stored: Instant) -> Arc<Entry> {
    Arc::new(Entry::stored_at(Bytes::from(vec![b'1'; size]), None, stored))
}

fn evicted(metrics: &Metrics, cause: &str) -> u64 {
    metrics.cache_evictions.with_label_values(&[cause]).get()
}

#[test]
fn an_entry_weighs_its_answer_its_upstream_id_and_the_measured_overhead() {
    let plain = Entry::new(&[b'1'; 300], None);
    assert_eq!(plain.weight() as usize, 300 + ENTRY_OVERHEAD);
    let with_id = Entry::new(&[b'1'; 300], Some("up_0123456789abcdef0123456789".into()));
    assert_eq!(with_id.weight() as usize, 300 + 29 + ENTRY_OVERHEAD);
    assert_eq!(Entry::new(b"", None).weight() as usize, ENTRY_OVERHEAD, "an empty answer still costs its bookkeeping");
}

#[actix_rt::test]
async fn the_byte_bound_is_kept_by_weight_and_what_leaves_is_counted_as_size() {
    let metrics = Metrics::new();
    let weight = u64::from(entry(500, Instant::now()).weight());
    let cache = answers(10 * weight, KEEP, &metrics.cache_evictions);
    for n in 0..40 {
        cache.insert(key(n), entry(500, Instant::now())).await;
    }
    cache.run_pending_tasks().await;
    assert_eq!((cache.entry_count(), cache.weighted_size()), (10, 10 * weight));
    assert_eq!(evicted(&metrics, "size"), 30);
    // Least recently used first: the last ten inserted are the ones kept.
    assert!((30..40).all(|n| cache.contains_key(&key(n))));
}

#[test]
fn an_entry_may_stay_its_lifetime_counted_from_when_it_was_stored() {
    let expiry = AfterStored { lifetime: KEEP };
    let now = Instant::now();
    let stored_20s_ago = entry(1, now - Duration::from_secs(20));
    assert_eq!(expiry.expire_after_create(&key(1), &stored_20s_ago, now), Some(Duration::from_secs(40)));
    let stored_long_ago = entry(1, now - KEEP - Duration::from_secs(1));
    assert_eq!(expiry.expire_after_create(&key(1), &stored_long_ago, now), Some(Duration::ZERO));
    let stored_ahead = entry(1, now + Duration::from_secs(5));
    assert_eq!(expiry.expire_after_create(&key(1), &stored_ahead, now), Some(KEEP), "a clock ahead counts as now");
    // Replaced: the new entry's store time counts, not what was left of the old one's.
    let fresh = entry(1, now);
    assert_eq!(expiry.expire_after_update(&key(1), &fresh, now, Some(Duration::from_secs(3))), Some(KEEP));
}

#[actix_rt::test]
async fn an_entry_from_another_replica_leaves_on_its_own_time() {
    let metrics = Metrics::new();
    let cache = answers(1 << 20, KEEP, &metrics.cache_evictions);
    let now = Instant::now();
    cache.insert(key(1), entry(10, now - KEEP)).await;
    cache.insert(key(2), entry(10, now - KEEP / 2)).await;
    assert!(cache.get(&key(1)).await.is_none(), "stored a keep time ago: already gone");
    assert!(cache.get(&key(2)).await.is_some());
    // moka's timer wheel removes it within its first level's span (about a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while evicted(&metrics, "expired") == 0 {
        assert!(Instant::now() < deadline, "the expired entry was never removed");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        cache.run_pending_tasks().await;
    }
    assert_eq!((cache.entry_count(), evicted(&metrics, "expired")), (1, 1));
}

#[actix_rt::test]
async fn a_replaced_entry_takes_the_new_entry_s_time_and_removals_are_counted_by_cause() {
    let metrics = Metrics::new();
    let keep = Duration::from_millis(200);
    let cache = answers(1 << 20, keep, &metrics.cache_evictions);
    let start = Instant::now();
    cache.insert(key(1), entry(10, start - keep + Duration::from_millis(20))).await;
    cache.insert(key(1), entry(10, start)).await;
    actix_rt::time::sleep(Duration::from_millis(50)).await; // the expiry itself is what is tested
    assert!(cache.get(&key(1)).await.is_some(), "past the old entry's time, within the new one's");
    cache.insert(key(2), entry(10, start)).await;
    assert!(cache.remove(&key(2)).await.is_some());
    cache.run_pending_tasks().await;
    assert_eq!((evicted(&metrics, "replaced"), evicted(&metrics, "explicit")), (1, 1));
    assert_eq!(evicted(&metrics, "expired"), 0);
}

#[actix_rt::test]
async fn a_finished_refresh_left_behind_is_only_ever_fresh() {
    let ttl = Duration::from_secs(10);
    let cache = refreshes(ttl);
    let now = Instant::now();
    cache.insert(key(1), entry(1, now - ttl)).await;
    cache.insert(key(2), entry(1, now)).await;
    assert!(cache.get(&key(1)).await.is_none(), "no longer fresh: gone");
    assert!(cache.get(&key(2)).await.is_some());
}
