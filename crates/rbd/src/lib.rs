//! A thin, safe layer over Ceph's librados and librbd (pacific, librbd 1.16), loaded at run
//! time so nothing needs Ceph to build and only callers that connect need it installed.
//!
//! - [`Cluster`]: one connection (`rados_t`) per process, every call bounded by
//!   `rados_osd_op_timeout` and `rados_mon_op_timeout` ([`ClusterConfig::timeout`]).
//! - [`Pool`]: a pool and RADOS namespace (`rados_ioctx_t`): image create, clone (clone v2),
//!   remove, list.
//! - RADOS objects ([`WriteOp`], [`Pool::operate`], omap reads, advisory locks, [`Watch`] and
//!   notify) and fencing ([`Cluster::addrs`], [`Cluster::blocklist`]): what shared state
//!   between several processes is built from.
//! - [`Image`]: an open image: synchronous and asynchronous ([`Aio`]) read, write, discard,
//!   flush; resize, stat, snapshots, children and parent, `diff_iterate2`, flatten.
//!
//! Handles close what they open when dropped: an [`Image`] keeps its [`Pool`] alive, a
//! [`Pool`] its [`Cluster`]. [`lab`] starts the project's throwaway cluster for tests.
//!
//! Not here: what the images mean (the `storage` crate's rbd backend names them and keeps
//! its volumes in them).

mod aio;
mod cluster;
mod ffi;
mod ffi_rados;
mod image;
pub mod lab;
mod rados;

use std::ffi::CString;

pub use aio::Aio;
pub use cluster::{Cluster, ClusterConfig, ClusterUsage, Pool};
pub use image::{DiffExtent, Image, Parent, Snap};
pub use rados::{Locker, Lockers, OmapEntry, Watch, WatchEvent, WriteOp};

/// The image features every image made here has: format 2 with layering (clones),
/// exclusive-lock, object-map and fast-diff (cheap used-space and diff walks).
pub const FEATURES: u64 = 1 | (1 << 2) | (1 << 3) | (1 << 4);

/// What a call into Ceph reported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librados or librbd could not be loaded.
    #[error("the Ceph client libraries are not available ({0}); install librbd1 and librados2")]
    NotInstalled(String),
    /// A call failed with a (positive) errno.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Call { op: String, errno: i32 },
    /// A name or setting that C cannot carry.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

pub(crate) const ENOENT: i32 = 2;
pub(crate) const EIO: i32 = 5;
pub(crate) const EBUSY: i32 = 16;
pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENOSPC: i32 = 28;
pub(crate) const EDQUOT: i32 = 122;
pub(crate) const ECANCELED: i32 = 125;
pub(crate) const ETIMEDOUT: i32 = 110;
/// What librados calls `EBLOCKLISTED`.
pub(crate) const ESHUTDOWN: i32 = 108;

impl Error {
    /// The errno of a failed call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
    /// The image, snapshot, pool or namespace does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(ENOENT)
    }
    /// The name is taken.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(EEXIST)
    }
    /// The cluster (or the pool's quota) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self.errno(), Some(ENOSPC | EDQUOT))
    }
    /// Something still uses it (watchers on an image, children of a snapshot).
    pub fn is_busy(&self) -> bool {
        self.errno() == Some(EBUSY)
    }
    /// The cluster did not answer within the configured timeout.
    pub fn is_timeout(&self) -> bool {
        self.errno() == Some(ETIMEDOUT)
    }
    /// The same failure, reported as no space: `why` says what is full. For a call that
    /// timed out because the cluster holds writes to a full pool (`Cluster::pool_full`).
    pub fn into_full(self, why: &str) -> Error {
        Error::Call {
            op: match self {
                Error::Call { op, .. } => format!("{op}: {why}"),
                other => format!("{other}: {why}"),
            },
            errno: ENOSPC,
        }
    }
    /// A guard of a compound operation did not hold ([`WriteOp::omap_cmp_eq`]): nothing was
    /// changed.
    pub fn is_guard_failed(&self) -> bool {
        self.errno() == Some(ECANCELED)
    }
    /// This client is fenced: the cluster blocklisted its address ([`Cluster::blocklist`]);
    /// only a new connection can work again.
    pub fn is_blocklisted(&self) -> bool {
        self.errno() == Some(ESHUTDOWN)
    }
    /// A lock this client meant to renew is no longer its own (expired, or broken).
    pub fn is_lock_lost(&self) -> bool {
        self.errno() == Some(ENOENT)
    }
    /// A [`Image::diff`] callback asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.errno() == Some(ECANCELED)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A C return value: negative errno on failure.
pub(crate) fn check(r: i64, op: impl FnOnce() -> String) -> Result<i64> {
    if r < 0 {
        Err(Error::Call {
            op: op(),
            errno: (-r) as i32,
        })
    } else {
        Ok(r)
    }
}

pub(crate) fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Nul(s.to_string()))
}
