//! The rows the journal holds, the tables they replay into, and the journal discipline: a
//! change is appended and fsync'd before it is applied to memory, so an acknowledged change
//! survives any crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use vss::identity::{ArrayId, LunIdentity};

use api::{JobId, JobStatus, LunId, Mapping, ResyncPair, SetState, SnapshotOrigin};
use serde::{Deserialize, Serialize};
use storage::Backend;
use vss::{SnapshotContext, VssId};

use super::log::Log;
use super::{Array, Scope};
use crate::error::ArrayError;
use crate::metrics::ArrayMetrics;

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
    /// The array id the LUN was created under; none for LUNs of pools made before arrays
    /// had ids. With `number` it fixes the LUN's SCSI identity for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_id: Option<ArrayId>,
    /// A plex snapshot LUN (its set's context has the PLEX attribute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plex: Option<PlexRow>,
}

/// A plex snapshot LUN's durable state: whether the array finished making it independent of
/// its source (until then a restart carries the work on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlexRow {
    pub independent: bool,
}

impl LunRow {
    /// The SCSI identity the LUN was given at creation.
    pub fn identity(&self) -> LunIdentity {
        LunIdentity::new(self.array_id, self.number)
    }
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
    /// When a host first exposed one of its LUNs after the set was complete (an import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_at: Option<u64>,
    /// Pool space held for the set's commit since end-prepare (`space.rs`); counts against
    /// the pool only while the set is prepared. None: nothing reserved yet (or members were
    /// added since, so it is computed again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: JobId,
    /// Who started the job (the journal spells the administrator `*admin*`).
    pub host: Scope,
    pub pairs: Vec<ResyncPair>,
    pub status: JobStatus,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Counters {
        next_number: u64,
        next_job: u64,
    },
    Lun(LunRow),
    LunGone {
        id: LunId,
    },
    Host(HostRow),
    HostGone {
        name: String,
    },
    Set(SetRow),
    SetGone {
        set_id: VssId,
    },
    Job(JobRow),
    /// The answer to a request that carried an idempotency key.
    Idem(super::IdemRow),
    IdemGone {
        key: String,
    },
    /// A LUN's persistent reservations, as the gateway serving it made them durable (only
    /// arrays whose state is shared by several gateways keep them: docs/gateways.md).
    Reservations {
        lun: LunId,
        state: scsi::PrState,
    },
}

#[derive(Debug, Default, Clone)]
/// Every row, as the journal's records leave them.
pub(super) struct Db {
    pub(super) next_number: u64,
    pub(super) next_job: u64,
    pub(super) luns: BTreeMap<LunId, LunRow>,
    pub(super) hosts: BTreeMap<String, HostRow>,
    pub(super) sets: BTreeMap<VssId, SetRow>,
    pub(super) jobs: BTreeMap<JobId, JobRow>,
    pub(super) idem: BTreeMap<String, super::IdemRow>,
    pub(super) reservations: BTreeMap<LunId, scsi::PrState>,
}

impl Db {
    pub(super) fn apply(&mut self, r: Record) {
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
                self.reservations.remove(&id);
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
            Record::Idem(r) => {
                self.idem.insert(r.key.clone(), r);
            }
            Record::IdemGone { key } => {
                self.idem.remove(&key);
            }
            Record::Reservations { lun, state } => {
                if state == scsi::PrState::default() {
                    self.reservations.remove(&lun);
                } else {
                    self.reservations.insert(lun, state);
                }
            }
        }
    }

    pub(super) fn records(&self) -> Vec<Record> {
        let mut v = vec![Record::Counters {
            next_number: self.next_number,
            next_job: self.next_job,
        }];
        v.extend(self.luns.values().cloned().map(Record::Lun));
        v.extend(self.hosts.values().cloned().map(Record::Host));
        v.extend(self.sets.values().cloned().map(Record::Set));
        v.extend(self.jobs.values().cloned().map(Record::Job));
        v.extend(self.idem.values().cloned().map(Record::Idem));
        // Only a live LUN's reservations are kept.
        v.extend(
            self.reservations
                .iter()
                .filter(|(lun, _)| self.luns.contains_key(*lun))
                .map(|(lun, state)| Record::Reservations {
                    lun: lun.clone(),
                    state: state.clone(),
                }),
        );
        v
    }

    /// The hosts `lun` is mapped to, names in natural order.
    pub(super) fn mappings_of(&self, lun: &str) -> Vec<Mapping> {
        let mut v: Vec<Mapping> = self
            .hosts
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
            .collect();
        v.sort_by(|a, b| api::natural_cmp(&a.host, &b.host));
        v
    }

    /// The LUN an administrator names: by id first (`lun-7`), else by name (names are
    /// unique and never of an id's form). Reserved snapshot LUNs are nobody's to name.
    pub(super) fn resolve(&self, key: &str) -> Option<&LunRow> {
        let live = |l: &&LunRow| l.state != LunState::Prepared;
        self.luns
            .get(key)
            .filter(live)
            .or_else(|| self.luns.values().filter(live).find(|l| l.name == key))
    }

    pub(super) fn mapped_to(&self, host: &str, lun: &str) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| h.luns.values().any(|l| l == lun))
    }

    /// The snapshot LUNs taken of `lun` that still depend on it, by id: all but plex copies
    /// made independent.
    pub(super) fn dependants(&self, lun: &str) -> Vec<LunId> {
        self.luns
            .values()
            .filter(|l| l.snapshot_of.as_ref().is_some_and(|o| o.source == lun))
            .filter(|l| !l.plex.is_some_and(|p| p.independent))
            .map(|l| l.id.clone())
            .collect()
    }
}

/// The journal and the rows it holds, under the array's one lock.
pub(super) struct Inner {
    pub(super) journal: Log,
    pub(super) db: Db,
    pub(super) metrics: Arc<ArrayMetrics>,
}

impl Array {
    /// Journals `records` durably, then applies them.
    pub(super) fn write(inner: &mut Inner, records: Vec<Record>) -> Result<(), ArrayError> {
        let t0 = std::time::Instant::now();
        let appended = inner.journal.append(&records);
        inner.metrics.journal_fsync.observe(t0.elapsed());
        if let Err(e) = appended {
            inner
                .metrics
                .journal_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
}

/// Deletes the volumes no LUN owns: engine work whose journal append never happened. Only
/// names this array gives its volumes ([`lun_id`]) are its to delete; the backend lists only
/// its own volumes, and this holds even if one lists more.
pub(super) fn sweep_orphans(db: &Db, backend: &dyn Backend) -> Result<(), ArrayError> {
    let wanted: std::collections::BTreeSet<&str> = db
        .luns
        .values()
        .filter(|l| l.state != LunState::Prepared)
        .map(|l| l.id.as_str())
        .collect();
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
    Ok(())
}

/// Appended records after which the running daemon rewrites the journal compactly.
const COMPACT_AFTER: u64 = 100_000;
