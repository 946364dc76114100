//! Breaking a snapshot set (`BreakSnapshotSet`, `BreakSnapshotSetEx`).

use std::collections::BTreeSet;
use std::sync::Arc;

use vss::{HardwareOptions, Hresult, VssId};

use crate::gpt_flags;

use super::{BackupComponents, VssError, lock, lun_pairs, pf};

impl BackupComponents {
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
}
