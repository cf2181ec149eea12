use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::metrics::Metrics;

const KEEP: Duration = Duration::from_secs(60);

fn key(n: u16) -> Key {
    Key::from_hex(&format!("{n:04x}").repeat(16)).unwrap()
}

/// An entry stored at `stored` whose weight is `size` bytes of answer plus the fixed overhead.
fn entry(size: usize, stored: Instant) -> Arc<Entry> {
    Arc::new(Entry::stored_at(Bytes::from(vec![b'1'; size]), None, stored))
}

fn evicted(metrics: &Metrics, cause: &str) -> u64 {
    metrics.cache_evictions.with_label_values(&[cause]).get()
}

/// A store with room for `entries` entries of 100 bytes of answer.
fn store(entries: u64, metrics: &Metrics) -> Store {
    Store::new(entries * (100 + super::super::ENTRY_OVERHEAD as u64), KEEP, &metrics.cache_evictions)
}

#[test]
fn an_entry_read_since_the_hand_passed_outlives_one_that_was_not() {
    let metrics = Metrics::new();
    let s = store(3, &metrics);
    let now = Instant::now();
    for n in 1..=3 {
        s.insert(key(n), entry(100, now));
    }
    assert!(s.get(&key(1), now).is_some());
    s.insert(key(4), entry(100, now));
    assert!(s.get(&key(1), now).is_some(), "read, so spared once");
    assert!(s.get(&key(2), now).is_none(), "the first unread one left");
    assert!(s.get(&key(3), now).is_some() && s.get(&key(4), now).is_some());
    assert_eq!(evicted(&metrics, "size"), 1);
    assert_eq!(s.size(), (3, 3 * (100 + super::super::ENTRY_OVERHEAD as u64)));
}

#[test]
fn the_byte_bound_holds_and_every_entry_leaving_is_counted() {
    let metrics = Metrics::new();
    let s = store(40, &metrics);
    let now = Instant::now();
    for n in 0..1000 {
        s.insert(key(n), entry(100 + usize::from(n % 7) * 30, now));
        if n % 3 == 0 {
            s.get(&key(n / 2), now);
        }
    }
    let (entries, bytes) = s.size();
    assert!(bytes <= 40 * 260, "{bytes} bytes held");
    assert!(entries > 20, "{entries} entries held");
    assert_eq!(entries + evicted(&metrics, "size"), 1000);
    let held = (0..1000).filter(|&n| s.get(&key(n), now).is_some()).count() as u64;
    assert_eq!(held, entries, "every entry counted is found, and only those");
}

#[test]
fn an_answer_larger_than_a_shard_is_not_kept_and_pushes_nothing_out() {
    let metrics = Metrics::new();
    let s = store(3, &metrics);
    let now = Instant::now();
    s.insert(key(1), entry(100, now));
    s.insert(key(2), entry(10_000, now));
    assert!(s.get(&key(2), now).is_none());
    assert!(s.get(&key(1), now).is_some());
    assert_eq!(evicted(&metrics, "size"), 1);
}

#[test]
fn an_entry_past_its_keep_time_is_never_returned() {
    let metrics = Metrics::new();
    let s = store(10, &metrics);
    let stored = Instant::now();
    s.insert(key(1), entry(100, stored));
    assert!(s.get(&key(1), stored + KEEP - Duration::from_millis(1)).is_some());
    assert!(s.get(&key(1), stored + KEEP).is_none());
    assert_eq!(evicted(&metrics, "expired"), 1);
    assert_eq!(s.size(), (0, 0));
}

#[test]
fn a_sweep_removes_the_expired_entries_and_only_those() {
    let metrics = Metrics::new();
    let s = store(10, &metrics);
    let now = Instant::now();
    s.insert(key(1), entry(100, now - KEEP));
    s.insert(key(2), entry(100, now - KEEP / 2));
    s.insert(key(3), entry(100, now - KEEP - KEEP));
    // Sweeps go by whole seconds: what expired in the last one waits for the next sweep.
    s.sweep(now + Duration::from_secs(1));
    assert_eq!(s.size().0, 1);
    assert_eq!(evicted(&metrics, "expired"), 2);
    assert!(s.get(&key(2), now).is_some());
}

#[test]
fn the_hand_takes_an_expired_entry_as_expired_even_if_it_was_read() {
    let metrics = Metrics::new();
    let s = store(3, &metrics);
    let now = Instant::now();
    let stale = entry(100, now - KEEP - Duration::from_secs(5));
    s.insert(key(1), stale);
    s.insert(key(2), entry(100, now));
    s.insert(key(3), entry(100, now));
    s.get(&key(1), now - Duration::from_secs(10));
    s.insert(key(4), entry(100, now));
    assert_eq!((evicted(&metrics, "expired"), evicted(&metrics, "size")), (1, 0));
    assert!([2, 3, 4].iter().all(|&n| s.get(&key(n), now).is_some()));
}

#[test]
fn a_newer_answer_replaces_an_older_one_and_not_the_other_way() {
    let metrics = Metrics::new();
    let s = store(10, &metrics);
    let now = Instant::now();
    let older = entry(100, now - Duration::from_secs(5));
    let newer = entry(100, now);
    s.insert(key(1), newer.clone());
    assert!(Arc::ptr_eq(&s.insert_unless_newer(key(1), older.clone(), now), &newer));
    assert!(Arc::ptr_eq(&s.get(&key(1), now).unwrap(), &newer));
    assert_eq!(evicted(&metrics, "replaced"), 0);

    s.insert(key(2), older.clone());
    assert!(Arc::ptr_eq(&s.insert_unless_newer(key(2), newer.clone(), now), &newer));
    assert!(Arc::ptr_eq(&s.get(&key(2), now).unwrap(), &newer));
    assert_eq!(evicted(&metrics, "replaced"), 1);
    // An expired entry, however new, gives way.
    s.insert(key(3), entry(100, now));
    let later = now + KEEP;
    assert!(Arc::ptr_eq(&s.insert_unless_newer(key(3), older.clone(), later), &older));
    assert_eq!(s.size().0, 3);
}

#[test]
fn removing_and_clearing_count_as_explicit() {
    let metrics = Metrics::new();
    let s = Store::new(256 << 20, KEEP, &metrics.cache_evictions);
    let now = Instant::now();
    for n in 0..500 {
        s.insert(key(n), entry(100, now));
    }
    assert!(s.remove(&key(7)));
    assert!(!s.remove(&key(7)));
    assert_eq!(s.size().0, 499);
    assert!((0..500).filter(|&n| n != 7).all(|n| s.get(&key(n), now).is_some()), "all found across the shards");
    s.clear();
    assert_eq!(s.size(), (0, 0));
    assert_eq!(evicted(&metrics, "explicit"), 500);
    assert!(s.get(&key(1), now).is_none());
    s.insert(key(1), entry(100, now));
    assert!(s.get(&key(1), now).is_some(), "usable after a clear");
}

#[test]
fn slots_past_the_first_chunk_are_found_and_reused() {
    let metrics = Metrics::new();
    let s = Store::new(1 << 20, KEEP, &metrics.cache_evictions);
    let now = Instant::now();
    let n = (super::CHUNK * 2 + 10) as u16;
    for i in 0..n {
        s.insert(key(i), entry(10, now));
    }
    assert!((0..n).all(|i| s.get(&key(i), now).is_some()));
    for i in 0..n / 2 {
        assert!(s.remove(&key(i)));
    }
    for i in n..n + n / 2 {
        s.insert(key(i), entry(10, now));
    }
    assert_eq!(s.size().0, u64::from(n));
    assert!((n / 2..n + n / 2).all(|i| s.get(&key(i), now).is_some()));
    assert_eq!(s.shards[0].lock().unwrap().slots.len(), usize::from(n), "freed slots were filled first");
}
