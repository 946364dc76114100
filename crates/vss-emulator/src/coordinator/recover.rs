//! LUN resync: the recovery set and `RecoverSet`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use vss::{Hresult, LunInfo, RecoveryOptions, VssId};

use crate::bcd::{SetRecord, SnapshotRecord};
use crate::gpt_flags;

use super::{BackupComponents, VssError, lock};

impl BackupComponents {
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
        // Whatever fails from here (the array gone, a disk unreadable), the volumes dismounted
        // above are mounted again before the error is returned, as Windows brings a
        // destination's volumes back when the disks come back; a failed recovery must not
        // leave the host without them.
        let finished = c.host.rescan().map_err(VssError::from).and_then(|r| {
            if !r.removed.is_empty() {
                c.trace.step(format!(
                    "destination disks changed identity: {:?}",
                    r.removed
                ));
            }
            if result.is_err() {
                return Ok(());
            }
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
            Ok(())
        });
        for v in &affected {
            let _ = c
                .host
                .mount_extents(&v.name, v.extents.clone(), false, v.block_size);
        }
        self.recovery.clear();
        result.and(finished)
    }
}
