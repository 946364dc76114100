//! In-array resync: make a volume's contents equal to a snapshot's, as a background job.
//!
//! The destination's mapping entries are replaced by the source's wherever they differ, so
//! chunks are shared rather than copied and the work follows the number of differing chunks
//! (subtrees both share are skipped). The job commits in batches: I/O stalls only for one
//! batch's commit at a time, and cancelling leaves the destination with some chunks from the
//! source and the others as they were.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::Record;
use crate::pool::{Inner, Pool, VolumeKind, apply};
use crate::state::{Entry, State};

/// Chunks changed per commit.
const BATCH: usize = if cfg!(test) { 8 } else { 16 * 1024 };

/// Progress of a resync job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResyncProgress {
    /// Chunks that differed when the job started (0 until counted).
    pub total_chunks: u64,
    /// Chunks copied so far.
    pub done_chunks: u64,
    pub finished: bool,
}

/// Outcome of a finished resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResyncReport {
    /// Chunks whose mapping was replaced.
    pub changed_chunks: u64,
    /// Metadata commits used.
    pub commits: u64,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) total: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) cancel: AtomicBool,
    finished: AtomicBool,
}

/// A running background job of the pool that moves chunks: a resync ([`Pool::resync`]) or a
/// detach ([`Pool::detach`]).
pub struct ResyncJob {
    shared: Arc<Shared>,
    handle: JoinHandle<Result<ResyncReport>>,
}

impl std::fmt::Debug for ResyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResyncJob")
            .field("progress", &self.progress())
            .finish()
    }
}

impl ResyncJob {
    /// Current progress.
    pub fn progress(&self) -> ResyncProgress {
        ResyncProgress {
            total_chunks: self.shared.total.load(Ordering::Acquire),
            done_chunks: self.shared.done.load(Ordering::Acquire),
            finished: self.shared.finished.load(Ordering::Acquire),
        }
    }

    /// Asks the job to stop after its current batch; [`ResyncJob::wait`] then returns
    /// [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::Release);
    }

    /// Waits for the job to end.
    pub fn wait(self) -> Result<ResyncReport> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("resync thread panicked".into())))
    }
}

impl Pool {
    /// Starts making `to_volume` equal to `from` (usually a snapshot): reverting a volume to
    /// one of its snapshots, or copying a snapshot onto another volume. The destination is
    /// first resized to the source's size (growing or shrinking it). The destination should not
    /// be in use meanwhile.
    pub fn resync(&self, from: &str, to_volume: &str) -> Result<ResyncJob> {
        let (src, dst) = {
            let st = self.inner.read()?;
            let src = *st
                .names
                .get(from)
                .ok_or_else(|| Error::NotFound { name: from.into() })?;
            let dst = *st.names.get(to_volume).ok_or_else(|| Error::NotFound {
                name: to_volume.into(),
            })?;
            if src == dst {
                return Err(Error::Invalid(format!("cannot resync {from} onto itself")));
            }
            if st.vols[&dst].kind == VolumeKind::Snapshot {
                return Err(Error::ReadOnly {
                    name: to_volume.into(),
                });
            }
            (src, dst)
        };
        let names = (from.to_string(), to_volume.to_string());
        spawn_job(self, "blockstore-resync", move |inner, sh| {
            let r = run(inner, sh, src, dst, &names);
            match &r {
                Ok(rep) => {
                    tracing::info!(from = %names.0, to = %names.1, changed = rep.changed_chunks, "resync finished")
                }
                Err(e) => {
                    tracing::warn!(from = %names.0, to = %names.1, error = %e, "resync ended")
                }
            }
            r
        })
    }
}

/// Runs `work` on a thread of its own as a [`ResyncJob`].
pub(crate) fn spawn_job(
    pool: &Pool,
    thread: &str,
    work: impl FnOnce(&Inner, &Shared) -> Result<ResyncReport> + Send + 'static,
) -> Result<ResyncJob> {
    let shared = Arc::new(Shared::default());
    let inner = pool.inner.clone();
    let sh = shared.clone();
    let handle = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            let r = work(&inner, &sh);
            sh.finished.store(true, Ordering::Release);
            r
        })
        .map_err(|e| Error::Io {
            context: format!("start the {thread} thread"),
            source: e,
        })?;
    Ok(ResyncJob { shared, handle })
}

fn roots(st: &State, src: u64, dst: u64, names: &(String, String)) -> Result<(u32, u32)> {
    let s = st.vols.get(&src).ok_or_else(|| Error::NotFound {
        name: names.0.clone(),
    })?;
    let d = st.vols.get(&dst).ok_or_else(|| Error::NotFound {
        name: names.1.clone(),
    })?;
    Ok((s.root, d.root))
}

fn run(
    inner: &Inner,
    sh: &Shared,
    src: u64,
    dst: u64,
    names: &(String, String),
) -> Result<ResyncReport> {
    let mut commits = 0u64;
    let same_size = {
        let st = inner.read()?;
        roots(&st, src, dst, names)?;
        st.vols[&src].size == st.vols[&dst].size
    };
    if !same_size {
        inner.run_op(|st| {
            roots(st, src, dst, names)?;
            let size = st.vols[&src].size;
            if st.vols[&dst].size != size {
                apply(st, Record::Resize { id: dst, size })?;
            }
            Ok(())
        })?;
        commits += 1;
    }
    // Batches of at most BATCH differing chunks, each found and applied under the state
    // lock and committed. The total is known after the first batch when it is the only one;
    // otherwise the rest is counted then (read lock, bounded batches), so a small resync
    // walks the trees once.
    let mut total: Option<u64> = None;
    let mut cursor = 0u32;
    let mut done = 0u64;
    loop {
        if sh.cancel.load(Ordering::Acquire) {
            let total = match total {
                Some(t) => t,
                None => count_from(inner, src, dst, names, cursor)?,
            };
            return Err(Error::Cancelled { done, total });
        }
        let (n, last) = inner.run_op(|st| {
            let (s, d) = roots(st, src, dst, names)?;
            let mut out = Vec::new();
            st.diff(s, d, cursor, BATCH, &mut out);
            for (idx, entry) in &out {
                apply(
                    st,
                    Record::SetEntry {
                        vol: dst,
                        idx: *idx,
                        entry: *entry,
                    },
                )?;
            }
            Ok((out.len(), out.last().map(|(i, _)| *i)))
        })?;
        commits += 1;
        done += n as u64;
        let more = match last {
            Some(i) if n == BATCH && i < u32::MAX => Some(i + 1),
            _ => None,
        };
        if total.is_none() {
            let rest = match more {
                Some(from) => count_from(inner, src, dst, names, from)?,
                None => 0,
            };
            total = Some(done + rest);
            sh.total.store(done + rest, Ordering::Release);
        }
        sh.done.store(done, Ordering::Release);
        match more {
            Some(c) => cursor = c,
            None => break,
        }
    }
    Ok(ResyncReport {
        changed_chunks: done,
        commits,
    })
}

/// Chunks at or after `from` where `dst` differs from `src`, counted in bounded batches
/// under the read lock.
fn count_from(
    inner: &Inner,
    src: u64,
    dst: u64,
    names: &(String, String),
    mut from: u32,
) -> Result<u64> {
    let st = inner.read()?;
    let (s, d) = roots(&st, src, dst, names)?;
    let mut out: Vec<(u32, Entry)> = Vec::new();
    let mut n = 0u64;
    loop {
        out.clear();
        st.diff(s, d, from, BATCH, &mut out);
        n += out.len() as u64;
        match out.last() {
            Some((i, _)) if out.len() == BATCH && *i < u32::MAX => from = i + 1,
            _ => return Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{CHUNK_SIZE, Error, Pool, PoolOptions};

    fn setup(chunks: u64) -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let p = Pool::create(dir.path().join("p"), PoolOptions::default()).unwrap();
        p.create_volume("v", chunks * CHUNK_SIZE).unwrap();
        p.create_volume("w", chunks * CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        v.write_at(0, &vec![1u8; (chunks * CHUNK_SIZE) as usize], false)
            .unwrap();
        p.snapshot("v", "s").unwrap();
        (dir, p)
    }

    #[test]
    fn resync_commits_in_batches_and_counts_progress() {
        let (_d, p) = setup(40);
        let seq0 = p.inner.commit.lock().unwrap().seq;
        let job = p.resync("s", "w").unwrap();
        let rep = job.wait().unwrap();
        assert_eq!(rep.changed_chunks, 40);
        // Five batches of 8 and an empty one that finds nothing left (sizes already match).
        assert_eq!(rep.commits, 6);
        assert!(p.inner.commit.lock().unwrap().seq > seq0);
        let mut b = vec![0u8; 40 * CHUNK_SIZE as usize];
        p.open_volume("w").unwrap().read_at(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 1));
    }

    #[test]
    fn a_cancelled_resync_stops_between_batches() {
        let (_d, p) = setup(40);
        // Holding the commit lock keeps the job before its first batch until it is cancelled.
        let held = p.inner.commit.lock().unwrap();
        let job = p.resync("s", "w").unwrap();
        job.cancel();
        drop(held);
        match job.wait() {
            Err(Error::Cancelled { done, total }) => assert_eq!((done, total), (0, 40)),
            other => panic!("{other:?}"),
        }
        // Nothing was copied; a new job finishes the work.
        assert_eq!(p.info("w").unwrap().allocated_bytes, 0);
        let job = p.resync("s", "w").unwrap();
        assert_eq!(job.wait().unwrap().changed_chunks, 40);
        assert!(p.resync("s", "w").unwrap().wait().unwrap().changed_chunks == 0);
    }
}
