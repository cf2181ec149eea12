//! State changes of stored jobs, each a compare-and-set: `start`, `release` and
//! `update_callback` read the document with its version and write it back only if the version
//! is unchanged; `finish` writes only over `processing`.
//!
//! `start` is also where a job that keeps stopping its process is stopped itself: a job found
//! `processing` was held by a runner that stopped before finishing it. A job whose input could
//! crash courier would crash every replica that takes it over in turn, so once its runs ended
//! that way `max_runs` times (`COURIER_JOB_MAX_RUNS`), it is failed in the same write instead of
//! being run again. Runs handed over at a graceful shutdown (`release`) do not count.

use super::{decode, encode, RedisStore};
use crate::jobs::{CallbackState, Job, JobError, JobStatus, Start, StoreError, Timestamp};

/// How often a read-modify-write is tried again after another writer changed the job first.
const CAS_ATTEMPTS: usize = 16;

/// What `start` makes of a stored job, given how many interrupted runs a job may have.
pub(super) fn started(job: &Job, max_runs: u32) -> Start {
    let mut next = job.clone();
    match job.doc.status {
        JobStatus::Pending => next.doc.status = JobStatus::Processing,
        JobStatus::Processing => {
            // Its previous runner stopped while holding it: a takeover. Every run so far (the
            // first, and one per earlier takeover) ended before finishing, the handed-over ones
            // at a graceful shutdown, the others with their process.
            next.doc.takeovers = job.doc.takeovers.saturating_add(1);
            let handoffs = job.work.as_ref().map_or(0, |work| work.handoffs);
            let interrupted = job.doc.takeovers.saturating_add(1).saturating_sub(handoffs);
            if interrupted >= max_runs {
                next.doc.status = JobStatus::Failed;
                next.doc.error = Some(JobError::run_interrupted(interrupted));
                next.doc.completed_at = Some(Timestamp::now());
                return Start::Abandoned(next);
            }
        }
        JobStatus::Completed | JobStatus::Failed => return Start::Final(next),
    }
    Start::Run(next)
}

/// What `release` makes of a stored job: a running job counts one more run handed over.
fn released(job: &Job) -> Option<Job> {
    if job.doc.status != JobStatus::Processing {
        return None;
    }
    let mut next = job.clone();
    let work = next.work.as_mut()?;
    work.handoffs = work.handoffs.saturating_add(1);
    Some(next)
}

/// Outcome of one conditional write.
enum Written {
    Yes,
    Conflict,
    Gone,
}

impl RedisStore {
    pub(super) async fn start_job(&self, id: &str) -> Result<Option<Start>, StoreError> {
        let max_runs = self.settings.max_runs;
        let updated = self
            .update(id, "start", |job| match started(job, max_runs) {
                Start::Final(_) => None,
                Start::Run(next) | Start::Abandoned(next) => Some(next),
            })
            .await?;
        Ok(updated.map(|(job, written)| match (written, job.doc.status) {
            (false, _) => Start::Final(job),
            (true, JobStatus::Processing) => Start::Run(job),
            (true, _) => Start::Abandoned(job),
        }))
    }

    pub(super) async fn release_job(&self, id: &str) -> Result<(), StoreError> {
        self.update(id, "release", released).await.map(drop)
    }

    pub(super) async fn set_callback(&self, id: &str, callback: &CallbackState) -> Result<(), StoreError> {
        self.update(id, "update callback", |job| {
            let mut next = job.clone();
            next.doc.callback = Some(callback.clone());
            Some(next)
        })
        .await
        .map(drop)
    }

    pub(super) async fn finish_job(&self, job: &Job) -> Result<bool, StoreError> {
        debug_assert!(job.doc.status.is_final(), "finish takes a final job");
        let written: i64 = self
            .scripts
            .finish
            .key(self.keys.job(job.id()))
            .arg(job.doc.status.as_str())
            .arg(encode(job)?)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(self.health.fail("finish"))?;
        Ok(written == 1)
    }

    /// Reads the job, applies `change` and writes the result back if nobody wrote in
    /// between, trying again otherwise. Returns the job as it now is and whether this call
    /// wrote it (`None`: no such job).
    async fn update(
        &self,
        id: &str,
        op: &'static str,
        change: impl Fn(&Job) -> Option<Job>,
    ) -> Result<Option<(Job, bool)>, StoreError> {
        let key = self.keys.job(id);
        for _ in 0..CAS_ATTEMPTS {
            let (doc, ver): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("doc")
                .arg("ver")
                .query_async(&mut self.conn.clone())
                .await
                .map_err(self.health.fail(op))?;
            let Some(doc) = doc else { return Ok(None) };
            let job = decode(&doc)?;
            let Some(next) = change(&job) else { return Ok(Some((job, false))) };
            match self.replace_if_version(&key, ver.as_deref().unwrap_or(""), &next, op).await? {
                Written::Yes => return Ok(Some((next, true))),
                Written::Gone => return Ok(None),
                Written::Conflict => continue,
            }
        }
        Err(StoreError::Unavailable(format!("redis {op}: the job kept changing under this write")))
    }

    async fn replace_if_version(
        &self,
        key: &str,
        ver: &str,
        job: &Job,
        op: &'static str,
    ) -> Result<Written, StoreError> {
        let outcome: i64 = self
            .scripts
            .replace_if_version
            .key(key)
            .arg(ver)
            .arg(job.doc.status.as_str())
            .arg(encode(job)?)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(self.health.fail(op))?;
        Ok(match outcome {
            1 => Written::Yes,
            0 => Written::Conflict,
            _ => Written::Gone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::RUN_INTERRUPTED;

    fn job(status: JobStatus) -> Job {
        Job::for_test("r-1", status, true)
    }

    /// The job as `takeovers` takeovers and `handoffs` graceful handovers left it.
    fn running(takeovers: u32, handoffs: u32) -> Job {
        let mut job = job(JobStatus::Processing);
        job.doc.takeovers = takeovers;
        job.work.as_mut().unwrap().handoffs = handoffs;
        job
    }

    fn run(start: Start) -> Job {
        match start {
            Start::Run(job) => job,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn start_moves_pending_to_processing() {
        let next = run(started(&job(JobStatus::Pending), 2));
        assert_eq!((next.doc.status, next.doc.takeovers), (JobStatus::Processing, 0));
    }

    #[test]
    fn start_again_counts_a_takeover() {
        let next = run(started(&job(JobStatus::Processing), 3));
        assert_eq!((next.doc.status, next.doc.takeovers), (JobStatus::Processing, 1));
        assert_eq!(run(started(&next, 3)).doc.takeovers, 2);
    }

    #[test]
    fn start_leaves_final_jobs_alone() {
        for status in [JobStatus::Completed, JobStatus::Failed] {
            let done = job(status);
            assert_eq!(started(&done, 2), Start::Final(done));
        }
    }

    #[test]
    fn a_job_whose_runs_ended_with_their_process_max_runs_times_is_failed_not_run() {
        // max_runs 2: the first takeover runs it again (one run interrupted), the second
        // finds two interrupted runs and fails it.
        assert!(matches!(started(&running(0, 0), 2), Start::Run(_)));
        let Start::Abandoned(failed) = started(&running(1, 0), 2) else { panic!("run a third time") };
        assert_eq!(failed.doc.status, JobStatus::Failed);
        assert_eq!(failed.doc.takeovers, 2, "the takeover that failed it counts");
        assert!(failed.doc.completed_at.is_some());
        let error = failed.doc.error.unwrap();
        assert_eq!((error.code.as_str(), error.retryable), (RUN_INTERRUPTED, false));
        assert!(error.message.contains("2 runs"), "{}", error.message);

        // max_runs 1: never taken over; a larger one allows more takeovers.
        assert!(matches!(started(&running(0, 0), 1), Start::Abandoned(_)));
        assert!(matches!(started(&running(3, 0), 5), Start::Run(_)));
        assert!(matches!(started(&running(4, 0), 5), Start::Abandoned(_)));
    }

    #[test]
    fn runs_handed_over_at_a_graceful_shutdown_do_not_count() {
        // Two runs ended, one of them handed over: one interrupted, so it runs again.
        assert!(matches!(started(&running(1, 1), 2), Start::Run(_)));
        assert!(matches!(started(&running(2, 1), 2), Start::Abandoned(_)));
    }

    #[test]
    fn release_counts_a_handoff_of_a_running_job_only() {
        let next = released(&running(0, 0)).unwrap();
        assert_eq!(next.work.unwrap().handoffs, 1);
        assert_eq!(released(&job(JobStatus::Pending)), None);
        assert_eq!(released(&job(JobStatus::Completed)), None);
    }
}
