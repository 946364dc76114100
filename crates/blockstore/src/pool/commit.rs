//! The commit protocol: the state lock, the log, data syncs and checkpoints.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{CHECKPOINT_FILE, LOG_FILE};
use crate::error::{Error, Result, io_err};
use crate::format::{self, CHECKPOINT_MAGIC, HEADER_LEN, Header, LOG_MAGIC};
use crate::state::{CHUNK_SIZE, State};

pub(crate) struct Committer {
    pub(super) log: File,
    pub(super) generation: u64,
    pub(super) len: u64,
    pub(crate) seq: u64,
    pub(super) checkpoint_bytes: u64,
    /// After a checkpoint could not be written for want of space: the log length at which
    /// the next attempt is made (0: none pending).
    pub(super) checkpoint_retry_at: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) data: File,
    pub(crate) state: RwLock<State>,
    pub(crate) commit: Mutex<Committer>,
    pub(super) failed: AtomicBool,
    /// Set after every data write; a commit syncs the data file only when it is set.
    pub(super) data_dirty: AtomicBool,
    pub(super) _lock: File,
}

/// Punches holes for runs of chunks `(first, count)` in the data file. Not an error when it
/// fails (the space stays allocated and the chunks are reused); logged once per call.
pub(crate) fn punch(data: &File, runs: &[(u32, u32)]) {
    use rustix::fs::{FallocateFlags, fallocate};
    for &(first, n) in runs {
        let r = fallocate(
            data,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            first as u64 * CHUNK_SIZE,
            n as u64 * CHUNK_SIZE,
        );
        if let Err(e) = r {
            tracing::debug!(error = %e, "freed chunks keep their blocks: no hole punched");
            return;
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync directory {}", dir.display())))
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename, durably.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<File> {
    let (f, tmp) = write_tmp(dir, name, bytes)?;
    publish(dir, &tmp, name)?;
    Ok(f)
}

/// Writes `bytes` to `dir/name.tmp` and syncs it; nothing else in the pool changes, so a
/// failure here (the file system full) leaves the pool as it was.
fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> Result<(File, PathBuf)> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .map_err(io_err(format!("write {}", tmp.display())))?;
    f.sync_all()
        .map_err(io_err(format!("sync {}", tmp.display())))?;
    Ok((f, tmp))
}

/// Renames `tmp` to `dir/name` and syncs the directory.
fn publish(dir: &Path, tmp: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    fs::rename(tmp, &path).map_err(io_err(format!("rename to {}", path.display())))?;
    sync_dir(dir)
}

/// The file system holding the pool is full (or the owner's quota is).
fn is_no_space(e: &Error) -> bool {
    use rustix::io::Errno;
    matches!(e, Error::Io { source, .. }
        if matches!(source.raw_os_error(), Some(c)
            if c == Errno::NOSPC.raw_os_error() || c == Errno::DQUOT.raw_os_error()))
}

pub(super) fn checkpoint_bytes(generation: u64, payload: &[u8]) -> Result<Vec<u8>> {
    let body_len = u32::try_from(payload.len())
        .map_err(|_| Error::Invalid("metadata too large for one checkpoint".into()))?;
    let mut out = Header {
        magic: CHECKPOINT_MAGIC,
        generation,
        body_len,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    Ok(out)
}

impl Drop for Inner {
    /// A clean close commits what is pending, like a flush.
    fn drop(&mut self) {
        if !self.failed.load(Ordering::Acquire) {
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "final commit on close failed");
            }
        }
    }
}

// A poisoned lock is reported as `Error::Failed` rather than re-raised (an exception to the
// rule in ARCHITECTURE.md, "Locks"): the engine is a library with a failed state of its
// own, so every call that needs the lock is refused, and nothing behind it is used.
impl Inner {
    pub(crate) fn read(&self) -> Result<RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| Error::Failed)
    }

    pub(crate) fn write(&self) -> Result<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| Error::Failed)
    }

    fn committer(&self) -> Result<MutexGuard<'_, Committer>> {
        let c = self.commit.lock().map_err(|_| Error::Failed)?;
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Failed);
        }
        Ok(c)
    }

    pub(crate) fn fail<T>(&self, e: Error) -> Result<T> {
        tracing::error!(error = %e, "metadata commit failed; the pool stops accepting changes");
        self.failed.store(true, Ordering::Release);
        Err(e)
    }

    pub(crate) fn check_failed(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            Err(Error::Failed)
        } else {
            Ok(())
        }
    }

    /// Syncs the data file if anything was written since the last sync. A writer sets the
    /// flag after its write and before it is acknowledged (and, on the slow path, before its
    /// mapping record can be taken by a commit), so every acknowledged write is covered.
    fn sync_data(&self) -> Result<()> {
        if self.data_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.data.sync_data() {
                self.data_dirty.store(true, Ordering::Release);
                return Err(io_err("sync the data file")(e));
            }
        }
        Ok(())
    }

    /// Whether the data file's byte at `at` is in the page cache: a one-byte
    /// `preadv2(RWF_NOWAIT)`, which fails instead of waiting for storage. False where the
    /// file system cannot tell without waiting.
    pub(crate) fn resident(&self, at: u64) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            rustix::io::preadv2(
                &self.data,
                &mut [std::io::IoSliceMut::new(&mut byte)],
                at,
                rustix::io::ReadWriteFlags::NOWAIT,
            ),
            Ok(1)
        )
    }

    /// Writes to the data file and marks it dirty.
    pub(crate) fn write_data(&self, buf: &[u8], at: u64) -> std::io::Result<()> {
        let r = self.data.write_all_at(buf, at);
        self.data_dirty.store(true, Ordering::Release);
        r
    }

    fn append(&self, c: &mut Committer, records: &[u8]) -> Result<()> {
        let frame = format::encode_frame(c.seq + 1, records);
        c.log
            .write_all_at(&frame, c.len)
            .map_err(io_err("append to the log"))?;
        c.log.sync_data().map_err(io_err("sync the log"))?;
        c.seq += 1;
        c.len += frame.len() as u64;
        Ok(())
    }

    /// Commits everything pending while the caller holds the state lock.
    fn commit_locked(&self, c: &mut Committer, st: &mut State) -> Result<()> {
        let (records, rel) = st.take_pending();
        if let Err(e) = self.sync_data() {
            return self.fail(e);
        }
        if !records.is_empty() {
            if let Err(e) = self.append(c, &records) {
                return self.fail(e);
            }
        }
        st.apply_releases(rel);
        self.give_back(st);
        Ok(())
    }

    /// Gives the blocks of chunks freed by the last commit back to the file system (holes
    /// punched in the data file), so the pool's files shrink as its volumes do. Under the
    /// state lock: none of them is allocated again before. A file system that cannot punch
    /// holes keeps the blocks (the chunks are reused either way).
    pub(crate) fn give_back(&self, st: &mut State) {
        let runs = st.take_freed();
        punch(&self.data, &runs);
    }

    /// Runs a pool operation: checks and applies it under the state lock and commits it before
    /// any I/O sees the result. I/O stalls only for this commit.
    pub(crate) fn run_op<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut c = self.committer()?;
        // Most dirty data goes out before I/O is stopped.
        if let Err(e) = self.sync_data() {
            return self.fail(e);
        }
        let r = {
            let mut st = self.write()?;
            let r = f(&mut st);
            self.commit_locked(&mut c, &mut st)?;
            r
        };
        self.maybe_checkpoint(&mut c)?;
        r
    }

    /// Makes every acknowledged write and change durable, without stopping I/O for the syncs.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut c = self.committer()?;
        let (records, rel) = self.write()?.take_pending();
        if let Err(e) = self.sync_data() {
            return self.fail(e);
        }
        if !records.is_empty() {
            if let Err(e) = self.append(&mut c, &records) {
                return self.fail(e);
            }
        }
        if !rel.is_empty() {
            let mut st = self.write()?;
            st.apply_releases(rel);
            self.give_back(&mut st);
        }
        self.maybe_checkpoint(&mut c)
    }

    fn maybe_checkpoint(&self, c: &mut Committer) -> Result<()> {
        if c.len < c.checkpoint_bytes || c.len < c.checkpoint_retry_at {
            return Ok(());
        }
        match self.checkpoint(c) {
            Ok(true) => {
                c.checkpoint_retry_at = 0;
                Ok(())
            }
            Ok(false) => {
                // The log and the old checkpoint are intact: carry on with the log, and try
                // again once it has grown by a sixteenth of the threshold.
                c.checkpoint_retry_at = c.len + (c.checkpoint_bytes / 16).max(1);
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    /// Folds the log into a new checkpoint and starts an empty log. `Ok(false)`: the file
    /// system had no room for the new files; nothing changed and the pool carries on with
    /// its log (a commit never fails because a checkpoint did not fit).
    fn checkpoint(&self, c: &mut Committer) -> Result<bool> {
        let payload = {
            let mut st = self.write()?;
            self.commit_locked(c, &mut st)?;
            st.encode_checkpoint()
        };
        let generation = c.generation + 1;
        let header = Header {
            magic: LOG_MAGIC,
            generation,
            body_len: 0,
        }
        .encode();
        // Both new files are written before either replaces its predecessor, so running out
        // of space (the only failure expected here) changes nothing.
        let written = write_tmp(
            &self.dir,
            CHECKPOINT_FILE,
            &checkpoint_bytes(generation, &payload)?,
        )
        .and_then(|(_, ckpt)| {
            write_tmp(&self.dir, LOG_FILE, &header).map(|(log, tmp)| (ckpt, log, tmp))
        });
        let (ckpt_tmp, log, log_tmp) = match written {
            Ok(w) => w,
            Err(e) if is_no_space(&e) => {
                for name in [CHECKPOINT_FILE, LOG_FILE] {
                    let _ = fs::remove_file(self.dir.join(format!("{name}.tmp")));
                }
                tracing::warn!(error = %e, log_bytes = c.len,
                    "no space for a checkpoint; the pool carries on with its log");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        publish(&self.dir, &ckpt_tmp, CHECKPOINT_FILE)?;
        publish(&self.dir, &log_tmp, LOG_FILE)?;
        tracing::debug!(generation, bytes = payload.len(), "wrote checkpoint");
        c.log = log;
        c.generation = generation;
        c.len = HEADER_LEN as u64;
        c.seq = 0;
        Ok(true)
    }
}
