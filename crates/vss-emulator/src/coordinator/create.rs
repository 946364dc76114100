//! The creation of a snapshot set: building it (`StartSnapshotSet`, `AddToSnapshotSet`) and
//! `DoSnapshotSet`, with the undo of a failed one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vss::{HardwareOptions, Hresult, LunInfo, VolumeSnapshotAttributes as Attr, VssId};

use crate::bcd::{ExtentRecord, LunRecord, SetRecord, SnapshotRecord};
use crate::gpt_flags;
use crate::host::{Extent, Host};
use crate::trace::ProviderHandle;
use crate::writer::Writer;

use super::{BackupComponents, KnownSet, VssError, lock, lun_pairs, pf};

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

pub(super) struct PendingSet {
    id: VssId,
    snapshots: Vec<PendingSnapshot>,
}

impl PendingSet {
    /// The volumes of the set, by their own names.
    pub(super) fn volumes(&self) -> BTreeSet<String> {
        self.snapshots.iter().map(|s| s.volume.clone()).collect()
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
        let host = &self.coord.host;
        // Any name of the volume will do (`e:`, `E:\`, its volume GUID path, a mount
        // point); the set records the volume's own name.
        let vol = host.volume(volume).map_err(|_| {
            VssError::refused(
                Hresult::VSS_E_OBJECT_NOT_FOUND,
                format!("no volume {volume} on {}", host.name()),
            )
        })?;
        if pending.snapshots.iter().any(|s| s.volume == vol.name) {
            return Err(VssError::refused(
                Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
                format!("{volume} ({}) is already in the set", vol.name),
            ));
        }
        if pending.snapshots.len() >= vss::MAX_VOLUMES_PER_SET {
            return Err(VssError::refused(
                Hresult::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                format!("a set holds at most {} volumes", vss::MAX_VOLUMES_PER_SET),
            ));
        }
        let devices = vol.devices();
        let mut luns = Vec::with_capacity(devices.len());
        for d in &devices {
            luns.push(host.disk(d)?.lun_info);
        }
        let ctx = self.context;
        if ctx.attributes().contains(Attr::CLIENT_ACCESSIBLE) {
            // Client-accessible copies are the system provider's; hardware providers are
            // not asked.
            self.coord
                .trace
                .step(format!("{ctx}: no hardware provider is asked"));
            return Err(VssError::refused(
                if provider_id.is_nil() {
                    Hresult::VSS_E_VOLUME_NOT_SUPPORTED
                } else {
                    Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER
                },
                format!("no hardware provider makes {ctx} shadow copies of {volume}"),
            ));
        }
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
            volume: vol.name.clone(),
            provider,
            devices,
            luns,
            extents: vol.extents.clone(),
            block_size: vol.block_size,
        });
        Ok(snapshot_id)
    }

    /// `DoSnapshotSet`: the whole creation sequence of `docs/vss-contract.md` §2.2, in
    /// the diagram order (§2.3).
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

        // The writers that take part (`writer verify` fails the set before any provider
        // hears of it), then PrepareForBackup.
        let writers = self.writers_of(pending);
        self.verify_writers(&writers)?;
        for w in &writers {
            c.trace.step(format!(
                "W: OnPrepareBackup {} ({:?})",
                w.name(),
                self.backup_type
            ));
            w.prepare_backup(self.backup_type)
                .map_err(|source| c.writer_failed(w.as_ref(), source))?;
        }

        // 5. EndPrepareSnapshots, once per provider.
        for p in &providers {
            undo.ended.push(p.clone());
            p.end_prepare_snapshots(set_id).map_err(pf(p))?;
        }

        // 6. VSS flags on every source LUN.
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

        // 7. Writers: PrepareForSnapshot, Freeze.
        for w in &writers {
            c.trace.step(format!("W: OnFreeze {}", w.name()));
            undo.frozen.push(Arc::clone(w));
            w.freeze(c.config.freeze_window)
                .map_err(|source| c.writer_failed(w.as_ref(), source))?;
        }

        // 8. PreCommitSnapshots.
        for p in &providers {
            p.pre_commit_snapshots(set_id).map_err(pf(p))?;
        }

        // 9-11. Flush and hold, CommitSnapshots, release.
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

        // 12. Clear the flags on the source LUNs (the snapshot LUNs keep them).
        for d in &sources {
            c.host.update_gpt(d, 0, gpt_flags::VSS_FLAGS, None)?;
        }
        undo.flagged.clear();
        c.trace.step("clear VSS flags on source LUNs");

        // 13. PostCommitSnapshots.
        let count = pending.snapshots.len() as i32;
        for p in &providers {
            p.post_commit_snapshots(set_id, count).map_err(pf(p))?;
        }

        // 14. Thaw.
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

        // 15. GetTargetLuns, once per provider over its distinct LUNs.
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
            exposed: BTreeMap::new(),
            imported: false,
            owner: ctx.is_auto_release().then_some(self.id),
            order: c.next_order.fetch_add(1, Ordering::Relaxed),
        };

        // 16. Transportable: the BCD is complete; otherwise auto-import on this host.
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

        // 17-19. PreFinalCommit, writers' OnPostSnapshot (auto-recovery), PostFinalCommit.
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
        for w in writers {
            if !self.took_part.iter().any(|t| t.name() == w.name()) {
                self.took_part.push(w);
            }
        }
        if ctx.is_transportable() {
            // A transportable set is not stored on the creating host: it lives in its BCD
            // until it is imported (here or elsewhere).
            c.trace
                .step(format!("set {set_id} kept in its BCD only (transportable)"));
            self.created_transportable.insert(set_id, known.record);
        } else {
            lock(&c.sets).insert(set_id, known);
        }
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
}

/// Providers must not touch `m_rgInterconnects` (`docs/vss-contract.md` §4.1, §6.4).
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
