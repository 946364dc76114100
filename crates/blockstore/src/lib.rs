//! The embedded storage engine: a pool in a directory holding thin volumes, O(1) snapshots and
//! writable clones, with checksummed, crash-safe metadata.
//!
//! A [`Pool`] is a directory with a data file of 64 KiB chunks and the metadata (a checkpoint
//! plus a commit log). Volumes are thin: chunks are allocated on first write, never-written
//! ranges read as zeros. Snapshots and clones share chunks by reference counting, so making
//! one costs one metadata commit whatever the volume's size or contents. [`Volume`] handles
//! serve I/O from many threads at once (`&self` everywhere). [`Pool::resync`] copies a
//! snapshot onto a volume by sharing chunks, in time proportional to the chunks that differ.
//! The on-disk format and the commit protocol are in `docs/blockstore-format.md`.
//!
//! Not here: SCSI, networking, or any notion of VSS (the array wraps [`Volume`] as a SCSI
//! block device).
#![forbid(unsafe_code)]

mod detach;
mod error;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod pool;
mod resync;
mod state;

pub use error::{Error, Result};
pub use pool::{
    DeletePolicy, MAX_GROUP, Pool, PoolOptions, PoolStats, Volume, VolumeInfo, VolumeKind,
    copies_log_bytes,
};
pub use resync::{ResyncJob, ResyncProgress, ResyncReport};
pub use state::{CHUNK_SIZE, MASK_BLOCK_SIZE, MAX_VOLUME_SIZE};
