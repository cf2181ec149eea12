//! How many counts of a window one client may take: the allocation formula, in one place.
//!
//! The same formula runs in Lua on Redis (`shared::quota`), where replicas reserve counts
//! atomically; `tests/quota_redis.rs` checks that both give the same answer on [`table`].
//!
//! For a window instance with limit `L`, total `U` (every count, unattributed ones included)
//! and per-client counts `u_d`:
//!
//! - `M_c = floor(max_c · L)`: the most client `c` may use;
//! - `R_d = floor(reserved_d · L)`: what is held for client `d`;
//! - `held_d = min(max(R_d − u_d, 0), H)`: the part of `d`'s reservation still held, where `H`
//!   is what one client could still spend at the per-minute rate before the reset. A
//!   reservation is held "while it may still need it": near the reset a client could no
//!   longer spend all of it, and holding the rest would only waste it;
//! - `c` may take `min(M_c − u_c, L − U − Σ_{d≠c} held_d)`; an unattributed count (a breaker
//!   probe, a count the upstream reported) may take `L − U − Σ_d held_d`.

pub use crate::shared::quota::QuotaReason;

/// A client's part of every window, from the clients file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allocation {
    /// The most the client may use of each window, as a fraction of its limit.
    pub max: f64,
    /// The fraction held for the client that others cannot take.
    pub reserved: f64,
}

impl Default for Allocation {
    fn default() -> Allocation {
        Allocation { max: 1.0, reserved: 0.0 }
    }
}

/// `fraction · limit`, rounded down (as Lua's `math.floor` does on the same doubles).
pub fn part(fraction: f64, limit: u64) -> u64 {
    (fraction * limit as f64).floor().max(0.0) as u64
}

/// One window instance's counts, as the formula reads them.
#[derive(Clone, Copy, Debug)]
pub struct Counts<'a> {
    /// The window's (effective) limit.
    pub limit: u64,
    /// Every count of the instance.
    pub total: u64,
    /// Counts by client, in the order of the allocations.
    pub clients: &'a [u64],
}

/// How many counts `client` (`None`: unattributed) may take now, at most `want`; `hold_cap`
/// is `H` of the module documentation. A refusal says why.
pub fn available(
    counts: Counts<'_>,
    allocs: &[Allocation],
    client: Option<usize>,
    hold_cap: u64,
    want: u64,
) -> Result<u64, QuotaReason> {
    let Counts { limit, total, clients } = counts;
    let free = limit.saturating_sub(total);
    if free == 0 {
        return Err(QuotaReason::WindowSpent);
    }
    let used = |d: usize| clients.get(d).copied().unwrap_or(0);
    let held: u64 = (0..allocs.len())
        .filter(|&d| Some(d) != client)
        .map(|d| part(allocs[d].reserved, limit).saturating_sub(used(d)).min(hold_cap))
        .sum();
    let own = match client {
        Some(c) => {
            let max = allocs.get(c).map_or(limit, |a| part(a.max, limit));
            let own = max.saturating_sub(used(c));
            if own == 0 {
                return Err(QuotaReason::ClientMax);
            }
            own
        }
        None => free,
    };
    let free = free.saturating_sub(held);
    if free == 0 {
        return Err(QuotaReason::Reserved);
    }
    Ok(own.min(free).min(want))
}

/// One row of [`table`]: the inputs and what [`available`] answers.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Row {
    pub limit: u64,
    pub clients: Vec<u64>,
    pub unattributed: u64,
    pub allocs: Vec<Allocation>,
    pub client: Option<usize>,
    pub hold_cap: u64,
    pub want: u64,
    pub expected: Result<u64, QuotaReason>,
}

/// Cases of the formula, shared by the unit test here and the Redis test that runs the Lua.
#[doc(hidden)]
pub fn table() -> Vec<Row> {
    let a = |max: f64, reserved: f64| Allocation { max, reserved };
    let row = |limit, clients: &[u64], unattributed, allocs: &[Allocation], client, hold_cap, want, expected| Row {
        limit,
        clients: clients.to_vec(),
        unattributed,
        allocs: allocs.to_vec(),
        client,
        hold_cap,
        want,
        expected,
    };
    let three = [a(0.5, 0.0), a(1.0, 0.3), a(0.2, 0.0)];
    vec![
        // An empty window: as much as asked.
        row(100, &[0, 0, 0], 0, &three, Some(0), 1000, 16, Ok(16)),
        // Client 0 may use half: 50; it has 45.
        row(100, &[45, 0, 0], 0, &three, Some(0), 1000, 16, Ok(5)),
        row(100, &[50, 0, 0], 0, &three, Some(0), 1000, 1, Err(QuotaReason::ClientMax)),
        // 30 are held for client 1: 100 − 50 − 20 = 30 left, all held.
        row(100, &[50, 0, 20], 0, &three, Some(2), 1000, 1, Err(QuotaReason::ClientMax)),
        row(100, &[40, 0, 20], 0, &three, Some(0), 1000, 16, Ok(10)),
        row(100, &[49, 0, 20], 1, &three, Some(0), 1000, 1, Err(QuotaReason::Reserved)),
        // Client 1 takes its reservation, and more while nothing else is held.
        row(100, &[49, 0, 20], 1, &three, Some(1), 1000, 16, Ok(16)),
        row(100, &[49, 30, 20], 1, &three, Some(1), 1000, 16, Err(QuotaReason::WindowSpent)),
        // Near the reset the held part shrinks to what client 1 could still spend (H = 4).
        row(100, &[40, 0, 20], 0, &three, Some(0), 4, 16, Ok(10)),
        row(100, &[45, 0, 20], 0, &three, Some(0), 4, 16, Ok(5)),
        row(100, &[49, 0, 20], 1, &three, Some(0), 4, 16, Ok(1)),
        // Unattributed counts respect every reservation.
        row(100, &[10, 0, 0], 60, &three, None, 1000, 16, Err(QuotaReason::Reserved)),
        row(100, &[10, 0, 0], 50, &three, None, 1000, 16, Ok(10)),
        // A zero cap is a cache-only client.
        row(100, &[0], 0, &[a(0.0, 0.0)], Some(0), 1000, 1, Err(QuotaReason::ClientMax)),
        // One client, no allocations: the limit, exactly.
        row(30, &[29], 0, &[a(1.0, 0.0)], Some(0), 1000, 1, Ok(1)),
        row(30, &[30], 0, &[a(1.0, 0.0)], Some(0), 1000, 1, Err(QuotaReason::WindowSpent)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds() {
        for (i, row) in table().into_iter().enumerate() {
            let total = row.clients.iter().sum::<u64>() + row.unattributed;
            let counts = Counts { limit: row.limit, total, clients: &row.clients };
            let got = available(counts, &row.allocs, row.client, row.hold_cap, row.want);
            assert_eq!(got, row.expected, "row {i}: {row:?}");
        }
    }

    #[test]
    fn parts_round_down() {
        assert_eq!(part(0.3, 100), 30);
        assert_eq!(part(0.333, 100), 33);
        assert_eq!(part(1.0, 7), 7);
        assert_eq!(part(0.0, 7), 0);
    }
}
