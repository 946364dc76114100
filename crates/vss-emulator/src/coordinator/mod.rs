//! The VSS coordinator (vssvc) of one host, and the requester interface
//! (`IVssBackupComponents`) that drives it.
//!
//! The coordinator is the only caller of providers. It follows the call order of
//! `docs/vss-contract.md` §2.2 (in the diagram order of §2.3: `GetTargetLuns` and auto-import before `PreFinalCommitSnapshots`),
//! enforces VSS's rules (one set in flight, at most 64 volumes, no partial sets, abort only
//! after `DoSnapshotSet` began, the flush-and-hold and freeze windows, status translation),
//! keeps VSS's partition flags on the LUNs, and records every step in a [`Trace`].

mod break_set;
mod create;
mod delete;
mod expose;
mod import;
mod recover;
mod writers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use provider::HardwareProvider;
use thiserror::Error;
use vss::{Hresult, LunInfo, SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};

use crate::bcd::{Bcd, BcdError, SetRecord};
use crate::host::{Host, HostError};
use crate::trace::{ProviderFailure, ProviderHandle, Trace};
use crate::writer::{BackupType, Writer, WriterError};

use create::PendingSet;
pub use delete::DeleteTarget;
pub use writers::{WriterInfo, WriterState};

/// Timing rules of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The flush-and-hold window around `CommitSnapshots` (10 s on Windows; shorter in tests).
    pub hold_window: Duration,
    /// The writers' freeze window (60 s default).
    pub freeze_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hold_window: Duration::from_secs(10),
            freeze_window: Duration::from_secs(60),
        }
    }
}

/// What a requester call failed with.
#[derive(Debug, Error)]
pub enum VssError {
    /// A VSS rule refused the request.
    #[error("{code}: {reason}")]
    Refused { code: Hresult, reason: String },
    /// A provider failed; `failure.seen` is what the requester gets.
    #[error("provider {provider}: {failure}")]
    Provider {
        provider: String,
        failure: ProviderFailure,
    },
    #[error("{code}: writer failed: {source}")]
    Writer {
        code: Hresult,
        #[source]
        source: WriterError,
    },
    #[error("host: {0}")]
    Host(#[from] HostError),
    #[error(transparent)]
    Bcd(#[from] BcdError),
}

impl VssError {
    /// The HRESULT the requester sees.
    pub fn code(&self) -> Hresult {
        match self {
            VssError::Refused { code, .. } => *code,
            VssError::Provider { failure, .. } => failure.seen,
            VssError::Writer { code, .. } => *code,
            VssError::Host(_) => Hresult::VSS_E_UNEXPECTED,
            VssError::Bcd(e) => e.hresult(),
        }
    }

    fn refused(code: Hresult, reason: impl Into<String>) -> Self {
        VssError::Refused {
            code,
            reason: reason.into(),
        }
    }
}

fn pf(p: &ProviderHandle) -> impl Fn(ProviderFailure) -> VssError + '_ {
    move |failure| VssError::Provider {
        provider: p.name.clone(),
        failure,
    }
}

/// A set known to this host's VSS.
#[derive(Debug, Clone)]
struct KnownSet {
    record: SetRecord,
    /// Snapshot LUN devices on this host, by LUN index, once surfaced.
    surfaced: BTreeMap<usize, String>,
    /// Snapshot volume names on this host, by snapshot id.
    volumes: BTreeMap<VssId, String>,
    /// LUN indexes already given to OnLunEmpty.
    emptied: BTreeSet<usize>,
    /// Where snapshots are exposed (drive letter or mount point), by snapshot id.
    exposed: BTreeMap<VssId, String>,
    imported: bool,
    /// The requester that owns an auto-release set.
    owner: Option<u64>,
    /// Order in which this host's VSS learned of the set (creation or import).
    order: u64,
}

/// A snapshot as `Query` reports it (`VSS_SNAPSHOT_PROP`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotProp {
    pub snapshot_id: VssId,
    pub snapshot_set_id: VssId,
    pub snapshots_count: usize,
    pub original_volume: String,
    /// The snapshot volume's name on this host, if surfaced.
    pub snapshot_device: Option<String>,
    /// The drive letter or mount point it is exposed at, if exposed.
    pub exposed_name: Option<String>,
    pub originating_machine: String,
    pub provider_id: VssId,
    pub attributes: u32,
    pub created: u64,
}

/// A registered provider as `list providers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderProp {
    pub id: VssId,
    pub name: String,
    pub version: String,
}

/// The coordinator of one host.
pub struct Coordinator {
    host: Arc<Host>,
    config: Config,
    trace: Trace,
    providers: Mutex<Vec<ProviderHandle>>,
    writers: Mutex<Vec<Arc<dyn Writer>>>,
    writer_states: Mutex<BTreeMap<String, writers::Status>>,
    in_flight: Mutex<Option<VssId>>,
    sets: Mutex<BTreeMap<VssId, KnownSet>>,
    next_shadow: AtomicU32,
    next_requester: AtomicU64,
    next_order: AtomicU64,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Coordinator({})", self.host.name())
    }
}

/// Locks one of the coordinator's tables; the panic on a poisoned lock points at the caller.
#[track_caller]
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("coordinator lock")
}

impl Coordinator {
    pub fn new(host: Arc<Host>, config: Config) -> Arc<Self> {
        Arc::new(Self {
            host,
            config,
            trace: Trace::new(),
            providers: Mutex::default(),
            writers: Mutex::default(),
            writer_states: Mutex::default(),
            in_flight: Mutex::default(),
            sets: Mutex::default(),
            next_shadow: AtomicU32::new(1),
            next_requester: AtomicU64::new(1),
            next_order: AtomicU64::new(1),
        })
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// Loads a provider (calls `OnLoad`) and registers it under `id`.
    pub fn register_provider(
        &self,
        id: VssId,
        name: &str,
        provider: Arc<dyn HardwareProvider>,
    ) -> Result<(), VssError> {
        let mut ps = lock(&self.providers);
        if ps.iter().any(|p| p.id == id) {
            return Err(VssError::refused(
                Hresult::VSS_E_PROVIDER_ALREADY_REGISTERED,
                format!("provider {id} is registered"),
            ));
        }
        let h = ProviderHandle::new(id, name, provider, self.trace.clone());
        h.on_load().map_err(pf(&h))?;
        ps.push(h);
        Ok(())
    }

    /// Unloads every provider (`OnUnload(force)`), e.g. when the service stops.
    pub fn unload_providers(&self, force: bool) {
        for p in lock(&self.providers).iter() {
            let _ = p.on_unload(force);
        }
    }

    pub fn providers(&self) -> Vec<ProviderProp> {
        lock(&self.providers)
            .iter()
            .map(|p| ProviderProp {
                id: p.id,
                name: p.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .collect()
    }

    fn provider(&self, id: VssId) -> Option<ProviderHandle> {
        lock(&self.providers).iter().find(|p| p.id == id).cloned()
    }

    /// Subscribes a writer.
    pub fn add_writer(&self, w: Arc<dyn Writer>) {
        lock(&self.writers).push(w);
    }

    /// A new requester (`CreateVssBackupComponents`).
    pub fn backup_components(self: &Arc<Self>) -> BackupComponents {
        BackupComponents {
            coord: Arc::clone(self),
            id: self.next_requester.fetch_add(1, Ordering::Relaxed),
            context: SnapshotContext::BACKUP,
            pending: None,
            loaded: None,
            recovery: Vec::new(),
            released: false,
            created_transportable: BTreeMap::new(),
            backup_type: BackupType::Full,
            excluded_writers: Vec::new(),
            verified_writers: Vec::new(),
            took_part: Vec::new(),
            restoring: false,
        }
    }

    /// Every snapshot this host's VSS knows (`Query`), sets in the order they became known.
    pub fn query(&self) -> Vec<SnapshotProp> {
        let sets = lock(&self.sets);
        let mut ordered: Vec<&KnownSet> = sets.values().collect();
        ordered.sort_by_key(|s| s.order);
        let mut out = Vec::new();
        for s in ordered {
            let mut attrs = s.record.context.0 | Attr::HARDWARE_ASSISTED.bits();
            if s.imported {
                attrs |= Attr::IMPORTED.bits();
            }
            for snap in &s.record.snapshots {
                let exposed_name = s.exposed.get(&snap.snapshot_id).cloned();
                let attrs = if exposed_name.is_some() {
                    attrs | Attr::EXPOSED_LOCALLY.bits()
                } else {
                    attrs
                };
                out.push(SnapshotProp {
                    snapshot_id: snap.snapshot_id,
                    snapshot_set_id: s.record.snapshot_set_id,
                    snapshots_count: s.record.snapshots.len(),
                    original_volume: snap.original_volume.clone(),
                    snapshot_device: s.volumes.get(&snap.snapshot_id).cloned(),
                    exposed_name,
                    originating_machine: s.record.originating_host.clone(),
                    provider_id: snap.provider_id,
                    attributes: attrs,
                    created: s.record.created,
                });
            }
        }
        out
    }

    /// The BCD of a known set.
    pub fn bcd(&self, set_id: VssId) -> Option<Bcd> {
        lock(&self.sets)
            .get(&set_id)
            .map(|s| Bcd::new(s.record.clone()))
    }
}

/// A requester (`IVssBackupComponents`).
pub struct BackupComponents {
    coord: Arc<Coordinator>,
    id: u64,
    context: SnapshotContext,
    pending: Option<PendingSet>,
    loaded: Option<Bcd>,
    recovery: Vec<(VssId, Option<String>)>,
    released: bool,
    /// Transportable sets this requester created: on the creating host they live only in
    /// their BCD (kept here for `SaveAsXML`), not in the host's VSS.
    created_transportable: BTreeMap<VssId, SetRecord>,
    backup_type: BackupType,
    /// Writers left out of this requester's sets (`writer exclude`).
    excluded_writers: Vec<String>,
    /// Writers that must take part, or creation fails (`writer verify`).
    verified_writers: Vec<String>,
    /// Writers that took part in a set since the last `BackupComplete`.
    took_part: Vec<Arc<dyn Writer>>,
    restoring: bool,
}

impl std::fmt::Debug for BackupComponents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupComponents({})", self.id)
    }
}

impl BackupComponents {
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coord
    }

    /// `SetContext`.
    pub fn set_context(&mut self, context: SnapshotContext) -> Result<(), VssError> {
        if self.pending.is_some() {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "the context cannot change while a set is being built",
            ));
        }
        // Accepted, as on Windows; only the system provider makes such copies, so adding a
        // volume fails (`add_to_snapshot_set`).
        let client_accessible = context == SnapshotContext::CLIENT_ACCESSIBLE
            || context == SnapshotContext::CLIENT_ACCESSIBLE_WRITERS;
        if !client_accessible && !context.is_valid_for_creation() {
            return Err(VssError::refused(
                Hresult::VSS_E_UNSUPPORTED_CONTEXT,
                format!("{context} cannot be used to create hardware snapshots"),
            ));
        }
        self.context = context;
        Ok(())
    }

    pub fn context(&self) -> SnapshotContext {
        self.context
    }

    /// The BCD of a set this host knows or this requester created transportable
    /// (`SaveAsXML`).
    pub fn bcd(&self, set_id: VssId) -> Result<Bcd, VssError> {
        if let Some(r) = self.created_transportable.get(&set_id) {
            return Ok(Bcd::new(r.clone()));
        }
        self.coord.bcd(set_id).ok_or_else(|| {
            VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("set {set_id} is not known"),
            )
        })
    }

    /// Writes the BCD of a set to a file.
    pub fn save_bcd(&self, set_id: VssId, path: &Path) -> Result<(), VssError> {
        self.bcd(set_id)?.save(path)?;
        Ok(())
    }

    /// Loads a BCD for import, break or resync (`InitializeForBackup(xml)` /
    /// `InitializeForRestore(xml)`).
    pub fn load_bcd(&mut self, bcd: Bcd) -> Result<(), VssError> {
        bcd.validate()?;
        self.loaded = Some(bcd);
        Ok(())
    }

    /// The BCD loaded with [`BackupComponents::load_bcd`].
    pub fn loaded_bcd(&self) -> Option<&Bcd> {
        self.loaded.as_ref()
    }

    /// The volumes (names on this host) of a set's snapshots, in the set's volume order.
    pub fn snapshot_volumes(&self, set_id: VssId) -> Vec<(String, String)> {
        let sets = lock(&self.coord.sets);
        let Some(s) = sets.get(&set_id) else {
            return Vec::new();
        };
        s.record
            .snapshots
            .iter()
            .filter_map(|snap| {
                s.volumes
                    .get(&snap.snapshot_id)
                    .map(|v| (snap.original_volume.clone(), v.clone()))
            })
            .collect()
    }

    /// Releases the requester: auto-release snapshots it created are deleted.
    pub fn release(&mut self) -> Result<usize, VssError> {
        if self.released {
            return Ok(0);
        }
        self.released = true;
        self.abort_backup();
        let ids: Vec<VssId> = {
            let sets = lock(&self.coord.sets);
            sets.values()
                .filter(|s| s.owner == Some(self.id))
                .flat_map(|s| s.record.snapshots.iter().map(|x| x.snapshot_id))
                .collect()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        self.coord.trace.step("release: auto-release snapshots");
        self.coord.delete_snapshots(&ids)
    }
}

impl Drop for BackupComponents {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "releasing auto-release snapshots failed");
        }
    }
}

/// The (snapshot, original) LUN arrays of one provider's LUNs of a set.
fn lun_pairs(rec: &SetRecord, provider: VssId) -> (Vec<LunInfo>, Vec<LunInfo>) {
    rec.luns
        .iter()
        .filter(|l| l.provider_id == provider)
        .map(|l| (l.target.clone(), l.source.clone()))
        .unzip()
}
