//! The backup components document (BCD): what VSS keeps about a snapshot set so that the
//! requester, this host later, or another host can import, break, resync or delete it.
//!
//! Windows writes it as XML inside the requester's document; shadowlun writes JSON with the
//! same content (`docs/vss-contract.md` §2.2 step 16): the source LUN infos, the snapshot LUN
//! infos from `GetTargetLuns`, the volume extents, the context and the providers. The format is
//! described in `docs/vss-emulator.md`.

use std::path::Path;

use thiserror::Error;
use vss::{LunInfo, SnapshotContext, VssId};

/// The `format` field of every BCD file.
pub const FORMAT: &str = "shadowlun-bcd";
/// The only version this code reads and writes.
pub const VERSION: u32 = 1;

/// Why a BCD could not be read or written.
#[derive(Debug, Error)]
pub enum BcdError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a BCD document: {0}")]
    Corrupt(String),
    #[error("BCD document is invalid: {0}")]
    Invalid(String),
}

impl BcdError {
    /// The code VSS reports for this failure.
    pub fn hresult(&self) -> vss::Hresult {
        match self {
            BcdError::Io { .. } | BcdError::Corrupt(_) => vss::Hresult::VSS_E_CORRUPT_XML_DOCUMENT,
            BcdError::Invalid(_) => vss::Hresult::VSS_E_INVALID_XML_DOCUMENT,
        }
    }
}

/// One LUN of the set: the original as VSS described it to the provider, and the snapshot LUN
/// as the provider described it in `GetTargetLuns`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LunRecord {
    pub provider_id: VssId,
    /// The original disk's device name on the creating host.
    pub source_device: String,
    pub source: LunInfo,
    pub target: LunInfo,
    /// The GPT disk GUID of the original disk (restored by break with revert identity).
    pub original_disk_guid: uuid::Uuid,
}

/// A run of blocks of a volume on one LUN of the set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtentRecord {
    /// Index into [`SetRecord::luns`].
    pub lun: usize,
    pub first_lba: u64,
    pub blocks: u64,
}

/// One shadow copy: a volume of the set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRecord {
    pub snapshot_id: VssId,
    pub provider_id: VssId,
    pub original_volume: String,
    pub extents: Vec<ExtentRecord>,
    pub block_size: u32,
}

/// A snapshot set as recorded in a BCD.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetRecord {
    pub snapshot_set_id: VssId,
    pub context: SnapshotContext,
    pub originating_host: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub snapshots: Vec<SnapshotRecord>,
    pub luns: Vec<LunRecord>,
}

/// The document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bcd {
    pub format: String,
    pub version: u32,
    pub set: SetRecord,
    /// Names a requester gave snapshots (diskshadow `alias`), restored by `load metadata`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub aliases: std::collections::BTreeMap<String, VssId>,
}

impl Bcd {
    pub fn new(set: SetRecord) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            set,
            aliases: Default::default(),
        }
    }

    /// Checks internal references: extents point at existing LUNs, ids are unique, at most
    /// 64 volumes.
    pub fn validate(&self) -> Result<(), BcdError> {
        if self.format != FORMAT {
            return Err(BcdError::Invalid(format!("format is {:?}", self.format)));
        }
        if self.version != VERSION {
            return Err(BcdError::Invalid(format!(
                "version {} is not supported (only {VERSION})",
                self.version
            )));
        }
        let s = &self.set;
        if s.snapshots.is_empty() || s.snapshots.len() > vss::MAX_VOLUMES_PER_SET {
            return Err(BcdError::Invalid(format!(
                "{} snapshots (1..=64 expected)",
                s.snapshots.len()
            )));
        }
        let mut ids = std::collections::BTreeSet::new();
        for snap in &s.snapshots {
            if !ids.insert(snap.snapshot_id) {
                return Err(BcdError::Invalid(format!(
                    "snapshot {} listed twice",
                    snap.snapshot_id
                )));
            }
            if snap.extents.is_empty() {
                return Err(BcdError::Invalid(format!(
                    "snapshot {} has no extents",
                    snap.snapshot_id
                )));
            }
            for e in &snap.extents {
                if e.lun >= s.luns.len() {
                    return Err(BcdError::Invalid(format!(
                        "snapshot {} refers to LUN {} of {}",
                        snap.snapshot_id,
                        e.lun,
                        s.luns.len()
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, BcdError> {
        let b: Bcd = serde_json::from_str(text).map_err(|e| BcdError::Corrupt(e.to_string()))?;
        b.validate()?;
        Ok(b)
    }

    pub fn save(&self, path: &Path) -> Result<(), BcdError> {
        let tmp = path.with_extension("tmp");
        let io = |source| BcdError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::write(&tmp, self.to_json()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, BcdError> {
        let meta = std::fs::metadata(path).map_err(|source| BcdError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if meta.len() > 16 << 20 {
            return Err(BcdError::Corrupt(format!(
                "{} is {} bytes, larger than any BCD",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|source| BcdError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }
}
