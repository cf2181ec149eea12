//! Weighted fair queueing of waiters (start-time fair queueing), as a plain struct.
//!
//! Each client has a weight. A waiter gets a start tag `S = max(V, F_c)` and its client's
//! finish tag becomes `F_c = S + 1/w_c`; the waiter with the smallest start tag goes first
//! and the virtual time `V` follows the start tag served. When every client is backlogged,
//! permits go to clients in proportion to their weights; a client with nothing waiting simply
//! has no tags, so its share goes to the others, and when it returns it starts at `V` with no
//! hoarded credit. Two classes: every waiter of the interactive class goes before any of the
//! background class (async jobs), which gets only what interactive traffic leaves.

use std::collections::VecDeque;

/// Most lanes (clients) the queue keeps apart.
pub const MAX_LANES: usize = 1024;

/// Priority class of a waiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A client is waiting for the answer (sync requests).
    Interactive = 0,
    /// Nobody is waiting on the line (async jobs).
    Background = 1,
}

struct Entry<T> {
    start: f64,
    seq: u64,
    item: T,
}

struct ClassQueues<T> {
    virtual_time: f64,
    finish: Vec<f64>,
    queues: Vec<VecDeque<Entry<T>>>,
    len: usize,
}

impl<T> ClassQueues<T> {
    fn new(clients: usize) -> Self {
        ClassQueues {
            virtual_time: 0.0,
            finish: vec![0.0; clients],
            queues: (0..clients).map(|_| VecDeque::new()).collect(),
            len: 0,
        }
    }

    fn next_start(&self, client: usize) -> f64 {
        self.virtual_time.max(self.finish[client])
    }

    fn head(&self) -> Option<usize> {
        (0..self.queues.len())
            .filter_map(|c| self.queues[c].front().map(|e| (c, e.start, e.seq)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)))
            .map(|(c, _, _)| c)
    }
}

/// Waiters of several clients, served in weighted fair order.
pub struct FairQueue<T> {
    weights: Vec<f64>,
    classes: [ClassQueues<T>; 2],
    seq: u64,
}

impl<T> FairQueue<T> {
    /// A queue for clients with these weights (index = client).
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<f64> = weights.iter().map(|&w| f64::from(w.max(1))).collect();
        let n = weights.len();
        FairQueue { weights, classes: [ClassQueues::new(n), ClassQueues::new(n)], seq: 0 }
    }

    /// The lane of `client`, added with weight 1 when the client is newer than the weights
    /// (a reload of the clients file added it). Positions from [`MAX_LANES`] on share the
    /// last lane, so a stray position cannot grow the queue without bound.
    pub fn lane(&mut self, client: usize) -> usize {
        let client = client.min(MAX_LANES - 1);
        while self.weights.len() <= client {
            self.weights.push(1.0);
            for queues in &mut self.classes {
                queues.finish.push(0.0);
                queues.queues.push(VecDeque::new());
            }
        }
        client
    }

    /// Waiters in the queue.
    pub fn len(&self) -> usize {
        self.classes[0].len + self.classes[1].len
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many waiters would be served before a new waiter of `client` in `class`.
    pub fn rank_of_new(&self, client: usize, class: Class) -> usize {
        let queues = &self.classes[class as usize];
        let start = queues.next_start(client);
        let ahead_in_class: usize =
            queues.queues.iter().map(|q| q.iter().take_while(|e| e.start <= start).count()).sum();
        let ahead_in_higher = if class == Class::Background { self.classes[0].len } else { 0 };
        ahead_in_class + ahead_in_higher
    }

    /// How many permit intervals a new waiter of `client` in `class` should expect to wait:
    /// the larger of its rank (who is ahead now) and its own backlog served at its weighted
    /// share of the clients that are waiting (the rank alone misses the other clients'
    /// future arrivals, which may be tagged ahead of it).
    pub fn expected_intervals(&self, client: usize, class: Class) -> f64 {
        let queues = &self.classes[class as usize];
        let own = queues.queues[client].len() as f64;
        let active: f64 = (0..self.weights.len())
            .filter(|&c| c == client || !queues.queues[c].is_empty())
            .map(|c| self.weights[c])
            .sum();
        let by_share = own * active / self.weights[client];
        let higher = if class == Class::Background { self.classes[0].len as f64 } else { 0.0 };
        (self.rank_of_new(client, class) as f64).max(by_share + higher)
    }

    /// Adds a waiter.
    pub fn push(&mut self, client: usize, class: Class, item: T) {
        let weight = self.weights[client];
        let queues = &mut self.classes[class as usize];
        let start = queues.next_start(client);
        queues.finish[client] = start + 1.0 / weight;
        self.seq += 1;
        queues.queues[client].push_back(Entry { start, seq: self.seq, item });
        queues.len += 1;
    }

    /// Takes the waiter to serve next, with its client.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        for queues in &mut self.classes {
            if let Some(client) = queues.head() {
                let entry = queues.queues[client].pop_front().expect("head has an entry");
                queues.virtual_time = entry.start;
                queues.len -= 1;
                return Some((client, entry.item));
            }
        }
        None
    }

    /// Drops the waiters `keep` says no to (gone, or past their deadline). The client's
    /// later waiters move up into the freed places, so a dropped waiter costs its client no
    /// share.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for queues in &mut self.classes {
            for (client, queue) in queues.queues.iter_mut().enumerate() {
                let step = 1.0 / self.weights[client];
                let mut shift = 0.0;
                queue.retain_mut(|e| {
                    if keep(&e.item) {
                        e.start -= shift;
                        true
                    } else {
                        shift += step;
                        false
                    }
                });
                queues.finish[client] -= shift;
            }
            queues.len = queues.queues.iter().map(VecDeque::len).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(queue: &mut FairQueue<u32>, n: usize) -> Vec<usize> {
        (0..n).map(|_| queue.pop().unwrap().0).collect()
    }

    #[test]
    fn backlogged_clients_share_by_weight() {
        let mut q = FairQueue::new(&[3, 1]);
        for i in 0..40 {
            q.push(0, Class::Interactive, i);
            q.push(1, Class::Interactive, i);
        }
        let order = served(&mut q, 40);
        let heavy = order.iter().filter(|&&c| c == 0).count();
        assert_eq!((heavy, 40 - heavy), (30, 10));
        // Within every window of four, three go to the heavy client.
        for window in order.chunks(4) {
            assert_eq!(window.iter().filter(|&&c| c == 0).count(), 3, "{order:?}");
        }
    }

    #[test]
    fn an_idle_clients_share_goes_to_the_busy_one_without_hoarding() {
        let mut q = FairQueue::new(&[1, 1]);
        for i in 0..10 {
            q.push(0, Class::Interactive, i);
        }
        assert_eq!(served(&mut q, 5), vec![0; 5]);
        // Client 1 arrives late: it is not owed the five it missed.
        for i in 0..5 {
            q.push(1, Class::Interactive, i);
        }
        let order = served(&mut q, 10);
        assert_eq!(order.iter().filter(|&&c| c == 1).count(), 5);
        assert_eq!(&order[..4], &[1, 0, 1, 0][..], "{order:?}");
    }

    #[test]
    fn a_client_added_after_start_gets_a_lane_of_its_own() {
        let mut q = FairQueue::new(&[1]);
        assert_eq!(q.lane(2), 2);
        for i in 0..4 {
            q.push(0, Class::Interactive, i);
            q.push(2, Class::Interactive, i);
        }
        assert_eq!(served(&mut q, 4), vec![0, 2, 0, 2]);
        assert_eq!(q.lane(usize::MAX), MAX_LANES - 1);
    }

    #[test]
    fn background_waits_for_interactive() {
        let mut q = FairQueue::new(&[1]);
        q.push(0, Class::Background, 1);
        q.push(0, Class::Interactive, 2);
        assert_eq!(q.rank_of_new(0, Class::Background), 2);
        assert_eq!(q.rank_of_new(0, Class::Interactive), 1);
        assert_eq!(q.pop().unwrap().1, 2);
        assert_eq!(q.pop().unwrap().1, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn rank_counts_who_goes_first() {
        let mut q = FairQueue::new(&[1, 1]);
        for i in 0..4 {
            q.push(0, Class::Interactive, i);
        }
        // A new waiter of the idle client 1 goes right after the head of client 0.
        assert_eq!(q.rank_of_new(1, Class::Interactive), 1);
        assert_eq!(q.rank_of_new(0, Class::Interactive), 4);
        q.retain(|&i| i % 2 == 0);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn dropped_waiters_cost_their_client_nothing() {
        let mut q = FairQueue::new(&[1, 1]);
        for i in 0..4 {
            q.push(0, Class::Interactive, (0, i));
            q.push(1, Class::Interactive, (1, i));
        }
        // Two of client 1's waiters give up; its last one moves up into their places.
        q.retain(|&(client, i)| !(client == 1 && (i == 1 || i == 2)));
        let order: Vec<_> = (0..4).map(|_| q.pop().unwrap().1).collect();
        assert_eq!(order, [(0, 0), (1, 0), (0, 1), (1, 3)]);
    }

    #[test]
    fn expected_wait_follows_the_weighted_share() {
        let mut q = FairQueue::new(&[3, 1]);
        for i in 0..15 {
            q.push(0, Class::Interactive, i);
            q.push(1, Class::Interactive, i);
        }
        // The light client's 16th waiter: behind 15 of its own at a quarter of the rate.
        assert_eq!(q.expected_intervals(1, Class::Interactive), 60.0);
        // The heavy client's: behind 15 at three quarters (its rank, 20, is the same here).
        assert!((q.expected_intervals(0, Class::Interactive) - 20.0).abs() < 1e-9);
        // Alone, a client is next.
        let alone: FairQueue<u32> = FairQueue::new(&[3, 1]);
        assert_eq!(alone.expected_intervals(1, Class::Interactive), 0.0);
    }
}
