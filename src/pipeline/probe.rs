//! The Prober sends the Breaker's background probes: one small `/process` call each, with a
//! permit from the rate budget and the current token, on its own awc client.
//!
//! **Why a real `/process` call.** The upstream's API (the integration spec) has no health
//! endpoint: the token endpoint says nothing about `/process`, and any other path would test a
//! route clients never use. A one-word input is the cheapest call that proves what clients
//! need. It costs what a client call costs, so it takes a budget permit like one (none free: no
//! probe this time), and it is counted in `courier_upstream_attempts_total` like one.
//!
//! It is an actor (on the main arbiter) because the Breaker must reach it by message without
//! knowing the pipeline above it: it registers as a `Recipient<RunProbe>`. It goes through the
//! pipeline's own stages (budget, token, attempt, classify, report) on a lane of its own.

use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::lane::{Lane, LaneSettings};
use crate::actors::breaker::{Breaker, ProbeRan, RunProbe, UseProber};
use crate::request_id::RequestId;
use crate::trace::Parent;
use crate::upstream::{send_attempt, AttemptRequest, Outcome};

/// The probe's body: the smallest request the upstream processes.
const PROBE_BODY: &[u8] = br#"{"data":{"input":"probe","format":"text"},"options":{}}"#;

/// The actor.
pub struct Prober {
    lane: Rc<Lane>,
    breaker: Addr<Breaker>,
}

impl Prober {
    /// Starts a Prober on the current thread and registers it with the settings' Breaker.
    pub fn start_here(settings: LaneSettings) -> Addr<Prober> {
        let breaker = settings.breaker.clone();
        let prober = Prober { lane: Rc::new(Lane::new(settings)), breaker: breaker.clone() }.start();
        breaker.do_send(UseProber(prober.clone().recipient()));
        prober
    }
}

impl Actor for Prober {
    type Context = Context<Self>;
}

impl Handler<RunProbe> for Prober {
    type Result = ();

    fn handle(&mut self, msg: RunProbe, ctx: &mut Context<Self>) {
        let lane = self.lane.clone();
        let breaker = self.breaker.clone();
        ctx.spawn(
            async move {
                let success = probe(&lane).await;
                // The Breaker gives the probe's place back after its lease if this is lost.
                let _ = breaker.try_send(ProbeRan { id: msg.id, success });
            }
            .into_actor(self),
        );
    }
}

/// Sends one probe: `Some(healthy)` when an attempt was made that says something about the
/// upstream's health, `None` when none was (no permit, no token) or its answer says nothing
/// (429 is the budget's business, a refused certificate configuration's).
async fn probe(lane: &Lane) -> Option<bool> {
    lane.budget.try_now().ok()?;
    if let Some(quota) = &lane.quota {
        // A probe is an attempt like any other: it counts, unattributed, or is not sent.
        quota.check(None).ok()?;
        Box::pin(quota.take(None, Instant::now() + lane.policy.attempt_timeout)).await.ok()?;
    }
    let (authorization, _) = lane.credentials.token(None, &lane.tracing, &Parent::NONE).await.ok()?;
    let api_key = lane.credentials.api_key();
    let request_id = RequestId::generate();
    let request = AttemptRequest {
        uri: &lane.process_uri,
        authorization: &authorization,
        api_key: &api_key,
        request_id: request_id.header(),
        body: Bytes::from_static(PROBE_BODY),
        timeout: lane.policy.attempt_timeout,
        max_body: lane.policy.max_body,
        max_depth: lane.policy.max_depth,
        trace: &[],
    };
    let started = Instant::now();
    let (attempt, signal) = send_attempt(&lane.client, request).await;
    let outcome = attempt.outcome();
    lane.counters.attempt(outcome);
    let rate_limited = outcome == Outcome::RateLimited;
    let quota_spent = lane.quota.as_ref().is_some_and(|q| q.learn(&signal, rate_limited));
    lane.budget.learn(&signal, rate_limited && !quota_spent);
    lane.metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
    attempt.breaker_verdict()
}
