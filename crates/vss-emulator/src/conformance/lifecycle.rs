//! Scenarios of what follows a set's creation: auto-import and transport to another host,
//! deletion and auto-release, break, auto-recovery notifications and resync.

use vss::{
    HardwareOptions, Hresult, Method, RecoveryOptions, SnapshotContext,
    VolumeSnapshotAttributes as Attr,
};

use super::{Ctx, expect_code, fast, in_order, s};
use crate::coordinator::{DeleteTarget, VssError};
use crate::trace::TraceEntry;
use crate::writer::verify_ledgers;

pub(super) fn auto_import(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let (set, bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let vols = bc.snapshot_volumes(set);
    ensure!(vols.len() == 2, "{} volumes surfaced", vols.len());
    for (_, v) in &vols {
        let vol = s(rig.host.volume(v))?;
        ensure!(vol.read_only, "{v} is writable");
        for e in &vol.extents {
            let l = s(rig.host.layout(&e.device))?;
            ensure!(
                l.partitions
                    .iter()
                    .all(|p| p.flags & crate::gpt_flags::VSS_FLAGS == crate::gpt_flags::VSS_FLAGS),
                "{v}: snapshot partitions lack the VSS flags"
            );
        }
        expect_code(
            rig.host
                .write_volume(v, 0, &[0; 512])
                .map_err(VssError::Host),
            Hresult::VSS_E_UNEXPECTED,
        )?;
    }
    for d in ["E:", "G:"] {
        let vol = s(rig.host.volume(d))?;
        for e in &vol.extents {
            let l = s(rig.host.layout(&e.device))?;
            ensure!(
                l.partitions.iter().all(|p| p.flags == 0),
                "{d}: source keeps flags"
            );
        }
    }
    let q = rig.coord.query();
    ensure!(
        q.iter().all(|p| p.attributes & Attr::IMPORTED.bits() != 0),
        "auto-imported snapshots not marked IMPORTED"
    );
    Ok("snapshot volumes surfaced hidden+read-only; sources clean".into())
}

pub(super) fn transport_import(ctx: &Ctx) -> Result<String, String> {
    let a = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let b = ctx.bare_rig("iqn.2026-01.org.shadowlun.test:b", fast(), vec![])?;
    let w = a.writer(9, &["E:", "G:"])?;
    let (set, bc) = s(a.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:", "G:"],
    ))?;
    let frozen = w.frozen_at().ok_or("writer never froze")?;
    let after = w.first_after_thaw();
    w.stop();
    ensure!(
        bc.snapshot_volumes(set).is_empty(),
        "transportable set surfaced on the creating host"
    );
    let dir = tempfile_dir()?;
    let path = dir.join("set.bcd.json");
    s(bc.save_bcd(set, &path))?;
    let bcd = s(crate::bcd::Bcd::load(&path))?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(bcd.clone()))?;
    let r = s(ib.import_snapshots())?;
    ensure!(r == Hresult::S_OK, "import returned {r}");
    let vols: Vec<String> = ib
        .snapshot_volumes(set)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    ensure!(vols.len() == 2, "{} volumes imported", vols.len());
    let c = s(verify_ledgers(&b.host, &vols, 9, frozen, after))?;
    ensure!(c.consistent, "imported data inconsistent: {:?}", c.problems);
    let mut again = b.coord.backup_components();
    s(again.load_bcd(bcd))?;
    expect_code(
        again.import_snapshots(),
        Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "BCD file imported on a second host; ledgers at {frozen}"
    ))
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let d = std::env::temp_dir().join(format!("vss-emulator-{}", uuid::Uuid::new_v4()));
    s(std::fs::create_dir_all(&d))?;
    Ok(d)
}

pub(super) fn delete_once(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "F:"]))?;
    let before = ctx.lab().lun_count()?;
    let q = rig.coord.query();
    let e = q
        .iter()
        .find(|p| p.original_volume == "E:")
        .ok_or("no E:")?
        .snapshot_id;
    let t0 = rig.coord.trace().len();
    s(bc.delete_snapshots(DeleteTarget::Snapshot(e)))?;
    let m = rig.coord.trace().methods_since(t0);
    ensure!(
        !m.contains(&Method::OnLunEmpty),
        "OnLunEmpty while F:'s snapshot still uses the LUN"
    );
    let t1 = rig.coord.trace().len();
    s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
    let m = rig.coord.trace().methods_since(t1);
    let empties = m.iter().filter(|x| **x == Method::OnLunEmpty).count();
    ensure!(empties == 1, "{empties} OnLunEmpty calls for one LUN");
    let fi = m.iter().position(|x| *x == Method::FillInLunInfo);
    let oe = m.iter().position(|x| *x == Method::OnLunEmpty);
    ensure!(
        fi < oe && fi.is_some(),
        "FillInLunInfo must precede OnLunEmpty: {m:?}"
    );
    let after = ctx.lab().lun_count()?;
    ensure!(
        after + 1 == before,
        "snapshot LUN not reclaimed ({before} -> {after})"
    );
    Ok("two volumes on one LUN: OnLunEmpty once, after the last snapshot".into())
}

pub(super) fn auto_release(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let base = ctx.lab().lun_count()?;
    let (_set, mut bc) = s(rig.create(SnapshotContext::BACKUP, &["G:"]))?;
    ensure!(
        ctx.lab().lun_count()? == base + 2,
        "expected two snapshot LUNs"
    );
    let n = s(bc.release())?;
    ensure!(n == 1, "{n} snapshots released");
    ensure!(ctx.lab().lun_count()? == base, "auto-release left LUNs");
    let (_set, _bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    drop(_bc);
    ensure!(
        ctx.lab().lun_count()? == base + 2,
        "persistent set deleted on release"
    );
    Ok("auto-release deleted on release; persistent kept".into())
}

pub(super) fn break_ro_rw(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    for writable in [false, true] {
        let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
        let vols = bc.snapshot_volumes(set);
        let t0 = rig.coord.trace().len();
        s(bc.break_snapshot_set(set, writable))?;
        let v = s(rig.host.volume(&vols[0].1))?;
        ensure!(
            v.read_only != writable,
            "writable={writable}: volume read_only={}",
            v.read_only
        );
        let l = s(rig.host.layout(&v.extents[0].device))?;
        let want = if writable {
            0
        } else {
            crate::gpt_flags::READ_ONLY
        };
        ensure!(
            l.partitions.iter().all(|p| p.flags == want),
            "writable={writable}: flags {:#x}",
            l.partitions[0].flags
        );
        let entries = rig.coord.trace().since(t0);
        let rw_notified = entries.iter().any(|e| matches!(e, TraceEntry::Call { method: Method::OnLunStateChange, args, .. } if args.contains("NOTIFY_READ_WRITE")));
        ensure!(
            rw_notified == writable,
            "NOTIFY_READ_WRITE sent = {rw_notified}"
        );
        ensure!(
            rig.coord.query().iter().all(|q| q.snapshot_set_id != set),
            "broken set still tracked"
        );
        if writable {
            s(rig.host.write_volume(&vols[0].1, 0, &[1; 512]))?;
        }
    }
    Ok("break keeps read-only; break writable clears flags and notifies".into())
}

pub(super) fn break_mask(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    let disks = rig.host.disks().len();
    let luns = ctx.lab().lun_count()?;
    expect_code(
        bc.break_snapshot_set_ex(
            set,
            HardwareOptions::BREAKEX_FLAG_MASK_LUNS | HardwareOptions::BREAKEX_FLAG_MAKE_READ_WRITE,
        ),
        Hresult::E_INVALIDARG,
    )?;
    s(bc.break_snapshot_set_ex(set, HardwareOptions::BREAKEX_FLAG_MASK_LUNS))?;
    ensure!(
        rig.host.disks().len() == disks - 2,
        "snapshot disks still visible"
    );
    ensure!(ctx.lab().lun_count()? == luns, "masking deleted LUNs");
    Ok("MASK_LUNS: DO_MASK_LUNS sent, disks gone, LUNs kept".into())
}

pub(super) fn break_revert(ctx: &Ctx) -> Result<String, String> {
    let a = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let (set, mut bc) = s(a.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    expect_code(
        bc.break_snapshot_set_ex(set, HardwareOptions::BREAKEX_FLAG_REVERT_IDENTITY_ALL),
        Hresult::VSS_E_BREAK_REVERT_ID_FAILED,
    )?;
    // Transport to a host without the original and revert there.
    let (tset, tbc) = s(a.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:"],
    ))?;
    let bcd = s(tbc.bcd(tset))?;
    let b = ctx.bare_rig("iqn.2026-01.org.shadowlun.test:b", fast(), vec![])?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(bcd.clone()))?;
    s(ib.import_snapshots())?;
    let vol = ib.snapshot_volumes(tset)[0].1.clone();
    let dev = s(b.host.volume(&vol))?.extents[0].device.clone();
    s(ib.break_snapshot_set_ex(
        tset,
        HardwareOptions::BREAKEX_FLAG_REVERT_IDENTITY_ALL
            | HardwareOptions::BREAKEX_FLAG_MAKE_READ_WRITE,
    ))?;
    let guid = s(b.host.layout(&dev))?.disk_guid;
    ensure!(
        guid == bcd.set.luns[0].original_disk_guid,
        "disk GUID {guid} is not the original's"
    );
    Ok("revert refused with the original present; applied on another host".into())
}

pub(super) fn autorecover(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let w = rig.writer(3, &["E:"])?;
    let t0 = rig.coord.trace().len();
    let (_set, _bc) = s(rig.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::AUTORECOVER),
        &["E:"],
    ))?;
    w.stop();
    let entries = rig.coord.trace().since(t0);
    let labels: Vec<String> = entries
        .iter()
        .map(|e| match e {
            TraceEntry::Call {
                method: Method::OnLunStateChange,
                args,
                ..
            } => {
                if args.contains("PRE_RECOVERY") {
                    "PRE_RECOVERY".to_string()
                } else if args.contains("POST_RECOVERY") {
                    "POST_RECOVERY".to_string()
                } else {
                    "OnLunStateChange".to_string()
                }
            }
            other => other.label(),
        })
        .collect();
    in_order(
        &labels,
        &[
            "GetTargetLuns",
            "LocateLuns",
            "PreFinalCommitSnapshots",
            "PRE_RECOVERY",
            "W: OnPostSnapshot",
            "POST_RECOVERY",
            "PostFinalCommitSnapshots",
        ],
    )?;
    Ok("PRE/POST_RECOVERY around OnPostSnapshot, between PreFinal and PostFinal".into())
}

pub(super) fn resync(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    s(rig.host.write_volume("E:", 0, &[0xAA; 512]))?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    s(rig.host.write_volume("E:", 0, &[0xBB; 512]))?;
    let snap = rig
        .coord
        .query()
        .iter()
        .find(|p| p.snapshot_set_id == set)
        .ok_or("no snapshot")?
        .snapshot_id;
    let guid_before = s(rig
        .host
        .layout(&s(rig.host.volume("E:"))?.extents[0].device))?
    .disk_guid;
    s(bc.add_snapshot_to_recovery_set(snap, None))?;
    // F: shares E:'s LUN and is not in the recovery set.
    expect_code(
        bc.recover_set(RecoveryOptions::empty()),
        Hresult::VSS_E_UNSELECTED_VOLUME,
    )?;
    ensure!(
        s(rig.host.read_volume("E:", 0, 512))? == vec![0xBB; 512],
        "refused resync changed E:"
    );
    s(bc.recover_set(RecoveryOptions::NO_VOLUME_CHECK))?;
    let data = s(rig.host.read_volume("E:", 0, 512))?;
    ensure!(
        data == vec![0xAA; 512],
        "E: does not hold the snapshot's data"
    );
    let v = s(rig.host.volume("E:"))?;
    let l = s(rig.host.layout(&v.extents[0].device))?;
    ensure!(l.disk_guid == guid_before, "destination lost its signature");
    ensure!(
        l.partitions.iter().all(|p| p.flags == 0),
        "destination keeps VSS flags"
    );
    s(rig.host.write_volume("E:", 0, &[0xCC; 512]))?;
    Ok("resync onto the original; unselected volume refused without NO_VOLUME_CHECK".into())
}
