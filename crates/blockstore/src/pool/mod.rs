//! The pool: files in a directory, the commit protocol, pool operations and volume I/O.
//!
//! This file holds the pool type and the operations on its volumes. Creating and opening a
//! pool (with recovery) is in `open.rs`, the commit protocol in `commit.rs`, volume I/O in
//! `io.rs`.

mod commit;
mod io;
mod open;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::Record;
use crate::state::{CHUNK_SIZE, MAX_CHUNK, MAX_VOLUME_SIZE, State, check_name};

pub(crate) use commit::Inner;
pub use io::Volume;
pub(crate) use open::replay_log;

/// Most members of one consistency-group snapshot.
pub const MAX_GROUP: usize = 256;

pub(crate) const DATA_FILE: &str = "data";
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
pub(crate) const LOG_FILE: &str = "log";
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

impl Pool {
    /// Sets the log size after which the metadata is folded into a new checkpoint (default
    /// 64 MiB). Smaller values make opening faster and commits occasionally slower.
    pub fn set_checkpoint_threshold(&self, bytes: u64) {
        // A poisoned lock: the pool refuses every call already (see `Inner::read`).
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

/// Bytes of metadata log one [`Pool::snapshot_group`] (or clone) of copies with these names
/// appends: one frame of one record per copy. A point-in-time copy takes no data chunk, so
/// this is all the space making it needs (a checkpoint the commit may trigger is skipped,
/// not failed, when the file system has no room for it).
pub fn copies_log_bytes<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut e = crate::format::Enc::default();
    for name in names {
        Record::Snapshot {
            src: 0,
            id: 0,
            kind: VolumeKind::Snapshot,
            created: 0,
            name: name.into(),
        }
        .encode(&mut e);
    }
    crate::format::encode_frame(0, &e.buf).len() as u64
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

#[allow(dead_code)]
fn _assert_send_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<Pool>();
    ok::<Volume>();
}

#[cfg(test)]
mod tests {
    use super::io::AUTO_COMMIT_BYTES;
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

    fn allocated(p: &Pool) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p.dir().join(DATA_FILE)).unwrap().blocks() * 512
    }

    #[test]
    fn freed_chunks_go_back_to_the_file_system() {
        let (_d, p) = pool();
        let empty = allocated(&p);
        assert!(empty <= CHUNK_SIZE, "{empty}");
        p.create_volume("v", 64 * CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        v.write_at(0, &vec![7; 64 * CHUNK_SIZE as usize], false)
            .unwrap();
        p.snapshot("v", "s").unwrap();
        v.write_at(0, &vec![8; 8 * CHUNK_SIZE as usize], false)
            .unwrap();
        p.flush().unwrap();
        assert!(allocated(&p) >= 72 * CHUNK_SIZE);
        // The snapshot goes: the 8 chunks only it held are holes again, the rest stays.
        p.delete("s", DeletePolicy::Refuse).unwrap();
        let after = allocated(&p);
        assert!(
            (64 * CHUNK_SIZE..66 * CHUNK_SIZE).contains(&after),
            "{after}"
        );
        let mut b = vec![0; 4096];
        v.read_at(0, &mut b).unwrap();
        assert_eq!(b, vec![8; 4096]);
        v.read_at(9 * CHUNK_SIZE, &mut b).unwrap();
        assert_eq!(b, vec![7; 4096]);
        p.delete("v", DeletePolicy::Refuse).unwrap();
        assert_eq!(allocated(&p), empty);
        assert_eq!(p.stats().unwrap().used_bytes, 0);
    }

    #[test]
    fn opening_a_pool_gives_back_what_a_crash_kept() {
        let (d, p) = pool();
        let empty = allocated(&p);
        drop(p);
        // Blocks of chunks no volume maps, as a crash between a commit and its hole punching
        // leaves them (here past the last used chunk and in the middle).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("p").join(DATA_FILE))
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![9; CHUNK_SIZE as usize], 40 * CHUNK_SIZE)
            .unwrap();
        f.sync_all().unwrap();
        drop(f);
        let p = Pool::open(d.path().join("p")).unwrap();
        assert_eq!(allocated(&p), empty);
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
    fn a_group_snapshot_appends_exactly_the_log_bytes_announced() {
        let (_d, p) = pool();
        p.create_volume("a", CHUNK_SIZE).unwrap();
        p.create_volume("bb", CHUNK_SIZE).unwrap();
        p.flush().unwrap();
        let before = p.inner.commit.lock().unwrap().len;
        p.snapshot_group(&[("a", "lun-7.base"), ("bb", "lun-8.base")])
            .unwrap();
        let after = p.inner.commit.lock().unwrap().len;
        assert_eq!(
            after - before,
            copies_log_bytes(["lun-7.base", "lun-8.base"])
        );
        assert_eq!(p.stats().unwrap().used_bytes, 0, "no data chunk taken");
    }

    #[test]
    fn a_checkpoint_with_no_room_is_put_off_and_the_pool_carries_on() {
        let (d, p) = pool();
        let dir = d.path().join("p");
        p.set_checkpoint_threshold(1);
        p.create_volume("v", 4 * CHUNK_SIZE).unwrap();
        // Writes to /dev/full fail with ENOSPC, as on a full file system.
        std::os::unix::fs::symlink("/dev/full", dir.join("checkpoint.tmp")).unwrap();
        let generation = p.inner.commit.lock().unwrap().generation;
        p.snapshot_group(&[("v", "s1")]).unwrap();
        let c = p.inner.commit.lock().unwrap();
        assert_eq!(c.generation, generation, "no checkpoint was written");
        assert!(c.checkpoint_retry_at > c.len);
        drop(c);
        assert!(
            !dir.join("checkpoint.tmp").exists(),
            "the attempt was cleaned up"
        );
        assert!(!dir.join("log.tmp").exists());
        let v = p.open_volume("v").unwrap();
        v.write_at(0, &[9; 4096], true).unwrap();
        p.snapshot_group(&[("v", "s2")]).unwrap();
        assert!(p.inner.commit.lock().unwrap().generation > generation);
        drop((v, p));
        let p = Pool::open(&dir).unwrap();
        assert_eq!(p.list().unwrap().len(), 3);
        let mut b = [0u8; 4096];
        p.open_volume("s2").unwrap().read_at(0, &mut b).unwrap();
        assert_eq!(b, [9; 4096]);
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
