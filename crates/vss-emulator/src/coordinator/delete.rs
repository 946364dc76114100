//! Deleting snapshots (`DeleteSnapshots`).

use std::collections::BTreeSet;

use vss::{Hresult, VssId};

use super::{BackupComponents, Coordinator, VssError, lock};
use crate::host::normalize_volume_name;

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
    /// The snapshot exposed at this drive letter or mount point.
    Exposed(String),
}

impl Coordinator {
    /// Deletes snapshots: dismounts their volumes, then for every snapshot LUN no snapshot
    /// uses any more, FillInLunInfo then OnLunEmpty, once.
    pub(super) fn delete_snapshots(&self, ids: &[VssId]) -> Result<usize, VssError> {
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

impl BackupComponents {
    /// `DeleteSnapshots`: returns how many snapshots were deleted.
    pub fn delete_snapshots(&mut self, target: DeleteTarget) -> Result<usize, VssError> {
        let c = &self.coord;
        let all = c.query();
        // A volume may be named any way Windows accepts; on a host that does not have it
        // (an import host), the name is compared with the snapshots' original volume names.
        let same_volume = |named: &str| {
            let n = normalize_volume_name(
                &c.host
                    .volume(named)
                    .map(|v| v.name)
                    .unwrap_or_else(|_| named.to_string()),
            );
            move |original: &str| normalize_volume_name(original) == n
        };
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
            DeleteTarget::Volume(v) => {
                let is = same_volume(v);
                all.iter()
                    .filter(|s| is(&s.original_volume))
                    .map(|s| s.snapshot_id)
                    .collect()
            }
            DeleteTarget::Exposed(at) => {
                let n = normalize_volume_name(at);
                all.iter()
                    .filter(|s| {
                        s.exposed_name
                            .as_deref()
                            .is_some_and(|e| normalize_volume_name(e) == n)
                    })
                    .map(|s| s.snapshot_id)
                    .collect()
            }
            DeleteTarget::Oldest(v) => {
                let is = same_volume(v);
                let sets = lock(&c.sets);
                sets.values()
                    .filter_map(|s| {
                        s.record
                            .snapshots
                            .iter()
                            .find(|x| is(&x.original_volume))
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
}
