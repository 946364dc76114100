//! The daemon's configuration (TOML). Every field has a default, so an empty file is valid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Which storage engine holds the volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The embedded engine (`blockstore`) in `<pool_dir>/engine`: thin volumes, O(1)
    /// consistency-group snapshots and clones.
    #[default]
    Engine,
    /// Sparse files under `<pool_dir>/volumes` (snapshots are full sparse copies).
    Files,
    /// Volumes in memory, lost at exit: for tests and demos.
    Memory,
}

/// Daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the journal, certificate, admin token and volumes.
    pub pool_dir: PathBuf,
    pub backend: BackendKind,
    /// iSCSI portals the target listens on.
    pub iscsi_portals: Vec<SocketAddr>,
    /// Address of the HTTPS control API.
    pub api_listen: SocketAddr,
    /// iSCSI target name every LUN is served under.
    pub target_name: String,
    /// Refuse iSCSI logins without CHAP from every host (hosts then need a CHAP secret). A
    /// host with a CHAP secret must use CHAP whether or not this is set.
    pub iscsi_require_chap: bool,
    /// Seconds after which a set prepared but never committed (or an aborted set) is reaped.
    pub reaper_timeout_secs: u64,
    /// Seconds between reaper runs.
    pub reaper_interval_secs: u64,
    /// Most LUNs one snapshot set may hold.
    pub max_luns_per_set: usize,
    /// Largest LUN size accepted, in bytes.
    pub max_lun_bytes: u64,
    /// TLS certificate (PEM); generated on first start. Default `<pool_dir>/tls/cert.pem`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); generated on first start. Default `<pool_dir>/tls/key.pem`.
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names / IP addresses for the generated certificate.
    pub tls_names: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pool_dir: PathBuf::from("/var/lib/shadowlun"),
            backend: BackendKind::Engine,
            iscsi_portals: vec![SocketAddr::from(([127, 0, 0, 1], 3260))],
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            target_name: "iqn.2026-01.org.shadowlun:array".into(),
            iscsi_require_chap: false,
            reaper_timeout_secs: 1800,
            reaper_interval_secs: 60,
            max_luns_per_set: 256,
            max_lun_bytes: 64 << 40,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            path: origin.into(),
            reason,
        };
        if !crate::state::valid_iqn(&self.target_name) {
            return Err(bad(format!(
                "target_name {:?} is not an iqn./eui./naa. name",
                self.target_name
            )));
        }
        if self.reaper_interval_secs == 0 {
            return Err(bad("reaper_interval_secs must be at least 1".into()));
        }
        if self.max_luns_per_set == 0 || self.max_luns_per_set > blockstore::MAX_GROUP {
            return Err(bad(format!(
                "max_luns_per_set must be 1 to {} (the engine's consistency group limit)",
                blockstore::MAX_GROUP
            )));
        }
        Ok(())
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls_cert
            .clone()
            .unwrap_or_else(|| self.pool_dir.join("tls").join("cert.pem"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.tls_key
            .clone()
            .unwrap_or_else(|| self.pool_dir.join("tls").join("key.pem"))
    }

    /// The admin token file (0600), created on first start.
    pub fn admin_token_path(&self) -> PathBuf {
        self.pool_dir.join("admin.token")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.pool_dir.join("journal.log")
    }

    pub fn reaper_timeout(&self) -> Duration {
        Duration::from_secs(self.reaper_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", "test").unwrap();
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.iscsi_portals[0].to_string(), "127.0.0.1:3260");
        assert_eq!(c.target_name, "iqn.2026-01.org.shadowlun:array");
        assert_eq!(
            c.cert_path(),
            PathBuf::from("/var/lib/shadowlun/tls/cert.pem")
        );
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../array.example.toml");
        let c = Config::parse(text, "array.example.toml").unwrap();
        assert_eq!(c.reaper_timeout_secs, 1800);
    }

    #[test]
    fn unknown_keys_and_bad_target_are_rejected() {
        assert!(matches!(
            Config::parse("pool = '/x'", "t"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            Config::parse("target_name = 'array'", "t"),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
