//! The storage seam of the array: what the daemon needs from a storage engine
//! ([`Backend`]), the engines it ships with, how the configuration picks one
//! ([`BackendConfig`]), and the [`conformance`] suite every engine passes.
//!
//! Volumes are named by the daemon (the LUN id). A snapshot LUN is a writable clone of a
//! point-in-time image of its source: VSS writes signatures on it. All LUNs of a set are
//! cloned at one instant by [`Backend::snapshot_group`].
//!
//! Engines: [`EngineBackend`] (the embedded `blockstore` engine: thin volumes, O(1)
//! consistency-group snapshots), [`FileBackend`] (sparse files, snapshots are sparse copies),
//! [`MemoryBackend`] (copy-on-write chunks in memory, for tests and demos), [`RbdBackend`]
//! (RBD images in a Ceph pool: snapshots are clone v2 children of per-image snapshots).
//!
//! Not here: LUNs, hosts, snapshot sets and the journal (the `array` crate), SCSI command
//! semantics (`scsi`), the engine's on-disk format (`blockstore`).
#![forbid(unsafe_code)]

mod config;
pub mod conformance;
mod engine;
mod error;
mod files;
mod memory;
mod rbd;

use std::sync::atomic::AtomicBool;

pub use config::{BackendConfig, EngineConfig, FilesConfig, MemoryConfig, RbdConfig};
pub use engine::{EngineBackend, EngineDevice};
pub use error::{BackendError, Cause};
pub use files::FileBackend;
pub use memory::MemoryBackend;
pub use rbd::{RbdBackend, RbdVolume};

/// The most volumes the array puts in one [`Backend::snapshot_group`]: the embedded engine's
/// consistency-group limit, which every engine takes.
pub const MAX_GROUP: usize = blockstore::MAX_GROUP;

/// The embedded engine's unit of allocation (64 KiB): its volumes' sizes and its capacity
/// come in whole chunks.
pub const ENGINE_CHUNK_SIZE: u64 = blockstore::CHUNK_SIZE;

/// A volume as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
}

/// Pool accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Bytes the pool may hold: what it holds plus what it can still grow by (its own limit,
    /// or its file system's or cluster's free space); `u64::MAX` when unbounded.
    pub capacity_bytes: u64,
    pub allocated_bytes: u64,
}

/// Bytes the file system holding `dir` still gives an unprivileged writer.
pub(crate) fn fs_room(dir: &std::path::Path) -> Result<u64, BackendError> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes per logical block: the unit every volume is addressed in (its LBA size), whatever
/// the engine's internal granularity.
pub const LOGICAL_BLOCK_SIZE: u32 = 512;

/// A storage engine holding one array's volumes.
///
/// Who owns what: a backend is configured with a place (a pool directory, an engine pool, a
/// pool and namespace in a cluster) and owns the volumes there; every method acts only on
/// those, and [`Backend::volumes`] lists only those. Storage the place shares with others
/// (other images in a shared pool) is never listed, opened or deleted. The array names the
/// volumes it creates (`lun-N`) and, when it reconciles the pool with its journal at start,
/// considers only volumes with such names: anything else a backend lists is left alone.
pub trait Backend: Send + Sync {
    /// Volume sizes must be multiples of this many bytes.
    fn size_granularity(&self) -> u64 {
        LOGICAL_BLOCK_SIZE as u64
    }
    /// Creates a thin volume of `size_bytes` (a multiple of [`LOGICAL_BLOCK_SIZE`]).
    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError>;
    /// Deletes a volume. Deleting a missing volume is an error ([`BackendError::NoVolume`]).
    fn delete_volume(&self, name: &str) -> Result<(), BackendError>;
    /// Grows a volume.
    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError>;
    /// Creates, for every `(source, clone)` pair, a writable clone named `clone` of `source`,
    /// all at one instant: no write to any source lands in some clones and not others.
    /// On error no clone exists. The point-in-time images are durable on return; an engine
    /// may create the writable clone itself later ([`Backend::materialize`]), as long as every
    /// other method treats the clone as existing.
    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError>;
    /// The most pool space, in bytes, a [`Backend::snapshot_group`] of these `(source, clone)`
    /// pairs takes, its writable clones included: what the array reserves for a snapshot set
    /// from its preparation to its commit, so the commit never runs out of space. The
    /// default is the engine-agnostic worst case, a full copy of every source.
    fn snapshot_cost(&self, pairs: &[(String, String)]) -> Result<u64, BackendError> {
        pairs.iter().try_fold(0u64, |sum, (src, _)| {
            Ok(sum.saturating_add(self.volume(src)?.size_bytes))
        })
    }
    /// Makes sure the writable clone of a snapshot taken by [`Backend::snapshot_group`] exists
    /// (for engines that create it lazily). Idempotent.
    fn materialize(&self, name: &str) -> Result<(), BackendError> {
        let _ = name;
        Ok(())
    }
    /// Whether [`Backend::detach`] can make snapshot clones independent of their sources
    /// (VSS plex copies); `Err` says why not, in an administrator's words.
    fn plex_support(&self) -> Result<(), String> {
        Err("this storage engine cannot make a snapshot independent of its source".into())
    }
    /// The most pool space [`Backend::detach`] of these `(source, clone)` pairs' clones takes
    /// after their group snapshot: a copy of every block a clone shares with its source.
    /// The default counts the sources' allocated bytes.
    fn detach_cost(&self, pairs: &[(String, String)]) -> Result<u64, BackendError> {
        pairs.iter().try_fold(0u64, |sum, (src, _)| {
            Ok(sum.saturating_add(self.volume(src)?.allocated_bytes))
        })
    }
    /// Makes the snapshot clone `name` a full, independent copy: every block it shares with
    /// its source (or anything else) is copied into storage of its own, so overwriting or
    /// deleting the source never reaches it. Its contents never change meanwhile and it stays
    /// in use. Reports progress in percent; stops with [`BackendError::Cancelled`] when
    /// `cancel` becomes true (a later call carries on). Blocking; idempotent.
    fn detach(
        &self,
        name: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        let _ = (name, progress, cancel);
        Err(BackendError::Unsupported(
            self.plex_support().err().unwrap_or_default(),
        ))
    }
    /// Every volume of this array in the pool (see the trait's note on ownership), each once,
    /// snapshot clones under the name they were given, whether or not materialised.
    fn volumes(&self) -> Result<Vec<VolumeInfo>, BackendError>;
    /// One volume.
    fn volume(&self, name: &str) -> Result<VolumeInfo, BackendError>;
    fn usage(&self) -> Result<PoolUsage, BackendError>;
    /// The block device the SCSI layer serves for this volume.
    fn device(&self, name: &str) -> Result<scsi::Device, BackendError>;
    /// Copies `from` onto `to` (resizing `to` to `from`'s size), reporting progress in percent
    /// and stopping with [`BackendError::Cancelled`] when `cancel` becomes true. Blocking.
    fn resync(
        &self,
        from: &str,
        to: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        copy_volume(self, from, to, progress, cancel)
    }
}

/// Block-by-block resync through the devices: reads every chunk of `from`, writes it to `to`
/// (discarding ranges that read back as zeros when the destination is thin).
pub fn copy_volume<B: Backend + ?Sized>(
    backend: &B,
    from: &str,
    to: &str,
    progress: &(dyn Fn(u8) + Sync),
    cancel: &AtomicBool,
) -> Result<(), BackendError> {
    use std::sync::atomic::Ordering;
    let size = backend.volume(from)?.size_bytes;
    let dst_size = backend.volume(to)?.size_bytes;
    if dst_size < size {
        backend.resize_volume(to, size)?;
    }
    let src = backend.device(from)?;
    let dst = backend.device(to)?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    let mut last = 0u8;
    progress(0);
    while off < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Cancelled);
        }
        let n = CHUNK.min(size - off) as usize;
        src.read_at(off, &mut buf[..n])?;
        if buf[..n].iter().all(|b| *b == 0) && dst.thin_provisioned() {
            dst.discard(off, n as u64)?;
        } else {
            dst.write_at(off, &buf[..n], false)?;
        }
        off += n as u64;
        let pct = ((off as u128 * 100) / size as u128) as u8;
        if pct != last {
            last = pct;
            progress(pct.min(99));
        }
    }
    dst.flush()?;
    progress(100);
    Ok(())
}
