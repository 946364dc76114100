//! The pool: files in a directory, the commit protocol, pool operations and volume I/O.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use crate::error::{Error, Result, io_err};
use crate::format::{
    self, CHECKPOINT_MAGIC, DATA_MAGIC, DecodeError, Frame, HEADER_LEN, Header, LOG_MAGIC, Record,
};
use crate::state::{
    BLOCK_SIZE, CHUNK_SIZE, Entry, FULL_MASK, MAX_CHUNK, MAX_VOLUME_SIZE, Source, State, check_name,
};

/// Uncommitted metadata after which a write commits by itself.
const AUTO_COMMIT_BYTES: usize = if cfg!(test) { 4096 } else { 4 << 20 };

/// Most members of one consistency-group snapshot.
pub const MAX_GROUP: usize = 256;

const DATA_FILE: &str = "data";
const CHECKPOINT_FILE: &str = "checkpoint";
const LOG_FILE: &str = "log";
const LOCK_FILE: &str = "lock";

/// What a volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A thin volume created empty.
    Volume,
    /// A read-only point-in-time image.
    Snapshot,
    /// A writable point-in-time copy.
    Clone,
}

/// What `delete` does with the snapshots and clones made from the deleted item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletePolicy {
    /// Fail with [`Error::HasDependents`] if anything was made from it.
    Refuse,
    /// Delete it; its dependents keep their data (which they share by reference, so nothing
    /// is copied) and are re-parented to its parent.
    Promote,
}

/// Options of [`Pool::create`].
#[derive(Debug, Clone, Default)]
pub struct PoolOptions {
    /// Most bytes of data the pool may hold (rounded down to whole chunks). `None`: no limit
    /// but the format's (2^32 - 2 chunks, 256 TiB).
    pub size_limit: Option<u64>,
}

/// A volume, snapshot or clone with its space accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    /// Internal id, unique for the pool's lifetime (never reused).
    pub id: u64,
    pub name: String,
    pub kind: VolumeKind,
    /// Size in bytes.
    pub size: u64,
    /// The volume it was made from, if that one still exists.
    pub parent: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Bytes of chunks it references.
    pub allocated_bytes: u64,
    /// Bytes of chunks nothing else references (freed if it is deleted).
    pub unique_bytes: u64,
    /// Bytes of chunks it shares with other volumes, snapshots or clones.
    pub shared_bytes: u64,
}

/// Pool-wide space figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    pub chunk_size: u64,
    pub size_limit_bytes: u64,
    /// Bytes of chunks in use (including those freed since the last commit).
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub volumes: usize,
}

pub(crate) struct Committer {
    log: File,
    generation: u64,
    len: u64,
    pub(crate) seq: u64,
    checkpoint_bytes: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) data: File,
    pub(crate) state: RwLock<State>,
    pub(crate) commit: Mutex<Committer>,
    failed: AtomicBool,
    /// Set after every data write; a commit syncs the data file only when it is set.
    data_dirty: AtomicBool,
    _lock: File,
}

/// A storage pool: a directory holding a data file and the metadata (checkpoint + log).
/// Cheap to clone; all methods take `&self` and are thread-safe.
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync directory {}", dir.display())))
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        Error::Locked {
            dir: dir.to_path_buf(),
        }
    })?;
    Ok(f)
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename, durably.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<File> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
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
    fs::rename(&tmp, &path).map_err(io_err(format!("rename to {}", path.display())))?;
    sync_dir(dir)?;
    Ok(f)
}

fn checkpoint_bytes(generation: u64, payload: &[u8]) -> Result<Vec<u8>> {
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

fn corrupt(file: &Path, base: u64, e: DecodeError) -> Error {
    Error::Corrupt {
        file: file.to_path_buf(),
        offset: base + e.offset,
        reason: e.reason,
    }
}

impl Pool {
    /// Creates a pool in `dir` (created if missing; must not already hold a pool).
    pub fn create(dir: impl AsRef<Path>, options: PoolOptions) -> Result<Pool> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let lock = lock_dir(dir)?;
        // The checkpoint is written last: a pool exists once it does.
        if dir.join(CHECKPOINT_FILE).exists() {
            return Err(Error::NotAPool {
                dir: dir.into(),
                reason: "already holds a pool",
            });
        }
        let limit = match options.size_limit {
            Some(b) => (b / CHUNK_SIZE).min(MAX_CHUNK as u64) as u32,
            None => MAX_CHUNK,
        };
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_err(format!("create {}", data_path.display())))?;
        data.write_all_at(&DATA_MAGIC, 0)
            .map_err(io_err("write data header"))?;
        data.sync_all().map_err(io_err("sync data file"))?;
        let state = State::new(limit);
        let log = write_atomic(
            dir,
            LOG_FILE,
            &Header {
                magic: LOG_MAGIC,
                generation: 1,
                body_len: 0,
            }
            .encode(),
        )?;
        write_atomic(
            dir,
            CHECKPOINT_FILE,
            &checkpoint_bytes(1, &state.encode_checkpoint())?,
        )?;
        tracing::info!(dir = %dir.display(), limit_chunks = limit, "created pool");
        Ok(Pool::assemble(
            dir,
            data,
            state,
            log,
            1,
            HEADER_LEN as u64,
            0,
            lock,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        data: File,
        state: State,
        log: File,
        generation: u64,
        len: u64,
        seq: u64,
        lock: File,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                data,
                state: RwLock::new(state),
                commit: Mutex::new(Committer {
                    log,
                    generation,
                    len,
                    seq,
                    checkpoint_bytes: 64 << 20,
                }),
                failed: AtomicBool::new(false),
                data_dirty: AtomicBool::new(false),
                _lock: lock,
            }),
        }
    }

    /// Opens an existing pool, recovering the last committed state: the checkpoint, then
    /// every whole commit of the log. A torn last commit is cut off; anything else that fails
    /// a checksum is reported as [`Error::Corrupt`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Pool> {
        let dir = dir.as_ref();
        if !dir.join(CHECKPOINT_FILE).exists() {
            return Err(Error::NotAPool {
                dir: dir.into(),
                reason: "holds no pool checkpoint",
            });
        }
        let lock = lock_dir(dir)?;
        for tmp in [CHECKPOINT_FILE, LOG_FILE] {
            let _ = fs::remove_file(dir.join(format!("{tmp}.tmp")));
        }
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_err(format!("open {}", data_path.display())))?;
        let mut magic = [0u8; 8];
        data.read_exact_at(&mut magic, 0)
            .map_err(|_| Error::Corrupt {
                file: data_path.clone(),
                offset: 0,
                reason: "data file too short".into(),
            })?;
        if magic != DATA_MAGIC {
            return Err(Error::Corrupt {
                file: data_path,
                offset: 0,
                reason: "bad magic".into(),
            });
        }
        let data_len = data.metadata().map_err(io_err("stat data file"))?.len();
        let chunk_bound = ((data_len.saturating_sub(1)) / CHUNK_SIZE).min(MAX_CHUNK as u64) as u32;

        // Checkpoint.
        let ck_path = dir.join(CHECKPOINT_FILE);
        let ck = fs::read(&ck_path).map_err(io_err(format!("read {}", ck_path.display())))?;
        let h = Header::decode(&ck, CHECKPOINT_MAGIC).map_err(|e| corrupt(&ck_path, 0, e))?;
        let body_end = HEADER_LEN + h.body_len as usize;
        if ck.len() != body_end + 4 {
            return Err(Error::Corrupt {
                file: ck_path,
                offset: ck.len() as u64,
                reason: format!(
                    "checkpoint is {} bytes, header says {}",
                    ck.len(),
                    body_end + 4
                ),
            });
        }
        let body = &ck[HEADER_LEN..body_end];
        let crc = u32::from_le_bytes([
            ck[body_end],
            ck[body_end + 1],
            ck[body_end + 2],
            ck[body_end + 3],
        ]);
        if crc32c::crc32c(body) != crc {
            return Err(Error::Corrupt {
                file: ck_path,
                offset: body_end as u64,
                reason: "checkpoint checksum mismatch".into(),
            });
        }
        let mut state = State::decode_checkpoint(body, chunk_bound)
            .map_err(|e| corrupt(&ck_path, HEADER_LEN as u64, e))?;
        let generation = h.generation;

        // Log.
        let log_path = dir.join(LOG_FILE);
        let log_bytes = match fs::read(&log_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(format!("read {}", log_path.display()))(e)),
        };
        let log_gen = match &log_bytes {
            Some(b) => Some(
                Header::decode(b, LOG_MAGIC)
                    .map_err(|e| corrupt(&log_path, 0, e))?
                    .generation,
            ),
            None => None,
        };
        let (log, len, seq) = match (log_bytes, log_gen) {
            (Some(b), Some(g)) if g == generation => {
                let (end, seq, frames) = replay_log(&mut state, &b, &log_path)?;
                let log = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&log_path)
                    .map_err(io_err(format!("open {}", log_path.display())))?;
                if end < b.len() {
                    tracing::warn!(
                        file = %log_path.display(),
                        at = end,
                        dropped = b.len() - end,
                        "cutting off a torn commit at the end of the log"
                    );
                    log.set_len(end as u64).map_err(io_err("truncate log"))?;
                    log.sync_all().map_err(io_err("sync log"))?;
                }
                tracing::info!(dir = %dir.display(), frames, "replayed log");
                (log, end as u64, seq)
            }
            (_, Some(g)) if g > generation => {
                return Err(Error::Corrupt {
                    file: log_path,
                    offset: 16,
                    reason: format!(
                        "log generation {g} is newer than the checkpoint's {generation}"
                    ),
                });
            }
            // No log, or one already folded into the checkpoint (a crash between writing the
            // checkpoint and starting the new log): start a fresh one.
            _ => {
                let f = write_atomic(
                    dir,
                    LOG_FILE,
                    &Header {
                        magic: LOG_MAGIC,
                        generation,
                        body_len: 0,
                    }
                    .encode(),
                )?;
                (f, HEADER_LEN as u64, 0)
            }
        };
        state.rebuild_free_list();
        state.chunk_bound = MAX_CHUNK;
        tracing::info!(
            dir = %dir.display(),
            volumes = state.vols.len(),
            used_chunks = state.used_chunks,
            "opened pool"
        );
        Ok(Pool::assemble(
            dir, data, state, log, generation, len, seq, lock,
        ))
    }

    /// Sets the log size after which the metadata is folded into a new checkpoint (default
    /// 64 MiB). Smaller values make opening faster and commits occasionally slower.
    pub fn set_checkpoint_threshold(&self, bytes: u64) {
        if let Ok(mut c) = self.inner.commit.lock() {
            c.checkpoint_bytes = bytes.max(1);
        }
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates an empty thin volume of `size` bytes (a multiple of [`crate::CHUNK_SIZE`], at
    /// most [`crate::MAX_VOLUME_SIZE`]).
    pub fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        validate_name(name)?;
        validate_size(size)?;
        self.inner.run_op(|st| {
            if st.names.contains_key(name) {
                return Err(Error::AlreadyExists { name: name.into() });
            }
            let id = st.next_vol_id;
            apply(
                st,
                Record::CreateVolume {
                    id,
                    size,
                    created: now_secs(),
                    name: name.into(),
                },
            )?;
            Ok(id)
        })?;
        tracing::info!(name, size, "created volume");
        self.info(name)
    }

    /// Takes a read-only snapshot of `volume` (which may itself be a snapshot or clone) and
    /// returns its description. The snapshot itself takes constant time; the space accounting
    /// in the answer walks its mapping tree (use [`Pool::snapshot_group`] to skip that).
    pub fn snapshot(&self, volume: &str, name: &str) -> Result<VolumeInfo> {
        self.snapshot_group(&[(volume, name)])?;
        self.info(name)
    }

    /// Snapshots every `(volume, snapshot name)` pair at one instant with respect to
    /// acknowledged writes, in one metadata commit: after a crash either all exist or none.
    /// Its time does not depend on the volumes' sizes or contents (nothing is walked).
    pub fn snapshot_group(&self, members: &[(&str, &str)]) -> Result<()> {
        self.make_copies(members, VolumeKind::Snapshot)
    }

    /// Creates a writable clone of `source` (a snapshot, or any volume or clone).
    pub fn clone_volume(&self, source: &str, name: &str) -> Result<VolumeInfo> {
        self.make_copies(&[(source, name)], VolumeKind::Clone)?;
        self.info(name)
    }

    fn make_copies(&self, members: &[(&str, &str)], kind: VolumeKind) -> Result<()> {
        if members.is_empty() || members.len() > MAX_GROUP {
            return Err(Error::GroupSize {
                count: members.len(),
                max: MAX_GROUP,
            });
        }
        for (i, (_, name)) in members.iter().enumerate() {
            validate_name(name)?;
            if members[..i].iter().any(|(_, n)| n == name) {
                return Err(Error::AlreadyExists {
                    name: (*name).into(),
                });
            }
        }
        self.inner.run_op(|st| {
            let mut srcs = Vec::with_capacity(members.len());
            for (vol, name) in members {
                let src = *st.names.get(*vol).ok_or_else(|| Error::NotFound {
                    name: (*vol).into(),
                })?;
                if st.names.contains_key(*name) {
                    return Err(Error::AlreadyExists {
                        name: (*name).into(),
                    });
                }
                srcs.push(src);
            }
            let created = now_secs();
            for (src, (_, name)) in srcs.into_iter().zip(members) {
                let id = st.next_vol_id;
                apply(
                    st,
                    Record::Snapshot {
                        src,
                        id,
                        kind,
                        created,
                        name: (*name).into(),
                    },
                )?;
            }
            Ok(())
        })?;
        tracing::info!(count = members.len(), ?kind, "created point-in-time copies");
        Ok(())
    }

    /// Deletes a volume, snapshot or clone and frees the chunks nothing else references.
    pub fn delete(&self, name: &str, policy: DeletePolicy) -> Result<()> {
        self.inner.run_op(|st| {
            let id = *st
                .names
                .get(name)
                .ok_or_else(|| Error::NotFound { name: name.into() })?;
            let dependents: Vec<String> = st
                .vols
                .values()
                .filter(|v| v.parent == id)
                .map(|v| v.name.clone())
                .collect();
            if policy == DeletePolicy::Refuse && !dependents.is_empty() {
                return Err(Error::HasDependents {
                    name: name.into(),
                    dependents,
                });
            }
            apply(st, Record::Delete { id })
        })?;
        tracing::info!(name, ?policy, "deleted");
        Ok(())
    }

    /// Grows a volume or clone to `new_size` bytes; the new range reads as zeros.
    pub fn resize(&self, name: &str, new_size: u64) -> Result<()> {
        validate_size(new_size)?;
        self.inner.run_op(|st| {
            let id = *st
                .names
                .get(name)
                .ok_or_else(|| Error::NotFound { name: name.into() })?;
            let v = &st.vols[&id];
            if v.kind == VolumeKind::Snapshot {
                return Err(Error::ReadOnly { name: name.into() });
            }
            if new_size < v.size {
                return Err(Error::InvalidSize {
                    size: new_size,
                    reason: "volumes only grow",
                });
            }
            apply(st, Record::Resize { id, size: new_size })
        })
    }

    /// Sets the most bytes of data the pool may hold. Lowering it below what is in use only
    /// stops new allocations.
    pub fn set_size_limit(&self, bytes: u64) -> Result<()> {
        let chunks = (bytes / CHUNK_SIZE).min(MAX_CHUNK as u64) as u32;
        self.inner
            .run_op(|st| apply(st, Record::SetLimit { chunks }))
    }

    /// Every volume, snapshot and clone, by id (creation order), with accounting.
    pub fn list(&self) -> Result<Vec<VolumeInfo>> {
        let st = self.inner.read()?;
        Ok(st.vols.values().map(|v| info_of(&st, v.id)).collect())
    }

    /// One volume, snapshot or clone with its accounting.
    pub fn info(&self, name: &str) -> Result<VolumeInfo> {
        let st = self.inner.read()?;
        let id = *st
            .names
            .get(name)
            .ok_or_else(|| Error::NotFound { name: name.into() })?;
        Ok(info_of(&st, id))
    }

    /// Pool-wide space figures.
    pub fn stats(&self) -> Result<PoolStats> {
        let st = self.inner.read()?;
        let limit = st.limit_chunks as u64;
        Ok(PoolStats {
            chunk_size: CHUNK_SIZE,
            size_limit_bytes: limit * CHUNK_SIZE,
            used_bytes: st.used_chunks * CHUNK_SIZE,
            free_bytes: limit.saturating_sub(st.used_chunks) * CHUNK_SIZE,
            volumes: st.vols.len(),
        })
    }

    /// A handle for I/O on a volume, snapshot (read-only) or clone.
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        let st = self.inner.read()?;
        let id = *st
            .names
            .get(name)
            .ok_or_else(|| Error::NotFound { name: name.into() })?;
        Ok(Volume {
            inner: self.inner.clone(),
            id,
            name: name.into(),
        })
    }

    /// Makes every acknowledged write and every change durable.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

fn validate_name(name: &str) -> Result<()> {
    check_name(name).map_err(|_| Error::InvalidName {
        name: name.into(),
        reason: "names have 1 to 255 bytes and no control characters",
    })
}

fn validate_size(size: u64) -> Result<()> {
    if size == 0 || size % CHUNK_SIZE != 0 {
        return Err(Error::InvalidSize {
            size,
            reason: "not a non-zero multiple of 64 KiB",
        });
    }
    if size > MAX_VOLUME_SIZE {
        return Err(Error::InvalidSize {
            size,
            reason: "above the 64 TiB maximum",
        });
    }
    Ok(())
}

/// Applies a live record; the caller checked it, so a refusal here is an internal error.
pub(crate) fn apply(st: &mut State, rec: Record) -> Result<()> {
    st.apply(rec)
        .map_err(|e| Error::Invalid(format!("internal: {}", e.reason)))
}

fn info_of(st: &State, id: u64) -> VolumeInfo {
    let v = &st.vols[&id];
    let (alloc, unique) = st.accounting(v.root);
    VolumeInfo {
        id: v.id,
        name: v.name.clone(),
        kind: v.kind,
        size: v.size,
        parent: st.vols.get(&v.parent).map(|p| p.name.clone()),
        created: v.created,
        allocated_bytes: alloc * CHUNK_SIZE,
        unique_bytes: unique * CHUNK_SIZE,
        shared_bytes: (alloc - unique) * CHUNK_SIZE,
    }
}

/// Replays the frames of a log; returns where the valid part ends, the last sequence number
/// and the number of frames.
fn replay_log(state: &mut State, b: &[u8], path: &Path) -> Result<(usize, u64, u64)> {
    let mut pos = HEADER_LEN;
    let mut seq = 0u64;
    let mut frames = 0u64;
    loop {
        match format::parse_frame(&b[pos..]) {
            Frame::End => return Ok((pos, seq, frames)),
            Frame::Good {
                seq: s,
                records,
                len,
            } => {
                if s != seq + 1 {
                    return Err(Error::Corrupt {
                        file: path.into(),
                        offset: pos as u64,
                        reason: format!("commit {s} follows commit {seq}"),
                    });
                }
                let recs = format::decode_records(records)
                    .map_err(|e| corrupt(path, (pos + 16) as u64, e))?;
                state
                    .replay(recs)
                    .map_err(|e| corrupt(path, pos as u64, e))?;
                let (_, rel) = state.take_pending();
                state.apply_releases(rel);
                seq = s;
                frames += 1;
                pos += len;
            }
            Frame::Bad { reason } => {
                // Only the last commit can be torn. If a whole valid commit follows where this
                // one claims to end, the damage is in the middle of the log.
                let rest = &b[pos..];
                if rest.len() >= 8 {
                    let claimed =
                        8 + u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if claimed < rest.len()
                        && matches!(format::parse_frame(&rest[claimed..]), Frame::Good { .. })
                    {
                        return Err(Error::Corrupt {
                            file: path.into(),
                            offset: pos as u64,
                            reason,
                        });
                    }
                }
                return Ok((pos, seq, frames));
            }
        }
    }
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
        Ok(())
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
            self.write()?.apply_releases(rel);
        }
        self.maybe_checkpoint(&mut c)
    }

    fn maybe_checkpoint(&self, c: &mut Committer) -> Result<()> {
        if c.len < c.checkpoint_bytes {
            return Ok(());
        }
        match self.checkpoint(c) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Folds the log into a new checkpoint and starts an empty log.
    fn checkpoint(&self, c: &mut Committer) -> Result<()> {
        let payload = {
            let mut st = self.write()?;
            self.commit_locked(c, &mut st)?;
            st.encode_checkpoint()
        };
        let generation = c.generation + 1;
        write_atomic(
            &self.dir,
            CHECKPOINT_FILE,
            &checkpoint_bytes(generation, &payload)?,
        )?;
        let log = write_atomic(
            &self.dir,
            LOG_FILE,
            &Header {
                magic: LOG_MAGIC,
                generation,
                body_len: 0,
            }
            .encode(),
        )?;
        tracing::debug!(generation, bytes = payload.len(), "wrote checkpoint");
        c.log = log;
        c.generation = generation;
        c.len = HEADER_LEN as u64;
        c.seq = 0;
        Ok(())
    }
}

// -------------------------------------------------------------------------- volume I/O

/// A handle for I/O on one volume, snapshot or clone. Cheap to clone; thread-safe. After the
/// volume is deleted every call returns [`Error::NotFound`].
#[derive(Clone)]
pub struct Volume {
    inner: Arc<Inner>,
    id: u64,
    name: String,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

/// Data writes planned by one request: (file offset, bytes), contiguous ones merged.
#[derive(Default)]
struct Pending(Vec<(u64, Vec<u8>)>);

impl Pending {
    /// Appends `buf` to the last write if it continues it; returns whether it did.
    fn extend_last(&mut self, at: u64, buf: &[u8]) -> bool {
        match self.0.last_mut() {
            Some((o, b)) if *o + b.len() as u64 == at => {
                b.extend_from_slice(buf);
                true
            }
            _ => false,
        }
    }

    fn push(&mut self, at: u64, buf: &[u8]) {
        if !self.extend_last(at, buf) {
            self.0.push((at, buf.to_vec()));
        }
    }

    /// Like `push`, for a buffer built for this write: kept as it is unless it continues the
    /// previous one.
    fn push_vec(&mut self, at: u64, buf: Vec<u8>) {
        if !self.extend_last(at, &buf) {
            self.0.push((at, buf));
        }
    }
}

/// One chunk's share of a request.
struct Piece {
    idx: u32,
    within: u64,
    len: usize,
    at: usize,
}

fn pieces(offset: u64, len: usize) -> impl Iterator<Item = Piece> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let pos = offset + at as u64;
        let within = pos % CHUNK_SIZE;
        let n = ((CHUNK_SIZE - within) as usize).min(len - at);
        let p = Piece {
            idx: (pos / CHUNK_SIZE) as u32,
            within,
            len: n,
            at,
        };
        at += n;
        Some(p)
    })
}

fn touched_mask(within: u64, len: usize) -> u16 {
    let b0 = within / BLOCK_SIZE;
    let b1 = (within + len as u64 - 1) / BLOCK_SIZE;
    let mut m = 0u16;
    for b in b0..=b1 {
        m |= 1 << b;
    }
    m
}

impl Volume {
    /// The name it was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current size in bytes.
    pub fn size(&self) -> Result<u64> {
        let st = self.inner.read()?;
        Ok(self.meta(&st)?.size)
    }

    /// True for snapshots.
    pub fn is_read_only(&self) -> Result<bool> {
        let st = self.inner.read()?;
        Ok(self.meta(&st)?.kind == VolumeKind::Snapshot)
    }

    fn meta<'a>(&self, st: &'a State) -> Result<&'a crate::state::VolMeta> {
        st.vols.get(&self.id).ok_or_else(|| Error::NotFound {
            name: self.name.clone(),
        })
    }

    fn check_range(&self, st: &State, offset: u64, len: u64) -> Result<u64> {
        let size = self.meta(st)?.size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(size),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`; never-written ranges read as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let st = self.inner.read()?;
        self.check_range(&st, offset, buf.len() as u64)?;
        let root = self.meta(&st)?.root;
        // Segments of the request: (file offset or zeros, length), merged when contiguous.
        let mut segs: Vec<(Option<u64>, usize)> = Vec::new();
        for p in pieces(offset, buf.len()) {
            let (e, _) = st.lookup(root, p.idx);
            let mut pos = p.within;
            let end = p.within + p.len as u64;
            while pos < end {
                let b = pos / BLOCK_SIZE;
                let n = ((b + 1) * BLOCK_SIZE).min(end) - pos;
                let src = match e.source(b) {
                    Source::Zero => None,
                    Source::Chunk(c) => Some(c as u64 * CHUNK_SIZE + pos),
                };
                match segs.last_mut() {
                    Some((None, l)) if src.is_none() => *l += n as usize,
                    Some((Some(o), l)) if src == Some(*o + *l as u64) => *l += n as usize,
                    _ => segs.push((src, n as usize)),
                }
                pos += n;
            }
        }
        let mut at = 0usize;
        for (src, len) in segs {
            let out = &mut buf[at..at + len];
            match src {
                None => out.fill(0),
                Some(o) => self
                    .inner
                    .data
                    .read_exact_at(out, o)
                    .map_err(io_err(format!("read {} at {}", self.name, offset)))?,
            }
            at += len;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. With `fua`, the data is durable when this returns.
    pub fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.inner.check_failed()?;
        if !self.write_in_place(offset, data)? {
            match self.write_slow(offset, data) {
                Err(Error::NoSpace) => {
                    // Chunks freed since the last commit become usable once it is durable.
                    self.inner.flush()?;
                    self.write_slow(offset, data)?;
                }
                r => r?,
            }
        }
        if fua { self.inner.flush() } else { Ok(()) }
    }

    /// The fast path: every chunk touched is mapped, exclusive, and already holds the touched
    /// blocks, so only data moves and a shared lock suffices.
    fn write_in_place(&self, offset: u64, data: &[u8]) -> Result<bool> {
        let st = self.inner.read()?;
        self.check_range(&st, offset, data.len() as u64)?;
        let v = self.meta(&st)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(Error::ReadOnly {
                name: self.name.clone(),
            });
        }
        let mut targets: Vec<(u64, usize, usize)> = Vec::new();
        for p in pieces(offset, data.len()) {
            let (e, excl) = st.lookup(v.root, p.idx);
            let m = touched_mask(p.within, p.len);
            if !excl || e.mask & m != m {
                return Ok(false);
            }
            let fo = e.phys as u64 * CHUNK_SIZE + p.within;
            match targets.last_mut() {
                Some((o, _, l)) if *o + *l as u64 == fo => *l += p.len,
                _ => targets.push((fo, p.at, p.len)),
            }
        }
        for (fo, at, len) in targets {
            self.inner
                .write_data(&data[at..at + len], fo)
                .map_err(io_err(format!("write {} at {}", self.name, offset)))?;
        }
        Ok(true)
    }

    fn write_slow(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.inner.write()?;
        self.check_range(&st, offset, data.len() as u64)?;
        if self.meta(&st)?.kind == VolumeKind::Snapshot {
            return Err(Error::ReadOnly {
                name: self.name.clone(),
            });
        }
        let mut out = Pending::default();
        let mut r = Ok(());
        for p in pieces(offset, data.len()) {
            if let Err(e) = self.write_piece(&mut st, &p, &data[p.at..p.at + p.len], &mut out) {
                r = Err(e);
                break;
            }
        }
        // Chunks mapped before a failure (e.g. the pool filling up midway) get their data.
        self.write_pending(out)?;
        let backlog = st.log.buf.len();
        drop(st);
        if r.is_ok() && backlog > AUTO_COMMIT_BYTES {
            // Bound the uncommitted metadata of hosts that rarely flush.
            self.inner.flush()?;
        }
        r
    }

    /// Issues the data writes planned under the state lock, merged where contiguous (so
    /// sequential writes reach the file as large writes). They happen before the lock is
    /// released, hence before any commit can make their mapping records durable. A failure
    /// here leaves mappings to unwritten chunks in memory, so the pool stops accepting changes
    /// (reopening recovers the last commit).
    fn write_pending(&self, out: Pending) -> Result<()> {
        for (at, buf) in out.0 {
            if let Err(e) = self.inner.write_data(&buf, at) {
                return self
                    .inner
                    .fail(io_err(format!("write {} (file offset {at})", self.name))(e));
            }
        }
        Ok(())
    }

    fn read_block(&self, e: &Entry, b: u64, out: &mut [u8]) -> Result<()> {
        match e.source(b) {
            Source::Zero => {
                out.fill(0);
                Ok(())
            }
            Source::Chunk(c) => self
                .inner
                .data
                .read_exact_at(out, c as u64 * CHUNK_SIZE + b * BLOCK_SIZE)
                .map_err(io_err(format!("read chunk {c}"))),
        }
    }

    fn pwrite(&self, buf: &[u8], at: u64) -> Result<()> {
        self.inner
            .write_data(buf, at)
            .map_err(io_err(format!("write {} (chunk offset {at})", self.name)))
    }

    /// Writes one chunk's share of a request under the exclusive lock.
    fn write_piece(&self, st: &mut State, p: &Piece, data: &[u8], out: &mut Pending) -> Result<()> {
        let root = self.meta(st)?.root;
        let (cur, excl) = st.lookup(root, p.idx);
        let touched = touched_mask(p.within, p.len);
        let b0 = p.within / BLOCK_SIZE;
        let b1 = (p.within + p.len as u64 - 1) / BLOCK_SIZE;
        let head_partial = p.within % BLOCK_SIZE != 0;
        let tail_partial = (p.within + p.len as u64) % BLOCK_SIZE != 0;
        let span_off = b0 * BLOCK_SIZE;
        let span_len = ((b1 - b0 + 1) * BLOCK_SIZE) as usize;
        // The touched blocks with edges completed from `fill` (None: zeros).
        let span = |this: &Self, fill: Option<&Entry>| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; span_len];
            if let Some(e) = fill {
                if head_partial {
                    this.read_block(e, b0, &mut buf[..BLOCK_SIZE as usize])?;
                }
                if tail_partial {
                    this.read_block(e, b1, &mut buf[span_len - BLOCK_SIZE as usize..])?;
                }
            }
            let s = (p.within - span_off) as usize;
            buf[s..s + p.len].copy_from_slice(data);
            Ok(buf)
        };

        let new = if excl {
            let base = cur.phys as u64 * CHUNK_SIZE;
            let fill_head = head_partial && cur.mask & (1 << b0) == 0;
            let fill_tail = tail_partial && cur.mask & (1 << b1) == 0;
            if fill_head || fill_tail {
                out.push_vec(base + span_off, span(self, Some(&cur))?);
            } else {
                out.push(base + p.within, data);
            }
            let mut n = Entry {
                mask: cur.mask | touched,
                ..cur
            };
            if n.mask == FULL_MASK {
                n.under = 0;
            }
            n
        } else {
            let q = st.alloc_chunk().ok_or(Error::NoSpace)?;
            let base = q as u64 * CHUNK_SIZE;
            let r = if cur.is_empty() {
                span(self, None)
                    .map(|b| out.push_vec(base + span_off, b))
                    .map(|_| Entry {
                        phys: q,
                        under: 0,
                        mask: touched,
                    })
            } else if cur.under == 0 && cur.mask == FULL_MASK {
                span(self, Some(&cur))
                    .map(|b| out.push_vec(base + span_off, b))
                    .map(|_| {
                        if touched == FULL_MASK {
                            Entry {
                                phys: q,
                                under: 0,
                                mask: FULL_MASK,
                            }
                        } else {
                            Entry {
                                phys: q,
                                under: cur.phys,
                                mask: touched,
                            }
                        }
                    })
            } else {
                // Shared and already layered (or partly written): the new chunk takes the
                // blocks `phys` holds plus the touched ones and keeps the same `under`, so
                // only those blocks are copied (one read, one write of the span they cover).
                let mask = cur.mask | touched;
                let first = |m: u16| u64::from(m.trailing_zeros());
                let last = |m: u16| u64::from(15 - m.leading_zeros());
                let lo = first(mask);
                let lo_off = lo * BLOCK_SIZE;
                let mut buf = vec![0u8; ((last(mask) - lo + 1) * BLOCK_SIZE) as usize];
                // The blocks `phys` holds, in one read (only up to its last block in use: the
                // file may end there).
                let (c0, c1) = (first(cur.mask), last(cur.mask));
                let cs = ((c0 - lo) * BLOCK_SIZE) as usize;
                let ce = ((c1 - lo + 1) * BLOCK_SIZE) as usize;
                let r = self
                    .inner
                    .data
                    .read_exact_at(
                        &mut buf[cs..ce],
                        cur.phys as u64 * CHUNK_SIZE + c0 * BLOCK_SIZE,
                    )
                    .map_err(io_err(format!("read chunk {}", cur.phys)))
                    .and_then(|_| {
                        // Partial edge blocks not in `phys` come from `under` (or zeros).
                        for (b, partial) in [(b0, head_partial), (b1, tail_partial)] {
                            if partial && cur.mask & (1 << b) == 0 {
                                let s = ((b - lo) * BLOCK_SIZE) as usize;
                                self.read_block(&cur, b, &mut buf[s..s + BLOCK_SIZE as usize])?;
                            }
                        }
                        let s = (p.within - lo_off) as usize;
                        buf[s..s + p.len].copy_from_slice(data);
                        out.push_vec(base + lo_off, buf);
                        Ok(())
                    });
                // Blocks of the span in neither mask were written as zeros and are not in
                // the new mask: they still read from `under` (or as zeros).
                r.map(|_| Entry {
                    phys: q,
                    under: if mask == FULL_MASK { 0 } else { cur.under },
                    mask,
                })
            };
            match r {
                Ok(n) => n,
                Err(e) => {
                    st.unreserve_chunk(q);
                    return Err(e);
                }
            }
        };
        if new != cur {
            apply(
                st,
                Record::SetEntry {
                    vol: self.id,
                    idx: p.idx,
                    entry: new,
                },
            )?;
        }
        if new.phys != cur.phys {
            st.unreserve_chunk(new.phys);
        }
        Ok(())
    }

    /// Makes every acknowledged write durable (all volumes of the pool).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Deallocates a range: it reads as zeros afterwards and whole chunks return to the pool
    /// (after the next commit). Parts of chunks are zeroed.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.check_failed()?;
        let mut st = self.inner.write()?;
        self.check_range(&st, offset, len)?;
        if self.meta(&st)?.kind == VolumeKind::Snapshot {
            return Err(Error::ReadOnly {
                name: self.name.clone(),
            });
        }
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = (pos / CHUNK_SIZE) as u32;
            let within = pos % CHUNK_SIZE;
            let n = (CHUNK_SIZE - within).min(end - pos);
            let root = self.meta(&st)?.root;
            let (cur, excl) = st.lookup(root, idx);
            if !cur.is_empty() {
                if n == CHUNK_SIZE {
                    apply(
                        &mut st,
                        Record::SetEntry {
                            vol: self.id,
                            idx,
                            entry: Entry::EMPTY,
                        },
                    )?;
                } else if excl && cur.under == 0 {
                    // Clear whole blocks from the mask, zero the partial ones that hold data.
                    let mut mask = cur.mask;
                    let mut p = within;
                    while p < within + n {
                        let b = p / BLOCK_SIZE;
                        let bend = ((b + 1) * BLOCK_SIZE).min(within + n);
                        if p == b * BLOCK_SIZE && bend == (b + 1) * BLOCK_SIZE {
                            mask &= !(1 << b);
                        } else if mask & (1 << b) != 0 {
                            let z = vec![0u8; (bend - p) as usize];
                            self.pwrite(&z, cur.phys as u64 * CHUNK_SIZE + p)?;
                        }
                        p = bend;
                    }
                    let entry = if mask == 0 {
                        Entry::EMPTY
                    } else {
                        Entry { mask, ..cur }
                    };
                    if entry != cur {
                        apply(
                            &mut st,
                            Record::SetEntry {
                                vol: self.id,
                                idx,
                                entry,
                            },
                        )?;
                    }
                } else {
                    let zeros = vec![0u8; n as usize];
                    let p = Piece {
                        idx,
                        within,
                        len: n as usize,
                        at: 0,
                    };
                    let mut out = Pending::default();
                    self.write_piece(&mut st, &p, &zeros, &mut out)?;
                    self.write_pending(out)?;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// For GET LBA STATUS: whether the byte at `offset` is mapped (has storage) and for how
    /// many bytes from there that stays so (the answer may stop early, after 4 GiB).
    pub fn mapping_status(&self, offset: u64) -> Result<(bool, u64)> {
        let st = self.inner.read()?;
        let size = self.meta(&st)?.size;
        if offset >= size {
            return Err(Error::OutOfRange {
                offset,
                len: 0,
                size,
            });
        }
        let root = self.meta(&st)?.root;
        let limit = (offset + (4u64 << 30)).min(size);
        let mut pos = offset;
        let mut state: Option<bool> = None;
        while pos < limit {
            let idx = (pos / CHUNK_SIZE) as u32;
            let (e, _) = st.lookup(root, idx);
            let chunk_end = (idx as u64 + 1) * CHUNK_SIZE;
            while pos < chunk_end.min(limit) {
                let b = (pos % CHUNK_SIZE) / BLOCK_SIZE;
                let m = e.block_mapped(b);
                match state {
                    None => state = Some(m),
                    Some(s) if s != m => return Ok((s, pos - offset)),
                    _ => {}
                }
                pos = (pos / BLOCK_SIZE + 1) * BLOCK_SIZE;
            }
        }
        Ok((state.unwrap_or(false), limit - offset))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<Pool>();
    ok::<Volume>();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (tempfile::TempDir, Pool) {
        let d = tempfile::tempdir().unwrap();
        let p = Pool::create(d.path().join("p"), PoolOptions::default()).unwrap();
        (d, p)
    }

    #[test]
    fn a_consistency_group_snapshot_is_one_commit() {
        let (_d, p) = pool();
        let names: Vec<String> = (0..64).map(|i| format!("v{i}")).collect();
        for n in &names {
            p.create_volume(n, CHUNK_SIZE).unwrap();
        }
        let snaps: Vec<String> = names.iter().map(|n| format!("{n}-snap")).collect();
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .zip(&snaps)
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let before = p.inner.commit.lock().unwrap().seq;
        p.snapshot_group(&pairs).unwrap();
        assert_eq!(p.inner.commit.lock().unwrap().seq, before + 1);
    }

    #[test]
    fn a_host_that_never_flushes_still_gets_bounded_uncommitted_metadata() {
        let (_d, p) = pool();
        p.create_volume("v", 1024 * CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        let before = p.inner.commit.lock().unwrap().seq;
        for i in 0..400 {
            v.write_at(i * CHUNK_SIZE, &[1; 512], false).unwrap();
        }
        assert!(p.inner.commit.lock().unwrap().seq > before);
        assert!(p.inner.read().unwrap().log.buf.len() <= AUTO_COMMIT_BYTES + 64);
    }

    #[test]
    fn deleting_everything_frees_every_node_and_chunk() {
        let (_d, p) = pool();
        p.create_volume("v", 64 * CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        v.write_at(0, &vec![1; 64 * CHUNK_SIZE as usize], false)
            .unwrap();
        p.snapshot("v", "s").unwrap();
        v.write_at(4096, &[2; 4096], false).unwrap();
        p.clone_volume("s", "c").unwrap();
        p.open_volume("c")
            .unwrap()
            .write_at(CHUNK_SIZE * 3, &[3; 100], false)
            .unwrap();
        for n in ["v", "s", "c"] {
            p.delete(n, DeletePolicy::Promote).unwrap();
        }
        let st = p.inner.read().unwrap();
        assert_eq!((st.node_count(), st.used_chunks), (0, 0));
    }

    #[test]
    fn a_freed_chunk_is_not_reused_before_its_release_is_committed() {
        let (_d, p) = pool();
        p.create_volume("v", 4 * CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        v.write_at(0, &[1; 4096], false).unwrap();
        p.flush().unwrap();
        let root = p.inner.read().unwrap().vols[&1].root;
        let first = p.inner.read().unwrap().lookup(root, 0).0.phys;
        v.discard(0, CHUNK_SIZE).unwrap();
        v.write_at(CHUNK_SIZE, &[2; 4096], false).unwrap();
        let second = p.inner.read().unwrap().lookup(root, 1).0.phys;
        assert_ne!(first, second);
        p.flush().unwrap();
        v.write_at(2 * CHUNK_SIZE, &[3; 4096], false).unwrap();
        let third = p.inner.read().unwrap().lookup(root, 2).0.phys;
        assert_eq!(first, third, "released after the commit");
    }

    #[test]
    fn deleting_the_last_snapshot_makes_its_chunks_exclusive_again() {
        let (_d, p) = pool();
        p.create_volume("v", CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        v.write_at(0, &[1; 65536], false).unwrap();
        p.snapshot("v", "s").unwrap();
        // Once the delete is committed nothing else references the chunk.
        p.delete("s", DeletePolicy::Refuse).unwrap();
        let root = p.inner.read().unwrap().vols[&1].root;
        let (_, excl) = p.inner.read().unwrap().lookup(root, 0);
        assert!(excl);
    }
}
