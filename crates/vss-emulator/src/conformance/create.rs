//! Scenarios of a set's creation: the support question, the call order with writers, every
//! context, the point in time, the volume limit, the commit's timing, aborts at every step,
//! unique identities, and repeated cycles.

use std::time::Duration;

use vss::{Hresult, LunInfo, Method, SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};

use super::{Ctx, expect_code, fast, in_order, pos, s};
use crate::coordinator::DeleteTarget;
use crate::faults::Fault;
use crate::trace::TraceEntry;
use crate::writer::verify_ledgers;

pub(super) fn support_query(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let p = ctx.traced_provider("iqn.2026-01.org.shadowlun.test:a")?;
    let disk = rig.host.disks()[0].clone();
    let devs = vec![disk.device.clone()];
    let mut luns = vec![disk.lun_info.clone()];
    ensure!(
        s(p.are_luns_supported(SnapshotContext::BACKUP, &devs, &mut luns))?,
        "own LUN not supported"
    );
    ensure!(
        luns[0].interconnects == disk.lun_info.interconnects,
        "interconnects changed"
    );
    let again = s(p.are_luns_supported(SnapshotContext::BACKUP, &devs, &mut luns))?;
    ensure!(again, "second identical call answered differently");
    let bad = SnapshotContext::BACKUP.with(Attr::PLEX | Attr::DIFFERENTIAL);
    ensure!(
        !s(p.are_luns_supported(bad, &devs, &mut luns))?,
        "PLEX|DIFFERENTIAL accepted"
    );
    let mut foreign = disk.lun_info.clone();
    foreign.vendor_id = Some("OTHERVND".into());
    for i in &mut foreign.identifiers {
        i.identifier.iter_mut().for_each(|b| *b ^= 0x5A);
    }
    ensure!(
        !s(p.are_luns_supported(
            SnapshotContext::BACKUP,
            &devs,
            std::slice::from_mut(&mut foreign)
        ))?,
        "foreign LUN claimed"
    );
    // Spanned volume: all or nothing.
    let g = rig.host.volume("G:").map_err(|e| e.to_string())?;
    let gd = g.devices();
    let mut gl: Vec<LunInfo> = gd
        .iter()
        .map(|d| rig.host.disk(d).unwrap().lun_info)
        .collect();
    gl.push(foreign);
    let gd2: Vec<String> = gd.iter().cloned().chain(["x".into()]).collect();
    ensure!(
        !s(p.are_luns_supported(SnapshotContext::BACKUP, &gd2, &mut gl))?,
        "a spanned volume with one foreign LUN was claimed"
    );
    Ok("own TRUE, foreign FALSE, bad context FALSE, idempotent".into())
}

pub(super) fn create_call_order(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let w = rig.writer(1, &["E:"])?;
    let t0 = rig.coord.trace().len();
    let (_set, _bc) = s(rig.create(SnapshotContext::BACKUP, &["E:"]))?;
    w.stop();
    let labels = rig.coord.trace().labels_since(t0);
    in_order(
        &labels,
        &[
            "AreLunsSupported",
            "BeginPrepareSnapshot",
            "DoSnapshotSet",
            "EndPrepareSnapshots",
            "set VSS flags",
            "W: OnFreeze",
            "PreCommitSnapshots",
            "K: flush and hold",
            "CommitSnapshots",
            "K: release writes",
            "clear VSS flags",
            "PostCommitSnapshots",
            "W: OnThaw",
            "GetTargetLuns",
            "LocateLuns",
            "rescan",
            "FillInLunInfo",
            "PreFinalCommitSnapshots",
            "W: OnPostSnapshot",
            "PostFinalCommitSnapshots",
        ],
    )?;
    ensure!(
        pos(&labels, "AbortSnapshots").is_none(),
        "AbortSnapshots on a successful set"
    );
    Ok(format!("{} steps in diagram order", labels.len()))
}

pub(super) fn create_contexts(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let mut n = 0;
    for base in [
        SnapshotContext::BACKUP,
        SnapshotContext::APP_ROLLBACK,
        SnapshotContext::NAS_ROLLBACK,
        SnapshotContext::FILE_SHARE_BACKUP,
    ] {
        for transportable in [false, true] {
            let c = if transportable {
                base.with(Attr::TRANSPORTABLE)
            } else {
                base
            };
            let before = rig.coord.trace().len();
            let (set, mut bc) = rig
                .create(c, &["E:", "G:"])
                .map_err(|e| format!("{c}: {e}"))?;
            let methods = rig.coord.trace().methods_since(before);
            let located = methods.contains(&Method::LocateLuns);
            ensure!(
                located != transportable,
                "{c}: LocateLuns called = {located}"
            );
            let bcd = s(bc.bcd(set))?;
            ensure!(
                bcd.set.luns.len() == 3,
                "{c}: {} LUNs in the BCD",
                bcd.set.luns.len()
            );
            if transportable {
                // Not stored on the creating host: not listed, not deletable there; the
                // holder of the BCD imports it (here) and deletes it.
                ensure!(
                    rig.coord.query().iter().all(|p| p.snapshot_set_id != set),
                    "{c}: transportable set listed on the creating host"
                );
                expect_code(
                    bc.delete_snapshots(DeleteTarget::Set(set)),
                    vss::Hresult::VSS_E_OBJECT_NOT_FOUND,
                )?;
                let mut ib = rig.coord.backup_components();
                s(ib.load_bcd(bcd))?;
                let r = s(ib.import_snapshots())?;
                ensure!(
                    r == vss::Hresult::S_OK,
                    "{c}: import on the creating host: {r}"
                );
                s(ib.delete_snapshots(DeleteTarget::Set(set)))?;
            } else {
                s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
            }
            n += 1;
        }
    }
    let left = ctx.lab().lun_count()?;
    ensure!(
        left == 3,
        "{left} LUNs left after deleting every set (3 originals)"
    );
    Ok(format!("{n} contexts created and deleted, no LUN leaked"))
}

pub(super) fn create_differential_plex(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let mut made = Vec::new();
    for (a, name) in [(Attr::DIFFERENTIAL, "DIFFERENTIAL"), (Attr::PLEX, "PLEX")] {
        match rig.create(SnapshotContext::APP_ROLLBACK.with(a), &["F:"]) {
            Ok((set, mut bc)) => {
                s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
                made.push(name);
            }
            // A provider that cannot do this method must say FALSE in AreLunsSupported.
            Err(e) if e.code() == Hresult::VSS_E_VOLUME_NOT_SUPPORTED => {}
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    ensure!(
        !made.is_empty(),
        "neither DIFFERENTIAL nor PLEX is supported"
    );
    let mut bc = rig.coord.backup_components();
    expect_code(
        bc.set_context(SnapshotContext::BACKUP.with(Attr::PLEX | Attr::DIFFERENTIAL)),
        Hresult::VSS_E_UNSUPPORTED_CONTEXT,
    )?;
    Ok(format!(
        "created: {}; the other declined in AreLunsSupported; both together refused",
        made.join(", ")
    ))
}

pub(super) fn point_in_time(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let w = rig.writer(42, &["E:", "G:"])?;
    let (set, bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let frozen = w.frozen_at().ok_or("writer never froze")?;
    let after = w.first_after_thaw();
    ensure!(
        w.wait_for(frozen + 5, Duration::from_secs(10)),
        "writer did not resume"
    );
    w.stop();
    let vols: Vec<String> = bc
        .snapshot_volumes(set)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    ensure!(vols.len() == 2, "{} snapshot volumes surfaced", vols.len());
    let c = s(verify_ledgers(&rig.host, &vols, 42, frozen, after))?;
    ensure!(c.consistent, "inconsistent: {:?}", c.problems);
    ensure!(frozen > 0, "nothing was written before the freeze");
    Ok(format!(
        "both volumes end at transaction {frozen}; {} written on the source since",
        w.acknowledged() - frozen
    ))
}

pub(super) fn max_volumes(ctx: &Ctx) -> Result<String, String> {
    let init = "iqn.2026-01.org.shadowlun.test:many";
    ctx.lab().create_lun(70 << 20, init)?;
    let rig = ctx.bare_rig(init, fast(), vec![])?;
    let dev = rig.host.disks()[0].device.clone();
    s(rig.host.partition_disk(&dev, &[1 << 20; 65]))?;
    for i in 1..=65u32 {
        s(rig.host.mount(&format!("V{i}"), &[(dev.clone(), i)]))?;
    }
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(SnapshotContext::APP_ROLLBACK))?;
    s(bc.start_snapshot_set())?;
    for i in 1..=64 {
        s(bc.add_to_snapshot_set(&format!("V{i}"), VssId::nil()))?;
    }
    expect_code(
        bc.add_to_snapshot_set("V65", VssId::nil()),
        Hresult::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
    )?;
    let set = s(bc.do_snapshot_set())?;
    let n = rig
        .coord
        .query()
        .iter()
        .filter(|p| p.snapshot_set_id == set)
        .count();
    ensure!(n == 64, "{n} snapshots in the set");
    Ok("64 volumes on one LUN in one set; the 65th refused".into())
}

fn call_duration(entries: &[TraceEntry], m: Method) -> Option<u64> {
    entries.iter().find_map(|e| match e {
        TraceEntry::Call {
            method,
            duration_us,
            ..
        } if *method == m => Some(*duration_us),
        _ => None,
    })
}

pub(super) fn timing(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let t0 = rig.coord.trace().len();
    let (_set, _bc) = s(rig.create(SnapshotContext::BACKUP, &["E:", "G:"]))?;
    let entries = rig.coord.trace().since(t0);
    let commit = call_duration(&entries, Method::CommitSnapshots).ok_or("no commit")?;
    ensure!(commit < 1_000_000, "CommitSnapshots took {commit} µs");
    let at = |m: Method| {
        entries.iter().find_map(|e| match e {
            TraceEntry::Call { method, at_us, .. } if *method == m => Some(*at_us),
            _ => None,
        })
    };
    let pre = at(Method::PreCommitSnapshots).ok_or("no PreCommit")?;
    let post = at(Method::PostCommitSnapshots).ok_or("no PostCommit")?;
    ensure!(
        post - pre < 20_000_000,
        "PreCommit→PostCommit {} µs",
        post - pre
    );
    Ok(format!(
        "CommitSnapshots {commit} µs, PreCommit→PostCommit {} µs",
        post - pre
    ))
}

pub(super) fn abort_each_step(ctx: &Ctx) -> Result<String, String> {
    let steps = [
        Method::EndPrepareSnapshots,
        Method::PreCommitSnapshots,
        Method::CommitSnapshots,
        Method::PostCommitSnapshots,
        Method::GetTargetLuns,
        Method::LocateLuns,
        Method::PreFinalCommitSnapshots,
        Method::PostFinalCommitSnapshots,
    ];
    for (i, m) in steps.iter().enumerate() {
        let init = format!("iqn.2026-01.org.shadowlun.test:abort{i}");
        let rig = ctx.rig(
            &init,
            fast(),
            vec![Fault::Fail(*m, Hresult::VSS_E_PROVIDER_VETO)],
        )?;
        let w = rig.writer(7, &["E:"])?;
        let before = ctx.lab().lun_count()?;
        let t0 = rig.coord.trace().len();
        let r = rig.create(SnapshotContext::BACKUP, &["E:", "G:"]);
        expect_code(r, Hresult::VSS_E_PROVIDER_VETO).map_err(|e| format!("{m}: {e}"))?;
        let methods = rig.coord.trace().methods_since(t0);
        ensure!(
            methods.contains(&Method::AbortSnapshots),
            "{m}: no AbortSnapshots after the failure"
        );
        let after = ctx.lab().lun_count()?;
        ensure!(after == before, "{m}: {} LUNs leaked", after - before);
        let flags: u64 = rig
            .host
            .disks()
            .iter()
            .flat_map(|d| {
                rig.host
                    .layout(&d.device)
                    .map(|l| l.partitions)
                    .unwrap_or_default()
            })
            .fold(0, |a, p| a | p.flags);
        ensure!(flags == 0, "{m}: source partitions keep flags {flags:#x}");
        // Writing again after the abort, or (on a backend slow enough to abort that the
        // writer filled its ledger meanwhile) written past the freeze until full.
        let a = w.acknowledged();
        let thawed = w.wait_for(a + 3, Duration::from_secs(10))
            || (w.full()
                && w.acknowledged() >= w.frozen_at().unwrap_or(u64::MAX).saturating_add(3));
        ensure!(thawed, "{m}: writer stuck frozen");
        w.stop();
        // The in-flight slot is free again.
        let mut next = rig.coord.backup_components();
        next.start_snapshot_set().map_err(|e| format!("{m}: {e}"))?;
        next.abort_backup();
    }
    Ok(format!(
        "{} failure points: abort called, nothing leaked",
        steps.len()
    ))
}

pub(super) fn abandoned_set(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(SnapshotContext::APP_ROLLBACK))?;
    s(bc.start_snapshot_set())?;
    s(bc.add_to_snapshot_set("E:", VssId::nil()))?;
    let t0 = rig.coord.trace().len();
    bc.abort_backup();
    ensure!(
        !rig.coord
            .trace()
            .methods_since(t0)
            .contains(&Method::AbortSnapshots),
        "AbortSnapshots before DoSnapshotSet"
    );
    let (set, _bc2) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    ensure!(!set.is_nil(), "no set");
    Ok("abandoned set: no abort sent; the next set succeeds".into())
}

pub(super) fn identity(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let (set, bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let bcd = s(bc.bcd(set))?;
    for l in &bcd.set.luns {
        ensure!(
            l.source.has_unique_identifier(),
            "original without a unique id"
        );
        ensure!(
            l.target.has_unique_identifier(),
            "snapshot without a unique id"
        );
        ensure!(
            !l.source
                .identifiers
                .iter()
                .any(|i| l.target.identifiers.contains(i)),
            "snapshot shares an identifier with its original"
        );
        ensure!(
            l.target.version == 1 && l.target.disk_signature.is_nil(),
            "GetTargetLuns version/signature"
        );
        ensure!(
            l.target.interconnects.is_empty(),
            "GetTargetLuns filled interconnects"
        );
        // As on import: VSS lets the provider fill in each arriving disk's information,
        // then compares it with what GetTargetLuns said.
        let p = ctx.traced_provider("iqn.2026-01.org.shadowlun.test:a")?;
        let mut found = None;
        for d in rig.host.disks() {
            let mut info = d.lun_info.clone();
            if s(p.fill_in_lun_info(&d.device, &mut info))? && info.matches_for_import(&l.target) {
                found = Some((d, info));
                break;
            }
        }
        let (disk, info) =
            found.ok_or("no disk matches GetTargetLuns once FillInLunInfo has run")?;
        ensure!(
            info.interconnects == disk.lun_info.interconnects,
            "FillInLunInfo touched interconnects"
        );
    }
    Ok(format!(
        "{} LUNs: unique ids, GetTargetLuns ≡ FillInLunInfo",
        bcd.set.luns.len()
    ))
}

pub(super) fn stress(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let base = ctx.lab().lun_count()?;
    for i in 0..5 {
        let (set, mut bc) = rig
            .create(SnapshotContext::APP_ROLLBACK, &["E:", "F:", "G:"])
            .map_err(|e| format!("cycle {i}: {e}"))?;
        s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
    }
    ensure!(ctx.lab().lun_count()? == base, "cycles leaked LUNs");
    let mut first = rig.coord.backup_components();
    s(first.start_snapshot_set())?;
    let mut second = rig.coord.backup_components();
    expect_code(
        second.start_snapshot_set(),
        Hresult::VSS_E_SNAPSHOT_SET_IN_PROGRESS,
    )?;
    first.abort_backup();
    s(second.start_snapshot_set())?;
    Ok(
        "5 create/delete cycles without leaks; second requester refused while one is in flight"
            .into(),
    )
}
