//! The array's objects and every verb on them, independent of HTTP: LUNs with fixed identity,
//! hosts and mappings, snapshot sets, resync jobs. Each change runs backend work first, then
//! appends its records to the journal (durable), then updates memory, then answers; so an
//! acknowledged change survives any crash, and an unacknowledged one leaves at worst an
//! orphan volume that [`Array::open`] deletes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{
    ArrayLun, CreateHost, CreateLun, CreatedHost, HostLun, HostRecord, JobId, JobState, JobStatus,
    LunId, LunKey, LunRecord, MapLun, Mapping, PlannedSnapshot, ReapReport, ResyncPair, SetMember,
    SetRecord, SetState, SetSummary, SnapshotLun, SnapshotOrigin,
};
use serde::{Deserialize, Serialize};
use vss::identity::LunIdentity;
use vss::scsi::Designator;
use vss::{SnapshotContext, VssId};

use crate::error::ArrayError;
use crate::journal::Journal;
use storage::{BLOCK_SIZE, Backend, BackendError};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Host(String),
}

/// Lifecycle of a LUN row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LunState {
    /// An original LUN.
    Online,
    /// A snapshot LUN reserved by prepare: identity fixed, no volume yet.
    Prepared,
    /// A snapshot LUN taken by commit, not yet mapped.
    Committed,
    /// A snapshot LUN mapped to its host.
    Exposed,
    /// A snapshot LUN unmapped again.
    Masked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunRow {
    pub id: LunId,
    pub number: u64,
    pub name: String,
    pub size_bytes: u64,
    pub snapshot_of: Option<SnapshotOrigin>,
    /// Host that created the snapshot LUN.
    pub owner: Option<String>,
    pub state: LunState,
    pub created_at: u64,
}

/// The id of LUN number `number`, which is also the name of its volume.
pub fn lun_id(number: u64) -> LunId {
    format!("lun-{number}")
}

/// Whether `name` has the form of [`lun_id`]: the only volumes the array may delete without
/// a LUN row saying so.
pub fn is_lun_id(name: &str) -> bool {
    name.strip_prefix("lun-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The scope of the administrator on verbs that otherwise take a host: every LUN and job.
/// It can never be a host's name (host names are `[A-Za-z0-9._-]`).
pub const ADMIN_SCOPE: &str = "*admin*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub name: String,
    pub initiators: Vec<String>,
    /// CHAP needs the secret itself, so the journal (0600) keeps it.
    pub chap_secret: Option<String>,
    /// SHA-256 of the API token, hex.
    pub token_sha256: String,
    /// LUN number → LUN id.
    pub luns: BTreeMap<u64, LunId>,
    /// Hosts whose snapshot LUNs this host may import.
    #[serde(default)]
    pub import_from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub snapshot_id: VssId,
    pub source: LunId,
    pub lun: LunId,
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRow {
    pub set_id: VssId,
    pub host: String,
    pub state: SetState,
    pub context: SnapshotContext,
    pub members: Vec<MemberRow>,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: JobId,
    pub host: String,
    pub pairs: Vec<ResyncPair>,
    pub status: JobStatus,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Counters { next_number: u64, next_job: u64 },
    Lun(LunRow),
    LunGone { id: LunId },
    Host(HostRow),
    HostGone { name: String },
    Set(SetRow),
    SetGone { set_id: VssId },
    Job(JobRow),
}

#[derive(Debug, Default, Clone)]
struct Db {
    next_number: u64,
    next_job: u64,
    luns: BTreeMap<LunId, LunRow>,
    hosts: BTreeMap<String, HostRow>,
    sets: BTreeMap<VssId, SetRow>,
    jobs: BTreeMap<JobId, JobRow>,
}

impl Db {
    fn apply(&mut self, r: Record) {
        match r {
            Record::Counters {
                next_number,
                next_job,
            } => {
                self.next_number = self.next_number.max(next_number);
                self.next_job = self.next_job.max(next_job);
            }
            Record::Lun(l) => {
                self.luns.insert(l.id.clone(), l);
            }
            Record::LunGone { id } => {
                self.luns.remove(&id);
            }
            Record::Host(h) => {
                self.hosts.insert(h.name.clone(), h);
            }
            Record::HostGone { name } => {
                self.hosts.remove(&name);
            }
            Record::Set(s) => {
                self.sets.insert(s.set_id, s);
            }
            Record::SetGone { set_id } => {
                self.sets.remove(&set_id);
            }
            Record::Job(j) => {
                self.jobs.insert(j.id.clone(), j);
            }
        }
    }

    fn records(&self) -> Vec<Record> {
        let mut v = vec![Record::Counters {
            next_number: self.next_number,
            next_job: self.next_job,
        }];
        v.extend(self.luns.values().cloned().map(Record::Lun));
        v.extend(self.hosts.values().cloned().map(Record::Host));
        v.extend(self.sets.values().cloned().map(Record::Set));
        v.extend(self.jobs.values().cloned().map(Record::Job));
        v
    }

    fn mappings_of(&self, lun: &str) -> Vec<Mapping> {
        self.hosts
            .values()
            .flat_map(|h| {
                h.luns
                    .iter()
                    .filter(|(_, l)| l.as_str() == lun)
                    .map(|(n, _)| Mapping {
                        host: h.name.clone(),
                        lun_number: *n,
                    })
            })
            .collect()
    }

    fn mapped_to(&self, host: &str, lun: &str) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| h.luns.values().any(|l| l == lun))
    }

    /// The host may see and act on `lun`: mapped to it, created by it, a snapshot of a LUN
    /// it may see, or a snapshot LUN created by a host it may import from.
    fn visible(&self, host: &str, lun: &str) -> bool {
        if host == ADMIN_SCOPE {
            return self.luns.contains_key(lun);
        }
        if let Some(row) = self.luns.get(lun) {
            let imports = |owner: &str| {
                self.hosts
                    .get(host)
                    .is_some_and(|h| h.import_from.iter().any(|o| o == owner))
            };
            if row.snapshot_of.is_some() && row.owner.as_deref().is_some_and(imports) {
                return true;
            }
        }
        let mut cur = lun.to_string();
        for _ in 0..16 {
            let Some(row) = self.luns.get(&cur) else {
                return false;
            };
            if self.mapped_to(host, &cur) || row.owner.as_deref() == Some(host) {
                return true;
            }
            match &row.snapshot_of {
                Some(o) => cur = o.source.clone(),
                None => return false,
            }
        }
        false
    }

    fn dependants(&self, lun: &str) -> usize {
        self.luns
            .values()
            .filter(|l| l.snapshot_of.as_ref().is_some_and(|o| o.source == lun))
            .count()
    }
}

/// What maps LUNs into the SCSI target: called with every mapping change, per initiator.
pub trait Exporter: Send + Sync {
    fn map(&self, initiator: &str, lun_number: u64, lun: &ExportedLun);
    fn unmap(&self, initiator: &str, lun_number: u64);
    /// A LUN's size changed: initiators that know it should hear CAPACITY DATA HAS CHANGED.
    fn resized(&self, lun: &str) {
        let _ = lun;
    }
    /// Sets (or clears) the CHAP secret an initiator must log in with.
    fn set_chap(&self, initiator: &str, secret: Option<&str>) {
        let _ = (initiator, secret);
    }
}

/// A LUN as the SCSI target serves it.
pub struct ExportedLun {
    pub id: LunId,
    pub identity: LunIdentity,
    /// Target port designators appended to VPD 0x83.
    pub target_ports: Vec<Designator>,
    pub device: scsi::Device,
}

/// An exporter that serves nothing (API-only arrays and tests).
#[derive(Debug, Default)]
pub struct NoExport;

impl Exporter for NoExport {
    fn map(&self, _: &str, _: u64, _: &ExportedLun) {}
    fn unmap(&self, _: &str, _: u64) {}
}

/// Limits and policies.
#[derive(Debug, Clone)]
pub struct Policy {
    pub target_name: String,
    pub max_luns_per_set: usize,
    pub max_lun_bytes: u64,
    pub reaper_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        let c = crate::config::Config::default();
        Self {
            reaper_timeout: c.reaper_timeout(),
            target_name: c.target_name,
            max_luns_per_set: c.max_luns_per_set,
            max_lun_bytes: c.max_lun_bytes,
        }
    }
}

struct Inner {
    journal: Journal,
    db: Db,
}

struct JobHandle {
    cancel: Arc<AtomicBool>,
    progress: Arc<AtomicU8>,
}

struct Shared {
    inner: Mutex<Inner>,
    backend: Arc<dyn Backend>,
    exporter: Arc<dyn Exporter>,
    policy: Policy,
    ports: Vec<Designator>,
    admin_token_sha256: String,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    jobs: Mutex<HashMap<JobId, JobHandle>>,
}

/// The array: cheap to clone, every clone is the same array.
#[derive(Clone)]
pub struct Array(Arc<Shared>);

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("target", &self.0.policy.target_name)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A fresh random API token (256 bits, hex).
pub fn new_token() -> Result<String, ArrayError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| ArrayError::io("random token", std::io::Error::other(e.to_string())))?;
    Ok(hex::encode(b))
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An iSCSI name (`iqn.`, `eui.` or `naa.` form, RFC 7143 §4.2.7, at most 223 bytes).
pub fn valid_iqn(s: &str) -> bool {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b));
    let ok_prefix = (s.starts_with("iqn.") && s.len() > 4)
        || (s.starts_with("eui.") && s.len() == 20)
        || (s.starts_with("naa.") && (s.len() == 20 || s.len() == 36));
    ok_chars && ok_prefix && s.len() <= 223
}

fn not_visible(host: &str, lun: &str) -> ArrayError {
    tracing::warn!(host, lun, "refused a call on a LUN the host may not see");
    ArrayError::NotFound(format!(
        "LUN {lun} does not exist or is not mapped to this host; look it up again."
    ))
}

fn set_not_found(set: VssId) -> ArrayError {
    ArrayError::NotFound(format!(
        "Snapshot set {set} is unknown to the array; prepare it first."
    ))
}

impl Array {
    /// Opens the array: replays the journal at `journal_path`, deletes volumes no LUN owns
    /// (left by a crash between engine work and journal append), marks interrupted resync jobs
    /// failed, and maps every mapping into `exporter`.
    pub fn open(
        journal_path: &Path,
        backend: Arc<dyn Backend>,
        exporter: Arc<dyn Exporter>,
        policy: Policy,
        admin_token_sha256: String,
    ) -> Result<Self, ArrayError> {
        Self::open_with_clock(
            journal_path,
            backend,
            exporter,
            policy,
            admin_token_sha256,
            Box::new(now_secs),
        )
    }

    /// [`Array::open`] with a clock (seconds since the epoch), for reaper tests.
    pub fn open_with_clock(
        journal_path: &Path,
        backend: Arc<dyn Backend>,
        exporter: Arc<dyn Exporter>,
        policy: Policy,
        admin_token_sha256: String,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Self, ArrayError> {
        let mut db = Db::default();
        let (journal, _) = Journal::open::<Record, _>(journal_path, |recs| {
            for r in recs {
                db.apply(r);
            }
            for j in db.jobs.values_mut() {
                if j.status.state == JobState::Running {
                    j.status.state = JobState::Failed {
                        reason: "the array restarted during the resync; start it again".into(),
                        no_space: false,
                    };
                }
            }
            db.records()
        })?;
        // Reconcile the engine with the journal.
        let wanted: std::collections::BTreeSet<&str> = db
            .luns
            .values()
            .filter(|l| l.state != LunState::Prepared)
            .map(|l| l.id.as_str())
            .collect();
        // Only names this array gives its volumes are its to delete; the backend lists only
        // its own volumes, and this holds even if one lists more.
        let have = backend.volumes()?;
        for v in &have {
            if wanted.contains(v.name.as_str()) {
                continue;
            }
            if !is_lun_id(&v.name) {
                tracing::info!(volume = %v.name, "left alone a volume this array did not name");
                continue;
            }
            tracing::warn!(volume = %v.name, "deleting orphan volume not in the journal");
            backend.delete_volume(&v.name)?;
        }
        for id in &wanted {
            if !have.iter().any(|v| v.name == *id) {
                tracing::error!(lun = %id, "LUN in the journal has no volume in the pool");
            }
        }
        // What the SCSI target appends to VPD 0x83 (relative port and TPGT 1, the iSCSI
        // target's portal group tag): the target port designators and the target device name.
        let ports = scsi::target_designators(&policy.target_name, 1);
        let array = Array(Arc::new(Shared {
            inner: Mutex::new(Inner { journal, db }),
            backend,
            exporter,
            policy,
            ports,
            admin_token_sha256,
            clock,
            jobs: Mutex::new(HashMap::new()),
        }));
        {
            let inner = array.lock();
            for h in inner.db.hosts.values() {
                for i in &h.initiators {
                    array.0.exporter.set_chap(i, h.chap_secret.as_deref());
                }
                for (n, lun) in &h.luns {
                    array.export(&inner.db, &h.initiators, *n, lun);
                }
            }
        }
        Ok(array)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> u64 {
        (self.0.clock)()
    }

    /// Journals `records` durably, then applies them.
    fn write(inner: &mut Inner, records: Vec<Record>) -> Result<(), ArrayError> {
        if let Err(e) = inner.journal.append(&records) {
            tracing::error!(error = %e, "journal append failed");
            return Err(e.into());
        }
        for r in records {
            inner.db.apply(r);
        }
        if inner.journal.appended() >= COMPACT_AFTER {
            let live = inner.db.records();
            match inner.journal.rewrite(&live) {
                Ok(()) => tracing::info!(records = live.len(), "journal compacted"),
                // The change above is durable; the next change will report the poisoning.
                Err(e) => tracing::error!(error = %e, "journal compaction failed"),
            }
        }
        Ok(())
    }

    fn export(&self, db: &Db, initiators: &[String], number: u64, lun: &str) {
        let Some(row) = db.luns.get(lun) else { return };
        let device = match self.0.backend.device(lun) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(lun, error = %e, "cannot open the LUN's volume; not exported");
                return;
            }
        };
        let e = ExportedLun {
            id: row.id.clone(),
            identity: LunIdentity::for_number(row.number),
            target_ports: self.0.ports.clone(),
            device,
        };
        for i in initiators {
            self.0.exporter.map(i, number, &e);
        }
    }

    fn unexport(&self, initiators: &[String], number: u64) {
        for i in initiators {
            self.0.exporter.unmap(i, number);
        }
    }

    /// The identity pages a LUN serves.
    pub fn identity_pages(&self, number: u64) -> vss::lun::ScsiIdentity {
        LunIdentity::for_number(number).scsi_identity(&self.0.ports)
    }

    pub fn target_name(&self) -> &str {
        &self.0.policy.target_name
    }

    /// Who holds `token`, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let h = token_hash(token);
        if h == self.0.admin_token_sha256 {
            return Some(Caller::Admin);
        }
        self.lock()
            .db
            .hosts
            .values()
            .find(|x| x.token_sha256 == h)
            .map(|x| Caller::Host(x.name.clone()))
    }

    /// Flushes the journal (shutdown).
    pub fn sync(&self) -> Result<(), ArrayError> {
        self.lock().journal.sync().map_err(Into::into)
    }

    // ---------------- provider verbs ----------------

    pub fn lookup(&self, host: &str, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ArrayError> {
        let inner = self.lock();
        let db = &inner.db;
        let idents: Vec<(&LunRow, LunIdentity)> = db
            .luns
            .values()
            .filter(|l| l.state != LunState::Prepared && db.visible(host, &l.id))
            .map(|l| (l, LunIdentity::for_number(l.number)))
            .collect();
        Ok(keys
            .iter()
            .map(|k| {
                idents.iter().find_map(|(l, ident)| {
                    let ours = ident.designators.iter().any(|d| {
                        k.identifiers
                            .iter()
                            .any(|i| i.id_type == d.designator_type && i.identifier == d.value)
                    });
                    ours.then(|| ArrayLun {
                        id: l.id.clone(),
                        size_bytes: l.size_bytes,
                        snapshot_of: l.snapshot_of.clone(),
                    })
                })
            })
            .collect())
    }

    fn own_set<'a>(db: &'a Db, host: &str, set_id: VssId) -> Result<&'a SetRow, ArrayError> {
        let set = db.sets.get(&set_id).ok_or_else(|| set_not_found(set_id))?;
        if set.host != host {
            tracing::warn!(host, %set_id, owner = %set.host, "refused a call on another host's set");
            return Err(ArrayError::Forbidden(format!(
                "Snapshot set {set_id} belongs to another host; use your own set id."
            )));
        }
        Ok(set)
    }

    pub fn prepare(
        &self,
        host: &str,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let now = self.now();
        let db = &inner.db;
        for s in snapshots {
            let ok = db
                .luns
                .get(&s.source)
                .is_some_and(|l| l.state != LunState::Prepared)
                && db.visible(host, &s.source);
            if !ok {
                return Err(not_visible(host, &s.source));
            }
        }
        let mut set = match db.sets.get(&set_id) {
            Some(_) => {
                let s = Self::own_set(db, host, set_id)?;
                if s.state != SetState::Prepared {
                    return Err(ArrayError::Conflict(format!(
                        "Snapshot set {set_id} is {:?}; only a prepared set takes more LUNs, \
                         start a new set.",
                        s.state
                    )));
                }
                s.clone()
            }
            None => SetRow {
                set_id,
                host: host.into(),
                state: SetState::Prepared,
                context,
                members: Vec::new(),
                created_at: now,
                updated_at: now,
            },
        };
        let mut next = db.next_number;
        let mut records = Vec::new();
        for s in snapshots {
            if set.members.iter().any(|m| m.source == s.source) {
                continue;
            }
            if set.members.len() >= self.0.policy.max_luns_per_set {
                return Err(ArrayError::LimitReached(format!(
                    "A snapshot set holds at most {} LUNs; split the set.",
                    self.0.policy.max_luns_per_set
                )));
            }
            next += 1;
            let id = lun_id(next);
            let src = &db.luns[&s.source];
            records.push(Record::Lun(LunRow {
                id: id.clone(),
                number: next,
                name: format!("{}@{}", src.name, next),
                size_bytes: src.size_bytes,
                snapshot_of: Some(SnapshotOrigin {
                    source: s.source.clone(),
                    set_id,
                    snapshot_id: s.snapshot_id,
                }),
                owner: Some(host.into()),
                state: LunState::Prepared,
                created_at: now,
            }));
            set.members.push(MemberRow {
                snapshot_id: s.snapshot_id,
                source: s.source.clone(),
                lun: id,
                released: false,
            });
        }
        if records.is_empty() && db.sets.contains_key(&set_id) {
            return Ok(()); // a retry
        }
        set.updated_at = now;
        records.insert(
            0,
            Record::Counters {
                next_number: next,
                next_job: db.next_job,
            },
        );
        records.push(Record::Set(set));
        Self::write(&mut inner, records)?;
        tracing::info!(%set_id, host, "set prepared");
        Ok(())
    }

    pub fn end_prepare(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?;
        match set.state {
            SetState::Prepared => Ok(()),
            s => Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {s:?}, not prepared; start a new set."
            ))),
        }
    }

    pub fn commit(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        match set.state {
            SetState::Committed | SetState::Completed => return Ok(()),
            SetState::Aborted => {
                return Err(ArrayError::Conflict(format!(
                    "Snapshot set {set_id} was aborted; start a new set."
                )));
            }
            SetState::Prepared => {}
        }
        let pairs: Vec<(String, String)> = set
            .members
            .iter()
            .map(|m| (m.source.clone(), m.lun.clone()))
            .collect();
        let t0 = std::time::Instant::now();
        let taken = if pairs.is_empty() {
            Ok(()) // an empty set commits with nothing to snapshot
        } else {
            self.0.backend.snapshot_group(&pairs)
        };
        taken.map_err(|e| match e {
            BackendError::NoVolume(v) => ArrayError::Conflict(format!(
                "Source LUN {v} no longer exists; abort the set and start again."
            )),
            other => other.into(),
        })?;
        let now = self.now();
        let mut records = Vec::new();
        for m in &set.members {
            let mut row = inner.db.luns[&m.lun].clone();
            row.state = LunState::Committed;
            // The snapshot has its source's size at this instant (a resize takes the same
            // lock). Asking the engine would also compute space accounting, a walk of the
            // whole mapping tree of every LUN of the set while applications are held.
            if let Some(src) = inner.db.luns.get(&m.source) {
                row.size_bytes = src.size_bytes;
            }
            records.push(Record::Lun(row));
        }
        let mut set = set;
        set.state = SetState::Committed;
        set.updated_at = now;
        records.push(Record::Set(set));
        if let Err(e) = Self::write(&mut inner, records) {
            for (_, clone) in &pairs {
                let _ = self.0.backend.delete_volume(clone);
            }
            return Err(e);
        }
        tracing::info!(%set_id, host, luns = pairs.len(), elapsed_us = t0.elapsed().as_micros() as u64, "set committed");
        drop(inner);
        // Engines that clone lazily get the writable clones made now, off the commit path.
        let backend = self.0.backend.clone();
        let _ = std::thread::Builder::new()
            .name("materialize".into())
            .spawn(move || {
                for (_, clone) in pairs {
                    if let Err(e) = backend.materialize(&clone) {
                        tracing::warn!(lun = %clone, error = %e, "creating the writable clone failed; retried on first use");
                    }
                }
            });
        Ok(())
    }

    pub fn complete(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        match set.state {
            SetState::Completed => Ok(()),
            SetState::Committed => {
                let mut set = set;
                set.state = SetState::Completed;
                set.updated_at = self.now();
                Self::write(&mut inner, vec![Record::Set(set)])
            }
            s => Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {s:?}; only a committed set completes."
            ))),
        }
    }

    /// Removes a snapshot LUN: unmaps it everywhere, deletes its volume, drops its row.
    /// A missing volume counts as deleted (the crash-retry case).
    fn remove_snapshot_lun(&self, inner: &mut Inner, lun: &str) -> Result<(), ArrayError> {
        let Some(row) = inner.db.luns.get(lun).cloned() else {
            return Ok(());
        };
        let mut records = Vec::new();
        for h in inner.db.hosts.values() {
            let nums: Vec<u64> = h
                .luns
                .iter()
                .filter(|(_, l)| l.as_str() == lun)
                .map(|(n, _)| *n)
                .collect();
            if nums.is_empty() {
                continue;
            }
            let mut h2 = h.clone();
            for n in nums {
                h2.luns.remove(&n);
                self.unexport(&h.initiators, n);
            }
            records.push(Record::Host(h2));
        }
        if row.state != LunState::Prepared {
            match self.0.backend.delete_volume(lun) {
                Ok(()) | Err(BackendError::NoVolume(_)) => {}
                Err(e) => {
                    if !records.is_empty() {
                        Self::write(inner, records)?;
                    }
                    return Err(e.into());
                }
            }
        }
        records.push(Record::LunGone { id: lun.into() });
        if let Some(o) = &row.snapshot_of {
            if let Some(set) = inner.db.sets.get(&o.set_id) {
                let mut set = set.clone();
                for m in set.members.iter_mut().filter(|m| m.lun == lun) {
                    m.released = true;
                }
                set.updated_at = self.now();
                records.push(Record::Set(set));
            }
        }
        Self::write(inner, records)
    }

    pub fn abort(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        if set.state == SetState::Completed {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is complete; release its LUNs instead of aborting."
            )));
        }
        if set.state != SetState::Aborted {
            let mut s = set.clone();
            s.state = SetState::Aborted;
            s.updated_at = self.now();
            Self::write(&mut inner, vec![Record::Set(s)])?;
        }
        for m in &set.members {
            if let Err(e) = self.remove_snapshot_lun(&mut inner, &m.lun) {
                // The reaper retries leftovers of aborted sets.
                tracing::warn!(%set_id, lun = %m.lun, error = %e, "abort left a LUN behind");
            }
        }
        tracing::info!(%set_id, host, "set aborted");
        Ok(())
    }

    pub fn describe(
        &self,
        host: &str,
        set_id: VssId,
        sources: &[LunId],
    ) -> Result<Vec<SnapshotLun>, ArrayError> {
        let inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?;
        if !matches!(set.state, SetState::Committed | SetState::Completed) {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {:?}; describe it after commit.",
                set.state
            )));
        }
        sources
            .iter()
            .map(|src| {
                let m = set
                    .members
                    .iter()
                    .find(|m| &m.source == src)
                    .ok_or_else(|| {
                        ArrayError::NotFound(format!(
                            "LUN {src} is not in snapshot set {set_id}; describe only its members."
                        ))
                    })?;
                let row = inner.db.luns.get(&m.lun).ok_or_else(|| {
                    ArrayError::NotFound(format!("Snapshot LUN {} was released.", m.lun))
                })?;
                Ok(SnapshotLun {
                    source: src.clone(),
                    lun: m.lun.clone(),
                    identity: self.identity_pages(row.number),
                })
            })
            .collect()
    }

    fn check_visible(db: &Db, host: &str, luns: &[LunId]) -> Result<(), ArrayError> {
        for l in luns {
            if !db.visible(host, l) {
                return Err(not_visible(host, l));
            }
            if db.luns[l].state == LunState::Prepared {
                return Err(ArrayError::Conflict(format!(
                    "Snapshot LUN {l} is not committed yet; commit its set first."
                )));
            }
        }
        Ok(())
    }

    pub fn expose(&self, host: &str, luns: &[LunId]) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        Self::check_visible(&inner.db, host, luns)?;
        let Some(mut h) = inner.db.hosts.get(host).cloned() else {
            return Err(ArrayError::Unauthorized("Unknown host.".into()));
        };
        let mut records = Vec::new();
        let mut added = Vec::new();
        for l in luns {
            if h.luns.values().any(|x| x == l) {
                continue;
            }
            let n = (0u64..)
                .find(|n| !h.luns.contains_key(n))
                .expect("free number");
            if n >= MAX_LUN_NUMBER {
                return Err(ArrayError::LimitReached(
                    "The host has no free LUN number; mask LUNs it no longer needs.".into(),
                ));
            }
            h.luns.insert(n, l.clone());
            added.push((n, l.clone()));
            let mut row = inner.db.luns[l].clone();
            if row.snapshot_of.is_some() {
                row.state = LunState::Exposed;
                records.push(Record::Lun(row));
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        records.push(Record::Host(h.clone()));
        Self::write(&mut inner, records)?;
        for (n, l) in added {
            self.export(&inner.db, &h.initiators, n, &l);
        }
        Ok(())
    }

    pub fn mask(&self, host: &str, luns: &[LunId]) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        Self::check_visible(&inner.db, host, luns)?;
        let Some(mut h) = inner.db.hosts.get(host).cloned() else {
            return Err(ArrayError::Unauthorized("Unknown host.".into()));
        };
        let mut records = Vec::new();
        let mut removed = Vec::new();
        for l in luns {
            let nums: Vec<u64> = h
                .luns
                .iter()
                .filter(|(_, x)| *x == l)
                .map(|(n, _)| *n)
                .collect();
            for n in nums {
                h.luns.remove(&n);
                removed.push(n);
            }
            let mut row = inner.db.luns[l].clone();
            if row.snapshot_of.is_some() && row.state != LunState::Masked {
                row.state = LunState::Masked;
                records.push(Record::Lun(row));
            }
        }
        if removed.is_empty() && records.is_empty() {
            return Ok(());
        }
        records.push(Record::Host(h.clone()));
        Self::write(&mut inner, records)?;
        for n in removed {
            self.unexport(&h.initiators, n);
        }
        Ok(())
    }

    pub fn release(&self, host: &str, lun: &LunId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        if !inner.db.visible(host, lun) {
            return Err(not_visible(host, lun));
        }
        let row = &inner.db.luns[lun];
        if row.snapshot_of.is_none() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is an original LUN, not a snapshot; only snapshot LUNs are released."
            )));
        }
        if row.state == LunState::Prepared {
            return Err(ArrayError::Conflict(format!(
                "Snapshot LUN {lun} is not committed; abort its set instead."
            )));
        }
        let deps = inner.db.dependants(lun);
        if deps > 0 {
            return Err(ArrayError::Conflict(format!(
                "{deps} snapshot LUNs were taken of LUN {lun}; release them first."
            )));
        }
        self.remove_snapshot_lun(&mut inner, lun)?;
        tracing::info!(lun, host, "snapshot LUN released");
        Ok(())
    }

    pub fn start_resync(&self, host: &str, pairs: &[ResyncPair]) -> Result<JobId, ArrayError> {
        if pairs.is_empty() {
            return Err(ArrayError::BadRequest(
                "The resync request lists no pairs; name at least one.".into(),
            ));
        }
        let mut inner = self.lock();
        for p in pairs {
            Self::check_visible(
                &inner.db,
                host,
                &[p.snapshot.clone(), p.destination.clone()],
            )?;
            if inner.db.luns[&p.snapshot].snapshot_of.is_none() {
                return Err(ArrayError::Conflict(format!(
                    "LUN {} is not a snapshot LUN; resync copies from a snapshot.",
                    p.snapshot
                )));
            }
            if p.snapshot == p.destination {
                return Err(ArrayError::BadRequest(format!(
                    "LUN {} cannot be resynced onto itself.",
                    p.snapshot
                )));
            }
        }
        let n = inner.db.next_job + 1;
        let id = format!("job-{n}");
        let row = JobRow {
            id: id.clone(),
            host: host.into(),
            pairs: pairs.to_vec(),
            status: JobStatus {
                state: JobState::Running,
                progress: 0,
            },
        };
        let next_number = inner.db.next_number;
        Self::write(
            &mut inner,
            vec![
                Record::Counters {
                    next_number,
                    next_job: n,
                },
                Record::Job(row.clone()),
            ],
        )?;
        drop(inner);
        let handle = JobHandle {
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(AtomicU8::new(0)),
        };
        let (cancel, progress) = (handle.cancel.clone(), handle.progress.clone());
        self.0
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), handle);
        let array = self.clone();
        std::thread::Builder::new()
            .name(format!("resync-{n}"))
            .spawn(move || array.run_resync(row, cancel, progress))
            .map_err(|e| ArrayError::io("spawning the resync thread", e))?;
        Ok(id)
    }

    fn run_resync(&self, mut row: JobRow, cancel: Arc<AtomicBool>, progress: Arc<AtomicU8>) {
        let total = row.pairs.len();
        let mut result = Ok(());
        for (i, p) in row.pairs.iter().enumerate() {
            let report = |pct: u8| {
                let overall = (i * 100 + pct as usize) / total;
                progress.store(overall.min(99) as u8, Ordering::Relaxed);
            };
            result = self
                .0
                .backend
                .resync(&p.snapshot, &p.destination, &report, &cancel);
            if result.is_err() {
                break;
            }
        }
        row.status = match result {
            Ok(()) => JobStatus {
                state: JobState::Finished,
                progress: 100,
            },
            Err(BackendError::Cancelled) => JobStatus {
                state: JobState::Cancelled,
                progress: progress.load(Ordering::Relaxed),
            },
            Err(e) => JobStatus {
                state: JobState::Failed {
                    no_space: matches!(e, BackendError::NoSpace(_)),
                    reason: e.to_string(),
                },
                progress: progress.load(Ordering::Relaxed),
            },
        };
        let mut inner = self.lock();
        let mut records = Vec::new();
        for p in &row.pairs {
            if let (Some(src), Some(dst)) = (
                inner.db.luns.get(&p.snapshot),
                inner.db.luns.get(&p.destination),
            ) {
                if dst.size_bytes != src.size_bytes && row.status.state == JobState::Finished {
                    let mut d = dst.clone();
                    d.size_bytes = src.size_bytes;
                    records.push(Record::Lun(d));
                    self.0.exporter.resized(&p.destination);
                }
            }
        }
        records.push(Record::Job(row.clone()));
        if let Err(e) = Self::write(&mut inner, records) {
            tracing::error!(job = %row.id, error = %e, "cannot journal the end of a resync");
        }
        self.0
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&row.id);
        tracing::info!(job = %row.id, state = ?row.status.state, "resync ended");
    }

    pub fn resync_status(&self, host: &str, job: &str) -> Result<JobStatus, ArrayError> {
        let inner = self.lock();
        let row = inner
            .db
            .jobs
            .get(job)
            .filter(|j| j.host == host || host == ADMIN_SCOPE)
            .ok_or_else(|| ArrayError::NotFound(format!("Resync job {job} is unknown.")))?;
        let mut st = row.status.clone();
        if st.state == JobState::Running {
            if let Some(h) = self
                .0
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(job)
            {
                st.progress = h.progress.load(Ordering::Relaxed);
            }
        }
        Ok(st)
    }

    pub fn cancel_resync(&self, host: &str, job: &str) -> Result<(), ArrayError> {
        self.resync_status(host, job)?;
        if let Some(h) = self
            .0
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
        {
            h.cancel.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn list_sets(&self, host: &str) -> Vec<SetSummary> {
        self.lock()
            .db
            .sets
            .values()
            .filter(|s| s.host == host)
            .map(|s| SetSummary {
                set_id: s.set_id,
                state: s.state,
                context: s.context,
                snapshots: s
                    .members
                    .iter()
                    .map(|m| PlannedSnapshot {
                        snapshot_id: m.snapshot_id,
                        source: m.source.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    // ---------------- admin verbs ----------------

    fn lun_record(&self, db: &Db, row: &LunRow) -> LunRecord {
        let ident = LunIdentity::for_number(row.number);
        LunRecord {
            id: row.id.clone(),
            name: row.name.clone(),
            size_bytes: row.size_bytes,
            serial: ident.serial.clone(),
            naa: hex::encode(&ident.designators[0].value),
            snapshot_of: row.snapshot_of.clone(),
            mapped_to: db.mappings_of(&row.id),
            allocated_bytes: self
                .0
                .backend
                .volume(&row.id)
                .map(|v| v.allocated_bytes)
                .unwrap_or(0),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), ArrayError> {
        let unit = self.0.backend.size_granularity().max(BLOCK_SIZE as u64);
        if size == 0 || size % unit != 0 || size > self.0.policy.max_lun_bytes {
            return Err(ArrayError::BadRequest(format!(
                "size_bytes must be a non-zero multiple of {unit} up to {}; got {size}.",
                self.0.policy.max_lun_bytes
            )));
        }
        Ok(())
    }

    pub fn create_lun(&self, req: &CreateLun) -> Result<LunRecord, ArrayError> {
        if !valid_name(&req.name) {
            return Err(ArrayError::BadRequest(format!(
                "LUN name {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -.",
                req.name
            )));
        }
        self.check_size(req.size_bytes)?;
        let mut inner = self.lock();
        if inner.db.luns.values().any(|l| l.name == req.name) {
            return Err(ArrayError::Conflict(format!(
                "A LUN named {} exists; pick another name.",
                req.name
            )));
        }
        let n = inner.db.next_number + 1;
        let id = lun_id(n);
        self.0.backend.create_volume(&id, req.size_bytes)?;
        let row = LunRow {
            id: id.clone(),
            number: n,
            name: req.name.clone(),
            size_bytes: req.size_bytes,
            snapshot_of: None,
            owner: None,
            state: LunState::Online,
            created_at: self.now(),
        };
        let next_job = inner.db.next_job;
        if let Err(e) = Self::write(
            &mut inner,
            vec![
                Record::Counters {
                    next_number: n,
                    next_job,
                },
                Record::Lun(row.clone()),
            ],
        ) {
            let _ = self.0.backend.delete_volume(&id);
            return Err(e);
        }
        tracing::info!(lun = %id, name = %req.name, size = req.size_bytes, "LUN created");
        Ok(self.lun_record(&inner.db, &row))
    }

    fn get_row<'a>(db: &'a Db, lun: &str) -> Result<&'a LunRow, ArrayError> {
        db.luns
            .get(lun)
            .filter(|l| l.state != LunState::Prepared)
            .ok_or_else(|| ArrayError::NotFound(format!("LUN {lun} does not exist.")))
    }

    pub fn list_luns(&self, snapshots_only: bool) -> Vec<LunRecord> {
        let inner = self.lock();
        inner
            .db
            .luns
            .values()
            .filter(|l| l.state != LunState::Prepared)
            .filter(|l| !snapshots_only || l.snapshot_of.is_some())
            .map(|l| self.lun_record(&inner.db, l))
            .collect()
    }

    pub fn get_lun(&self, lun: &str) -> Result<LunRecord, ArrayError> {
        let inner = self.lock();
        let row = Self::get_row(&inner.db, lun)?;
        Ok(self.lun_record(&inner.db, row))
    }

    pub fn resize_lun(&self, lun: &str, size: u64) -> Result<LunRecord, ArrayError> {
        self.check_size(size)?;
        let mut inner = self.lock();
        let mut row = Self::get_row(&inner.db, lun)?.clone();
        if size < row.size_bytes {
            return Err(ArrayError::BadRequest(format!(
                "LUN {lun} is {} bytes and LUNs only grow; give a larger size.",
                row.size_bytes
            )));
        }
        if size != row.size_bytes {
            self.0.backend.resize_volume(lun, size)?;
            row.size_bytes = size;
            Self::write(&mut inner, vec![Record::Lun(row.clone())])?;
            self.0.exporter.resized(lun);
            tracing::info!(lun, size, "LUN grown");
        }
        Ok(self.lun_record(&inner.db, &row))
    }

    pub fn delete_lun(&self, lun: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let row = Self::get_row(&inner.db, lun)?.clone();
        let deps = inner.db.dependants(lun);
        if deps > 0 {
            return Err(ArrayError::Conflict(format!(
                "{deps} snapshot LUNs depend on LUN {lun}; delete them first."
            )));
        }
        if row.snapshot_of.is_some() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is a snapshot LUN; delete it with DELETE /v1/admin/snapshots/{lun}."
            )));
        }
        let maps = inner.db.mappings_of(lun);
        if !maps.is_empty() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is mapped to host {}; unmap it first.",
                maps[0].host
            )));
        }
        match self.0.backend.delete_volume(lun) {
            Ok(()) | Err(BackendError::NoVolume(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Self::write(&mut inner, vec![Record::LunGone { id: lun.into() }])?;
        tracing::info!(lun, "LUN deleted");
        Ok(())
    }

    pub fn delete_snapshot(&self, lun: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let row = Self::get_row(&inner.db, lun)?;
        if row.snapshot_of.is_none() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is an original LUN; delete it with DELETE /v1/admin/luns/{lun}."
            )));
        }
        let deps = inner.db.dependants(lun);
        if deps > 0 {
            return Err(ArrayError::Conflict(format!(
                "{deps} snapshot LUNs were taken of LUN {lun}; delete them first."
            )));
        }
        self.remove_snapshot_lun(&mut inner, lun)?;
        tracing::info!(lun, "snapshot LUN deleted by admin");
        Ok(())
    }

    fn host_record(h: &HostRow) -> HostRecord {
        HostRecord {
            name: h.name.clone(),
            initiators: h.initiators.clone(),
            chap: h.chap_secret.is_some(),
            import_from: h.import_from.clone(),
            luns: h
                .luns
                .iter()
                .map(|(n, l)| HostLun {
                    lun: l.clone(),
                    lun_number: *n,
                })
                .collect(),
        }
    }

    pub fn create_host(&self, req: &CreateHost) -> Result<CreatedHost, ArrayError> {
        if !valid_name(&req.name) {
            return Err(ArrayError::BadRequest(format!(
                "Host name {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -.",
                req.name
            )));
        }
        if req.initiators.is_empty() {
            return Err(ArrayError::BadRequest(
                "A host needs at least one initiator name.".into(),
            ));
        }
        if let Some(bad) = req.initiators.iter().find(|i| !valid_iqn(i)) {
            return Err(ArrayError::BadRequest(format!(
                "{bad:?} is not an iSCSI name (iqn., eui. or naa. form, lower case)."
            )));
        }
        if let Some(bad) = req
            .import_from
            .iter()
            .find(|h| !valid_name(h) || **h == req.name)
        {
            return Err(ArrayError::BadRequest(format!(
                "import_from names {bad:?}, which is not another host's name."
            )));
        }
        if let Some(s) = &req.chap_secret {
            if !(12..=16).contains(&s.len()) || !s.is_ascii() {
                return Err(ArrayError::BadRequest(
                    "The CHAP secret must be 12 to 16 ASCII characters.".into(),
                ));
            }
        }
        let mut inner = self.lock();
        if inner.db.hosts.contains_key(&req.name) {
            return Err(ArrayError::Conflict(format!(
                "Host {} exists; delete it first or pick another name.",
                req.name
            )));
        }
        for h in inner.db.hosts.values() {
            if let Some(i) = h.initiators.iter().find(|i| req.initiators.contains(i)) {
                return Err(ArrayError::Conflict(format!(
                    "Initiator {i} belongs to host {}; an initiator has one host.",
                    h.name
                )));
            }
        }
        let token = new_token()?;
        let row = HostRow {
            name: req.name.clone(),
            initiators: req.initiators.clone(),
            chap_secret: req.chap_secret.clone(),
            token_sha256: token_hash(&token),
            luns: BTreeMap::new(),
            import_from: req.import_from.clone(),
        };
        Self::write(&mut inner, vec![Record::Host(row.clone())])?;
        for i in &row.initiators {
            self.0.exporter.set_chap(i, row.chap_secret.as_deref());
        }
        tracing::info!(host = %row.name, "host created");
        Ok(CreatedHost {
            host: Self::host_record(&row),
            token,
        })
    }

    pub fn list_hosts(&self) -> Vec<HostRecord> {
        self.lock()
            .db
            .hosts
            .values()
            .map(Self::host_record)
            .collect()
    }

    fn host_row(db: &Db, name: &str) -> Result<HostRow, ArrayError> {
        db.hosts
            .get(name)
            .cloned()
            .ok_or_else(|| ArrayError::NotFound(format!("Host {name} does not exist.")))
    }

    pub fn get_host(&self, name: &str) -> Result<HostRecord, ArrayError> {
        Ok(Self::host_record(&Self::host_row(&self.lock().db, name)?))
    }

    pub fn delete_host(&self, name: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let h = Self::host_row(&inner.db, name)?;
        Self::write(
            &mut inner,
            vec![Record::HostGone {
                name: name.to_string(),
            }],
        )?;
        for n in h.luns.keys() {
            self.unexport(&h.initiators, *n);
        }
        for i in &h.initiators {
            self.0.exporter.set_chap(i, None);
        }
        tracing::info!(host = name, "host deleted");
        Ok(())
    }

    pub fn map_lun(&self, host: &str, req: &MapLun) -> Result<HostRecord, ArrayError> {
        let mut inner = self.lock();
        let mut h = Self::host_row(&inner.db, host)?;
        Self::get_row(&inner.db, &req.lun)?;
        if let Some(n) = req.lun_number {
            if n >= MAX_LUN_NUMBER {
                return Err(ArrayError::BadRequest(format!(
                    "lun_number must be below {MAX_LUN_NUMBER}; got {n}."
                )));
            }
        }
        if let Some((n, _)) = h.luns.iter().find(|(_, l)| **l == req.lun) {
            if req.lun_number.is_none_or(|want| want == *n) {
                return Ok(Self::host_record(&h));
            }
            return Err(ArrayError::Conflict(format!(
                "LUN {} is mapped to host {host} as number {n}; unmap it first.",
                req.lun
            )));
        }
        let n = match req.lun_number {
            Some(n) if h.luns.contains_key(&n) => {
                return Err(ArrayError::Conflict(format!(
                    "Host {host} already has LUN number {n}; pick a free number."
                )));
            }
            Some(n) => n,
            None => (0u64..MAX_LUN_NUMBER)
                .find(|n| !h.luns.contains_key(n))
                .ok_or_else(|| {
                    ArrayError::LimitReached(format!("Host {host} has no free LUN number."))
                })?,
        };
        h.luns.insert(n, req.lun.clone());
        let mut records = vec![Record::Host(h.clone())];
        let row = &inner.db.luns[&req.lun];
        if row.snapshot_of.is_some() && row.state != LunState::Exposed {
            let mut r = row.clone();
            r.state = LunState::Exposed;
            records.push(Record::Lun(r));
        }
        Self::write(&mut inner, records)?;
        self.export(&inner.db, &h.initiators, n, &req.lun);
        tracing::info!(host, lun = %req.lun, number = n, "LUN mapped");
        Ok(Self::host_record(&h))
    }

    pub fn unmap_lun(&self, host: &str, lun: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let mut h = Self::host_row(&inner.db, host)?;
        let nums: Vec<u64> = h
            .luns
            .iter()
            .filter(|(_, l)| l.as_str() == lun)
            .map(|(n, _)| *n)
            .collect();
        if nums.is_empty() {
            return Err(ArrayError::NotFound(format!(
                "LUN {lun} is not mapped to host {host}."
            )));
        }
        for n in &nums {
            h.luns.remove(n);
        }
        Self::write(&mut inner, vec![Record::Host(h.clone())])?;
        for n in nums {
            self.unexport(&h.initiators, n);
        }
        tracing::info!(host, lun, "LUN unmapped");
        Ok(())
    }

    pub fn admin_sets(&self) -> Vec<SetRecord> {
        self.lock()
            .db
            .sets
            .values()
            .map(|s| SetRecord {
                set_id: s.set_id,
                host: s.host.clone(),
                state: s.state,
                context: s.context,
                snapshots: s
                    .members
                    .iter()
                    .map(|m| SetMember {
                        snapshot_id: m.snapshot_id,
                        source: m.source.clone(),
                        lun: m.lun.clone(),
                    })
                    .collect(),
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect()
    }

    /// The reaper: removes sets prepared but not committed for longer than the timeout, and
    /// aborted sets (with any LUN an abort left behind) once the timeout has passed since the
    /// abort. Committed and completed sets are never touched.
    pub fn reap(&self, dry_run: bool) -> Result<ReapReport, ArrayError> {
        let mut inner = self.lock();
        let now = self.now();
        let timeout = self.0.policy.reaper_timeout.as_secs();
        let due: Vec<SetRow> = inner
            .db
            .sets
            .values()
            .filter(|s| matches!(s.state, SetState::Prepared | SetState::Aborted))
            .filter(|s| now.saturating_sub(s.updated_at) >= timeout)
            .cloned()
            .collect();
        let mut report = ReapReport {
            sets: Vec::new(),
            luns: Vec::new(),
            dry_run,
        };
        for s in due {
            let luns: Vec<LunId> = s
                .members
                .iter()
                .filter(|m| inner.db.luns.contains_key(&m.lun))
                .map(|m| m.lun.clone())
                .collect();
            if !dry_run {
                let mut ok = true;
                for l in &luns {
                    if let Err(e) = self.remove_snapshot_lun(&mut inner, l) {
                        tracing::warn!(set = %s.set_id, lun = %l, error = %e, "reaper could not remove a LUN");
                        ok = false;
                    }
                }
                if !ok {
                    continue;
                }
                Self::write(&mut inner, vec![Record::SetGone { set_id: s.set_id }])?;
                tracing::info!(set = %s.set_id, host = %s.host, state = ?s.state, "reaped set");
            }
            report.sets.push(s.set_id);
            report.luns.extend(luns);
        }
        Ok(report)
    }
}

/// Appended records after which the running daemon rewrites the journal compactly.
const COMPACT_AFTER: u64 = 100_000;

/// LUN numbers a host can see: SAM flat space addressing tops out at 16383.
pub const MAX_LUN_NUMBER: u64 = 16384;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
