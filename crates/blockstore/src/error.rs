//! The engine's error type.

use std::io;
use std::path::PathBuf;

/// Everything the engine can report. I/O methods of [`crate::Volume`] return the first four
/// kinds (`NoSpace`, `OutOfRange`, `ReadOnly`, `Io`) plus `NotFound` for a deleted volume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pool has no free chunk left (its size limit is reached). Nothing was corrupted and
    /// every volume stays readable; free space by deleting snapshots or discarding ranges, or
    /// raise the limit with [`crate::Pool::set_size_limit`].
    #[error("no space left in the pool")]
    NoSpace,
    /// An access beyond the end of a volume.
    #[error("range {offset}+{len} is beyond the end of the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A write or discard to a snapshot (snapshots are read-only; clone one to write).
    #[error("{name} is a read-only snapshot")]
    ReadOnly { name: String },
    /// The operating system failed an operation on a pool file.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// No volume, snapshot or clone has this name (or the handle's volume was deleted).
    #[error("no volume, snapshot or clone named {name:?}")]
    NotFound { name: String },
    /// The name is already used by a volume, snapshot or clone of this pool.
    #[error("the name {name:?} is already used in this pool")]
    AlreadyExists { name: String },
    /// Names are 1 to 255 bytes of printable characters.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A size that is zero, not a multiple of the chunk size, above the maximum, or a shrink.
    #[error("invalid size {size}: {reason}")]
    InvalidSize { size: u64, reason: &'static str },
    /// Delete with [`crate::DeletePolicy::Refuse`] of something that others were made from.
    #[error("{name} has dependents ({}); delete them first or use DeletePolicy::Promote", dependents.join(", "))]
    HasDependents {
        name: String,
        dependents: Vec<String>,
    },
    /// A pool file failed its checksum or structural checks.
    #[error("pool file {file} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Another process has this pool open.
    #[error("pool {dir} is already open in another process")]
    Locked { dir: PathBuf },
    /// The directory already holds a pool (on create) or holds none (on open).
    #[error("{dir}: {reason}")]
    NotAPool { dir: PathBuf, reason: &'static str },
    /// A metadata commit failed earlier; the pool refuses further changes until reopened
    /// (reopening recovers the last committed state).
    #[error("the pool stopped after a failed metadata commit; reopen it to recover")]
    Failed,
    /// A resync job was cancelled before it finished.
    #[error("resync cancelled after {done} of {total} chunks")]
    Cancelled { done: u64, total: u64 },
    /// A consistency group with too many members or none.
    #[error("a consistency group needs 1 to {max} members, got {count}")]
    GroupSize { count: usize, max: usize },
    /// Invalid arguments for an operation (e.g. resync of a volume onto itself).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}

/// As [`io_err`], with the context built only if the call failed: for the calls every volume
/// I/O makes, whose context (a volume name, an offset) would otherwise be formatted, and
/// allocated, on every read and write.
pub(crate) fn io_err_with(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        context: context(),
        source,
    }
}
