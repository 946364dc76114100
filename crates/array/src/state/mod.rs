//! The array's objects and every verb on them, independent of HTTP: LUNs with fixed identity,
//! hosts and mappings, snapshot sets, resync jobs. Each change runs backend work first, then
//! appends its records to the journal (durable), then updates memory, then answers; so an
//! acknowledged change survives any crash, and an unacknowledged one leaves at worst an
//! orphan volume that [`Array::open`] deletes.
//!
//! By job: the rows, the journal discipline and the start-up sweep (`rows`), the snapshot-set
//! verbs the provider drives (`sets`), resync jobs (`resync`), the administrator's verbs
//! (`admin`), the reaper (`reaper`), authentication and what each caller may reach (`auth`).
//! This module opens the array and keeps the SCSI target's mappings in step with the rows.

mod admin;
mod admin_sets;
mod auth;
mod follow;
mod host_changes;
mod idempotency;
mod log;
mod plex;
mod reaper;
mod resync;
mod rows;
mod sets;
mod space;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{JobId, LunId};
use storage::Backend;
use vss::identity::{ArrayId, LunIdentity};
use vss::inquiry::Designator;

pub use admin::valid_iqn;
pub use admin_sets::FENCE_DRAIN;
pub use auth::{Scope, new_token, token_hash};
pub use follow::{Followed, follow};
pub use idempotency::{
    IdemRow, KEEP_SECS as IDEMPOTENCY_KEEP_SECS, Keyed, MAX_KEYS as IDEMPOTENCY_MAX_KEYS,
};
pub use rows::{
    HostRow, JobRow, LunRow, LunState, MemberRow, PlexRow, Record, SetRow, is_lun_id, lun_id,
};
pub use space::{PoolSpace, SpacePolicy};

use crate::error::ArrayError;
use crate::journal::Journal;
use crate::metrics::{ArrayMetrics, PoolFigures};
use log::{Log, SharedLog};
use resync::JobHandle;
use rows::{Db, Inner};

/// What maps LUNs into the SCSI target: called with every mapping change, per initiator.
pub trait Exporter: Send + Sync {
    /// Maps `lun` at `lun_number` for `initiator`. The exporter opens the LUN's volume itself,
    /// through `storage`, when it does not serve the LUN yet. A volume that is gone (deleted
    /// outside the array) is still mapped: its LUN stays in REPORT LUNS and answers commands
    /// that reach the medium with NOT READY until an administrator deletes it. A volume that
    /// cannot be opened for another reason is logged and left unmapped.
    fn map(&self, initiator: &str, lun_number: u64, lun: &ExportedLun, storage: &dyn Backend);
    fn unmap(&self, initiator: &str, lun_number: u64);
    /// A LUN's size changed: initiators that know it should hear CAPACITY DATA HAS CHANGED.
    fn resized(&self, lun: &str) {
        let _ = lun;
    }
    /// Lets an initiator log in (even before any LUN is mapped to it) and sets (or clears)
    /// the CHAP secret it must log in with from its next login.
    fn set_chap(&self, initiator: &str, secret: Option<&str>) {
        let _ = (initiator, secret);
    }
    /// The initiator belongs to no host any more: it may not log in again, and its open
    /// sessions end now.
    fn forget_initiator(&self, initiator: &str) {
        let _ = initiator;
    }
    /// Holds new writes to these LUNs until the returned fence is dropped, once the writes
    /// in flight are done (at most `drain`); reads go on. For a snapshot set the array takes
    /// by itself, where no VSS holds the applications' writes (`scsi::WriteFence`). An
    /// exporter that serves nothing has nothing to hold.
    fn fence_writes(&self, luns: &[LunId], drain: Duration) -> Result<Fence, scsi::FenceError> {
        let _ = (luns, drain);
        Ok(Fence::default())
    }
    /// From now on every LUN's persistent reservations are made durable in `store` before
    /// a change completes, and a LUN served anew starts from [`ExportedLun::reservations`]
    /// (an array whose state several gateways share: docs/gateways.md).
    fn keep_reservations(&self, store: Arc<dyn ReservationStore>) {
        let _ = store;
    }
    /// Runs a PERSISTENT RESERVE IN/OUT another gateway received for `lun` from `nexus`
    /// ([`scsi::LogicalUnit::run_forwarded`]); `None` if `lun` is not served here.
    fn run_reservation(
        &self,
        lun: &str,
        nexus: &scsi::Nexus,
        cdb: &[u8],
        data_out: &[u8],
    ) -> Option<scsi::Outcome> {
        let _ = (lun, nexus, cdb, data_out);
        None
    }
}

/// Where the LUNs' persistent reservations are made durable ([`Exporter::keep_reservations`]).
pub trait ReservationStore: Send + Sync + std::fmt::Debug {
    fn persist(&self, lun: &str, state: &scsi::PrState) -> Result<(), ArrayError>;
}

/// The array's rows as that store; it does not keep the array alive.
#[derive(Debug)]
struct RowsStore(std::sync::Weak<Shared>);

impl ReservationStore for RowsStore {
    fn persist(&self, lun: &str, state: &scsi::PrState) -> Result<(), ArrayError> {
        match self.0.upgrade() {
            Some(shared) => Array(shared).record_reservations(lun, state),
            None => Err(ArrayError::io(
                "keeping reservations",
                std::io::Error::other("the array is closed"),
            )),
        }
    }
}

/// Writes held on some LUNs until this is dropped ([`Exporter::fence_writes`]).
#[derive(Debug, Default)]
#[must_use = "the fence ends when this is dropped"]
pub struct Fence(pub Vec<scsi::WriteFence>);

/// A LUN as the SCSI target serves it: what it is, not the open volume.
pub struct ExportedLun {
    pub id: LunId,
    pub identity: LunIdentity,
    /// Target port designators appended to VPD 0x83.
    pub target_ports: Vec<Designator>,
    /// The storage volume holding the LUN's blocks.
    pub volume: String,
    /// The LUN's size as the array recorded it: what a LUN whose volume is gone reports.
    pub size_bytes: u64,
    /// The persistent reservations made durable for it, where the array keeps them
    /// ([`Exporter::keep_reservations`]).
    pub reservations: Option<scsi::PrState>,
}

/// An exporter that serves nothing (API-only arrays and tests).
#[derive(Debug, Default)]
pub struct NoExport;

impl Exporter for NoExport {
    fn map(&self, _: &str, _: u64, _: &ExportedLun, _: &dyn Backend) {}
    fn unmap(&self, _: &str, _: u64) {}
}

/// Limits and policies.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The array's id, from which new LUNs get their SCSI identity (none: the identity of
    /// LUNs made before arrays had ids).
    pub array_id: Option<ArrayId>,
    pub target_name: String,
    /// The target port LUNs are served through (relative port identifier and iSCSI portal
    /// group tag): what the identity pages the array predicts carry.
    pub relative_port: u16,
    pub portal_group_tag: u16,
    /// The target port group of that port, if the target serves groups: VPD 0x83 then
    /// carries it too.
    pub target_port_group: Option<u16>,
    pub max_luns_per_set: usize,
    pub max_lun_bytes: u64,
    pub reaper_timeout: Duration,
    /// Age after which the reaper deletes a transportable set nobody imported (`None`: kept).
    pub transportable_retention: Option<Duration>,
    /// How the pool's space is counted and what new snapshot sets may reserve of it.
    pub space: SpacePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        let c = crate::config::Config::default();
        Self {
            array_id: None,
            reaper_timeout: c.reaper_timeout(),
            transportable_retention: c.transportable_retention(),
            target_name: c
                .target_name
                .unwrap_or_else(|| crate::pool::LEGACY_TARGET_NAME.into()),
            relative_port: c.iscsi_relative_port,
            portal_group_tag: c.iscsi_portal_group_tag,
            target_port_group: Some(crate::export::TARGET_PORT_GROUP),
            max_luns_per_set: c.max_luns_per_set,
            max_lun_bytes: c.max_lun_bytes,
            space: SpacePolicy {
                dir: None,
                capped_by_file_system: false,
                critical_percent: c.pool_critical_percent,
            },
        }
    }
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
    /// Progress (percent) of plex copies being made independent.
    plex: Mutex<HashMap<LunId, u8>>,
    idem_gate: Mutex<()>,
    metrics: Arc<ArrayMetrics>,
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

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the array's rows are kept.
pub enum StateSource<'a> {
    /// The journal file in the pool directory: one gateway.
    File(&'a Path),
    /// The array's shared state in the Ceph cluster, written by the leader at `epoch`
    /// (docs/gateways.md).
    Shared {
        store: gateways::StateStore,
        epoch: u64,
    },
}

impl Array {
    /// Opens the array: replays the journal at `journal_path`, deletes volumes named as this
    /// array names them that no LUN owns (left by a crash between engine work and journal
    /// append), marks interrupted resync jobs failed, and maps every mapping into `exporter`.
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
        Self::open_from(
            StateSource::File(journal_path),
            backend,
            exporter,
            policy,
            admin_token_sha256,
            clock,
        )
    }

    /// Opens the array as [`Array::open`] does, its rows read from and written to `source`.
    pub fn open_from(
        source: StateSource<'_>,
        backend: Arc<dyn Backend>,
        exporter: Arc<dyn Exporter>,
        policy: Policy,
        admin_token_sha256: String,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Self, ArrayError> {
        let mut db = Db::default();
        let compact = |recs: Vec<rows::Record>| {
            for r in recs {
                db.apply(r);
            }
            resync::fail_interrupted(&mut db);
            db.records()
        };
        let shared_state = matches!(source, StateSource::Shared { .. });
        let journal = match source {
            StateSource::File(path) => {
                Log::File(Journal::open::<rows::Record, _>(path, compact)?.0)
            }
            StateSource::Shared { store, epoch } => {
                Log::Shared(SharedLog::open(store, epoch, compact)?.0)
            }
        };
        rows::sweep_orphans(&db, backend.as_ref())?;
        // What the SCSI target appends to VPD 0x83: the target port designators (the port
        // the configuration gives the iSCSI target) and the target device name.
        let ports = scsi::target_designators(
            &policy.target_name,
            policy.relative_port,
            policy.portal_group_tag,
            policy.target_port_group,
        );
        let metrics = Arc::new(ArrayMetrics::default());
        let array = Array(Arc::new(Shared {
            inner: Mutex::new(Inner {
                journal,
                db,
                metrics: metrics.clone(),
            }),
            backend,
            exporter,
            policy,
            ports,
            admin_token_sha256,
            clock,
            jobs: Mutex::new(HashMap::new()),
            plex: Mutex::new(HashMap::new()),
            idem_gate: Mutex::new(()),
            metrics,
        }));
        if shared_state {
            // Several gateways serve the LUNs: the one in office keeps their reservations in
            // the shared state, so the next one serves them as they were.
            array
                .0
                .exporter
                .keep_reservations(Arc::new(RowsStore(Arc::downgrade(&array.0))));
        }
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
        // Plex copies a stop interrupted carry on.
        array.start_plex(array.unfinished_plex());
        Ok(array)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().expect("array state lock")
    }

    fn now(&self) -> u64 {
        (self.0.clock)()
    }

    fn export(&self, db: &Db, initiators: &[String], number: u64, lun: &str) {
        let Some(row) = db.luns.get(lun) else { return };
        let e = ExportedLun {
            id: row.id.clone(),
            identity: row.identity(),
            target_ports: self.0.ports.clone(),
            volume: row.id.to_string(),
            size_bytes: row.size_bytes,
            reservations: db.reservations.get(lun).cloned(),
        };
        for i in initiators {
            self.0.exporter.map(i, number, &e, self.0.backend.as_ref());
        }
    }

    fn unexport(&self, initiators: &[String], number: u64) {
        for i in initiators {
            self.0.exporter.unmap(i, number);
        }
    }

    /// Makes `lun`'s persistent reservations `state` durable (nothing for a LUN that is
    /// gone, or for a state already recorded).
    pub fn record_reservations(&self, lun: &str, state: &scsi::PrState) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        if !inner.db.luns.contains_key(lun)
            || inner
                .db
                .reservations
                .get(lun)
                .unwrap_or(&scsi::PrState::default())
                == state
        {
            return Ok(());
        }
        Self::write(
            &mut inner,
            vec![rows::Record::Reservations {
                lun: lun.to_string(),
                state: state.clone(),
            }],
        )
    }

    /// Runs a PERSISTENT RESERVE IN/OUT a standby gateway received for `lun`
    /// ([`Exporter::run_reservation`]).
    pub fn run_reservation(
        &self,
        lun: &str,
        nexus: &scsi::Nexus,
        cdb: &[u8],
        data_out: &[u8],
    ) -> Result<scsi::Outcome, ArrayError> {
        self.0
            .exporter
            .run_reservation(lun, nexus, cdb, data_out)
            .ok_or_else(|| ArrayError::NotFound(format!("LUN {lun} is not served here")))
    }

    /// The identity pages a LUN serves.
    pub fn identity_pages(&self, row: &LunRow) -> vss::lun::ScsiIdentity {
        row.identity().scsi_identity(&self.0.ports)
    }

    /// The identity pages LUN `lun` serves, if it exists.
    pub fn lun_identity_pages(&self, lun: &str) -> Option<vss::lun::ScsiIdentity> {
        let inner = self.lock();
        inner.db.luns.get(lun).map(|row| self.identity_pages(row))
    }

    /// The array id new LUNs get their identity from.
    pub fn array_id(&self) -> Option<ArrayId> {
        self.0.policy.array_id
    }

    /// Refuses a LUN number past what the array's identity scheme holds.
    fn check_number(&self, n: u64) -> Result<(), ArrayError> {
        if self.0.policy.array_id.is_some() && n > vss::identity::MAX_LUN_NUMBER {
            return Err(ArrayError::LimitReached(format!(
                "This array has given out all {} LUN numbers its identity scheme holds.",
                vss::identity::MAX_LUN_NUMBER
            )));
        }
        Ok(())
    }

    pub fn target_name(&self) -> &str {
        &self.0.policy.target_name
    }

    /// The storage backend (status checks).
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.0.backend.clone()
    }

    /// A journal write failed: the array refuses changes until it is restarted.
    pub fn journal_failed(&self) -> bool {
        self.lock().journal.poisoned()
    }

    /// The array's own counters.
    pub fn metrics(&self) -> &ArrayMetrics {
        &self.0.metrics
    }

    /// Every LUN, snapshot LUNs included: (id, name, size in bytes), in id order.
    pub fn lun_sizes(&self) -> Vec<(LunId, String, u64)> {
        let inner = self.lock();
        inner
            .db
            .luns
            .values()
            .map(|l| (l.id.clone(), l.name.clone(), l.size_bytes))
            .collect()
    }

    /// The pool's capacity and use, and what the LUNs promise (the sum of their sizes).
    pub fn pool_figures(&self) -> PoolFigures {
        let (provisioned_bytes, (reserved_bytes, _)) = {
            let inner = self.lock();
            (
                inner.db.luns.values().map(|l| l.size_bytes).sum(),
                inner.db.reserved(None),
            )
        };
        let usage = match self.0.backend.usage() {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(error = %e, "reading the pool's usage failed");
                None
            }
        };
        PoolFigures {
            capacity_bytes: usage.map(|u| u.capacity_bytes).filter(|c| *c != u64::MAX),
            used_bytes: usage.map(|u| u.allocated_bytes).unwrap_or(0),
            provisioned_bytes,
            reserved_bytes,
        }
    }

    /// Flushes the journal (shutdown).
    pub fn sync(&self) -> Result<(), ArrayError> {
        self.lock().journal.sync().map_err(Into::into)
    }
}

/// LUN numbers a host can see: SAM flat space addressing tops out at 16383.
pub const MAX_LUN_NUMBER: u64 = 16384;

#[cfg(test)]
mod tests;
