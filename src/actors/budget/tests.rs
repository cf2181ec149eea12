//! The actor on real time: the fast path, the queue, refusals and pauses through messages.

use std::time::{Duration, Instant};

use actix::Actor;
use slog::{o, Discard, Logger};

use super::*;
use crate::upstream::RateSignal;

const MS: Duration = Duration::from_millis(1);

fn start(per_minute: u32, burst: u32, queue_max: usize, weights: Vec<u32>) -> (BudgetHandle, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(BudgetShared::try_new(per_minute, burst, weights).unwrap());
    let log = Logger::root(Discard, o!());
    let addr = Budget::new(shared.clone(), queue_max, metrics.clone(), &log).start();
    (BudgetHandle::new(shared, addr, &metrics), metrics)
}

#[actix_rt::test]
async fn queued_requests_get_permits_at_the_rate() {
    // 600/min: one permit per 100 ms, burst 1.
    let (budget, metrics) = start(600, 1, 100, vec![1]);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(5);
    budget.acquire(0, Class::Interactive, deadline, Duration::ZERO).await.unwrap();
    budget.acquire(0, Class::Interactive, deadline, Duration::ZERO).await.unwrap();
    budget.acquire(0, Class::Interactive, deadline, Duration::ZERO).await.unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed >= 195 * MS && elapsed < 1000 * MS, "{elapsed:?}");
    assert_eq!(metrics.budget_grants.with_label_values(&["fast"]).get(), 1);
    assert_eq!(metrics.budget_grants.with_label_values(&["queued"]).get(), 2);
}

#[actix_rt::test]
async fn a_request_that_cannot_be_served_in_time_is_refused_at_once() {
    let (budget, metrics) = start(60, 1, 100, vec![1]); // one per second
    let t0 = Instant::now();
    budget.acquire(0, Class::Interactive, t0 + Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let refusal = budget.acquire(0, Class::Interactive, t0 + 300 * MS, Duration::ZERO).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::Deadline);
    assert!(t0.elapsed() < 250 * MS, "refused without waiting for the 300 ms deadline");
    assert!(refusal.retry_after > 500 * MS && refusal.retry_after <= Duration::from_secs(1));
    assert_eq!(metrics.budget_rejections.with_label_values(&["deadline"]).get(), 1);
}

#[actix_rt::test]
async fn a_hopeless_deadline_is_refused_on_the_worker_without_asking_the_actor() {
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(BudgetShared::try_new(60, 1, vec![1]).unwrap());
    // An actor that never runs: any question to it fails (and would be a queue_full refusal).
    let addr = actix::Context::<Budget>::new().address();
    let budget = BudgetHandle::new(shared, addr, &metrics);
    let t0 = Instant::now();
    budget.acquire(0, Class::Interactive, t0 + Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let refusal = budget.acquire(0, Class::Interactive, t0 + 300 * MS, Duration::ZERO).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::Deadline);
    assert!(refusal.retry_after > 500 * MS && refusal.retry_after <= Duration::from_secs(1), "{refusal:?}");
    assert_eq!(metrics.budget_rejections.with_label_values(&["deadline"]).get(), 1);
    // A deadline the next permit can meet does go to the actor (which cannot answer here).
    let refusal = budget.acquire(0, Class::Interactive, t0 + Duration::from_secs(5), Duration::ZERO).await;
    assert_eq!(refusal.unwrap_err().reason, RefusalReason::QueueFull);
}

#[actix_rt::test]
async fn a_full_queue_refuses_with_the_time_to_drain_it() {
    let (budget, metrics) = start(60, 1, 1, vec![1]);
    let far = Instant::now() + Duration::from_secs(30);
    budget.acquire(0, Class::Interactive, far, Duration::ZERO).await.unwrap();
    let waiting = {
        let budget = budget.clone();
        actix_rt::spawn(async move { budget.acquire(0, Class::Interactive, far, Duration::ZERO).await })
    };
    while budget.shared().waiting() == 0 {
        actix_rt::task::yield_now().await;
    }
    let refusal = budget.acquire(0, Class::Interactive, far, Duration::ZERO).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::QueueFull);
    assert!(refusal.retry_after >= Duration::from_millis(1500), "{refusal:?}");
    assert_eq!(metrics.budget_rejections.with_label_values(&["queue_full"]).get(), 1);
    waiting.abort();
}

#[actix_rt::test]
async fn a_429_pauses_every_dispatch_until_retry_after() {
    let (budget, metrics) = start(60_000, 10, 100, vec![1]);
    let signal = RateSignal { retry_after: Some(300 * MS), ..RateSignal::default() };
    let t0 = Instant::now();
    budget.learn(&signal, true);
    budget.acquire(0, Class::Interactive, t0 + Duration::from_secs(5), Duration::ZERO).await.unwrap();
    assert!(t0.elapsed() >= 290 * MS, "{:?}", t0.elapsed());
    // The actor logged and counted the pause.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metrics.budget_pauses.with_label_values(&["retry_after"]).get() == 0 {
        assert!(Instant::now() < deadline);
        actix_rt::task::yield_now().await;
    }
}
