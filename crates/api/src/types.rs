//! Objects the provider and the array exchange.

use serde::{Deserialize, Serialize};
use vss::lun::ScsiIdentity;
use vss::{LunInfo, SnapshotContext, StorageIdentifier, VssId};

/// The array's name for a LUN (stable, never reused).
pub type LunId = String;

/// What identifies a LUN to the array: its association-0 designators as the host saw them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LunKey {
    pub identifiers: Vec<StorageIdentifier>,
}

impl LunKey {
    pub fn of(lun: &LunInfo) -> Self {
        Self {
            identifiers: lun.identifiers.clone(),
        }
    }
}

/// What the array knows of a LUN it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayLun {
    pub id: LunId,
    pub size_bytes: u64,
    /// For a snapshot LUN: the LUN it is a snapshot of and the VSS ids it was created under.
    pub snapshot_of: Option<SnapshotOrigin>,
    /// The array can make a plex copy (full, independent) of this LUN: its storage engine
    /// can copy a snapshot's shared blocks into blocks of its own.
    #[serde(default)]
    pub plex: bool,
}

/// Where a plex snapshot LUN stands: its point-in-time image is taken at commit like any
/// snapshot's; then the array copies every block it still shares with its source into
/// blocks of its own, in the background. Until `independent`, the source cannot be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlexStatus {
    /// Every block is the snapshot LUN's own: overwriting or deleting the source no longer
    /// touches it. Durable (journaled) once true.
    pub independent: bool,
    /// 0..=100: how much of what it shared has been copied (100 once independent).
    pub progress: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotOrigin {
    pub source: LunId,
    pub set_id: VssId,
    pub snapshot_id: VssId,
}

/// One LUN to snapshot within a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSnapshot {
    pub snapshot_id: VssId,
    pub source: LunId,
}

/// A snapshot LUN of a set as the array describes it before any host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLun {
    pub source: LunId,
    pub lun: LunId,
    pub identity: ScsiIdentity,
}

/// Lifecycle of a set on the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetState {
    Prepared,
    Committed,
    Completed,
    Aborted,
}

/// A set as the array's journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSummary {
    pub set_id: VssId,
    pub state: SetState,
    pub context: SnapshotContext,
    pub snapshots: Vec<PlannedSnapshot>,
}

/// A resync of one snapshot LUN onto a destination LUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncPair {
    pub snapshot: LunId,
    pub destination: LunId,
}

pub type JobId = String;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Running,
    Finished,
    Cancelled,
    Failed { reason: String, no_space: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    #[serde(flatten)]
    pub state: JobState,
    /// 0..=100
    pub progress: u8,
}
