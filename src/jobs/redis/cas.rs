//! State changes of stored jobs, each a compare-and-set: `start` and `update_callback` read
//! the document with its version and write it back only if the version is unchanged;
//! `finish` writes only over `processing`.

use super::{decode, encode, fail, RedisStore};
use crate::jobs::{CallbackState, Job, JobStatus, StoreError};

/// How often a read-modify-write is tried again after another writer changed the job first.
const CAS_ATTEMPTS: usize = 16;

/// What `start` makes of a stored job: `None` when nothing changes (the job is final).
pub(super) fn started(job: &Job) -> Option<Job> {
    let mut next = job.clone();
    match job.doc.status {
        JobStatus::Pending => next.doc.status = JobStatus::Processing,
        // Its previous runner died while holding it.
        JobStatus::Processing => next.doc.takeovers = next.doc.takeovers.saturating_add(1),
        JobStatus::Completed | JobStatus::Failed => return None,
    }
    Some(next)
}

/// Outcome of one conditional write.
enum Written {
    Yes,
    Conflict,
    Gone,
}

impl RedisStore {
    pub(super) async fn start_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.update(id, "start", started).await
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
            .map_err(fail("finish"))?;
        Ok(written == 1)
    }

    /// Reads the job, applies `change` and writes the result back if nobody wrote in
    /// between, trying again otherwise. Returns the job as it now is (`None`: no such job).
    async fn update(
        &self,
        id: &str,
        op: &'static str,
        change: impl Fn(&Job) -> Option<Job>,
    ) -> Result<Option<Job>, StoreError> {
        let key = self.keys.job(id);
        for _ in 0..CAS_ATTEMPTS {
            let (doc, ver): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("doc")
                .arg("ver")
                .query_async(&mut self.conn.clone())
                .await
                .map_err(fail(op))?;
            let Some(doc) = doc else { return Ok(None) };
            let job = decode(&doc)?;
            let Some(next) = change(&job) else { return Ok(Some(job)) };
            match self.replace_if_version(&key, ver.as_deref().unwrap_or(""), &next, op).await? {
                Written::Yes => return Ok(Some(next)),
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
            .map_err(fail(op))?;
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

    fn job(status: JobStatus) -> Job {
        Job::for_test("r-1", status, false)
    }

    #[test]
    fn start_moves_pending_to_processing() {
        let next = started(&job(JobStatus::Pending)).unwrap();
        assert_eq!((next.doc.status, next.doc.takeovers), (JobStatus::Processing, 0));
    }

    #[test]
    fn start_again_counts_a_takeover() {
        let next = started(&job(JobStatus::Processing)).unwrap();
        assert_eq!((next.doc.status, next.doc.takeovers), (JobStatus::Processing, 1));
        assert_eq!(started(&next).unwrap().doc.takeovers, 2);
    }

    #[test]
    fn start_leaves_final_jobs_alone() {
        assert_eq!(started(&job(JobStatus::Completed)), None);
        assert_eq!(started(&job(JobStatus::Failed)), None);
    }
}
