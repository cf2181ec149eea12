//! The load and the verdict of the Redis failover tests (Sentinel, Cluster): two couriers get
//! sync requests over their shared budget and async jobs with signed callbacks while Redis's
//! primary is killed; afterwards every answer must be one a client can act on, every accepted
//! job final and its callback delivered (a repeat counted, at most one per job).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::receiver::Receiver;
use super::{read_answer, Pair};

/// Commands only a client of courier's kind sends to a primary: a restarted old primary that
/// shows any of them in its command statistics was written to or read by courier. (A replica
/// applies its primary's scripts as their effects, never as `EVAL`/`EVALSHA`, and the
/// Sentinels send none of these.)
pub const COURIER_COMMANDS: [&str; 7] = [
    "cmdstat_evalsha",
    "cmdstat_eval",
    "cmdstat_xreadgroup",
    "cmdstat_xautoclaim",
    "cmdstat_hmget",
    "cmdstat_get",
    "cmdstat_wait",
];

/// One answer of the load.
pub struct Answered {
    pub at: Instant,
    pub sync: bool,
    pub status: u16,
    pub code: String,
    pub request_id: String,
}

/// The load running in the background: every 50 ms a request to each courier in turn, every
/// fourth one an async job with a callback to `hook`.
pub struct Load {
    stop: Rc<Cell<bool>>,
    answers: Rc<RefCell<Vec<Answered>>>,
    running: actix_rt::task::JoinHandle<()>,
}

impl Load {
    /// Starts it; request ids are `<prefix>-<n>`.
    pub fn start(couriers: Rc<Vec<Pair>>, hook: String, prefix: &'static str) -> Load {
        let (stop, answers) = (Rc::new(Cell::new(false)), Rc::new(RefCell::new(Vec::new())));
        let running = actix_rt::spawn(load(couriers, hook, prefix, stop.clone(), answers.clone()));
        Load { stop, answers, running }
    }

    /// How many jobs were accepted (202) so far.
    pub fn accepted(&self) -> usize {
        self.answers.borrow().iter().filter(|a| !a.sync && a.status == 202).count()
    }

    /// Whether a job was accepted (202) after `at`.
    pub fn accepted_after(&self, at: Instant) -> bool {
        self.answers.borrow().iter().any(|a| !a.sync && a.status == 202 && a.at > at)
    }

    /// Stops sending, waits for the answers still due and returns them all.
    pub async fn finish(self) -> Vec<Answered> {
        self.stop.set(true);
        self.running.await.expect("load");
        self.answers.take()
    }
}

async fn load(
    couriers: Rc<Vec<Pair>>,
    hook: String,
    prefix: &'static str,
    stop: Rc<Cell<bool>>,
    answers: Rc<RefCell<Vec<Answered>>>,
) {
    let mut tick = actix_rt::time::interval(Duration::from_millis(50));
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while !stop.get() {
        tick.tick().await;
        n += 1;
        let (couriers, answers, hook) = (couriers.clone(), answers.clone(), hook.clone());
        tasks.push(actix_rt::spawn(async move {
            let pair = &couriers[n % couriers.len()];
            let sync = !n.is_multiple_of(4);
            let request_id = format!("{prefix}-{n}");
            let body = match sync {
                true => json!({"data": {"input": request_id}}),
                false => json!({"data": {"input": request_id}, "options": {"async": true, "callback_url": hook}}),
            };
            let headers = [("x-request-id", request_id.as_str()), ("x-request-timeout", "2")];
            let answer = pair.process_with(body, &headers).await;
            let code = if answer.status.is_success() { String::new() } else { answer.error_code().to_owned() };
            answers.borrow_mut().push(Answered {
                at: Instant::now(),
                sync,
                status: answer.status.as_u16(),
                code,
                request_id,
            });
        }));
    }
    for task in tasks {
        task.await.expect("load task");
    }
}

/// `/readyz`'s `checks.shared_state` (empty when courier does not answer).
pub async fn shared_state(pair: &Pair) -> String {
    let Ok(mut response) = pair.http.get(pair.admin_url("/readyz")).send().await else { return String::new() };
    let body: Value = response.json().await.unwrap_or_default();
    body["checks"]["shared_state"].as_str().unwrap_or_default().to_owned()
}

/// Polls `check` every 50 ms until it holds, for at most `bound`; returns when it held.
pub async fn until<F: std::future::Future<Output = bool>>(
    bound: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> Instant {
    let started = Instant::now();
    loop {
        if check().await {
            return Instant::now();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the load came to, once checked.
pub struct Verdict {
    /// Answers by (sync, status, error code).
    pub tally: BTreeMap<(bool, u16, String), usize>,
    /// Jobs answered 202, and how many of them before the kill.
    pub accepted: usize,
    pub accepted_before_kill: usize,
    /// Final states of the accepted jobs, and the runs taken over from a lost runner.
    pub by_status: BTreeMap<String, usize>,
    pub takeovers: u64,
    /// Jobs answered 503 that exist all the same (their withdrawal could not be made).
    pub refused_but_run: usize,
    /// Callbacks received, for how many jobs, and how many jobs got more than one.
    pub callbacks: usize,
    pub called_back: usize,
    pub repeated: usize,
}

/// Checks the answers of the load (`killed`: when the primary died): every answer one a client
/// can act on (sync 200 or 429, async 202 or 503 `job_store_unavailable`); every accepted job
/// completed (at least 5 of them before the kill); every accepted job's callback arrived,
/// signed with `secret`, at most twice.
pub async fn verdict(
    couriers: &[Pair],
    receiver: &Receiver,
    secret: &str,
    answers: &[Answered],
    killed: Instant,
) -> Verdict {
    // Every answer was one a client can act on: sync 200 or 429 (the shared budget), async 202 or
    // 503 job_store_unavailable (nothing accepted).
    let mut tally: BTreeMap<(bool, u16, String), usize> = BTreeMap::new();
    for o in answers {
        *tally.entry((o.sync, o.status, o.code.clone())).or_default() += 1;
    }
    for ((sync, status, code), n) in &tally {
        let fine = if *sync {
            *status == 200 || *status == 429
        } else {
            *status == 202 || (*status == 503 && code == "job_store_unavailable")
        };
        assert!(fine, "{n} answers {status} {code} (sync: {sync}); all: {tally:?}");
    }

    // Every accepted job reaches a final state; runs repeated after the failover are counted.
    let accepted: Vec<&Answered> = answers.iter().filter(|o| !o.sync && o.status == 202).collect();
    let accepted_before_kill = accepted.iter().filter(|o| o.at < killed).count();
    assert!(accepted_before_kill >= 5, "too few jobs accepted before the kill: {accepted_before_kill}");
    let mut takeovers = 0;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for o in &accepted {
        let url = couriers[0].url(&format!("/api/external/status/{}", o.request_id));
        let deadline = Instant::now() + Duration::from_secs(30);
        let doc = loop {
            let answer = read_answer(couriers[0].http.get(&url).send().await.expect("status")).await;
            assert_eq!(answer.status, 200, "an accepted job is known: {answer:?}");
            if matches!(answer.body["status"].as_str(), Some("completed" | "failed")) {
                break answer.body;
            }
            assert!(Instant::now() < deadline, "job {} is not final: {answer:?}", o.request_id);
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        };
        takeovers += doc["takeovers"].as_u64().unwrap_or(0);
        *by_status.entry(doc["status"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(by_status.get("completed").copied().unwrap_or(0), accepted.len(), "{by_status:?}");

    // Jobs answered 503 whose submit could not withdraw them (the primary died between the
    // write and the answer) may exist and run: counted, as the documentation says.
    let mut refused_but_run = 0;
    for o in answers.iter().filter(|o| !o.sync && o.status == 503) {
        let url = couriers[0].url(&format!("/api/external/status/{}", o.request_id));
        let answer = read_answer(couriers[0].http.get(&url).send().await.expect("status")).await;
        refused_but_run += usize::from(answer.status == 200);
    }

    // Every accepted job's callback arrives, signed; one may repeat when its delivery was
    // recorded on the old primary only (at least once), never more than once here.
    let accepted_ids: BTreeMap<&str, ()> = accepted.iter().map(|o| (o.request_id.as_str(), ())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let per_job = loop {
        let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
        for delivery in receiver.got() {
            assert!(delivery.signed_with(secret), "an unsigned callback");
            let id = delivery.json()["request_id"].as_str().unwrap_or_default().to_owned();
            *per_job.entry(id).or_default() += 1;
        }
        if accepted_ids.keys().all(|id| per_job.contains_key(*id)) {
            break per_job;
        }
        assert!(Instant::now() < deadline, "callbacks missing: {} of {} jobs", per_job.len(), accepted_ids.len());
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let repeated = per_job.values().filter(|n| **n > 1).count();
    assert!(per_job.values().all(|n| *n <= 2), "a callback came more than twice: {per_job:?}");

    Verdict {
        tally,
        accepted: accepted.len(),
        accepted_before_kill,
        by_status,
        takeovers,
        refused_but_run,
        callbacks: per_job.values().sum(),
        called_back: per_job.len(),
        repeated,
    }
}
