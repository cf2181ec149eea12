//! The counts on virtual time: windows, blocks, the edge, allocations, pace, and the state
//! file's round trip.

use std::time::Duration;

use super::alloc::{Allocation, QuotaReason};
use super::counts::{Counts, EDGE_MS};
use super::file;
use crate::config::{QuotaSpec, WindowKind};

fn fixed(limit: u64, seconds: u64) -> QuotaSpec {
    QuotaSpec { name: format!("{seconds}s"), kind: WindowKind::Fixed(Duration::from_secs(seconds)), limit }
}

fn counts(specs: &[QuotaSpec], allocs: Vec<Allocation>, now_ms: i64) -> Counts {
    Counts::new(specs, jiff::tz::TimeZone::UTC, allocs, 6000, now_ms)
}

fn one() -> Vec<Allocation> {
    vec![Allocation::default()]
}

/// A time in the middle of a 20 s window: [T0, T0 + 20 000).
const T0: i64 = 1_800_000_000_000;

/// Takes counts one at a time for `client` (a grant, then its block) until refused.
fn spend(c: &mut Counts, client: usize, now: i64, most: u64) -> (u64, Option<QuotaReason>) {
    let mut taken = 0;
    while taken < most {
        if c.take_local(client, now) {
            taken += 1;
            continue;
        }
        match c.grant(Some(client), now) {
            Ok(grant) => {
                taken += 1;
                c.fill(Some(client), grant, now);
            }
            Err(refusal) => return (taken, Some(refusal.reason)),
        }
    }
    (taken, None)
}

#[test]
fn a_window_gives_exactly_its_limit_and_then_refuses_until_its_reset() {
    let mut c = counts(&[fixed(30, 20)], one(), T0 + 5_000);
    assert_eq!(c.block_size(), 1, "a small window is counted one by one");
    assert_eq!(spend(&mut c, 0, T0 + 5_000, 100), (30, Some(QuotaReason::WindowSpent)));
    let refusal = c.check(Some(0), T0 + 6_000).unwrap_err();
    assert_eq!(refusal.retry_after_ms, 14_000, "until the window's end");
    // The next window starts empty.
    assert!(c.roll(T0 + 20_000).is_empty());
    assert_eq!(c.windows[0].current.total, 0);
    assert_eq!(spend(&mut c, 0, T0 + 20_000, 100), (30, Some(QuotaReason::WindowSpent)));
}

#[test]
fn a_block_is_counted_whole_before_it_is_spent_and_given_back_when_unused() {
    let mut c = counts(&[fixed(16_000, 20)], one(), T0 + 1_000);
    assert_eq!(c.block_size(), 16, "a thousandth of the limit");
    assert_eq!(counts(&[fixed(3_000_000_000, 20)], one(), T0).block_size(), 1000, "at most 1000");
    let grant = c.grant(Some(0), T0 + 1_000).unwrap();
    assert_eq!(grant.k, 16);
    assert_eq!(c.windows[0].current.total, 16, "the whole block counts before any of it is spent");
    assert_eq!(c.fill(Some(0), grant, T0 + 1_000), None);
    for _ in 0..15 {
        assert!(c.take_local(0, T0 + 1_000));
    }
    assert!(!c.take_local(0, T0 + 1_000), "1 + 15 spent");
    // A fresh block, three spent, then a graceful stop gives the rest back.
    let grant = c.grant(Some(0), T0 + 2_000).unwrap();
    c.fill(Some(0), grant, T0 + 2_000);
    assert!(c.take_local(0, T0 + 2_000) && c.take_local(0, T0 + 2_000));
    assert_eq!(c.unspent(), 13);
    let released = c.release_all();
    assert_eq!(released.iter().map(|r| r.k).sum::<u64>(), 13);
    assert_eq!(c.windows[0].current.total, 16 + 3, "exactly what was spent");
}

#[test]
fn a_block_ends_before_the_edge_and_gives_its_rest_back() {
    let mut c = counts(&[fixed(16_000, 20)], one(), T0 + 1_000);
    let grant = c.grant(Some(0), T0 + 1_000).unwrap();
    c.fill(Some(0), grant, T0 + 1_000);
    assert!(c.take_local(0, T0 + 20_000 - EDGE_MS - 1));
    assert!(!c.take_local(0, T0 + 20_000 - EDGE_MS), "blocks never reach into the edge");
    let released = c.roll(T0 + 20_000 - EDGE_MS);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].k, 14);
    assert_eq!(c.windows[0].current.total, 2);
}

#[test]
fn at_the_edge_a_count_counts_in_both_instances_one_at_a_time() {
    let mut c = counts(&[fixed(16_000, 20)], one(), T0 + 1_000);
    let at = T0 + 20_000 - 500;
    assert_eq!(c.want(at), 1);
    let grant = c.grant(Some(0), at).unwrap();
    assert_eq!(grant.k, 1);
    assert_eq!(grant.targets.len(), 2);
    assert_eq!((c.windows[0].current.total, c.windows[0].next.total), (1, 1));
    // 1.5 s before the end: the current instance only.
    let mut c = counts(&[fixed(16_000, 20)], one(), T0 + 1_000);
    let grant = c.grant(Some(0), T0 + 20_000 - 1_500).unwrap();
    assert_eq!(grant.targets.len(), 1);
    // The next instance keeps its edge counts when it becomes current.
    let mut c = counts(&[fixed(30, 20)], one(), T0 + 1_000);
    c.grant(Some(0), at).unwrap();
    c.roll(T0 + 20_000);
    assert_eq!(c.windows[0].current.total, 1);
    assert_eq!(c.windows[0].current.instance.start_ms, T0 + 20_000);
}

#[test]
fn the_stricter_window_refuses_and_says_when_it_resets() {
    let mut c = counts(&[fixed(100, 20), fixed(5, 60)], one(), T0 + 1_000);
    assert_eq!(spend(&mut c, 0, T0 + 1_000, 100), (5, Some(QuotaReason::WindowSpent)));
    let refusal = c.check(Some(0), T0 + 1_000).unwrap_err();
    assert_eq!(refusal.window, 1);
    let end = c.windows[1].current.instance.end_ms;
    assert_eq!(refusal.retry_after_ms, end - (T0 + 1_000));
    assert_eq!(c.windows[0].current.total, 5);
}

#[test]
fn caps_and_reservations_hold_between_clients() {
    let allocs = vec![
        Allocation { max: 0.5, reserved: 0.0 },
        Allocation { max: 1.0, reserved: 0.3 },
        Allocation { max: 0.2, reserved: 0.0 },
    ];
    let mut c = counts(&[fixed(100, 20)], allocs, T0 + 1_000);
    let now = T0 + 1_000;
    assert_eq!(spend(&mut c, 0, now, 100), (50, Some(QuotaReason::ClientMax)));
    assert_eq!(spend(&mut c, 2, now, 100), (20, Some(QuotaReason::ClientMax)));
    // 30 are left, all reserved for client 1: nobody else may take them.
    assert_eq!(c.check(None, now).unwrap_err().reason, QuotaReason::Reserved);
    assert_eq!(spend(&mut c, 1, now, 100), (30, Some(QuotaReason::WindowSpent)));
    assert_eq!(c.windows[0].current.clients, vec![50, 30, 20]);
}

#[test]
fn a_reservation_is_released_when_its_client_could_no_longer_spend_it() {
    let allocs = vec![Allocation { max: 1.0, reserved: 0.0 }, Allocation { max: 1.0, reserved: 0.5 }];
    // 60 per minute is one per second: 19 s before the reset client 1 could spend 19 of its
    // 50, so 19 are held; 3 s before the reset, only 3.
    let mut c = Counts::new(&[fixed(100, 20)], jiff::tz::TimeZone::UTC, allocs, 60, T0);
    assert_eq!(spend(&mut c, 0, T0 + 1_000, 100), (81, Some(QuotaReason::Reserved)));
    assert_eq!(spend(&mut c, 0, T0 + 17_000, 100), (16, Some(QuotaReason::Reserved)));
    assert_eq!(spend(&mut c, 1, T0 + 17_000, 100), (3, Some(QuotaReason::WindowSpent)));
}

#[test]
fn the_upstreams_count_is_adopted_when_it_is_higher() {
    let mut c = counts(&[fixed(50, 300)], one(), T0);
    spend(&mut c, 0, T0, 1);
    assert_eq!(c.adopt(0, Some(50), 9, T0), Some(41));
    assert_eq!(c.adopt(0, Some(50), 20, T0), None, "ours is already stricter");
    assert_eq!(spend(&mut c, 0, T0, 100), (9, Some(QuotaReason::WindowSpent)));
    // A lower limit from the upstream is the limit in force.
    let mut c = counts(&[fixed(50, 300)], one(), T0);
    c.adopt(0, Some(20), 20, T0);
    assert_eq!(c.windows[0].limit(), 20);
}

#[test]
fn the_pace_spreads_what_is_left_over_the_time_left() {
    let mut c = counts(&[fixed(150, 15), fixed(10_000, 60)], one(), T0);
    let start = c.windows[0].current.instance.start_ms;
    // 150 over 15 s: one every 100 ms (the 60 s window allows more).
    assert_eq!(c.pace_interval(start), Some(Duration::from_millis(100)));
    spend(&mut c, 0, start, 75);
    // Half spent with 10 s left: 7.5 per second.
    let pace = c.pace_interval(start + 5_000).unwrap();
    assert!((pace.as_secs_f64() - 1.0 / 7.5).abs() < 1e-9, "{pace:?}");
    // A spent window is not paced (it refuses); the other window paces.
    spend(&mut c, 0, start + 5_000, 1000);
    let other =
        c.windows[1].remaining() as f64 * 1000.0 / (c.windows[1].current.instance.end_ms - start - 5_000) as f64;
    assert_eq!(c.pace_interval(start + 5_000), Some(Duration::from_secs_f64(1.0 / other)));
}

#[test]
fn the_state_file_restores_the_instances_that_are_still_current() {
    let names = ["a", "b"];
    let allocs = vec![Allocation::default(); 2];
    let mut c = counts(&[fixed(1000, 20), fixed(1000, 3600)], allocs.clone(), T0 + 1_000);
    spend(&mut c, 0, T0 + 1_000, 7);
    spend(&mut c, 1, T0 + 1_000, 3);
    let saved = file::snapshot(&c, &names);
    let dir = std::env::temp_dir().join(format!("courier-quota-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file::FILE_NAME);
    std::fs::write(&path, &saved).unwrap();
    // Same instant: everything back, by client name.
    let mut back = counts(&[fixed(1000, 20), fixed(1000, 3600)], allocs.clone(), T0 + 2_000);
    file::load(&path, &mut back, &names).unwrap();
    assert_eq!(back.windows[0].current.total, 10);
    assert_eq!(back.windows[0].current.clients, vec![7, 3]);
    // 20 s later the 20 s window has passed; the hour has not.
    let mut later = counts(&[fixed(1000, 20), fixed(1000, 3600)], allocs.clone(), T0 + 21_000);
    file::load(&path, &mut later, &names).unwrap();
    assert_eq!(later.windows[0].current.total, 0);
    assert_eq!(later.windows[1].current.total, 10);
    // A changed limit keeps the count.
    let mut changed = counts(&[fixed(1000, 20), fixed(500, 3600)], allocs, T0 + 2_000);
    file::load(&path, &mut changed, &names).unwrap();
    assert_eq!(changed.windows[1].current.total, 10);
    // Not our file: an error naming it.
    std::fs::write(&path, "{").unwrap();
    let error = file::load(&path, &mut changed, &names).unwrap_err();
    assert!(error.contains("quota-state.json") && error.contains("not a courier quota state file"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
