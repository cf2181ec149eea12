//! The counts of every quota window, in memory, on a time given by the caller (so tests run
//! on virtual time): window rollovers, the blocks reserved ahead, grants by the allocation
//! formula, the upstream's own count, the pace that makes a window last.
//!
//! Blocks: a count is handed out only once the store holds it (the file is written, or Redis
//! has counted it), but a store round trip per upstream attempt would cost a file sync each.
//! So a client reserves a small block of counts at once and spends it from memory; the store
//! counts the whole block, spent or not, so it is never below what was sent. A block ends
//! before the edge of any of its windows, and what is left of it is given back.
//!
//! The edge: within [`EDGE_MS`] of a window's end, a count also counts in the next instance
//! of the window, because the upstream may see the request after its own reset (transit,
//! clocks a little apart), and then it counts there.

use super::alloc::{self, Allocation};
pub use super::tally::{Grant, QuotaRefusal, Release, Tally, Target, Upstream, Window};
use super::window;
pub use super::window::EDGE_MS;
use crate::config::QuotaSpec;

/// The most counts one block holds: a block costs one store write (an fsync, or a Redis round
/// trip), and what a crash can over-count is one block per client, a thousandth of the window.
const MAX_BLOCK: u64 = 1000;

/// A client's block: counts held in the store and not yet spent.
#[derive(Clone, Debug, Default)]
struct Block {
    left: u64,
    until_ms: i64,
    targets: Vec<Target>,
}

/// Every window's counts, and the clients' allocations and blocks.
#[derive(Debug)]
pub struct Counts {
    /// The windows, in configured order.
    pub windows: Vec<Window>,
    /// Allocations by client position.
    pub allocs: Vec<Allocation>,
    blocks: Vec<Block>,
    zone: jiff::tz::TimeZone,
    rate_per_second: f64,
    block_size: u64,
}

impl Counts {
    /// Empty counts for `specs` at `now_ms`; `rate_per_minute` is the per-minute limit (how fast
    /// one client could spend a reservation).
    pub fn new(
        specs: &[QuotaSpec],
        zone: jiff::tz::TimeZone,
        allocs: Vec<Allocation>,
        rate_per_minute: u32,
        now_ms: i64,
    ) -> Counts {
        let clients = allocs.len();
        let windows = specs
            .iter()
            .map(|spec| {
                let current = window::instance(&spec.kind, &zone, now_ms);
                let next = window::next(&spec.kind, &zone, current);
                Window {
                    spec: spec.clone(),
                    current: Tally::new(current, clients),
                    next: Tally::new(next, clients),
                    upstream: None,
                }
            })
            .collect();
        let smallest = specs.iter().map(|s| s.limit).min().unwrap_or(1);
        Counts {
            windows,
            blocks: vec![Block::default(); clients],
            allocs,
            zone,
            rate_per_second: f64::from(rate_per_minute.max(1)) / 60.0,
            block_size: block_size(smallest),
        }
    }

    /// Counts of a block: a thousandth of the smallest limit, 1 to 1000, so a small window is
    /// counted exactly and a large one costs a store write every few counts.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Replaces the allocations (a reload of the clients file); positions stay stable.
    pub fn set_allocations(&mut self, allocs: Vec<Allocation>) {
        self.blocks.resize(allocs.len().max(self.blocks.len()), Block::default());
        self.allocs = allocs;
    }

    /// Whether a window has ended by `now_ms` (the next [`Counts::roll`] moves it on).
    pub fn due(&self, now_ms: i64) -> bool {
        self.windows.iter().any(|w| now_ms >= w.current.instance.end_ms)
    }

    /// Moves every window to the instance that holds `now_ms`, and ends blocks that ran out
    /// of time; returns what the blocks give back.
    pub fn roll(&mut self, now_ms: i64) -> Vec<Release> {
        let released = self.end_blocks(|block| block.until_ms <= now_ms);
        for w in &mut self.windows {
            if now_ms < w.current.instance.end_ms {
                continue;
            }
            let clients = w.current.clients.len();
            w.current = match now_ms < w.next.instance.end_ms {
                true => std::mem::replace(&mut w.next, Tally::new(w.current.instance, 0)),
                false => Tally::new(window::instance(&w.spec.kind, &self.zone, now_ms), clients),
            };
            w.next = Tally::new(window::next(&w.spec.kind, &self.zone, w.current.instance), clients);
            w.upstream = None;
        }
        released
    }

    /// Subtracts a release from the instances it counted in that are still here.
    fn give_back(&mut self, release: &Release) {
        for target in &release.targets {
            let Some(w) = self.windows.get_mut(target.window) else { continue };
            for tally in [&mut w.current, &mut w.next] {
                if tally.instance == target.instance {
                    tally.sub(release.client, release.k);
                }
            }
        }
    }

    /// Takes one count from `client`'s block, if it holds one that is still valid.
    pub fn take_local(&mut self, client: usize, now_ms: i64) -> bool {
        match self.blocks.get_mut(client) {
            Some(block) if block.left > 0 && now_ms < block.until_ms => {
                block.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether `client` could get a count now (its block, or the windows' room), without
    /// taking one: the cheap check before the budget's queue.
    pub fn check(&self, client: Option<usize>, now_ms: i64) -> Result<(), QuotaRefusal> {
        if let Some(block) = client.and_then(|c| self.blocks.get(c)) {
            if block.left > 0 && now_ms < block.until_ms {
                return Ok(());
            }
        }
        self.room(client, 1, now_ms).map(|_| ())
    }

    /// Where a reservation at `now_ms` counts: every current instance, and the next one of
    /// each window at its edge.
    pub fn targets(&self, now_ms: i64) -> Vec<Target> {
        let mut targets = Vec::with_capacity(self.windows.len() + 1);
        for (i, w) in self.windows.iter().enumerate() {
            targets.push(Target { window: i, next: false, instance: w.current.instance });
            if w.current.instance.in_edge(now_ms) {
                targets.push(Target { window: i, next: true, instance: w.next.instance });
            }
        }
        targets
    }

    /// How many counts a reservation for `client` asks for at `now_ms`: one at an edge, else a block.
    pub fn want(&self, now_ms: i64) -> u64 {
        match self.targets(now_ms).iter().any(|t| t.next) {
            true => 1,
            false => self.block_size,
        }
    }

    /// `H` of the formula for a window: what one client could spend before its reset.
    pub fn hold_cap(&self, window: usize, now_ms: i64) -> u64 {
        let left_s = (self.windows[window].current.instance.end_ms - now_ms).max(0) as f64 / 1000.0;
        (self.rate_per_second * left_s).ceil() as u64
    }

    /// How many of `want` counts `client` may take in every target, or why none.
    fn room(&self, client: Option<usize>, want: u64, now_ms: i64) -> Result<u64, QuotaRefusal> {
        let mut k = want;
        for target in self.targets(now_ms) {
            let w = &self.windows[target.window];
            let tally = if target.next { &w.next } else { &w.current };
            let counts = alloc::Counts { limit: w.limit(), total: tally.total, clients: &tally.clients };
            let hold_cap = self.hold_cap(target.window, now_ms);
            match alloc::available(counts, &self.allocs, client, hold_cap, k) {
                Ok(n) => k = k.min(n),
                Err(reason) => {
                    let retry_after_ms = (tally.instance.end_ms - now_ms).max(1000);
                    return Err(QuotaRefusal { reason, window: target.window, retry_after_ms });
                }
            }
        }
        Ok(k)
    }

    /// Reserves up to a block for `client` in the windows held here (the file store): the
    /// counts are added now; the caller spends them once the store has them
    /// ([`Counts::fill`]).
    pub fn grant(&mut self, client: Option<usize>, now_ms: i64) -> Result<Grant, QuotaRefusal> {
        let want = match client {
            Some(_) => self.want(now_ms),
            None => 1,
        };
        let k = self.room(client, want, now_ms)?;
        let targets = self.targets(now_ms);
        self.count(client, k, &targets);
        Ok(Grant { k, targets })
    }

    /// Adds `k` counts for `client` to each target (a grant made here, or by Redis).
    pub fn count(&mut self, client: Option<usize>, k: u64, targets: &[Target]) {
        for target in targets {
            let w = &mut self.windows[target.window];
            let tally = if target.next { &mut w.next } else { &mut w.current };
            if tally.instance == target.instance {
                tally.add(client, k);
            }
        }
    }

    /// Takes back a grant the store did not take (its write failed).
    pub fn count_back(&mut self, client: Option<usize>, grant: &Grant) {
        self.give_back(&Release { client, k: grant.k, targets: grant.targets.clone() });
    }

    /// Sets one instance's total to what the shared store says (every replica's counts).
    pub fn set_total(&mut self, target: Target, total: u64) {
        let Some(w) = self.windows.get_mut(target.window) else { return };
        let tally = if target.next { &mut w.next } else { &mut w.current };
        if tally.instance == target.instance {
            tally.total = total;
        }
    }

    /// Sets one instance's client counts to what the shared store says.
    pub fn set_clients(&mut self, target: Target, clients: Vec<u64>) {
        let Some(w) = self.windows.get_mut(target.window) else { return };
        let tally = if target.next { &mut w.next } else { &mut w.current };
        if tally.instance == target.instance {
            tally.clients = clients;
        }
    }

    /// The store holds `grant`: one count is the caller's, the rest go into the client's block
    /// (or back, when the block was refilled meanwhile or its time has passed). Returns what
    /// must be given back.
    pub fn fill(&mut self, client: Option<usize>, grant: Grant, now_ms: i64) -> Option<Release> {
        let rest = grant.k - 1;
        if rest == 0 {
            return None;
        }
        let until_ms = self.block_until(&grant.targets);
        let block = client.and_then(|c| self.blocks.get_mut(c));
        match block {
            Some(block) if block.left == 0 && now_ms < until_ms => {
                *block = Block { left: rest, until_ms, targets: grant.targets };
                None
            }
            _ => {
                let release = Release { client, k: rest, targets: grant.targets };
                self.give_back(&release);
                Some(release)
            }
        }
    }

    /// A block ends at the edge of the first of its windows to end.
    fn block_until(&self, targets: &[Target]) -> i64 {
        targets.iter().map(|t| t.instance.end_ms - EDGE_MS).min().unwrap_or(i64::MAX)
    }

    /// Every block's rest, given back (a graceful stop).
    pub fn release_all(&mut self) -> Vec<Release> {
        self.end_blocks(|_| true)
    }

    /// Ends the blocks that still hold counts and that `ending` picks; their rest is given back.
    fn end_blocks(&mut self, ending: impl Fn(&Block) -> bool) -> Vec<Release> {
        let mut released = Vec::new();
        for (client, block) in self.blocks.iter_mut().enumerate() {
            if block.left > 0 && ending(block) {
                let targets = std::mem::take(&mut block.targets);
                released.push(Release { client: Some(client), k: std::mem::take(&mut block.left), targets });
            }
        }
        for release in &released {
            self.give_back(release);
        }
        released
    }

    /// Counts held in blocks and not spent, over all clients (what a crash would over-count).
    pub fn unspent(&self) -> u64 {
        self.blocks.iter().map(|b| b.left).sum()
    }

    /// Folds in the upstream's count of the window whose instance matches: the stricter of
    /// the two. Returns the window's position and the total it must have at least.
    pub fn adopt(&mut self, window: usize, limit: Option<u64>, remaining: u64, now_ms: i64) -> Option<u64> {
        let w = self.windows.get_mut(window)?;
        w.upstream = Some(Upstream { limit, remaining, seen_ms: now_ms });
        let at_least = w.limit().saturating_sub(remaining);
        if at_least > w.current.total {
            w.current.total = at_least;
            return Some(at_least);
        }
        None
    }

    /// Sets a window's total (an operator's reconciliation); returns the total before.
    pub fn set_used(&mut self, window: usize, used: u64) -> u64 {
        let w = &mut self.windows[window];
        std::mem::replace(&mut w.current.total, used)
    }

    /// The interval between attempts that spreads every window's remaining count evenly over
    /// its remaining time; `None` when no window is short of time (or every window is spent:
    /// then nothing is sent at all).
    pub fn pace_interval(&self, now_ms: i64) -> Option<std::time::Duration> {
        self.windows
            .iter()
            .filter_map(|w| pace(w.remaining(), w.current.instance.end_ms - now_ms))
            .filter(|p| *p > 0.0)
            .min_by(f64::total_cmp)
            .map(|per_second| std::time::Duration::from_secs_f64(1.0 / per_second))
    }
}

/// The even pace of a window: its remaining count over its remaining seconds.
pub fn pace(remaining: u64, left_ms: i64) -> Option<f64> {
    (left_ms > 0).then(|| remaining as f64 * 1000.0 / left_ms as f64)
}

/// A thousandth of the smallest limit, 1 to [`MAX_BLOCK`].
fn block_size(smallest_limit: u64) -> u64 {
    (smallest_limit / 1000).clamp(1, MAX_BLOCK)
}
