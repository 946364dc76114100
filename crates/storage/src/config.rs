//! Which engine holds the volumes, with its own settings: the `[backend]` table of the
//! array's configuration, tagged by `kind`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Backend, BackendError, EngineBackend, FileBackend, MemoryBackend};

/// A backend and its settings, as the `[backend]` table names it:
///
/// ```toml
/// [backend]
/// kind = "engine"
/// ```
///
/// Each kind has its own settings, every one optional. A backend that lives elsewhere (a
/// Ceph RBD pool, say) is one more variant with its own settings (pool, namespace, client
/// name, configuration file), selected by its own `kind`.
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
}

/// Settings of `kind = "engine"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Directory of the engine pool, absolute or relative to `pool_dir`. Default
    /// `<pool_dir>/engine`.
    pub path: Option<PathBuf>,
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

impl BackendConfig {
    /// Every `kind`, in the order the documentation lists them.
    pub const KINDS: &[&str] = &["engine", "files", "memory"];

    /// The backend of `kind` with every setting at its default, if that kind has such a
    /// form (a kind whose settings are required has none).
    pub fn with_defaults(kind: &str) -> Option<Self> {
        match kind {
            "engine" => Some(BackendConfig::Engine(EngineConfig::default())),
            "files" => Some(BackendConfig::Files(FilesConfig::default())),
            "memory" => Some(BackendConfig::Memory(MemoryConfig::default())),
            _ => None,
        }
    }

    /// This backend's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Engine(_) => "engine",
            BackendConfig::Files(_) => "files",
            BackendConfig::Memory(_) => "memory",
        }
    }

    /// Opens the backend, creating its storage on first start. Relative paths are under
    /// `pool_dir`.
    pub fn open(&self, pool_dir: &Path) -> Result<Arc<dyn Backend>, BackendError> {
        let dir = |path: &Option<PathBuf>, default: &str| {
            pool_dir.join(path.as_deref().unwrap_or(Path::new(default)))
        };
        Ok(match self {
            BackendConfig::Engine(c) => Arc::new(EngineBackend::open(&dir(&c.path, "engine"))?),
            BackendConfig::Files(c) => Arc::new(FileBackend::open(&dir(&c.path, "volumes"))?),
            BackendConfig::Memory(c) => Arc::new(MemoryBackend::new(c.capacity_bytes)),
        })
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
        for kind in BackendConfig::KINDS {
            let b = BackendConfig::with_defaults(kind)
                .unwrap()
                .open(dir.path())
                .unwrap();
            b.create_volume(&format!("v-{kind}"), 1 << 20).unwrap();
        }
        assert!(dir.path().join("engine").is_dir());
        assert!(dir.path().join("volumes/v-files.img").is_file());
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
            c.open(dir.path())
                .unwrap()
                .create_volume("v", 1 << 20)
                .unwrap();
            assert!(lands.join("v.img").is_file(), "{lands:?}");
        }
        assert!(!dir.path().join("volumes").exists());
    }
}
