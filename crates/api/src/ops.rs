//! What an administrator asks a running array every day: its status, who is connected, and
//! what changed (the audit trail).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::HostLun;

/// `GET /v1/admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayStatus {
    pub version: String,
    /// The storage engine kind (`engine`, `files`, `memory`).
    pub backend: String,
    /// The array's id (8 hex digits); absent for pools made before arrays had ids.
    pub array_id: Option<String>,
    /// The iSCSI target name LUNs are served under.
    pub target: String,
    /// iSCSI portals being served.
    pub portals: Vec<String>,
    pub pool: PoolStatus,
    /// Open iSCSI sessions.
    pub sessions: usize,
    /// Snapshot sets prepared or committed but not yet complete.
    pub sets_in_flight: usize,
    pub health: HealthReport,
}

/// The pool's space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Bytes the pool can hold: the engine's limit, or the size of its file system.
    pub capacity_bytes: u64,
    /// Bytes the pool holds (LUN and snapshot data, thin).
    pub used_bytes: u64,
    /// Bytes still free for the pool.
    pub free_bytes: u64,
    /// Bytes of the free space held by prepared snapshot sets for their commits (from
    /// end-prepare to commit, abort or reaping); a new set may reserve only what is free
    /// beyond them and beyond the critical threshold's margin.
    #[serde(default)]
    pub reserved_bytes: u64,
    /// Sum of the sizes of every LUN and snapshot LUN (what hosts were promised).
    pub provisioned_bytes: u64,
    /// `provisioned_bytes / capacity_bytes`: above 1 the pool is overcommitted.
    pub provisioned_ratio: f64,
}

/// How the array is doing, with the reasons when it is not `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub state: HealthState,
    /// One sentence per problem, in an administrator's words.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Ok,
    /// Needs attention soon (space past the warning threshold).
    Warning,
    /// Needs attention now (journal or audit writes failing, the pool nearly full, the
    /// storage backend not answering, a LUN's volume gone from the pool).
    Critical,
}

/// One open iSCSI session (`GET /v1/admin/sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The initiator's iSCSI name.
    pub initiator: String,
    /// The host that initiator belongs to, if any.
    pub host: Option<String>,
    /// The initiator's address (`ip:port`).
    pub peer: String,
    /// The portal the session came in on.
    pub portal: Option<String>,
    pub target: String,
    /// The LUNs the session sees (the host's mappings).
    pub luns: Vec<HostLun>,
    /// The initiator proved a CHAP secret at login.
    pub chap: bool,
    /// Seconds since the Unix epoch at login.
    pub connected_since: u64,
    /// Initiator session id (hex) and target session handle.
    pub isid: String,
    pub tsih: u16,
}

/// One change in the audit trail (`GET /v1/admin/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// `admin`, or `host NAME` for a host's token.
    pub who: String,
    /// The caller's address (`ip:port`).
    pub from: String,
    /// What was asked, e.g. `lun create`, `host map`, `set commit`.
    pub action: String,
    /// The objects named and the settings given (never a token or a secret: a CHAP secret
    /// shows as `"set"`).
    pub details: BTreeMap<String, serde_json::Value>,
    /// The HTTP status of the answer (2xx: done).
    pub status: u16,
}
