//! Which engine holds the volumes, with its own settings: the `[backend]` table of the
//! array's configuration, tagged by `kind`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Backend, BackendError, Cause, EngineBackend, FileBackend, MemoryBackend, RbdBackend};

/// A backend and its settings, as the `[backend]` table names it:
///
/// ```toml
/// [backend]
/// kind = "engine"
/// ```
///
/// Each kind has its own settings, every one optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    /// The embedded engine (`blockstore`): thin volumes, O(1) consistency-group snapshots
    /// and clones.
    Engine(EngineConfig),
    /// Sparse files (snapshots are full sparse copies).
    Files(FilesConfig),
    /// Volumes in memory, lost at exit: for tests and demos.
    Memory(MemoryConfig),
    /// RBD images in a Ceph pool, named from the array id.
    Rbd(RbdConfig),
}

/// Settings of `kind = "rbd"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RbdConfig {
    /// The pool. Default `rbd`.
    pub pool: String,
    /// The RADOS namespace (created if missing). Default: the pool's default namespace.
    pub namespace: String,
    /// The Ceph configuration file. Default: librados' own search (`$CEPH_CONF`,
    /// `/etc/ceph/ceph.conf`).
    pub ceph_conf: Option<PathBuf>,
    /// The client id (`admin` for `client.admin`). Default: librados' (`admin`).
    pub client_id: Option<String>,
    /// The bound on every cluster call, in seconds. Default 30.
    pub timeout_secs: u64,
    /// More librados/librbd settings, as `ceph.conf` would set them (`rbd_cache_size =
    /// "67108864"`), applied after the configuration file and shadowlun's own defaults,
    /// which they may override (docs/ceph.md lists those). A setting librados does not
    /// know, or a value it refuses, stops the start with the setting's name.
    pub settings: std::collections::BTreeMap<String, String>,
}

impl Default for RbdConfig {
    fn default() -> Self {
        RbdConfig {
            pool: "rbd".into(),
            namespace: String::new(),
            ceph_conf: None,
            client_id: None,
            timeout_secs: 30,
            settings: Default::default(),
        }
    }
}

/// Settings of `kind = "engine"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Directory of the engine pool, absolute or relative to `pool_dir`. Default
    /// `<pool_dir>/engine`.
    pub path: Option<PathBuf>,
    /// Most bytes of data the pool holds (whole 64 KiB chunks). Default: what the pool has
    /// (a new pool: the format's limit, 256 TiB, in practice its file system's size).
    pub capacity_bytes: Option<u64>,
}

/// Settings of `kind = "files"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Directory of the volume files, absolute or relative to `pool_dir`. Default
    /// `<pool_dir>/volumes`.
    pub path: Option<PathBuf>,
}

/// Settings of `kind = "memory"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most bytes of written data the pool holds. Default: unbounded.
    pub capacity_bytes: Option<u64>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Engine(EngineConfig::default())
    }
}

/// An opened backend, and the same backend as an [`RbdBackend`] when it is one.
pub type Attached = (Arc<dyn Backend>, Option<Arc<RbdBackend>>);

impl BackendConfig {
    /// Every `kind`, in the order the documentation lists them.
    pub const KINDS: &[&str] = &["engine", "files", "memory", "rbd"];

    /// The backend of `kind` with every setting at its default, if that kind has such a
    /// form (a kind whose settings are required has none).
    pub fn with_defaults(kind: &str) -> Option<Self> {
        match kind {
            "engine" => Some(BackendConfig::Engine(EngineConfig::default())),
            "files" => Some(BackendConfig::Files(FilesConfig::default())),
            "memory" => Some(BackendConfig::Memory(MemoryConfig::default())),
            "rbd" => Some(BackendConfig::Rbd(RbdConfig::default())),
            _ => None,
        }
    }

    /// This backend's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Engine(_) => "engine",
            BackendConfig::Files(_) => "files",
            BackendConfig::Memory(_) => "memory",
            BackendConfig::Rbd(_) => "rbd",
        }
    }

    /// Opens the backend of array `array_id`, creating its storage on first start. Relative
    /// paths are under `pool_dir`.
    pub fn open(&self, pool_dir: &Path, array_id: u32) -> Result<Arc<dyn Backend>, BackendError> {
        let (backend, rbd) = self.open_attached(pool_dir, array_id)?;
        if let Some(r) = rbd {
            r.recover()?;
        }
        Ok(backend)
    }

    /// [`BackendConfig::open`], except that an rbd backend is only attached
    /// ([`RbdBackend::attach`]: nothing a predecessor left is cleared yet) and is returned
    /// as such too, for its caller to [`RbdBackend::recover`] once it serves the array, and
    /// for its RADOS pool: the same client, so that fencing the client fences the images'
    /// I/O too.
    pub fn open_attached(&self, pool_dir: &Path, array_id: u32) -> Result<Attached, BackendError> {
        let dir = |path: &Option<PathBuf>, default: &str| {
            pool_dir.join(path.as_deref().unwrap_or(Path::new(default)))
        };
        let backend: Arc<dyn Backend> = match self {
            BackendConfig::Engine(c) => Arc::new(EngineBackend::open(
                &dir(&c.path, "engine"),
                c.capacity_bytes,
            )?),
            BackendConfig::Files(c) => Arc::new(FileBackend::open(&dir(&c.path, "volumes"))?),
            BackendConfig::Memory(c) => Arc::new(MemoryBackend::new(c.capacity_bytes)),
            BackendConfig::Rbd(c) => {
                let cluster = rbd::Cluster::connect(&rbd::ClusterConfig {
                    conf_path: c.ceph_conf.as_ref().map(|p| pool_dir.join(p)),
                    client_id: c.client_id.clone(),
                    timeout: std::time::Duration::from_secs(c.timeout_secs.max(1)),
                    settings: c
                        .settings
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
                let pool = cluster
                    .pool(&c.pool, &c.namespace)
                    .map_err(|e| BackendError::Io(Cause::Rbd(e)))?;
                let b = Arc::new(RbdBackend::attach(pool, array_id)?);
                return Ok((b.clone(), Some(b)));
            }
        };
        Ok((backend, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_defaults_and_names_itself() {
        for kind in BackendConfig::KINDS {
            let b = BackendConfig::with_defaults(kind).unwrap();
            assert_eq!(b.kind(), *kind);
        }
        assert_eq!(BackendConfig::with_defaults("tape"), None);
        assert_eq!(BackendConfig::default().kind(), "engine");
    }

    #[test]
    fn open_puts_each_engine_in_its_default_place_under_the_pool_dir() {
        let dir = tempfile::tempdir().unwrap();
        // The local kinds (rbd's place is a cluster: tests/rbd.rs opens it).
        for kind in ["engine", "files", "memory"] {
            let b = BackendConfig::with_defaults(kind)
                .unwrap()
                .open(dir.path(), 1)
                .unwrap();
            b.create_volume(&format!("v-{kind}"), 1 << 20).unwrap();
        }
        assert!(dir.path().join("engine").is_dir());
        assert!(dir.path().join("volumes/v-files.img").is_file());
    }

    #[test]
    fn an_engine_capacity_bounds_the_pool_and_follows_the_setting_at_each_start() {
        let dir = tempfile::tempdir().unwrap();
        let open = |capacity_bytes| {
            BackendConfig::Engine(EngineConfig {
                path: None,
                capacity_bytes,
            })
            .open(dir.path(), 1)
            .unwrap()
        };
        let b = open(Some(1 << 20));
        assert_eq!(b.usage().unwrap().capacity_bytes, 1 << 20);
        b.create_volume("v", 4 << 20).unwrap();
        let d = b.device("v").unwrap();
        d.write_at(0, &vec![1u8; 1 << 20], false).unwrap();
        assert_eq!(
            d.write_at(2 << 20, &[1u8; 512], false),
            Err(scsi::DeviceError::NoSpace)
        );
        drop((d, b));
        assert_eq!(
            open(Some(3 << 20)).usage().unwrap().capacity_bytes,
            3 << 20,
            "raised at the next start"
        );
    }

    #[test]
    fn a_path_setting_moves_the_engine_relative_to_the_pool_dir_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let absolute = dir.path().join("absolute");
        for (path, lands) in [
            (absolute.clone(), absolute.clone()),
            (PathBuf::from("relative"), dir.path().join("relative")),
        ] {
            let c = BackendConfig::Files(FilesConfig { path: Some(path) });
            c.open(dir.path(), 1)
                .unwrap()
                .create_volume("v", 1 << 20)
                .unwrap();
            assert!(lands.join("v.img").is_file(), "{lands:?}");
        }
        assert!(!dir.path().join("volumes").exists());
    }
}
