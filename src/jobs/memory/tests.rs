use std::time::UNIX_EPOCH;

use super::*;

fn job(id: &str, status: JobStatus, work: bool) -> Job {
    Job::for_test(id, status, work)
}

#[actix_rt::test]
async fn jobs_move_forward_only_and_are_queued_once() {
    let store = MemoryStore::new(100, Duration::from_secs(60));
    store.submit(&job("a", JobStatus::Pending, true)).await.unwrap();
    assert_eq!(store.submit(&job("a", JobStatus::Pending, true)).await, Err(StoreError::Exists));
    assert_eq!(store.backlog().await.unwrap(), 1);
    let claims = store.next(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert!(store.next(10, Duration::from_millis(10)).await.unwrap().is_empty());
    assert!(matches!(store.start("a").await.unwrap(), Some(Start::Run(j)) if j.doc.status == JobStatus::Processing));
    let mut done = job("a", JobStatus::Completed, true);
    done.doc.attempts = 1;
    assert!(store.finish(&done).await.unwrap());
    assert!(!store.finish(&done).await.unwrap(), "a final job is not finished twice");
    assert_eq!(store.start("a").await.unwrap(), Some(Start::Final(done)));
    assert_eq!(store.backlog().await.unwrap(), 0);
}

fn synced(status: JobStatus) -> SyncEntry {
    SyncEntry {
        status,
        answer: Some(std::sync::Arc::new(crate::cache::Entry::passing(
            bytes::Bytes::from_static(br#"{"x":1}"#),
            Some("up_1".into()),
        ))),
        error: None,
        created_at: Timestamp::now(),
        completed_at: Timestamp::now(),
        attempts: 2,
        owner: Some("billing"),
        new_id: false,
        recorded: Instant::now(),
    }
}

#[actix_rt::test]
async fn records_never_overwrite_jobs_and_finished_entries_make_room() {
    // Two entries per shard: whichever shard "a" lands in still has room for one more.
    let store = MemoryStore::new(2 * SHARDS, Duration::from_secs(60));
    store.submit(&job("a", JobStatus::Pending, true)).await.unwrap();
    store.record_sync("a", synced(JobStatus::Completed));
    store.record(job("a", JobStatus::Completed, false));
    assert_eq!(store.get("a").await.unwrap().unwrap().doc.status, JobStatus::Pending);
    // Fill every shard with finished entries; each new one replaces the oldest finished one.
    for i in 0..200 {
        store.record_sync(&format!("sync-{i}"), synced(JobStatus::Completed));
    }
    let read = store.get("sync-199").await.unwrap().expect("the newest entry is kept");
    assert_eq!(read.doc.request_id, "sync-199");
    assert_eq!(read.doc.result.map(|r| r.0), Some(bytes::Bytes::from_static(br#"{"x":1}"#)));
    assert_eq!(read.doc.upstream_request_id.as_deref(), Some("up_1"));
    assert_eq!((read.doc.attempts, read.owner.as_deref(), read.work.is_none()), (2, Some("billing"), true));
    assert!(store.get("sync-0").await.unwrap().is_none(), "the oldest finished entries made room");
    assert!(store.get("a").await.unwrap().is_some(), "an unfinished job is never evicted");
    // A sync entry holds its id: a job cannot take it.
    assert_eq!(store.submit(&job("sync-199", JobStatus::Pending, true)).await, Err(StoreError::Exists));
}

#[actix_rt::test]
async fn entries_of_generated_ids_skip_the_lookup_but_not_the_bounds() {
    let store = MemoryStore::new(2 * SHARDS, Duration::from_secs(60));
    store.submit(&job("running", JobStatus::Pending, true)).await.unwrap();
    for i in 0..200 {
        store.record_sync(&format!("req_{i:016x}"), SyncEntry { new_id: true, ..synced(JobStatus::Completed) });
    }
    let kept = store.shards.iter().map(|s| s.lock().unwrap().len()).sum::<usize>();
    assert!(kept <= 2 * SHARDS, "{kept} entries kept in a store of {}", 2 * SHARDS);
    assert!(store.get(&format!("req_{:016x}", 199)).await.unwrap().is_some(), "the newest is kept");
    assert!(store.get("running").await.unwrap().is_some(), "an unfinished job is never evicted");
}

#[actix_rt::test]
async fn a_store_full_of_unfinished_jobs_refuses_new_ones() {
    let store = MemoryStore::new(SHARDS, Duration::from_secs(60));
    let mut refused = 0;
    for i in 0..100 {
        if store.submit(&job(&format!("j{i}"), JobStatus::Pending, true)).await == Err(StoreError::Full) {
            refused += 1;
        }
    }
    assert!(refused >= 100 - SHARDS, "{refused}");
    let failed = store
        .fail_unfinished(&JobError { code: "shutdown".into(), message: "stopping".into(), retryable: true })
        .await
        .unwrap();
    assert_eq!(failed.len(), 100 - refused);
    assert!(failed.iter().all(|j| j.doc.status == JobStatus::Failed && j.doc.completed_at.is_some()));
}

/// Records sync entry `id` in `shard` at `at`, as `record_sync` does.
fn sync_at(shard: &mut Shard, id: &str, cap: usize, at: Instant) -> Result<(), StoreError> {
    let id = shard.admit(id, cap, Duration::from_secs(60), at)?;
    shard.synced.push(at, id, synced(JobStatus::Completed));
    Ok(())
}

#[test]
fn sync_entries_leave_oldest_first_and_the_index_follows() {
    let mut shard = Shard::new(Hasher::default(), 16);
    let t0 = Instant::now();
    for i in 0..500u64 {
        sync_at(&mut shard, &format!("s-{i}"), 100, t0 + Duration::from_millis(i)).unwrap();
    }
    assert_eq!(shard.len(), 100);
    assert!((0..400).all(|i| shard.synced.get(&format!("s-{i}")).is_none()), "the oldest 400 left");
    assert!((400..500).all(|i| shard.synced.get(&format!("s-{i}")).is_some()), "the newest 100 stay");
    assert_eq!(sync_at(&mut shard, "s-450", 100, t0), Err(StoreError::Exists));
    // Past the TTL, all of them go at the next record, however much room there is.
    let later = t0 + Duration::from_secs(61);
    sync_at(&mut shard, "late", 1000, later).unwrap();
    assert_eq!(shard.len(), 1);
    assert!(shard.synced.get("late").is_some() && shard.synced.get("s-499").is_none());
}

#[test]
fn the_ring_keeps_what_a_status_document_shows() {
    let mut ring = SyncRing::with_room(Hasher::default(), 4);
    let created = UNIX_EPOCH + Duration::from_millis(1_705_314_600_250);
    let failed = SyncEntry {
        status: JobStatus::Failed,
        answer: None,
        error: Some(Box::new(JobError { code: "rate_limited".into(), message: "over".into(), retryable: true })),
        created_at: Timestamp(created),
        completed_at: Timestamp(created + Duration::from_millis(2_900)),
        attempts: 3,
        owner: Some("search"),
        new_id: false,
        recorded: Instant::now(),
    };
    ring.push(Instant::now(), "f".into(), failed.clone());
    ring.push(Instant::now(), "c".into(), synced(JobStatus::Completed));
    let shown = |id: &str| serde_json::to_value(ring.get(id).unwrap().entry(ring.epoch()).to_job(id)).unwrap();
    assert_eq!(shown("f"), serde_json::to_value(failed.to_job("f")).unwrap(), "the same document, to the second");
    let completed = ring.get("c").unwrap().entry(ring.epoch());
    assert_eq!((completed.status, completed.attempts, completed.owner), (JobStatus::Completed, 2, Some("billing")));
    assert_eq!(&completed.answer.unwrap().result[..], br#"{"x":1}"#);
}

#[test]
fn the_index_finds_entries_across_the_wrap_of_its_32_bit_sequence_numbers() {
    let mut ring = SyncRing::starting_at(Hasher::default(), 16, u64::from(u32::MAX) - 5);
    for i in 0..40 {
        ring.push(Instant::now(), format!("w-{i}").into(), synced(JobStatus::Completed));
        if ring.len() > 10 {
            assert!(ring.pop_front());
        }
    }
    assert!((0..30).all(|i| ring.get(&format!("w-{i}")).is_none()), "evicted ones are gone from the index");
    assert!((30..40).all(|i| ring.get(&format!("w-{i}")).is_some_and(|s| s.id == format!("w-{i}"))));
}

#[test]
fn a_full_shard_evicts_the_oldest_finished_entry_of_either_kind() {
    let mut shard = Shard::new(Hasher::default(), 16);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let add_job = |shard: &mut Shard, id: &str, status: JobStatus, ms: u64| {
        let id = shard.admit(id, 3, Duration::from_secs(60), at(ms)).unwrap();
        shard.order.push_back((at(ms), id.clone()));
        shard.jobs.insert(id.clone(), job(&id, status, status == JobStatus::Pending));
    };
    add_job(&mut shard, "running", JobStatus::Pending, 0);
    sync_at(&mut shard, "sync-old", 3, at(1)).unwrap();
    add_job(&mut shard, "done", JobStatus::Completed, 2);
    // Full: the unfinished job stays; the oldest finished entry (the sync one) goes.
    sync_at(&mut shard, "sync-new", 3, at(3)).unwrap();
    assert!(shard.synced.get("sync-old").is_none());
    assert!(shard.jobs.contains_key("running") && shard.jobs.contains_key("done"));
    // Then the finished job, older than the remaining sync entry.
    sync_at(&mut shard, "sync-newer", 3, at(4)).unwrap();
    assert!(!shard.jobs.contains_key("done"));
    assert!(shard.synced.get("sync-new").is_some() && shard.synced.get("sync-newer").is_some());
    assert!(shard.jobs.contains_key("running"), "an unfinished job is never evicted");
}
