//! The data of the counts: a window instance's tally, a configured window with its current and
//! next instance, where a reservation counts, and what is granted, refused or given back.

use super::alloc::QuotaReason;
use super::window::Instance;
use crate::config::QuotaSpec;

/// One window instance's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    /// The instance.
    pub instance: Instance,
    /// Every count (unattributed ones included).
    pub total: u64,
    /// Counts by client position.
    pub clients: Vec<u64>,
}

impl Tally {
    pub(super) fn new(instance: Instance, clients: usize) -> Tally {
        Tally { instance, total: 0, clients: vec![0; clients] }
    }

    pub(super) fn add(&mut self, client: Option<usize>, k: u64) {
        self.total += k;
        if let Some(c) = client {
            if self.clients.len() <= c {
                self.clients.resize(c + 1, 0);
            }
            self.clients[c] += k;
        }
    }

    pub(super) fn sub(&mut self, client: Option<usize>, k: u64) {
        self.total = self.total.saturating_sub(k);
        if let Some(slot) = client.and_then(|c| self.clients.get_mut(c)) {
            *slot = slot.saturating_sub(k);
        }
    }
}

/// The upstream's own view of a window, as its headers last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Its limit, when it said one.
    pub limit: Option<u64>,
    /// What it had left.
    pub remaining: u64,
    /// When it said so (Unix ms).
    pub seen_ms: i64,
}

/// One configured window and its counts.
#[derive(Clone, Debug)]
pub struct Window {
    /// The configured window.
    pub spec: QuotaSpec,
    /// The current instance.
    pub current: Tally,
    /// Counts taken near the current instance's end, for the next one.
    pub next: Tally,
    /// The upstream's view of the current instance.
    pub upstream: Option<Upstream>,
}

impl Window {
    /// The limit in force: the configured one, or the upstream's when it said a lower one.
    pub fn limit(&self) -> u64 {
        match self.upstream.and_then(|u| u.limit) {
            Some(theirs) => theirs.min(self.spec.limit),
            None => self.spec.limit,
        }
    }

    /// Counts left in the current instance.
    pub fn remaining(&self) -> u64 {
        self.limit().saturating_sub(self.current.total)
    }
}

/// Where one reservation counts: a window's current instance, or its next one (at the edge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The window's position.
    pub window: usize,
    /// Whether this is the next instance.
    pub next: bool,
    /// The instance.
    pub instance: Instance,
}

/// A refused count: why, which window, and when to ask again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// Why.
    pub reason: QuotaReason,
    /// The window's position (0 for `Unavailable`).
    pub window: usize,
    /// Until the window's reset (a second for `Unavailable`).
    pub retry_after_ms: i64,
}

/// Counts reserved for a client: one is the caller's, the rest go into the client's block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Counts reserved (at least 1).
    pub k: u64,
    /// Where they counted.
    pub targets: Vec<Target>,
}

/// Counts given back: the store must subtract `k` for `client` from each target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Whose.
    pub client: Option<usize>,
    /// How many.
    pub k: u64,
    /// From which instances (those still current or next).
    pub targets: Vec<Target>,
}
