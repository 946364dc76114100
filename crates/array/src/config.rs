//! The daemon's configuration (TOML). Every field has a default, so an empty file is valid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use storage::BackendConfig;

use crate::error::ConfigError;

/// Daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the journal, certificate, admin token and volumes.
    pub pool_dir: PathBuf,
    /// Which storage engine holds the volumes, with its settings: the `[backend]` table.
    #[serde(deserialize_with = "backend_table")]
    pub backend: BackendConfig,
    /// iSCSI portals the target listens on.
    pub iscsi_portals: Vec<SocketAddr>,
    /// Address of the HTTPS control API.
    pub api_listen: SocketAddr,
    /// Address of the Prometheus endpoint (`GET /metrics`, plain HTTP, no authentication).
    /// Default: none, no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Pool use, in percent of its capacity, past which the array's health is warning.
    pub pool_warning_percent: u8,
    /// Pool use, in percent of its capacity, past which the array's health is critical.
    pub pool_critical_percent: u8,
    /// iSCSI target name every LUN is served under. Default: the pool's, fixed when the
    /// pool is made (`iqn.2026-01.org.shadowlun:array-<array id>`; pools made before arrays
    /// had ids keep `iqn.2026-01.org.shadowlun:array`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    /// Relative target port identifier of this daemon's iSCSI target port (1 to 65535),
    /// served in VPD 0x83 and told apart by persistent reservations. The gateways of one
    /// array each need their own.
    pub iscsi_relative_port: u16,
    /// iSCSI target portal group tag of this daemon's portals (TargetPortalGroupTag at
    /// login; it also names the target port in VPD 0x83).
    pub iscsi_portal_group_tag: u16,
    /// Refuse iSCSI logins without CHAP from every host (hosts then need a CHAP secret). A
    /// host with a CHAP secret must use CHAP whether or not this is set.
    pub iscsi_require_chap: bool,
    /// Seconds after which a set prepared but never committed (or an aborted set) is reaped.
    pub reaper_timeout_secs: u64,
    /// Seconds between reaper runs.
    pub reaper_interval_secs: u64,
    /// Seconds after which a transportable set nobody imported is deleted by the reaper
    /// (its snapshot LUNs with it), logged and audited. 0 (the default): such sets are kept
    /// until an administrator deletes them (`shadowlun set delete`).
    pub transportable_retention_secs: u64,
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
    /// This daemon as one of several gateways of the array, with the array's state in the
    /// Ceph cluster (`[backend] kind = "rbd"` only): the `[gateway]` table. Default: none,
    /// the state in the pool directory's journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayConfig>,
}

/// The `[gateway]` table: how this daemon serves as one gateway of an array whose state
/// lives in RADOS (docs/gateways.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's name: unique among the array's gateways (letters, digits, `.`, `_`
    /// and `-`; at most 64).
    pub name: String,
    /// Seconds a gateway's leases last without renewal: how long a dead leader keeps the
    /// array before a standby takes over (renewed every third of it). Default 5.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_lease_secs() -> u64 {
    5
}

impl GatewayConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pool_dir: PathBuf::from("/var/lib/shadowlun"),
            backend: BackendConfig::default(),
            iscsi_portals: vec![SocketAddr::from(([127, 0, 0, 1], 3260))],
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            metrics_listen: None,
            pool_warning_percent: 80,
            pool_critical_percent: 90,
            target_name: None,
            iscsi_relative_port: 1,
            iscsi_portal_group_tag: 1,
            iscsi_require_chap: false,
            reaper_timeout_secs: 1800,
            reaper_interval_secs: 60,
            transportable_retention_secs: 0,
            max_luns_per_set: 256,
            max_lun_bytes: 64 << 40,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            gateway: None,
        }
    }
}

/// The kinds as a list for messages: `"engine", "files" or "memory"`.
fn kinds() -> String {
    let quoted: Vec<String> = BackendConfig::KINDS
        .iter()
        .map(|k| format!("{k:?}"))
        .collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Reads `backend`: the `[backend]` table, or the string of the older form
/// (`backend = "files"`), which still means that kind with its default settings.
fn backend_table<'de, D: Deserializer<'de>>(d: D) -> Result<BackendConfig, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::String(kind) => match BackendConfig::with_defaults(&kind) {
            Some(b) => {
                tracing::warn!(
                    "`backend = {kind:?}` is the older form of the setting; it still works, \
                     but write `[backend]` with `kind = {kind:?}` on the next line instead"
                );
                Ok(b)
            }
            None => Err(D::Error::custom(format!(
                "`backend = {kind:?}` names no storage backend; write a `[backend]` table with \
                 `kind = ` one of {}",
                kinds()
            ))),
        },
        toml::Value::Table(table) => {
            match table.get("kind") {
                Some(toml::Value::String(kind))
                    if BackendConfig::KINDS.contains(&kind.as_str()) => {}
                Some(toml::Value::String(kind)) => {
                    return Err(D::Error::custom(format!(
                        "[backend] kind = {kind:?} is not a storage backend; set kind to {}",
                        kinds()
                    )));
                }
                _ => {
                    return Err(D::Error::custom(format!(
                        "the [backend] table needs `kind = ` one of {}",
                        kinds()
                    )));
                }
            }
            table.try_into().map_err(|e: toml::de::Error| {
                D::Error::custom(format!("[backend]: {}", e.message()))
            })
        }
        other => Err(D::Error::custom(format!(
            "backend must be a `[backend]` table (found {}) with `kind = ` one of {}",
            other.type_str(),
            kinds()
        ))),
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
        if let Some(t) = &self.target_name
            && !crate::state::valid_iqn(t)
        {
            return Err(bad(format!(
                "target_name {t:?} is not an iqn./eui./naa. name"
            )));
        }
        if self.iscsi_relative_port == 0 {
            return Err(bad(
                "iscsi_relative_port must be 1 to 65535 (0 is reserved by SCSI)".into(),
            ));
        }
        if self.pool_warning_percent == 0
            || self.pool_warning_percent > self.pool_critical_percent
            || self.pool_critical_percent > 100
        {
            return Err(bad(format!(
                "pool_warning_percent ({}) and pool_critical_percent ({}) must be 1 to 100, \
                 the warning at most the critical",
                self.pool_warning_percent, self.pool_critical_percent
            )));
        }
        if self.reaper_interval_secs == 0 {
            return Err(bad("reaper_interval_secs must be at least 1".into()));
        }
        if let storage::BackendConfig::Engine(storage::EngineConfig {
            capacity_bytes: Some(c),
            ..
        }) = &self.backend
        {
            if *c < storage::ENGINE_CHUNK_SIZE {
                return Err(bad(format!(
                    "[backend] capacity_bytes ({c}) must be at least 65536 (one 64 KiB chunk)"
                )));
            }
        }
        if let Some(g) = &self.gateway {
            let named = !g.name.is_empty()
                && g.name.len() <= 64
                && g.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !named {
                return Err(bad(format!(
                    "[gateway] name {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                    g.name
                )));
            }
            if !(2..=300).contains(&g.lease_secs) {
                return Err(bad(format!(
                    "[gateway] lease_secs ({}) must be 2 to 300",
                    g.lease_secs
                )));
            }
            if self.backend.kind() != "rbd" {
                return Err(bad(format!(
                    "[gateway] needs the array's state in a Ceph cluster: set [backend] kind = \"rbd\" \
                     (the backend is {:?})",
                    self.backend.kind()
                )));
            }
        }
        if self.max_luns_per_set == 0 || self.max_luns_per_set > storage::MAX_GROUP {
            return Err(bad(format!(
                "max_luns_per_set must be 1 to {} (the engine's consistency group limit)",
                storage::MAX_GROUP
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

    /// `transportable_retention_secs`, `None` when 0 (kept until deleted).
    pub fn transportable_retention(&self) -> Option<Duration> {
        (self.transportable_retention_secs > 0)
            .then(|| Duration::from_secs(self.transportable_retention_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_needs_rbd_a_name_and_a_sane_lease() {
        let rbd = "[backend]\nkind = 'rbd'\npool = 'rbd'\n";
        let c = Config::parse(&format!("{rbd}[gateway]\nname = 'gw-a'\n"), "t").unwrap();
        let g = c.gateway.unwrap();
        assert_eq!((g.name.as_str(), g.lease_secs), ("gw-a", 5));
        let err = |text: &str| Config::parse(text, "t").unwrap_err().to_string();
        assert!(err("[gateway]\nname = 'gw-a'\n").contains("kind = \"rbd\""));
        assert!(err(&format!("{rbd}[gateway]\nname = 'a b'\n")).contains("name \"a b\""));
        assert!(err(&format!("{rbd}[gateway]\nname = 'a'\nlease_secs = 1\n")).contains("2 to 300"));
        assert!(err(&format!("{rbd}[gateway]\nname = 'a'\nlease = 3\n")).contains("lease"));
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", "test").unwrap();
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.iscsi_portals[0].to_string(), "127.0.0.1:3260");
        assert_eq!(c.target_name, None);
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
        assert_eq!(c, Config::default());
    }

    #[test]
    fn backend_is_a_table_tagged_by_kind_with_its_own_settings() {
        let c = Config::parse("[backend]\nkind = 'files'\npath = '/srv/volumes'\n", "t").unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::Files(storage::FilesConfig {
                path: Some("/srv/volumes".into())
            })
        );
        let c = Config::parse("[backend]\nkind = 'memory'\ncapacity_bytes = 4096\n", "t").unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::Memory(storage::MemoryConfig {
                capacity_bytes: Some(4096)
            })
        );
        let c = Config::parse("pool_dir = '/p'\n[backend]\nkind = 'engine'\n", "t").unwrap();
        assert_eq!(c.backend, BackendConfig::default());
    }

    #[test]
    fn a_written_configuration_reads_back_the_same() {
        let c = Config {
            backend: BackendConfig::Memory(storage::MemoryConfig {
                capacity_bytes: Some(1 << 30),
            }),
            ..Config::default()
        };
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("[backend]\nkind = \"memory\""), "{text}");
        assert_eq!(Config::parse(&text, "t").unwrap(), c);
    }

    #[test]
    fn the_older_backend_string_still_means_that_kind() {
        let old = "pool_dir = '/srv/pool'\nbackend = 'files'\napi_listen = '127.0.0.1:9443'\n";
        let c = Config::parse(old, "t").unwrap();
        assert_eq!(c.backend, BackendConfig::with_defaults("files").unwrap());
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:9443");
        for kind in BackendConfig::KINDS {
            let c = Config::parse(&format!("backend = '{kind}'"), "t").unwrap();
            assert_eq!(c.backend.kind(), *kind);
        }
    }

    fn reason(text: &str) -> String {
        match Config::parse(text, "t") {
            Err(ConfigError::Invalid { reason, .. }) => reason,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_bad_backend_says_what_to_write_instead() {
        let r = reason("[backend]\nkind = 'ceph'\n");
        assert!(
            r.contains(r#"[backend] kind = "ceph" is not a storage backend; set kind to "engine", "files", "memory" or "rbd""#),
            "{r}"
        );
        let r = reason("backend = 'ceph'\n");
        assert!(
            r.contains(r#"`backend = "ceph"` names no storage backend; write a `[backend]` table with `kind = ` one of "engine", "files", "memory" or "rbd""#),
            "{r}"
        );
        let r = reason("[backend]\npath = '/x'\n");
        assert!(
            r.contains("the [backend] table needs `kind = ` one of"),
            "{r}"
        );
        let r = reason("[backend]\nkind = 'memory'\npath = '/x'\n");
        assert!(r.contains("[backend]: unknown field `path`"), "{r}");
        let r = reason("backend = 3\n");
        assert!(
            r.contains("backend must be a `[backend]` table (found integer)"),
            "{r}"
        );
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
        assert!(
            reason("iscsi_relative_port = 0").contains("iscsi_relative_port must be 1 to 65535")
        );
        assert!(reason("iscsi_portal_group_tag = 70000").contains("iscsi_portal_group_tag"));
        assert!(
            reason("pool_warning_percent = 95").contains(
                "pool_warning_percent (95) and pool_critical_percent (90) must be 1 to 100"
            )
        );
        assert!(reason("pool_critical_percent = 101").contains("must be 1 to 100"));
        assert!(
            reason("[backend]\nkind = 'engine'\ncapacity_bytes = 1000")
                .contains("capacity_bytes (1000) must be at least 65536")
        );
        let c =
            Config::parse("[backend]\nkind = 'engine'\ncapacity_bytes = 16777216", "t").unwrap();
        assert_eq!(
            c.backend,
            storage::BackendConfig::Engine(storage::EngineConfig {
                path: None,
                capacity_bytes: Some(16 << 20),
            })
        );
        let c = Config::parse("metrics_listen = '127.0.0.1:9470'", "t").unwrap();
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9470");
    }
}
