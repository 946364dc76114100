//! What a backend reports. The engine's, the operating system's and the device's own errors
//! stay attached as sources.

/// What failed underneath a backend: the operating system, the embedded engine, or a
/// volume's block device.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Os(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] blockstore::Error),
    #[error(transparent)]
    Device(#[from] scsi::DeviceError),
    #[error(transparent)]
    Rbd(#[from] rbd::Error),
}

/// What a storage backend reports.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("volume {0} does not exist")]
    NoVolume(String),
    #[error("volume {0} already exists")]
    Exists(String),
    /// The pool is full; nothing was changed by the failed call.
    #[error("the pool has no space left: {0}")]
    NoSpace(#[source] Cause),
    #[error("volumes cannot shrink ({0})")]
    Shrink(String),
    #[error("cancelled")]
    Cancelled,
    /// The engine cannot do what was asked (the reason is an administrator's sentence).
    #[error("not supported by this storage engine: {0}")]
    Unsupported(String),
    #[error("storage I/O failed: {0}")]
    Io(#[source] Cause),
}

/// The operating system said the filesystem is full (`ENOSPC`).
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        if is_no_space(&e) {
            BackendError::NoSpace(e.into())
        } else {
            BackendError::Io(e.into())
        }
    }
}

impl From<rustix::io::Errno> for BackendError {
    fn from(e: rustix::io::Errno) -> Self {
        std::io::Error::from(e).into()
    }
}

impl From<scsi::DeviceError> for BackendError {
    fn from(e: scsi::DeviceError) -> Self {
        match e {
            scsi::DeviceError::NoSpace => BackendError::NoSpace(e.into()),
            other => BackendError::Io(other.into()),
        }
    }
}

impl From<blockstore::Error> for BackendError {
    fn from(e: blockstore::Error) -> Self {
        use blockstore::Error as E;
        match e {
            E::NoSpace => BackendError::NoSpace(e.into()),
            E::NotFound { name } => BackendError::NoVolume(name),
            E::AlreadyExists { name } => BackendError::Exists(name),
            E::Cancelled { .. } => BackendError::Cancelled,
            other => BackendError::Io(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn sources_stay_attached() {
        let enospc = rustix::io::Errno::NOSPC.raw_os_error();
        let e = BackendError::from(std::io::Error::from_raw_os_error(enospc));
        assert!(matches!(e, BackendError::NoSpace(Cause::Os(_))));
        let os = e.source().and_then(|c| c.downcast_ref::<Cause>());
        assert!(matches!(os, Some(Cause::Os(io)) if is_no_space(io)));

        let e = BackendError::from(blockstore::Error::Failed);
        assert!(matches!(
            e,
            BackendError::Io(Cause::Engine(blockstore::Error::Failed))
        ));
        assert!(e.source().is_some());

        let e = BackendError::from(scsi::DeviceError::NoSpace);
        assert!(matches!(
            e,
            BackendError::NoSpace(Cause::Device(scsi::DeviceError::NoSpace))
        ));
        assert_eq!(
            e.to_string(),
            "the pool has no space left: no space left in the pool"
        );
    }

    #[test]
    fn engine_names_become_volume_errors() {
        let e = BackendError::from(blockstore::Error::NotFound { name: "v".into() });
        assert!(matches!(e, BackendError::NoVolume(n) if n == "v"));
        let e = BackendError::from(blockstore::Error::Cancelled { done: 1, total: 2 });
        assert!(matches!(e, BackendError::Cancelled));
    }
}
