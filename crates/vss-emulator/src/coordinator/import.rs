//! Surfacing a set's snapshot LUNs on this host (auto-import and `ImportSnapshots`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vss::{Hresult, LunInfo, VssId};

use crate::bcd::SnapshotRecord;
use crate::gpt_flags;
use crate::host::Extent;

use super::{BackupComponents, Coordinator, KnownSet, VssError, lock, pf};

impl Coordinator {
    fn shadow_name(&self) -> String {
        format!(
            "\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy{}",
            self.next_shadow.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// LocateLuns, rescan, FillInLunInfo for each arriving disk, matching (`docs/vss-contract.md` §7.4), and mounting
    /// of the snapshot volumes hidden and read-only. Returns (imported, missing) snapshot counts.
    pub(super) fn surface(&self, set: &mut KnownSet) -> Result<(usize, usize), VssError> {
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
}

impl BackupComponents {
    pub(super) fn forget_surfaced(&self, known: &KnownSet) {
        for v in known.volumes.values() {
            let _ = self.coord.host.dismount(v);
        }
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
            exposed: BTreeMap::new(),
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
}
