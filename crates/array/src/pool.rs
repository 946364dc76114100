//! The pool directory's own files: the lock that keeps a second daemon off the pool, and the
//! array's identity.
//!
//! `daemon.lock` is held with an exclusive advisory lock (`flock`) for the daemon's life and
//! names its pid; a second daemon on the same pool is refused before it opens anything, so it
//! can neither replay the journal beside the first nor sweep the first one's new volumes as
//! orphans. `array.json` holds the array id every new LUN's identity derives from and the
//! default target name; it is made once, when the pool is first used, and never changed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vss::identity::ArrayId;

use crate::error::ArrayError;

/// Target name of arrays whose pool was made before arrays had ids (and the fallback of
/// configurations that do not name one).
pub const LEGACY_TARGET_NAME: &str = "iqn.2026-01.org.shadowlun:array";

/// The exclusive hold of one daemon on its pool directory; released when dropped.
#[derive(Debug)]
pub struct PoolLock {
    _file: File,
    path: PathBuf,
}

impl PoolLock {
    /// Takes the pool's lock, or says which daemon has it.
    pub fn acquire(pool: &Path) -> Result<PoolLock, ArrayError> {
        let path = pool.join("daemon.lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ArrayError::io(format!("opening {}", path.display()), e))?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = f.read_to_string(&mut text);
                return Err(ArrayError::PoolInUse {
                    pool: pool.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => {
                return Err(ArrayError::io(
                    format!("locking {}", path.display()),
                    e.into(),
                ));
            }
        }
        f.set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| writeln!(f, "{}", std::process::id()))
            .and_then(|()| f.sync_data())
            .map_err(|e| ArrayError::io(format!("writing {}", path.display()), e))?;
        Ok(PoolLock { _file: f, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Who the array is: fixed when its pool is first used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolIdentity {
    pub array_id: ArrayId,
    /// The iSCSI target name used when the configuration names none.
    pub target_name: String,
}

impl PoolIdentity {
    /// Reads `array.json`, or makes it: a new random array id; the default target name
    /// carries it, except on a pool that already has a journal (made before arrays had ids),
    /// whose hosts know the target by its old name. `journal` is the pool's journal path.
    pub fn load_or_create(pool: &Path, journal: &Path) -> Result<PoolIdentity, ArrayError> {
        let path = pool.join("array.json");
        match std::fs::read(&path) {
            Ok(b) => {
                return serde_json::from_slice(&b).map_err(|e| {
                    ArrayError::io(
                        format!("reading {}", path.display()),
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    )
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArrayError::io(format!("reading {}", path.display()), e)),
        }
        let array_id = loop {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| {
                ArrayError::io("random array id", std::io::Error::other(e.to_string()))
            })?;
            if let Some(id) = ArrayId::new(u32::from_be_bytes(b)) {
                break id;
            }
        };
        let upgraded = journal.exists();
        let id = PoolIdentity {
            array_id,
            target_name: if upgraded {
                LEGACY_TARGET_NAME.to_string()
            } else {
                format!("{LEGACY_TARGET_NAME}-{array_id}")
            },
        };
        let tmp = pool.join("array.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&id).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(pool)?.sync_all()
        };
        write().map_err(|e| ArrayError::io(format!("writing {}", path.display()), e))?;
        tracing::info!(array_id = %id.array_id, target = %id.target_name, upgraded,
            "the array has an identity of its own");
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_pool_is_refused_with_the_holders_pid() {
        let d = tempfile::tempdir().unwrap();
        let first = PoolLock::acquire(d.path()).unwrap();
        match PoolLock::acquire(d.path()) {
            Err(ArrayError::PoolInUse { pool, pid }) => {
                assert_eq!(pool, d.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        PoolLock::acquire(d.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn the_identity_is_made_once_and_an_old_pool_keeps_its_target_name() {
        let d = tempfile::tempdir().unwrap();
        let journal = d.path().join("journal.log");
        let a = PoolIdentity::load_or_create(d.path(), &journal).unwrap();
        assert_eq!(
            a.target_name,
            format!("{LEGACY_TARGET_NAME}-{}", a.array_id)
        );
        assert_eq!(PoolIdentity::load_or_create(d.path(), &journal).unwrap(), a);
        let mode = std::fs::metadata(d.path().join("array.json")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let old = tempfile::tempdir().unwrap();
        let journal = old.path().join("journal.log");
        std::fs::write(&journal, b"").unwrap();
        let b = PoolIdentity::load_or_create(old.path(), &journal).unwrap();
        assert_eq!(b.target_name, LEGACY_TARGET_NAME);
        assert_ne!(a.array_id, b.array_id);
    }
}
