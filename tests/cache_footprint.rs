//! What one cached answer really costs in memory, beyond its bytes: measured with a counting
//! allocator (mimalloc, as the binary uses, counted by its size classes) around the real
//! `ResponseCache`, at the realistic sizes of the cache (5k and 50k answers). The weigher's
//! [`ENTRY_OVERHEAD`] must cover it, so that `COURIER_CACHE_MAX_BYTES` bounds memory, and stay
//! close to it, so that the bound is not spent on bytes nobody holds.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier::cache::{CacheSettings, Entry, ResponseCache, ENTRY_OVERHEAD};
use courier::key::Key;
use courier::metrics::Metrics;
use mimalloc::MiMalloc;

/// Bytes held by live allocations, each counted as the size class mimalloc gives it.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

fn class(size: usize) -> isize {
    // SAFETY: asks mimalloc which size class a request falls in; touches no memory.
    unsafe { libmimalloc_sys::mi_good_size(size) as isize }
}

// SAFETY: every call is passed on to mimalloc unchanged; the counter only adds up sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(class(layout.size()), Ordering::Relaxed);
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(class(layout.size()), Ordering::Relaxed);
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(class(layout.size()), Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(class(new_size) - class(layout.size()), Ordering::Relaxed);
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The answer size of the benchmarks (`bench/run`'s memory part).
const ANSWER: usize = 285;

/// An upstream request id as the simulator makes them (`up_` and 16 hex digits).
const UPSTREAM_ID: &str = "up_0123456789abcdef";

/// Bytes held per cached answer beyond the answer's own, with `count` answers in a fresh cache;
/// `shared`: each answer's bytes also handed to the second level once, as with Redis (which
/// gives them a shared header).
async fn overhead_per_entry(count: u32, id: Option<&str>, shared: bool) -> f64 {
    let settings = CacheSettings {
        ttl: Duration::from_secs(300),
        max_bytes: 1 << 40,
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
    };
    let metrics = Arc::new(Metrics::new());
    let cache = ResponseCache::new(settings, &metrics, None);
    let keys: Vec<Key> = (0..count).map(|n| Key::from_hex(&format!("{n:064x}")).unwrap()).collect();
    let answer = vec![b'7'; ANSWER];
    cache.export(&metrics).await;
    let before = LIVE.load(Ordering::Relaxed);
    for key in &keys {
        let entry = Arc::new(Entry::new(&answer, id.map(Into::into)));
        if shared {
            drop(entry.result.clone());
        }
        cache.insert(*key, entry).await;
    }
    // Applies moka's pending writes: the access-order and timer-wheel nodes are made there.
    cache.export(&metrics).await;
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(metrics.cache_entries.get(), i64::from(count), "every answer is held");
    let answer_bytes = class(ANSWER) as f64;
    (after - before) as f64 / f64::from(count) - answer_bytes
}

#[actix_rt::test]
async fn the_weigher_counts_what_an_entry_really_costs() {
    for id in [None, Some(UPSTREAM_ID)] {
        let counted = Entry::new(&[b'7'; ANSWER], id.map(Into::into)).weight() as usize - ANSWER;
        assert_eq!(counted, id.map_or(0, str::len) + ENTRY_OVERHEAD);
        for count in [5_000, 50_000] {
            for shared in [false, true] {
                let measured = overhead_per_entry(count, id, shared).await;
                let what =
                    format!("{count} answers (id {id:?}, shared {shared}): {measured:.0} bytes each beyond the answer");
                eprintln!("{what}; counted {counted}");
                assert!(measured <= counted as f64, "{what}, more than the {counted} counted");
                assert!(measured >= counted as f64 * 0.8, "{what}, far less than the {counted} counted");
            }
        }
    }
}
