//! Stages 2 and 7 on the Breaker's side: asking whether an attempt may go (the gate), and
//! telling the Breaker how attempts went (reports).
//!
//! Asking reads the Breaker's published state without a message ([`BreakerCell::gate`]); only
//! a half-open circuit (or one whose open period just ended) asks the actor for a probe slot.
//! Telling is batched: failures go at once (with the successes counted before them), since a
//! failure may open the circuit; successes go in batches of [`BATCH`] or every [`FLUSH_EVERY`],
//! since a success changes nothing until a failure rate is computed from them. Reports are
//! fire-and-forget into the Breaker's bounded mailbox; a full mailbox drops the report and
//! counts it (`courier_breaker_reports_dropped_total`), never blocks a request.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::IntCounter;

use crate::actors::{Breaker, BreakerCell, Gate, Outcomes, Permit, ProbeDone};

/// Successes are reported to the Breaker in batches of at most this many…
pub const BATCH: u32 = 64;
/// …or at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The pending part of a thread's reports: successes not yet told. Plain, so that what is
/// sent when can be tested without a Breaker.
#[derive(Debug, Default)]
pub struct Batch {
    successes: u32,
}

impl Batch {
    /// Takes an attempt's verdict (`None`: it says nothing about the upstream's health); the
    /// report to send now, if any.
    pub fn add(&mut self, healthy: Option<bool>) -> Option<Outcomes> {
        match healthy {
            Some(true) => {
                self.successes += 1;
                (self.successes >= BATCH).then(|| self.take())
            }
            Some(false) => Some(Outcomes { successes: std::mem::take(&mut self.successes), failures: 1 }),
            None => None,
        }
    }

    /// The successes not told yet, as a report (on the timer).
    pub fn flush(&mut self) -> Option<Outcomes> {
        (self.successes > 0).then(|| self.take())
    }

    fn take(&mut self) -> Outcomes {
        Outcomes { successes: std::mem::take(&mut self.successes), failures: 0 }
    }
}

/// A thread's link to the Breaker.
pub struct Circuit {
    cell: Arc<BreakerCell>,
    breaker: Addr<Breaker>,
    batch: Cell<Batch>,
    rejections: IntCounter,
    reports_dropped: IntCounter,
}

impl Circuit {
    /// A link to `breaker`, reading its published state from `cell`.
    pub fn new(cell: Arc<BreakerCell>, breaker: Addr<Breaker>, rejections: IntCounter, dropped: IntCounter) -> Circuit {
        Circuit { cell, breaker, batch: Cell::default(), rejections, reports_dropped: dropped }
    }

    /// Whether the circuit lets an attempt through: `Ok(probe id)` when it does (with an id
    /// when the attempt is a half-open probe), `Err(retry after)` when it is open.
    pub async fn gate(&self) -> Result<Option<u64>, Duration> {
        let verdict = match self.cell.gate(Instant::now()) {
            Gate::Pass => Ok(None),
            Gate::Reject { retry_after } => Err(retry_after),
            Gate::AskActor => match self.breaker.send(Permit).await {
                Ok(Ok(ticket)) => Ok(ticket.probe),
                Ok(Err(rejected)) => Err(rejected.retry_after),
                Err(_) => Err(Duration::from_secs(1)),
            },
        };
        if verdict.is_err() {
            self.rejections.inc();
        }
        verdict
    }

    /// Tells the Breaker an attempt's verdict (`Attempt::breaker_verdict`; `None` also when no
    /// attempt was made). A probe's verdict goes alone, at once; a probe without an attempt
    /// just gives its slot back.
    pub fn report(&self, healthy: Option<bool>, probe: Option<u64>) {
        if let Some(id) = probe {
            self.send(ProbeDone { id, success: healthy });
            return;
        }
        let mut batch = self.batch.take();
        let due = batch.add(healthy);
        self.batch.set(batch);
        if let Some(report) = due {
            self.send(report);
        }
    }

    /// Sends the successes not told yet (called every [`FLUSH_EVERY`]).
    pub fn flush(&self) {
        let mut batch = self.batch.take();
        let due = batch.flush();
        self.batch.set(batch);
        if let Some(report) = due {
            self.send(report);
        }
    }

    fn send<M>(&self, report: M)
    where
        M: Message<Result = ()> + Send + 'static,
        Breaker: Handler<M>,
    {
        if self.breaker.try_send(report).is_err() {
            self.reports_dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(report: Option<Outcomes>) -> Option<(u32, u32)> {
        report.map(|o| (o.successes, o.failures))
    }

    #[test]
    fn failures_go_at_once_with_the_successes_before_them() {
        let mut batch = Batch::default();
        assert_eq!(outcomes(batch.add(Some(true))), None);
        assert_eq!(outcomes(batch.add(Some(true))), None);
        assert_eq!(outcomes(batch.add(None)), None, "no verdict, nothing to tell");
        assert_eq!(outcomes(batch.add(Some(false))), Some((2, 1)));
        assert_eq!(outcomes(batch.flush()), None, "nothing left");
    }

    #[test]
    fn successes_go_in_batches_or_on_the_timer() {
        let mut batch = Batch::default();
        for _ in 1..BATCH {
            assert_eq!(outcomes(batch.add(Some(true))), None);
        }
        assert_eq!(outcomes(batch.add(Some(true))), Some((BATCH, 0)));
        batch.add(Some(true));
        assert_eq!(outcomes(batch.flush()), Some((1, 0)));
        assert_eq!(outcomes(batch.flush()), None);
    }
}
