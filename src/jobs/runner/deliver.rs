//! A finished job's callback: delivered (or given up) through the runner's delivery settings,
//! each change of its state saved with the job, under the job's span when traced.

use bytes::Bytes;
use slog::warn;

use super::State;
use crate::jobs::callback::DeliveryOutcome;
use crate::jobs::{CallbackState, DeliveryState, Job};
use crate::trace::{LogIds, Parent};

/// The body a callback carries: the final status document, without the delivery state.
fn callback_body(job: &Job) -> Bytes {
    let mut doc = job.doc.clone();
    doc.callback = None;
    Bytes::from(serde_json::to_vec(&doc).expect("status documents serialise"))
}

/// Delivers the job's callback unless there is none or it is settled already.
pub(super) async fn deliver(state: &State, job: Job, trace: &Parent) {
    let (Some(url), Some(delivery)) = (job.work.as_ref().and_then(|w| w.callback_url.clone()), &state.delivery) else {
        return;
    };
    let mut callback = job.doc.callback.clone().unwrap_or_default();
    if matches!(callback.state, DeliveryState::Delivered | DeliveryState::GaveUp) {
        return;
    }
    let body = callback_body(&job);
    let (store, metrics, id) = (&state.store, &state.metrics, job.id().to_owned());
    let outcome = delivery
        .deliver(&state.callback_client, &url, body, &mut callback, trace, |now: &CallbackState| {
            let result = if now.state == DeliveryState::Delivered { "success" } else { "failure" };
            metrics.callback_attempts.with_label_values(&[result]).inc();
            let (store, id, now) = (store.clone(), id.clone(), now.clone());
            async move {
                let _ = store.update_callback(&id, &now).await;
            }
        })
        .await;
    let result = match outcome {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::GaveUp => "gave_up",
        DeliveryOutcome::Refused(_) => "refused",
    };
    state.metrics.callbacks.with_label_values(&[result]).inc();
    if result != "delivered" {
        warn!(state.log, "callback_gave_up";
            "request_id" => job.id(), "attempts" => callback.attempts, "last_status_code" => callback.last_status_code, "result" => result,
            LogIds::of_parent(trace));
    }
}
