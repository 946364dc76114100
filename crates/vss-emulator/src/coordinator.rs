//! The VSS coordinator (vssvc) of one host, and the requester interface
//! (`IVssBackupComponents`) that drives it.
//!
//! The coordinator is the only caller of providers. It follows the call order of contract §2
//! (the diagram order: `GetTargetLuns` and auto-import before `PreFinalCommitSnapshots`),
//! enforces VSS's rules (one set in flight, at most 64 volumes, no partial sets, abort only
//! after `DoSnapshotSet` began, the flush-and-hold and freeze windows, status translation),
//! keeps VSS's partition flags on the LUNs, and records every step in a [`Trace`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provider::HardwareProvider;
use thiserror::Error;
use vss::{
    HardwareOptions, Hresult, LunInfo, RecoveryOptions, SnapshotContext,
    VolumeSnapshotAttributes as Attr, VssId,
};

use crate::bcd::{Bcd, BcdError, ExtentRecord, LunRecord, SetRecord, SnapshotRecord};
use crate::gpt_flags;
use crate::host::{Extent, Host, HostError};
use crate::trace::{ProviderFailure, ProviderHandle, Trace};
use crate::writer::{Writer, WriterError};

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
}

/// The coordinator of one host.
pub struct Coordinator {
    host: Arc<Host>,
    config: Config,
    trace: Trace,
    providers: Mutex<Vec<ProviderHandle>>,
    writers: Mutex<Vec<Arc<dyn Writer>>>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Coordinator {
    pub fn new(host: Arc<Host>, config: Config) -> Arc<Self> {
        Arc::new(Self {
            host,
            config,
            trace: Trace::new(),
            providers: Mutex::default(),
            writers: Mutex::default(),
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
                out.push(SnapshotProp {
                    snapshot_id: snap.snapshot_id,
                    snapshot_set_id: s.record.snapshot_set_id,
                    snapshots_count: s.record.snapshots.len(),
                    original_volume: snap.original_volume.clone(),
                    snapshot_device: s.volumes.get(&snap.snapshot_id).cloned(),
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

    fn shadow_name(&self) -> String {
        format!(
            "\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy{}",
            self.next_shadow.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// LocateLuns, rescan, FillInLunInfo for each arriving disk, matching (§7.4), and mounting
    /// of the snapshot volumes hidden and read-only. Returns (imported, missing) snapshot counts.
    fn surface(&self, set: &mut KnownSet) -> Result<(usize, usize), VssError> {
        let rec = set.record.clone();
        let mut provider_ids: Vec<VssId> = Vec::new();
        for l in &rec.luns {
            if !provider_ids.contains(&l.provider_id) {
                provider_ids.push(l.provider_id);
            }
        }
        let mut handles = Vec::new();
        for id in &provider_ids {
            let p = self.provider(*id).ok_or_else(|| {
                VssError::refused(
                    Hresult::VSS_E_PROVIDER_NOT_REGISTERED,
                    format!("provider {id} of the set is not registered on this host"),
                )
            })?;
            let targets: Vec<LunInfo> = rec
                .luns
                .iter()
                .filter(|l| l.provider_id == *id)
                .map(|l| l.target.clone())
                .collect();
            p.locate_luns(&targets).map_err(pf(&p))?;
            handles.push(p);
        }
        let report = self.host.rescan()?;
        self.trace
            .step(format!("rescan: {} disks arrived", report.arrived.len()));
        for dev in &report.arrived {
            let disk = self.host.disk(dev)?;
            let mut matched = false;
            for p in &handles {
                let mut info = disk.lun_info.clone();
                // The return value is ignored (WS2008+); a failure counts as "not mine".
                let supported = p.fill_in_lun_info(dev, &mut info).unwrap_or(false);
                if !supported {
                    continue;
                }
                for (i, l) in rec.luns.iter().enumerate() {
                    if l.provider_id == p.id
                        && !set.surfaced.contains_key(&i)
                        && l.target.matches_for_import(&info)
                    {
                        set.surfaced.insert(i, dev.clone());
                        matched = true;
                        break;
                    }
                }
                if matched {
                    break;
                }
            }
            if matched {
                // Windows gives a disk whose GUID collides with another disk a new one.
                let sig = disk.lun_info.disk_signature;
                let clash = !sig.is_nil()
                    && self
                        .host
                        .disks()
                        .iter()
                        .any(|d| d.device != *dev && d.lun_info.disk_signature == sig);
                if clash {
                    self.host
                        .update_gpt(dev, 0, 0, Some(uuid::Uuid::new_v4()))?;
                    self.trace
                        .step(format!("new disk GUID for {dev} (collision)"));
                }
            }
        }
        let mut imported = 0;
        let mut missing = 0;
        for snap in &rec.snapshots {
            match self.mount_snapshot(set, snap) {
                Ok(name) => {
                    set.volumes.insert(snap.snapshot_id, name);
                    imported += 1;
                }
                Err(why) => {
                    self.trace.step(format!(
                        "snapshot of {} not imported: {why}",
                        snap.original_volume
                    ));
                    missing += 1;
                }
            }
        }
        Ok((imported, missing))
    }

    fn mount_snapshot(&self, set: &KnownSet, snap: &SnapshotRecord) -> Result<String, String> {
        let mut extents = Vec::new();
        let mut read_only = false;
        for e in &snap.extents {
            let dev = set
                .surfaced
                .get(&e.lun)
                .ok_or_else(|| format!("LUN {} did not arrive", e.lun))?;
            let layout = self.host.layout(dev).map_err(|x| x.to_string())?;
            let p = layout
                .partitions
                .iter()
                .find(|p| p.first_lba == e.first_lba && p.blocks() == e.blocks)
                .ok_or_else(|| format!("{dev} has no partition at LBA {}", e.first_lba))?;
            read_only |= p.flags & gpt_flags::READ_ONLY != 0;
            extents.push(Extent {
                device: dev.clone(),
                first_lba: e.first_lba,
                blocks: e.blocks,
            });
        }
        let name = self.shadow_name();
        self.host
            .mount_extents(&name, extents, read_only, snap.block_size)
            .map_err(|x| x.to_string())?;
        Ok(name)
    }

    /// Deletes snapshots: dismounts their volumes, then for every snapshot LUN no snapshot
    /// uses any more, FillInLunInfo then OnLunEmpty, once.
    fn delete_snapshots(&self, ids: &[VssId]) -> Result<usize, VssError> {
        let mut sets = lock(&self.sets);
        let mut deleted = 0;
        let mut first_error = None;
        let mut emptied_any = false;
        let set_ids: Vec<VssId> = sets.keys().copied().collect();
        for sid in set_ids {
            let Some(set) = sets.get_mut(&sid) else {
                continue;
            };
            let before = set.record.snapshots.len();
            let (gone, keep): (Vec<_>, Vec<_>) = set
                .record
                .snapshots
                .drain(..)
                .partition(|s| ids.contains(&s.snapshot_id));
            set.record.snapshots = keep;
            if gone.is_empty() {
                continue;
            }
            deleted += before - set.record.snapshots.len();
            for s in &gone {
                if let Some(v) = set.volumes.remove(&s.snapshot_id) {
                    let _ = self.host.dismount(&v);
                    self.trace.step(format!("dismount {v}"));
                }
            }
            let in_use: BTreeSet<usize> = set
                .record
                .snapshots
                .iter()
                .flat_map(|s| s.extents.iter().map(|e| e.lun))
                .collect();
            let freed: BTreeSet<usize> = gone
                .iter()
                .flat_map(|s| s.extents.iter().map(|e| e.lun))
                .filter(|l| !in_use.contains(l) && !set.emptied.contains(l))
                .collect();
            for i in freed {
                let l = &set.record.luns[i];
                let Some(p) = self.provider(l.provider_id) else {
                    continue;
                };
                let device = set.surfaced.get(&i).cloned().unwrap_or_default();
                let mut info = l.target.clone();
                let _ = p.fill_in_lun_info(&device, &mut info);
                set.emptied.insert(i);
                emptied_any = true;
                if let Err(f) = p.on_lun_empty(&device, &l.target) {
                    first_error.get_or_insert(VssError::Provider {
                        provider: p.name.clone(),
                        failure: f,
                    });
                }
            }
            if set.record.snapshots.is_empty() {
                sets.remove(&sid);
            }
        }
        drop(sets);
        if emptied_any {
            let r = self.host.rescan()?;
            self.trace
                .step(format!("rescan: {} disks removed", r.removed.len()));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }
}

/// What `DeleteSnapshots` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteTarget {
    Snapshot(VssId),
    Set(VssId),
    /// Every snapshot this host knows.
    All,
    /// Every snapshot of a volume.
    Volume(String),
    /// The oldest snapshot of a volume.
    Oldest(String),
}

struct PendingSnapshot {
    id: VssId,
    volume: String,
    provider: ProviderHandle,
    devices: Vec<String>,
    luns: Vec<LunInfo>,
    extents: Vec<Extent>,
    block_size: u32,
}

struct PendingSet {
    id: VssId,
    snapshots: Vec<PendingSnapshot>,
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
}

impl std::fmt::Debug for BackupComponents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupComponents({})", self.id)
    }
}

/// What the coordinator holds while `DoSnapshotSet` runs, to undo on failure.
#[derive(Default)]
struct Undo {
    ended: Vec<ProviderHandle>,
    flagged: Vec<String>,
    frozen: Vec<Arc<dyn Writer>>,
    holding: bool,
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
        if !context.is_valid_for_creation() {
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

    /// True between `StartSnapshotSet` and `DoSnapshotSet`.
    pub fn has_pending_set(&self) -> bool {
        self.pending.is_some()
    }

    /// `StartSnapshotSet`.
    pub fn start_snapshot_set(&mut self) -> Result<VssId, VssError> {
        let mut f = lock(&self.coord.in_flight);
        if let Some(other) = *f {
            return Err(VssError::refused(
                Hresult::VSS_E_SNAPSHOT_SET_IN_PROGRESS,
                format!("set {other} is being created"),
            ));
        }
        let id = uuid::Uuid::new_v4();
        *f = Some(id);
        self.pending = Some(PendingSet {
            id,
            snapshots: Vec::new(),
        });
        self.coord.trace.step(format!("StartSnapshotSet {id}"));
        Ok(id)
    }

    /// Abandons the set being built before `DoSnapshotSet` (providers are not told, as on
    /// Windows: their next `BeginPrepareSnapshot` has a new set id).
    pub fn abort_backup(&mut self) {
        if let Some(p) = self.pending.take() {
            let mut f = lock(&self.coord.in_flight);
            if *f == Some(p.id) {
                *f = None;
            }
            self.coord.trace.step(format!("set {} abandoned", p.id));
        }
    }

    /// `AddToSnapshotSet(volume, provider)`; `VssId::nil()` lets VSS pick a provider.
    pub fn add_to_snapshot_set(
        &mut self,
        volume: &str,
        provider_id: VssId,
    ) -> Result<VssId, VssError> {
        let Some(pending) = self.pending.as_ref() else {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "no snapshot set was started",
            ));
        };
        let set_id = pending.id;
        if pending.snapshots.iter().any(|s| s.volume == volume) {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
                format!("{volume} is already in the set"),
            ));
        }
        if pending.snapshots.len() >= vss::MAX_VOLUMES_PER_SET {
            return Err(VssError::refused(
                Hresult::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                format!("a set holds at most {} volumes", vss::MAX_VOLUMES_PER_SET),
            ));
        }
        let host = &self.coord.host;
        let vol = host.volume(volume).map_err(|_| {
            VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("no volume {volume} on {}", host.name()),
            )
        })?;
        let devices = vol.devices();
        let mut luns = Vec::with_capacity(devices.len());
        for d in &devices {
            luns.push(host.disk(d)?.lun_info);
        }
        let ctx = self.context;
        let provider = if provider_id.is_nil() {
            let candidates: Vec<ProviderHandle> = lock(&self.coord.providers).clone();
            let mut chosen = None;
            for p in candidates {
                let mut probe = luns.clone();
                if p.are_luns_supported(ctx, &devices, &mut probe)
                    .map_err(pf(&p))?
                {
                    luns = probe;
                    chosen = Some(p);
                    break;
                }
            }
            chosen.ok_or_else(|| {
                VssError::refused(
                    Hresult::VSS_E_VOLUME_NOT_SUPPORTED,
                    format!("no provider supports {volume} in {ctx}"),
                )
            })?
        } else {
            let p = self.coord.provider(provider_id).ok_or_else(|| {
                VssError::refused(
                    Hresult::VSS_E_PROVIDER_NOT_REGISTERED,
                    format!("provider {provider_id} is not registered"),
                )
            })?;
            let mut probe = luns.clone();
            if !p
                .are_luns_supported(ctx, &devices, &mut probe)
                .map_err(pf(&p))?
            {
                return Err(VssError::refused(
                    Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
                    format!("{} does not support {volume} in {ctx}", p.name),
                ));
            }
            luns = probe;
            p
        };
        check_interconnects(host, &devices, &luns, &provider)?;
        let snapshot_id = uuid::Uuid::new_v4();
        provider
            .begin_prepare_snapshot(set_id, snapshot_id, ctx, &devices, &mut luns)
            .map_err(pf(&provider))?;
        check_interconnects(host, &devices, &luns, &provider)?;
        let Some(pending) = self.pending.as_mut() else {
            return Err(VssError::refused(Hresult::VSS_E_BAD_STATE, "set vanished"));
        };
        pending.snapshots.push(PendingSnapshot {
            id: snapshot_id,
            volume: volume.to_string(),
            provider,
            devices,
            luns,
            extents: vol.extents.clone(),
            block_size: vol.block_size,
        });
        Ok(snapshot_id)
    }

    /// `DoSnapshotSet`: the whole creation sequence of contract §2.4, in the diagram order.
    pub fn do_snapshot_set(&mut self) -> Result<VssId, VssError> {
        let Some(pending) = self.pending.take() else {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "no snapshot set was started",
            ));
        };
        let set_id = pending.id;
        let r = if pending.snapshots.is_empty() {
            Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "the set has no volumes",
            ))
        } else {
            let mut undo = Undo::default();
            let r = self.create(&pending, &mut undo);
            if let Err(e) = &r {
                self.fail(set_id, &mut undo, e);
            }
            r
        };
        let mut f = lock(&self.coord.in_flight);
        if *f == Some(set_id) {
            *f = None;
        }
        r.map(|_| set_id)
    }

    fn fail(&self, set_id: VssId, undo: &mut Undo, e: &VssError) {
        let c = &self.coord;
        c.trace
            .step(format!("DoSnapshotSet failed: {}; aborting", e.code()));
        if undo.holding {
            c.host.release_writes();
            c.trace.step("K: release writes");
        }
        for w in undo.frozen.drain(..) {
            w.abort();
            c.trace.step(format!("W: OnAbort {}", w.name()));
        }
        for p in &undo.ended {
            let _ = p.abort_snapshots(set_id);
        }
        for d in &undo.flagged {
            let _ = c.host.update_gpt(d, 0, gpt_flags::VSS_FLAGS, None);
        }
        if !undo.flagged.is_empty() {
            c.trace.step("clear VSS flags on source LUNs");
        }
        // Whatever surfaced goes away with the set.
        let vols: Vec<String> = c
            .host
            .volumes()
            .into_iter()
            .filter(|v| v.name.contains("HarddiskVolumeShadowCopy"))
            .map(|v| v.name)
            .collect();
        let known: BTreeSet<String> = lock(&c.sets)
            .values()
            .flat_map(|s| s.volumes.values().cloned())
            .collect();
        for v in vols.into_iter().filter(|v| !known.contains(v)) {
            let _ = c.host.dismount(&v);
        }
        let _ = c.host.rescan();
    }

    fn create(&mut self, pending: &PendingSet, undo: &mut Undo) -> Result<(), VssError> {
        let c = Arc::clone(&self.coord);
        let set_id = pending.id;
        let ctx = self.context;
        let mut providers: Vec<ProviderHandle> = Vec::new();
        for s in &pending.snapshots {
            if !providers.iter().any(|p| p.id == s.provider.id) {
                providers.push(s.provider.clone());
            }
        }
        c.trace.step(format!("DoSnapshotSet {set_id}"));

        // 6. EndPrepareSnapshots, once per provider.
        for p in &providers {
            undo.ended.push(p.clone());
            p.end_prepare_snapshots(set_id).map_err(pf(p))?;
        }

        // 7. VSS flags on every source LUN.
        let mut sources: Vec<String> = Vec::new();
        for s in &pending.snapshots {
            for d in &s.devices {
                if !sources.contains(d) {
                    sources.push(d.clone());
                }
            }
        }
        let mut original_guids = BTreeMap::new();
        for d in &sources {
            let before = c.host.layout(d)?;
            original_guids.insert(d.clone(), before.disk_guid);
            undo.flagged.push(d.clone());
            c.host.update_gpt(d, gpt_flags::VSS_FLAGS, 0, None)?;
        }
        c.trace.step("set VSS flags on source LUNs");

        // 8-9. Writers: PrepareForSnapshot, Freeze.
        let writers: Vec<Arc<dyn Writer>> = if ctx.contains(Attr::NO_WRITERS) {
            Vec::new()
        } else {
            let vols: BTreeSet<&str> = pending
                .snapshots
                .iter()
                .map(|s| s.volume.as_str())
                .collect();
            lock(&c.writers)
                .iter()
                .filter(|w| w.volumes().iter().any(|v| vols.contains(v.as_str())))
                .cloned()
                .collect()
        };
        for w in &writers {
            c.trace.step(format!("W: OnFreeze {}", w.name()));
            undo.frozen.push(Arc::clone(w));
            w.freeze(c.config.freeze_window)
                .map_err(|source| VssError::Writer {
                    code: source.hresult(),
                    source,
                })?;
        }

        // 10. PreCommitSnapshots.
        for p in &providers {
            p.pre_commit_snapshots(set_id).map_err(pf(p))?;
        }

        // 11-13. Flush and hold, CommitSnapshots, release.
        c.host.hold_writes(&sources, c.config.hold_window);
        undo.holding = true;
        c.trace.step("K: flush and hold writes");
        let hold_start = Instant::now();
        for p in &providers {
            p.commit_snapshots(set_id).map_err(pf(p))?;
        }
        let in_time = c.host.release_writes();
        undo.holding = false;
        let held = hold_start.elapsed();
        c.trace.step(format!(
            "K: release writes after {:.3} ms",
            held.as_secs_f64() * 1e3
        ));
        if !in_time {
            return Err(VssError::refused(
                Hresult::VSS_E_HOLD_WRITES_TIMEOUT,
                format!(
                    "writes were held {:.3} s, longer than the {:.3} s window",
                    held.as_secs_f64(),
                    c.config.hold_window.as_secs_f64()
                ),
            ));
        }

        // 14. Clear the flags on the source LUNs (the snapshot LUNs keep them).
        for d in &sources {
            c.host.update_gpt(d, 0, gpt_flags::VSS_FLAGS, None)?;
        }
        undo.flagged.clear();
        c.trace.step("clear VSS flags on source LUNs");

        // 15. PostCommitSnapshots.
        let count = pending.snapshots.len() as i32;
        for p in &providers {
            p.post_commit_snapshots(set_id, count).map_err(pf(p))?;
        }

        // 16. Thaw.
        for w in undo.frozen.drain(..).collect::<Vec<_>>() {
            c.trace.step(format!("W: OnThaw {}", w.name()));
            w.thaw().map_err(|source| {
                undo.frozen.push(Arc::clone(&w));
                VssError::Writer {
                    code: source.hresult(),
                    source,
                }
            })?;
        }

        // 17. GetTargetLuns, once per provider over its distinct LUNs.
        let mut luns: Vec<LunRecord> = Vec::new();
        let mut lun_index: BTreeMap<(VssId, String), usize> = BTreeMap::new();
        for p in &providers {
            let mut devices = Vec::new();
            let mut src = Vec::new();
            for s in pending.snapshots.iter().filter(|s| s.provider.id == p.id) {
                for (d, l) in s.devices.iter().zip(&s.luns) {
                    if !devices.contains(d) {
                        devices.push(d.clone());
                        src.push(l.clone());
                    }
                }
            }
            let mut dst = vec![LunInfo::default(); src.len()];
            p.get_target_luns(&devices, &src, &mut dst).map_err(pf(p))?;
            for (i, (d, (s, t))) in devices.iter().zip(src.iter().zip(dst)).enumerate() {
                if !t.interconnects.is_empty() {
                    c.trace.step(format!(
                        "GetTargetLuns filled interconnects for LUN {i}; VSS owns them"
                    ));
                }
                lun_index.insert((p.id, d.clone()), luns.len());
                luns.push(LunRecord {
                    provider_id: p.id,
                    source_device: d.clone(),
                    source: s.clone(),
                    target: t,
                    original_disk_guid: original_guids.get(d).copied().unwrap_or_default(),
                });
            }
        }
        let mut snapshots = Vec::new();
        for s in &pending.snapshots {
            let extents = s
                .extents
                .iter()
                .map(|e| ExtentRecord {
                    lun: lun_index
                        .get(&(s.provider.id, e.device.clone()))
                        .copied()
                        .unwrap_or(usize::MAX),
                    first_lba: e.first_lba,
                    blocks: e.blocks,
                })
                .collect();
            snapshots.push(SnapshotRecord {
                snapshot_id: s.id,
                provider_id: s.provider.id,
                original_volume: s.volume.clone(),
                extents,
                block_size: s.block_size,
            });
        }
        let record = SetRecord {
            snapshot_set_id: set_id,
            context: ctx,
            originating_host: c.host.name().to_string(),
            created: now_unix(),
            snapshots,
            luns,
        };
        let mut known = KnownSet {
            record,
            surfaced: BTreeMap::new(),
            volumes: BTreeMap::new(),
            emptied: BTreeSet::new(),
            imported: false,
            owner: ctx.is_auto_release().then_some(self.id),
            order: c.next_order.fetch_add(1, Ordering::Relaxed),
        };

        // 18. Transportable: the BCD is complete; otherwise auto-import on this host.
        let autorecover = ctx.contains(Attr::AUTORECOVER) && !ctx.contains(Attr::NO_AUTORECOVERY);
        if !ctx.is_transportable() || autorecover {
            let (imported, missing) = c.surface(&mut known)?;
            if missing > 0 || imported == 0 {
                self.forget_surfaced(&known);
                return Err(VssError::refused(
                    Hresult::VSS_E_MISSING_DISK,
                    format!("{missing} snapshot volumes did not surface"),
                ));
            }
            known.imported = !ctx.is_transportable();
        } else {
            c.trace
                .step("transportable: BCD complete, nothing surfaced");
        }

        // 19-21. PreFinalCommit, writers' OnPostSnapshot (auto-recovery), PostFinalCommit.
        for p in &providers {
            p.pre_final_commit_snapshots(set_id).map_err(pf(p))?;
        }
        if autorecover && !writers.is_empty() {
            self.recover_snapshot_luns(&known, &writers)?;
        } else {
            for w in &writers {
                c.trace.step(format!("W: OnPostSnapshot {}", w.name()));
                w.post_snapshot().map_err(|source| VssError::Writer {
                    code: source.hresult(),
                    source,
                })?;
            }
        }
        if ctx.is_transportable() && autorecover {
            // Hide the recovered LUNs from this host so they can be transported.
            for p in &providers {
                let (snap, orig) = lun_pairs(&known.record, p.id);
                p.on_lun_state_change(&snap, &orig, HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS)
                    .map_err(pf(p))?;
            }
            self.forget_surfaced(&known);
            known.surfaced.clear();
            known.volumes.clear();
        }
        for p in &providers {
            p.post_final_commit_snapshots(set_id).map_err(pf(p))?;
        }
        c.trace.step(format!("DoSnapshotSet {set_id} done"));
        lock(&c.sets).insert(set_id, known);
        Ok(())
    }

    /// Auto-recovery: snapshot LUNs are made writable for the writers' OnPostSnapshot and
    /// read-only again after, with OnLunStateChange PRE/POST_RECOVERY around it.
    fn recover_snapshot_luns(
        &self,
        known: &KnownSet,
        writers: &[Arc<dyn Writer>],
    ) -> Result<(), VssError> {
        let c = &self.coord;
        let provider_ids: BTreeSet<VssId> =
            known.record.luns.iter().map(|l| l.provider_id).collect();
        for id in &provider_ids {
            if let Some(p) = c.provider(*id) {
                let (snap, orig) = lun_pairs(&known.record, *id);
                p.on_lun_state_change(
                    &snap,
                    &orig,
                    HardwareOptions::ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY,
                )
                .map_err(pf(&p))?;
            }
        }
        for v in known.volumes.values() {
            c.host.set_read_only(v, false)?;
        }
        for w in writers {
            c.trace
                .step(format!("W: OnPostSnapshot {} (auto-recovery)", w.name()));
            w.post_snapshot().map_err(|source| VssError::Writer {
                code: Hresult::VSS_E_AUTORECOVERY_FAILED,
                source,
            })?;
        }
        for v in known.volumes.values() {
            c.host.set_read_only(v, true)?;
        }
        for id in &provider_ids {
            if let Some(p) = c.provider(*id) {
                let (snap, orig) = lun_pairs(&known.record, *id);
                p.on_lun_state_change(
                    &snap,
                    &orig,
                    HardwareOptions::ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY,
                )
                .map_err(pf(&p))?;
            }
        }
        Ok(())
    }

    fn forget_surfaced(&self, known: &KnownSet) {
        for v in known.volumes.values() {
            let _ = self.coord.host.dismount(v);
        }
    }

    /// The BCD of the last created set (`SaveAsXML`).
    pub fn bcd(&self, set_id: VssId) -> Result<Bcd, VssError> {
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

    /// `ImportSnapshots`: S_OK, `VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED`, or an error with
    /// `VSS_E_NO_SNAPSHOTS_IMPORTED`.
    pub fn import_snapshots(&mut self) -> Result<Hresult, VssError> {
        let Some(bcd) = self.loaded.clone() else {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "no BCD was loaded",
            ));
        };
        let c = Arc::clone(&self.coord);
        let set_id = bcd.set.snapshot_set_id;
        if lock(&c.sets).contains_key(&set_id) {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
                format!("set {set_id} is already imported or known on this host"),
            ));
        }
        if !bcd.set.context.is_transportable() {
            return Err(VssError::refused(
                Hresult::VSS_E_NONTRANSPORTABLE_BCD,
                "the set was not created transportable",
            ));
        }
        c.trace.step(format!("ImportSnapshots {set_id}"));
        let mut known = KnownSet {
            record: bcd.set.clone(),
            surfaced: BTreeMap::new(),
            volumes: BTreeMap::new(),
            emptied: BTreeSet::new(),
            imported: true,
            owner: None,
            order: c.next_order.fetch_add(1, Ordering::Relaxed),
        };
        let (imported, missing) = c.surface(&mut known)?;
        if imported == 0 {
            return Err(VssError::refused(
                Hresult::VSS_E_NO_SNAPSHOTS_IMPORTED,
                format!("none of the {missing} snapshots could be imported"),
            ));
        }
        // Snapshots that did not import are not part of the set on this host.
        known
            .record
            .snapshots
            .retain(|s| known.volumes.contains_key(&s.snapshot_id));
        lock(&c.sets).insert(set_id, known);
        Ok(if missing == 0 {
            Hresult::S_OK
        } else {
            Hresult::VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED
        })
    }

    /// `DeleteSnapshots`: returns how many snapshots were deleted.
    pub fn delete_snapshots(&mut self, target: DeleteTarget) -> Result<usize, VssError> {
        let c = &self.coord;
        let all = c.query();
        let ids: Vec<VssId> = match &target {
            DeleteTarget::Snapshot(id) => all
                .iter()
                .filter(|s| s.snapshot_id == *id)
                .map(|s| s.snapshot_id)
                .collect(),
            DeleteTarget::Set(id) => all
                .iter()
                .filter(|s| s.snapshot_set_id == *id)
                .map(|s| s.snapshot_id)
                .collect(),
            DeleteTarget::All => all.iter().map(|s| s.snapshot_id).collect(),
            DeleteTarget::Volume(v) => all
                .iter()
                .filter(|s| &s.original_volume == v)
                .map(|s| s.snapshot_id)
                .collect(),
            DeleteTarget::Oldest(v) => {
                let sets = lock(&c.sets);
                sets.values()
                    .filter_map(|s| {
                        s.record
                            .snapshots
                            .iter()
                            .find(|x| &x.original_volume == v)
                            .map(|x| ((s.record.created, s.order), x.snapshot_id))
                    })
                    .min_by_key(|(k, _)| *k)
                    .map(|(_, id)| id)
                    .into_iter()
                    .collect()
            }
        };
        if ids.is_empty() && !matches!(target, DeleteTarget::All) {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("no snapshot matches {target:?}"),
            ));
        }
        c.trace.step(format!("DeleteSnapshots {target:?}"));
        c.delete_snapshots(&ids)
    }

    /// `BreakSnapshotSet`: the snapshot volumes become ordinary volumes, read-only unless
    /// `writable`.
    pub fn break_snapshot_set(&mut self, set_id: VssId, writable: bool) -> Result<(), VssError> {
        let flags = if writable {
            HardwareOptions::BREAKEX_FLAG_MAKE_READ_WRITE
        } else {
            HardwareOptions::empty()
        };
        self.break_snapshot_set_ex(set_id, flags)
    }

    /// `BreakSnapshotSetEx` with `VSS_BREAKEX_FLAG_*` flags.
    pub fn break_snapshot_set_ex(
        &mut self,
        set_id: VssId,
        flags: HardwareOptions,
    ) -> Result<(), VssError> {
        use HardwareOptions as F;
        let c = Arc::clone(&self.coord);
        let break_bits = F::BREAKEX_FLAG_MASK_LUNS
            | F::BREAKEX_FLAG_MAKE_READ_WRITE
            | F::BREAKEX_FLAG_REVERT_IDENTITY_ALL
            | F::BREAKEX_FLAG_REVERT_IDENTITY_NONE;
        if !break_bits.contains(flags)
            || (flags.contains(F::BREAKEX_FLAG_MASK_LUNS) && flags != F::BREAKEX_FLAG_MASK_LUNS)
            || flags.contains(
                F::BREAKEX_FLAG_REVERT_IDENTITY_ALL | F::BREAKEX_FLAG_REVERT_IDENTITY_NONE,
            )
        {
            return Err(VssError::refused(
                Hresult::E_INVALIDARG,
                format!("invalid break flags {flags:?}"),
            ));
        }
        let known = lock(&c.sets).get(&set_id).cloned().ok_or_else(|| {
            VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("set {set_id} is not known on this host"),
            )
        })?;
        if known.surfaced.is_empty() {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "the set must be imported before it can be broken",
            ));
        }
        c.trace
            .step(format!("BreakSnapshotSetEx {set_id} {flags:?}"));
        // Identify every snapshot LUN first (the diagram's FillInLunInfo in the break path).
        for (i, dev) in &known.surfaced {
            let l = &known.record.luns[*i];
            if let Some(p) = c.provider(l.provider_id) {
                let mut info = c.host.disk(dev)?.lun_info;
                let _ = p.fill_in_lun_info(dev, &mut info);
            }
        }
        if flags.contains(F::BREAKEX_FLAG_REVERT_IDENTITY_ALL) {
            for l in &known.record.luns {
                if let Some(d) = c.host.find_disk(&l.source) {
                    return Err(VssError::refused(
                        Hresult::VSS_E_BREAK_REVERT_ID_FAILED,
                        format!(
                            "original LUN {} is present as {}",
                            l.source.describe(),
                            d.device
                        ),
                    ));
                }
            }
        }
        let provider_ids: BTreeSet<VssId> =
            known.record.luns.iter().map(|l| l.provider_id).collect();
        if flags.contains(F::BREAKEX_FLAG_MASK_LUNS) {
            for id in &provider_ids {
                if let Some(p) = c.provider(*id) {
                    let (snap, orig) = lun_pairs(&known.record, *id);
                    p.on_lun_state_change(&snap, &orig, F::ONLUNSTATECHANGE_DO_MASK_LUNS)
                        .map_err(pf(&p))?;
                }
            }
            self.forget_surfaced(&known);
            let r = c.host.rescan()?;
            c.trace
                .step(format!("rescan: {} disks removed", r.removed.len()));
        } else {
            let writable = flags.contains(F::BREAKEX_FLAG_MAKE_READ_WRITE);
            let clear = gpt_flags::HIDDEN
                | gpt_flags::SHADOW_COPY
                | gpt_flags::NO_DRIVE_LETTER
                | if writable { gpt_flags::READ_ONLY } else { 0 };
            for (i, dev) in &known.surfaced {
                let guid = flags
                    .contains(F::BREAKEX_FLAG_REVERT_IDENTITY_ALL)
                    .then_some(known.record.luns[*i].original_disk_guid);
                c.host.update_gpt(dev, 0, clear, guid)?;
            }
            for v in known.volumes.values() {
                c.host.set_read_only(v, !writable)?;
            }
            if writable {
                for id in &provider_ids {
                    if let Some(p) = c.provider(*id) {
                        let (snap, orig) = lun_pairs(&known.record, *id);
                        p.on_lun_state_change(&snap, &orig, F::ONLUNSTATECHANGE_NOTIFY_READ_WRITE)
                            .map_err(pf(&p))?;
                    }
                }
            }
        }
        lock(&c.sets).remove(&set_id);
        Ok(())
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

    /// `AddSnapshotToRecoverySet(snapshot, destination)`: `None` restores onto the original
    /// volume's LUNs.
    pub fn add_snapshot_to_recovery_set(
        &mut self,
        snapshot_id: VssId,
        destination: Option<String>,
    ) -> Result<(), VssError> {
        if self.find_snapshot(snapshot_id).is_none() {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("snapshot {snapshot_id} is not in the loaded BCD or on this host"),
            ));
        }
        if self.recovery.iter().any(|(s, _)| *s == snapshot_id) {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
                format!("snapshot {snapshot_id} is already in the recovery set"),
            ));
        }
        self.recovery.push((snapshot_id, destination));
        Ok(())
    }

    fn find_snapshot(&self, id: VssId) -> Option<(SetRecord, SnapshotRecord)> {
        let from_bcd = self.loaded.as_ref().and_then(|b| {
            b.set
                .snapshots
                .iter()
                .find(|s| s.snapshot_id == id)
                .map(|s| (b.set.clone(), s.clone()))
        });
        from_bcd.or_else(|| {
            lock(&self.coord.sets).values().find_map(|k| {
                k.record
                    .snapshots
                    .iter()
                    .find(|s| s.snapshot_id == id)
                    .map(|s| (k.record.clone(), s.clone()))
            })
        })
    }

    /// `RecoverSet`: LUN resync of every snapshot in the recovery set.
    pub fn recover_set(&mut self, options: RecoveryOptions) -> Result<(), VssError> {
        let c = Arc::clone(&self.coord);
        if self.recovery.is_empty() {
            return Err(VssError::refused(
                Hresult::VSS_E_BAD_STATE,
                "no snapshot was added to the recovery set",
            ));
        }
        c.trace.step(format!("RecoverSet {options:?}"));
        struct Job {
            provider: VssId,
            snapshot_lun: LunInfo,
            dest_device: String,
            original_guid: uuid::Uuid,
        }
        let mut jobs: Vec<Job> = Vec::new();
        let mut selected_volumes: BTreeSet<String> = BTreeSet::new();
        for (sid, dest) in self.recovery.clone() {
            let Some((set, snap)) = self.find_snapshot(sid) else {
                return Err(VssError::refused(
                    Hresult::VSS_E_OBJECT_NOT_FOUND,
                    format!("snapshot {sid} is gone"),
                ));
            };
            let lun_ids: Vec<usize> = {
                let mut v = Vec::new();
                for e in &snap.extents {
                    if !v.contains(&e.lun) {
                        v.push(e.lun);
                    }
                }
                v
            };
            let dest_devices: Vec<String> = match &dest {
                None => {
                    selected_volumes.insert(snap.original_volume.clone());
                    let mut v = Vec::new();
                    for i in &lun_ids {
                        let d = c.host.find_disk(&set.luns[*i].source).ok_or_else(|| {
                            VssError::refused(
                                Hresult::VSS_E_OBJECT_NOT_FOUND,
                                format!(
                                    "original LUN {} is not on this host",
                                    set.luns[*i].source.describe()
                                ),
                            )
                        })?;
                        v.push(d.device);
                    }
                    v
                }
                Some(vol) => {
                    selected_volumes.insert(vol.clone());
                    let v = c.host.volume(vol).map_err(|_| {
                        VssError::refused(
                            Hresult::VSS_E_OBJECT_NOT_FOUND,
                            format!("destination volume {vol} is not on this host"),
                        )
                    })?;
                    let devs = v.devices();
                    if devs.len() != lun_ids.len() {
                        return Err(VssError::refused(
                            Hresult::VSS_E_VOLUME_NOT_SUPPORTED,
                            format!(
                                "{vol} spans {} LUNs, the snapshot {}",
                                devs.len(),
                                lun_ids.len()
                            ),
                        ));
                    }
                    devs
                }
            };
            for (i, dev) in lun_ids.iter().zip(dest_devices) {
                let disk = c.host.disk(&dev)?;
                if !disk.lun_info.has_unique_identifier() {
                    return Err(VssError::refused(
                        Hresult::VSS_E_VOLUME_NOT_SUPPORTED,
                        format!("{dev} has no unique page 83 identifier"),
                    ));
                }
                jobs.push(Job {
                    provider: set.luns[*i].provider_id,
                    snapshot_lun: set.luns[*i].target.clone(),
                    dest_device: dev,
                    original_guid: set.luns[*i].original_disk_guid,
                });
            }
        }
        let dest_devs: BTreeSet<String> = jobs.iter().map(|j| j.dest_device.clone()).collect();
        let affected: Vec<_> = c
            .host
            .volumes()
            .into_iter()
            .filter(|v| v.extents.iter().any(|e| dest_devs.contains(&e.device)))
            .collect();
        if !options.contains(RecoveryOptions::NO_VOLUME_CHECK) {
            if let Some(v) = affected
                .iter()
                .find(|v| !selected_volumes.contains(&v.name))
            {
                return Err(VssError::refused(
                    Hresult::VSS_E_UNSELECTED_VOLUME,
                    format!(
                        "{} is on a destination LUN but not in the recovery set",
                        v.name
                    ),
                ));
            }
        }
        let mut before_guid = BTreeMap::new();
        for d in &dest_devs {
            before_guid.insert(d.clone(), c.host.layout(d).map(|l| l.disk_guid).ok());
        }
        for v in &affected {
            c.host.dismount(&v.name)?;
            c.trace.step(format!("dismount {}", v.name));
        }
        let mut provider_ids: Vec<VssId> = Vec::new();
        for j in &jobs {
            if !provider_ids.contains(&j.provider) {
                provider_ids.push(j.provider);
            }
        }
        let mut result = Ok(());
        for id in provider_ids {
            let Some(p) = c.provider(id) else {
                result = Err(VssError::refused(
                    Hresult::VSS_E_PROVIDER_NOT_REGISTERED,
                    format!("provider {id} is not registered"),
                ));
                break;
            };
            let mine: Vec<&Job> = jobs.iter().filter(|j| j.provider == id).collect();
            let src: Vec<LunInfo> = mine.iter().map(|j| j.snapshot_lun.clone()).collect();
            let mut dst = Vec::new();
            for j in &mine {
                dst.push(c.host.disk(&j.dest_device)?.lun_info);
            }
            let op = match p.resync_luns(&src, &dst) {
                Ok(op) => op,
                Err(f) => {
                    result = Err(VssError::Provider {
                        provider: p.name.clone(),
                        failure: f,
                    });
                    break;
                }
            };
            let _ = op.wait(None);
            let status = op.query_status().map(|(s, _)| s).unwrap_or_else(|e| e);
            c.trace.step(format!("ResyncLuns finished: {status}"));
            if status != Hresult::VSS_S_ASYNC_FINISHED && status != Hresult::S_OK {
                result = Err(VssError::refused(status, "the resync failed"));
                break;
            }
        }
        // Destination disks: identity must be unchanged; flags cleared; signature per options.
        let r = c.host.rescan()?;
        if !r.removed.is_empty() {
            c.trace.step(format!(
                "destination disks changed identity: {:?}",
                r.removed
            ));
        }
        if result.is_ok() {
            for j in &jobs {
                let guid = if options.contains(RecoveryOptions::REVERT_IDENTITY_ALL) {
                    j.original_guid
                } else {
                    before_guid
                        .get(&j.dest_device)
                        .copied()
                        .flatten()
                        .unwrap_or_else(uuid::Uuid::new_v4)
                };
                c.host
                    .update_gpt(&j.dest_device, 0, gpt_flags::VSS_FLAGS, Some(guid))?;
            }
        }
        for v in &affected {
            let _ = c
                .host
                .mount_extents(&v.name, v.extents.clone(), false, v.block_size);
        }
        self.recovery.clear();
        result
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

/// Providers must not touch `m_rgInterconnects` (contract §3.2.1).
fn check_interconnects(
    host: &Host,
    devices: &[String],
    luns: &[LunInfo],
    p: &ProviderHandle,
) -> Result<(), VssError> {
    for (d, l) in devices.iter().zip(luns) {
        let disk = host.disk(d)?;
        if disk.lun_info.interconnects != l.interconnects {
            return Err(VssError::refused(
                Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR,
                format!("{} changed the interconnects of {d}", p.name),
            ));
        }
    }
    Ok(())
}
