//! The embedded store of the quota counts: `quota-state.json` under `COURIER_STATE_DIR`.
//!
//! Written atomically (write a temporary file, fsync it, rename it over the old one, fsync
//! the directory), so after a crash the file is the old snapshot or the new one, never a
//! mix. One thread writes, and writes the newest snapshot it was given: requests that queue
//! while a write runs share the next one (group commit), and an older snapshot is never
//! written over a newer one. The directory is locked while courier runs, so a second courier
//! on the same directory cannot count beside the first.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::counts::{Counts, Tally};

/// The state file's name in `COURIER_STATE_DIR`.
pub const FILE_NAME: &str = "quota-state.json";
const LOCK_NAME: &str = "quota-state.lock";
const FORMAT: &str = "courier-quota-state";

/// The file as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    version: u32,
    windows: Vec<WindowDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowDoc {
    window: String,
    current: TallyDoc,
    next: TallyDoc,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TallyDoc {
    start_ms: i64,
    end_ms: i64,
    total: u64,
    clients: BTreeMap<String, u64>,
}

impl TallyDoc {
    fn of(tally: &Tally, names: &[&str]) -> TallyDoc {
        let clients = tally
            .clients
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (names.get(i).copied().unwrap_or("?").to_owned(), *n))
            .collect();
        TallyDoc { start_ms: tally.instance.start_ms, end_ms: tally.instance.end_ms, total: tally.total, clients }
    }

    /// Restores into `tally` when both describe the same instance.
    fn restore(&self, tally: &mut Tally, names: &[&str]) -> bool {
        if self.start_ms != tally.instance.start_ms || self.end_ms != tally.instance.end_ms {
            return false;
        }
        tally.total = tally.total.max(self.total);
        for (name, n) in &self.clients {
            if let Some(i) = names.iter().position(|c| c == name) {
                if tally.clients.len() <= i {
                    tally.clients.resize(i + 1, 0);
                }
                tally.clients[i] = tally.clients[i].max(*n);
            }
        }
        true
    }
}

/// A snapshot of `counts` as the file's bytes; `names` are the clients by position.
pub fn snapshot(counts: &Counts, names: &[&str]) -> Vec<u8> {
    let windows = counts
        .windows
        .iter()
        .map(|w| WindowDoc {
            window: w.spec.name.clone(),
            current: TallyDoc::of(&w.current, names),
            next: TallyDoc::of(&w.next, names),
        })
        .collect();
    let doc = Document { format: FORMAT.into(), version: 1, windows };
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// Folds a saved file into fresh `counts`: instances that have passed are dropped; a window
/// whose next instance was saved and is now current keeps that count; a changed limit keeps
/// the count. Returns a message naming the file when it cannot be read or is not ours.
pub fn load(path: &Path, counts: &mut Counts, names: &[&str]) -> Result<(), String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: cannot be read: {e}", path.display())),
    };
    let doc: Document =
        serde_json::from_slice(&bytes).ok().filter(|d: &Document| d.format == FORMAT && d.version == 1).ok_or_else(
            || format!("{}: not a courier quota state file (move it away to start counting afresh)", path.display()),
        )?;
    for saved in &doc.windows {
        let Some(w) = counts.windows.iter_mut().find(|w| w.spec.name == saved.window) else { continue };
        for part in [&saved.current, &saved.next] {
            if !part.restore(&mut w.current, names) {
                part.restore(&mut w.next, names);
            }
        }
    }
    Ok(())
}

/// One write asked for: the snapshot, its version, and who waits for it.
struct Ask {
    version: u64,
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The state file's owner: the directory's lock and the writer thread.
pub struct StateFile {
    path: PathBuf,
    asks: mpsc::Sender<Ask>,
    _lock: File,
}

impl StateFile {
    /// Locks `dir` and starts the writer. Fails when another courier holds the lock.
    pub fn open(dir: &Path, on_write: impl Fn(bool) + Send + 'static) -> Result<StateFile, String> {
        let lock_path = dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: cannot be opened: {e}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            format!("{}: another courier counts quotas in this directory (each needs its own COURIER_STATE_DIR, or share counts through REDIS_URL)", dir.display())
        })?;
        let path = dir.join(FILE_NAME);
        let (asks, queue) = mpsc::channel::<Ask>();
        let target = path.clone();
        std::thread::Builder::new()
            .name("courier-quota-file".into())
            .spawn(move || writer(&target, queue, on_write))
            .map_err(|e| format!("quota state writer: {e}"))?;
        Ok(StateFile { path, asks, _lock: lock })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` (snapshot `version`) and answers once it is on disk (or a newer one is).
    pub async fn write(&self, version: u64, bytes: Vec<u8>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.asks.send(Ask { version, bytes, done }).map_err(|_| "the quota state writer stopped".to_owned())?;
        answer.await.unwrap_or_else(|_| Err("the quota state writer stopped".to_owned()))
    }

    /// Writes `bytes` (snapshot `version`) without waiting: counts that are safe to lose.
    pub fn write_detached(&self, version: u64, bytes: Vec<u8>) {
        let (done, _) = oneshot::channel();
        let _ = self.asks.send(Ask { version, bytes, done });
    }

    /// Writes `bytes` now, on the calling thread (the last write at a graceful stop).
    pub fn write_now(&self, bytes: &[u8]) -> Result<(), String> {
        write_atomically(&self.path, bytes)
    }
}

/// The writer thread: takes every queued ask, writes the newest snapshot once, answers all.
fn writer(path: &Path, queue: mpsc::Receiver<Ask>, on_write: impl Fn(bool)) {
    let mut written = 0u64;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let newest = batch.iter().max_by_key(|a| a.version).map(|a| a.version).unwrap_or(0);
        let result = if newest > written {
            let bytes = &batch.iter().find(|a| a.version == newest).expect("the newest is in the batch").bytes;
            let result = write_atomically(path, bytes);
            on_write(result.is_ok());
            if result.is_ok() {
                written = newest;
            }
            result
        } else {
            Ok(())
        };
        for ask in batch {
            let _ = ask.done.send(result.clone());
        }
    }
}

/// write → fsync → rename → fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let fail = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
    let mut file = File::create(&tmp).map_err(|e| fail("create", e))?;
    file.write_all(bytes).map_err(|e| fail("write", e))?;
    file.sync_all().map_err(|e| fail("fsync", e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| fail("rename", e))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("fsync of the directory", e))?;
    }
    Ok(())
}
