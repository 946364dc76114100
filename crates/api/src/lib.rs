//! The array control API's wire format, shared by the array (server) and the provider's
//! HTTPS client, so both sides compile against one definition.
//!
//! Transport: HTTPS (TLS 1.3/1.2, the array's self-generated certificate pinned by SHA-256
//! fingerprint), JSON bodies, `Authorization: Bearer <token>`. Host tokens reach the provider
//! verbs (scoped to that host's LUNs and the snapshot LUNs derived from them); the admin token
//! reaches the admin verbs. Errors are `application/problem+json` ([`Problem`]) with a stable
//! machine [`ProblemCode`].
//!
//! Every provider verb is idempotent and keyed by VSS ids or LUN identity: retrying a request
//! never creates a second snapshot.
//!
//! [`pinning`] is the one rule for trusting the array's certificate, shared by every client.
//!
//! Not here: any other behaviour. See the `array` crate for the server and `provider::https` for the
//! client.
#![forbid(unsafe_code)]

pub mod ops;
pub mod pinning;
pub mod types;

use serde::{Deserialize, Serialize};
use vss::{SnapshotContext, VssId};

pub use ops::*;
pub use types::*;

/// A size as an administrator reads it: `1073741824` → `1 GiB`, `1610612736` → `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Orders names as an administrator counts: runs of digits compare as numbers, so `lun-2`
/// comes before `lun-10` and `node-9` before `node-10`; otherwise byte by byte.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            // Compare the numbers without parsing them (any length): leading zeros off,
            // then the longer is larger, then digit by digit.
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|c| **c == b'0').count();
    &d[n..]
}

/// Route paths. `{set}` is a set GUID, `{job}` a job id, `{host}` a host name; `{lun}` is a
/// LUN id (`lun-N`) on host verbs, and a LUN id or a LUN's name on admin verbs.
pub mod routes {
    /// GET: [`crate::Health`]. No authentication.
    pub const HEALTH: &str = "/v1/health";
    /// GET: the OpenAPI document. No authentication.
    pub const OPENAPI: &str = "/v1/openapi.json";

    // Provider verbs (host token).
    /// POST [`crate::LookupRequest`] → [`crate::LookupResponse`].
    pub const LOOKUP: &str = "/v1/luns/lookup";
    /// POST [`crate::PrepareRequest`] → 204.
    pub const PREPARE: &str = "/v1/sets/{set}/prepare";
    /// POST → 204.
    pub const END_PREPARE: &str = "/v1/sets/{set}/end-prepare";
    /// POST → 204. All LUNs of the set snapshotted atomically.
    pub const COMMIT: &str = "/v1/sets/{set}/commit";
    /// POST → 204.
    pub const COMPLETE: &str = "/v1/sets/{set}/complete";
    /// POST → 204.
    pub const ABORT: &str = "/v1/sets/{set}/abort";
    /// POST [`crate::DescribeRequest`] → [`crate::DescribeResponse`].
    pub const DESCRIBE: &str = "/v1/sets/{set}/describe";
    /// GET → `Vec<SetSummary>` (the calling host's sets).
    pub const SETS: &str = "/v1/sets";
    /// POST [`crate::LunsRequest`] → 204. Maps snapshot LUNs to the calling host.
    pub const EXPOSE: &str = "/v1/luns/expose";
    /// POST [`crate::LunsRequest`] → 204. Unmaps LUNs from the calling host.
    pub const MASK: &str = "/v1/luns/mask";
    /// POST → 204. Deletes a snapshot LUN (OnLunEmpty).
    pub const RELEASE: &str = "/v1/luns/{lun}/release";
    /// POST [`crate::ResyncRequest`] → [`crate::ResyncResponse`].
    pub const RESYNC: &str = "/v1/resync";
    /// GET → [`crate::JobStatus`].
    pub const RESYNC_JOB: &str = "/v1/resync/{job}";
    /// POST → 204.
    pub const RESYNC_CANCEL: &str = "/v1/resync/{job}/cancel";

    // Admin verbs (admin token).
    /// GET → `Vec<LunRecord>`; POST [`crate::CreateLun`] → [`crate::LunRecord`].
    pub const ADMIN_LUNS: &str = "/v1/admin/luns";
    /// GET → [`crate::LunRecord`]; DELETE → 204 (refused while snapshots depend on it);
    /// PATCH [`crate::UpdateLun`] → [`crate::LunRecord`] (grow, rename).
    pub const ADMIN_LUN: &str = "/v1/admin/luns/{lun}";
    /// GET → `Vec<HostRecord>`; POST [`crate::CreateHost`] → [`crate::CreatedHost`].
    pub const ADMIN_HOSTS: &str = "/v1/admin/hosts";
    /// GET → [`crate::HostRecord`]; DELETE → 204; PATCH [`crate::UpdateHost`] →
    /// [`crate::HostRecord`] (initiators, CHAP secret; nothing is unmapped).
    pub const ADMIN_HOST: &str = "/v1/admin/hosts/{host}";
    /// POST → [`crate::CreatedHost`]: a new API token for the host, shown once; the old one
    /// is refused from then on.
    pub const ADMIN_HOST_TOKEN: &str = "/v1/admin/hosts/{host}/token";
    /// POST [`crate::MapLun`] → [`crate::HostRecord`].
    pub const ADMIN_MAP: &str = "/v1/admin/hosts/{host}/map";
    /// DELETE → 204.
    pub const ADMIN_UNMAP: &str = "/v1/admin/hosts/{host}/map/{lun}";
    /// GET → `Vec<SetRecord>` (every host's sets).
    pub const ADMIN_SETS: &str = "/v1/admin/sets";
    /// `POST`: an administrator aborts a set that is not complete (a set left prepared).
    pub const ADMIN_SET_ABORT: &str = "/v1/admin/sets/{set}/abort";
    /// DELETE `?force=true` (optional): deletes a complete set's snapshot LUNs and forgets
    /// the set (a transportable set nobody will import, for one). Refused while a LUN of it
    /// is mapped to a host, unless forced; refused while a snapshot was taken of one.
    pub const ADMIN_SET: &str = "/v1/admin/sets/{set}";
    /// GET → `Vec<LunRecord>` (snapshot LUNs only).
    pub const ADMIN_SNAPSHOTS: &str = "/v1/admin/snapshots";
    /// DELETE → 204: removes a snapshot LUN (admin override of OnLunEmpty).
    pub const ADMIN_SNAPSHOT: &str = "/v1/admin/snapshots/{lun}";
    /// POST [`crate::ReapRequest`] → [`crate::ReapReport`].
    pub const ADMIN_REAP: &str = "/v1/admin/reap";
    /// POST [`crate::ResyncRequest`] → [`crate::ResyncResponse`]: an administrator's resync of
    /// any snapshot LUN onto any LUN.
    pub const ADMIN_RESYNC: &str = "/v1/admin/resync";
    /// GET → [`crate::JobStatus`] of any resync job.
    pub const ADMIN_RESYNC_JOB: &str = "/v1/admin/resync/{job}";
    /// GET → [`crate::ArrayStatus`].
    pub const ADMIN_STATUS: &str = "/v1/admin/status";
    /// POST [`crate::ForwardedCommand`] → [`crate::ForwardedOutcome`]: a PERSISTENT RESERVE
    /// IN/OUT a standby gateway received, run by the gateway in office, which keeps the
    /// array's reservations (docs/gateways.md).
    pub const ADMIN_GATEWAY_RESERVATIONS: &str = "/v1/admin/gateway/reservations";
    /// GET → `Vec<GatewayRecord>`: the array's live gateways (with `[gateway]`).
    pub const ADMIN_GATEWAYS: &str = "/v1/admin/gateways";
    /// POST `?force=true` (optional) → 202 [`crate::GatewayRecord`]: the gateway hands over
    /// what it serves and stops. Refused for the array's last gateway not asked to drain,
    /// unless forced.
    pub const ADMIN_GATEWAY_DRAIN: &str = "/v1/admin/gateways/{gateway}/drain";
    /// GET → `Vec<SessionRecord>`: open iSCSI sessions.
    pub const ADMIN_SESSIONS: &str = "/v1/admin/sessions";
    /// GET `?since=SECONDS` (since the Unix epoch, optional) → `Vec<AuditRecord>`, oldest
    /// first.
    pub const ADMIN_AUDIT: &str = "/v1/admin/audit";

    /// Fills `{name}` placeholders in a route.
    pub fn fill(route: &str, params: &[(&str, &str)]) -> String {
        let mut s = route.to_string();
        for (k, v) in params {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        s
    }
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// iSCSI target name the array serves LUNs under.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    pub keys: Vec<LunKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    /// One entry per key, in order; `null` for a LUN the array does not own or the host may
    /// not see.
    pub luns: Vec<Option<ArrayLun>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareRequest {
    pub context: SnapshotContext,
    pub snapshots: Vec<PlannedSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeRequest {
    pub sources: Vec<LunId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeResponse {
    pub snapshots: Vec<SnapshotLun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunsRequest {
    pub luns: Vec<LunId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRequest {
    pub pairs: Vec<ResyncPair>,
    /// Administrators only: resync onto a LUN that is mapped to a host, or that is not the
    /// snapshot's source. Hosts (the provider, for VSS) may always resync onto their LUNs.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncResponse {
    pub job: JobId,
}

/// Stable machine codes of [`Problem`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemCode {
    /// 400: the body or a parameter is malformed.
    BadRequest,
    /// 401: no or unknown bearer token.
    Unauthorized,
    /// 403: the token may not act on this object.
    Forbidden,
    /// 404: no such set, LUN, host or job.
    NotFound,
    /// 409: the object is in a state that does not allow the request.
    Conflict,
    /// 507: the pool has no space for the request.
    NoSpace,
    /// 422: an array limit (LUNs per set, sets, ...) was reached.
    LimitReached,
    /// 500: anything else; the array log has details.
    Internal,
}

impl ProblemCode {
    pub fn status(self) -> u16 {
        match self {
            ProblemCode::BadRequest => 400,
            ProblemCode::Unauthorized => 401,
            ProblemCode::Forbidden => 403,
            ProblemCode::NotFound => 404,
            ProblemCode::Conflict => 409,
            ProblemCode::LimitReached => 422,
            ProblemCode::NoSpace => 507,
            ProblemCode::Internal => 500,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemCode::BadRequest => "Bad request",
            ProblemCode::Unauthorized => "Unauthorized",
            ProblemCode::Forbidden => "Forbidden",
            ProblemCode::NotFound => "Not found",
            ProblemCode::Conflict => "Conflict",
            ProblemCode::LimitReached => "Limit reached",
            ProblemCode::NoSpace => "No space",
            ProblemCode::Internal => "Internal error",
        }
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:shadowlun:problem:<code>`
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// One sentence saying what happened and what to do.
    pub detail: String,
    pub code: ProblemCode,
}

impl Problem {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:shadowlun:problem:{}", serde_json_code(code)),
            title: code.title().to_string(),
            status: code.status(),
            detail: detail.into(),
            code,
        }
    }
}

fn serde_json_code(code: ProblemCode) -> &'static str {
    match code {
        ProblemCode::BadRequest => "bad-request",
        ProblemCode::Unauthorized => "unauthorized",
        ProblemCode::Forbidden => "forbidden",
        ProblemCode::NotFound => "not-found",
        ProblemCode::Conflict => "conflict",
        ProblemCode::NoSpace => "no-space",
        ProblemCode::LimitReached => "limit-reached",
        ProblemCode::Internal => "internal",
    }
}

// ---- admin objects ----

/// `POST /v1/admin/luns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLun {
    /// Human name, unique among LUNs (`[A-Za-z0-9._-]{1,64}`).
    pub name: String,
    pub size_bytes: u64,
}

/// `POST /v1/admin/sets`: the array takes a snapshot set of these LUNs now, holding their
/// writes in the target across the commit (a crash-consistent copy at one instant, no VSS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeSet {
    /// LUN ids or names, each once.
    pub luns: Vec<String>,
}

/// `PATCH /v1/admin/luns/{lun}`: grow a LUN, rename it, or both; a field left out is left
/// as it is. Neither changes what hosts see of the LUN's identity or its mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateLun {
    /// The new size (LUNs only grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The new name, unique among LUNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A LUN as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunRecord {
    pub id: LunId,
    pub name: String,
    pub size_bytes: u64,
    /// VPD 0x80 serial.
    pub serial: String,
    /// NAA designator, hex.
    pub naa: String,
    pub snapshot_of: Option<SnapshotOrigin>,
    /// Hosts it is mapped to, with the LUN number each sees it at.
    pub mapped_to: Vec<Mapping>,
    /// Bytes allocated in the pool for this LUN (thin).
    pub allocated_bytes: u64,
    /// For a plex snapshot LUN (one taken with the VSS PLEX attribute): how far it is from
    /// being a full, independent copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plex: Option<PlexStatus>,
    /// The LUN's volume is gone from the pool (deleted outside the array): hosts still see
    /// the LUN, and every command that reaches its medium gets NOT READY / MANUAL
    /// INTERVENTION REQUIRED (02/04/03) until an administrator deletes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volume_missing: bool,
}

/// One host a LUN is mapped to (`LunRecord::mapped_to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub host: String,
    pub lun_number: u64,
}

/// One LUN mapped to a host (`HostRecord::luns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLun {
    /// LUN id (`lun-N`).
    pub lun: String,
    /// The LUN number the host's initiators see it at.
    pub lun_number: u64,
}

/// `POST /v1/admin/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateHost {
    /// `[A-Za-z0-9._-]{1,64}`
    pub name: String,
    /// iSCSI initiator names (IQNs) of the host.
    pub initiators: Vec<String>,
    /// CHAP secret the host's initiator must use (12-16 characters), if CHAP is wanted.
    #[serde(default)]
    pub chap_secret: Option<String>,
    /// Hosts whose snapshot LUNs this host may import (look up, expose, mask, release):
    /// a backup host that imports transportable shadow copies names the production hosts
    /// here. Original LUNs are never shared this way.
    #[serde(default)]
    pub import_from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub initiators: Vec<String>,
    pub chap: bool,
    pub luns: Vec<HostLun>,
    /// Hosts whose snapshot LUNs this host may import.
    #[serde(default)]
    pub import_from: Vec<String>,
}

/// Answer to `POST /v1/admin/hosts`: the host's API token, shown once (stored hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedHost {
    pub host: HostRecord,
    pub token: String,
}

/// `PATCH /v1/admin/hosts/{host}`: change a host without unmapping anything. Removals
/// apply before additions, so replacing an initiator is one change (remove the old, add the
/// new). A removed initiator loses the host's LUNs, its iSCSI sessions end and it cannot log
/// in again; an added one may log in at once and sees the host's LUNs. A CHAP change applies
/// from each initiator's next login; sessions already open stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateHost {
    /// Initiator names to add (adding one the host has is a no-op).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_initiators: Vec<String>,
    /// Initiator names to remove (each must be the host's; one must be left).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_initiators: Vec<String>,
    /// A new CHAP secret (12-16 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret: Option<String>,
    /// Log in without CHAP from now on (unless the array requires CHAP of everyone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_chap: bool,
}

/// `POST /v1/admin/hosts/{host}/map`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLun {
    pub lun: LunId,
    /// LUN number the host sees; the lowest free one if absent.
    #[serde(default)]
    pub lun_number: Option<u64>,
    /// Map a LUN that another host has mapped already (clusters share LUNs; by accident,
    /// two hosts writing one LUN corrupt it). Without it such a mapping is refused.
    #[serde(default)]
    pub shared: bool,
}

/// A set as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    pub set_id: VssId,
    pub host: String,
    pub state: SetState,
    pub context: SnapshotContext,
    /// (source LUN, snapshot LUN)
    pub snapshots: Vec<SetMember>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    /// When a host first exposed one of its LUNs after the set was complete (an import),
    /// seconds since the Unix epoch; `None` for a set nobody imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_at: Option<u64>,
    /// Pool space the set holds for its commit: reserved at end-prepare, released when it
    /// commits, aborts or is reaped (0 then).
    #[serde(default)]
    pub reserved_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMember {
    pub snapshot_id: VssId,
    pub source: LunId,
    pub lun: LunId,
    /// The snapshot LUN has been deleted (released or removed by an administrator).
    #[serde(default)]
    pub deleted: bool,
}

/// One live gateway of an array (`GET /v1/admin/gateways`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub name: String,
    /// It is in office: it serves the LUNs and answers the control API.
    pub serving: bool,
    /// Its relative target port identifier (its target port group), as it advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal_group_tag: Option<u16>,
    /// Where it serves the control API, once it is in office.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// It was asked to drain and has not stopped yet.
    pub draining: bool,
}

/// `POST /v1/admin/gateway/reservations`: a SCSI command and the I_T nexus it came through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedCommand {
    pub lun: LunId,
    /// Initiator device name (iSCSI InitiatorName).
    pub initiator: String,
    /// Initiator port name (`<name>,i,0x<isid>`).
    pub initiator_port: String,
    /// Relative target port identifier of the port it came through.
    pub target_port: u16,
    /// iSCSI target portal group tag of that port.
    pub portal_group_tag: u16,
    pub cdb: Vec<u8>,
    /// Parameter data (PERSISTENT RESERVE OUT).
    #[serde(default)]
    pub data: Vec<u8>,
}

/// How a [`ForwardedCommand`] ended: SCSI status, sense data with CHECK CONDITION, data-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedOutcome {
    pub status: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sense: Option<Vec<u8>>,
    #[serde(default)]
    pub data: Vec<u8>,
}

/// `POST /v1/admin/reap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapRequest {
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapReport {
    /// Sets removed (or that would be, with dry_run).
    pub sets: Vec<VssId>,
    /// Snapshot LUNs removed with them.
    pub luns: Vec<LunId>,
    pub dry_run: bool,
    /// Of `sets`, the transportable sets nobody imported within `transportable_retention_secs`
    /// (the others were prepared and never committed, or aborted).
    #[serde(default)]
    pub expired: Vec<VssId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_shape() {
        let p = Problem::new(
            ProblemCode::NoSpace,
            "The pool is full: free space and retry.",
        );
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["type"], "urn:shadowlun:problem:no-space");
        assert_eq!(j["status"], 507);
        assert_eq!(j["code"], "no-space");
        let back: Problem = serde_json::from_value(j).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn names_sort_as_numbers() {
        let mut v = vec![
            "lun-10", "lun-2", "lun-1", "b", "a10", "a9", "lun-02", "node",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "a9", "a10", "b", "lun-1", "lun-02", "lun-2", "lun-10", "node"
            ]
        );
        assert_eq!(natural_cmp("x", "x"), std::cmp::Ordering::Equal);
        assert_eq!(
            natural_cmp(
                "lun-99999999999999999999999",
                "lun-100000000000000000000000"
            ),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn routes_fill() {
        assert_eq!(
            routes::fill(routes::COMMIT, &[("set", "abc")]),
            "/v1/sets/abc/commit"
        );
        assert_eq!(
            routes::fill(routes::ADMIN_UNMAP, &[("host", "h1"), ("lun", "lun-2")]),
            "/v1/admin/hosts/h1/map/lun-2"
        );
    }

    #[test]
    fn job_status_is_flat() {
        let s = JobStatus {
            state: JobState::Failed {
                reason: "x".into(),
                no_space: true,
            },
            progress: 40,
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["state"], "failed");
        assert_eq!(j["progress"], 40);
        assert_eq!(serde_json::from_value::<JobStatus>(j).unwrap(), s);
    }
}
