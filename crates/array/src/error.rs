//! Error types, one per layer, and their mapping onto API problems.

use api::{Problem, ProblemCode};
use storage::BackendError;

/// The durable journal failed; the array refuses every further change until restarted.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} line {line} is corrupt: {reason}")]
    Corrupt {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("the journal failed earlier; restart the array")]
    Poisoned,
    /// The array's state in the Ceph cluster (several gateways) refused or failed a change.
    #[error("the array's shared state: {0}")]
    Shared(Box<gateways::Error>),
}

/// Why reading the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Every error the array reports, for the API and for `serve`.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    LimitReached(String),
    #[error(transparent)]
    Backend(BackendError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error(
        "the pool {} is in use by another shadowlun daemon{}; stop it first, or give this one another pool_dir",
        pool.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    PoolInUse {
        pool: std::path::PathBuf,
        pid: Option<u32>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Serving as one of several gateways failed: joining, taking office, or the state.
    #[error("gateway {gateway}: {what}: {source}")]
    Gateway {
        gateway: String,
        what: String,
        #[source]
        source: Box<gateways::Error>,
    },
    /// This gateway's leases ended while it served (its cluster unreachable past the lease,
    /// or another gateway fenced it): it stopped serving so that another can take over.
    #[error("gateway {gateway} stopped serving: {why}")]
    OutOfOffice { gateway: String, why: String },
    /// An administrator drained this gateway (`shadowlun gateway drain`): it handed over
    /// what it served, or stood by, and stops.
    #[error("gateway {gateway} drained")]
    Drained { gateway: String },
}

impl From<BackendError> for ArrayError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NoSpace(d) => ArrayError::NoSpace(format!(
                "The pool has no space left ({d}); free space or grow the pool and retry."
            )),
            other => ArrayError::Backend(other),
        }
    }
}

impl ArrayError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ArrayError::Io {
            what: what.into(),
            source,
        }
    }

    /// The API problem code of this error.
    pub fn code(&self) -> ProblemCode {
        match self {
            ArrayError::BadRequest(_) => ProblemCode::BadRequest,
            ArrayError::Unauthorized(_) => ProblemCode::Unauthorized,
            ArrayError::Forbidden(_) => ProblemCode::Forbidden,
            ArrayError::NotFound(_) => ProblemCode::NotFound,
            ArrayError::Conflict(_) => ProblemCode::Conflict,
            ArrayError::NoSpace(_) => ProblemCode::NoSpace,
            ArrayError::LimitReached(_) => ProblemCode::LimitReached,
            _ => ProblemCode::Internal,
        }
    }

    /// The problem document sent to the client. Internal errors say to read the array log
    /// rather than leaking paths or engine details.
    pub fn problem(&self) -> Problem {
        let code = self.code();
        let detail = match code {
            ProblemCode::Internal => {
                "The array failed internally; its log has the details. Retry later.".to_string()
            }
            _ => self.to_string(),
        };
        Problem::new(code, detail)
    }
}
