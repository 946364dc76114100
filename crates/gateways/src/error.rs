//! What the shared state reports.

/// Why a gateway is no longer the leader (or no longer a member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded within the lease: the lock may have expired and been taken.
    Expired,
    /// A renewal found the lock no longer this gateway's (expired, or broken by another).
    Taken,
    /// The cluster blocklisted this gateway's connection (a successor fenced it).
    Fenced,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lost::Expired => "the lease expired before a renewal succeeded",
            Lost::Taken => "the lock is no longer this gateway's",
            Lost::Fenced => "this gateway's connection is blocklisted",
        })
    }
}

/// A failure of the shared state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guard of a commit did not hold: another commit or a new leader came first.
    /// Nothing was changed; read again and retry (a follower) or stop (an old leader).
    #[error(
        "the shared state moved: expected version {expected_version} at leader epoch \
         {expected_epoch}, found version {version} at epoch {epoch}"
    )]
    Conflict {
        expected_version: u64,
        expected_epoch: u64,
        version: u64,
        epoch: u64,
    },
    /// The cluster refuses this connection's operations: another gateway fenced it.
    #[error("this gateway is fenced: its Ceph connection is blocklisted")]
    Fenced(#[source] rbd::Error),
    /// The leadership this call needs is gone.
    #[error("not the leader: {0}")]
    NotLeader(Lost),
    /// This connection already holds the lease of gateway `0` (it joined twice).
    #[error("gateway {0:?} already joined on this connection")]
    AlreadyJoined(String),
    /// Commits kept landing between the pages of a read of a state too long for one page.
    #[error("reading {object}: commits kept landing between its pages ({attempts} attempts)")]
    Unsettled { object: String, attempts: usize },
    /// A state key the store cannot hold.
    #[error("state key {0:?} is empty or contains a NUL byte")]
    InvalidKey(String),
    /// What RADOS holds is not what this crate writes.
    #[error("{what} in object {object} is not valid: {detail}")]
    Corrupt {
        object: String,
        what: String,
        detail: String,
    },
    /// Any other failure of a call into Ceph.
    #[error(transparent)]
    Rados(rbd::Error),
}

impl From<rbd::Error> for Error {
    fn from(e: rbd::Error) -> Self {
        if e.is_blocklisted() {
            Error::Fenced(e)
        } else {
            Error::Rados(e)
        }
    }
}

impl Error {
    /// A commit refused by its guard.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
    /// This connection is blocklisted.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced(_))
    }
}
