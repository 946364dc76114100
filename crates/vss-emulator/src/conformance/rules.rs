//! More rules of the contract, one scenario each: a LUN under several volumes is snapshotted
//! once, persistent copies outlive their requester, `Oldest` deletes one copy, a local set's
//! BCD does not import, resync onto another LUN, a transportable set with auto-recovery is
//! recovered locally and masked, and snapshot LUNs never reuse an identity.

use vss::{Hresult, Method, RecoveryOptions, SnapshotContext, VolumeSnapshotAttributes as Attr};

use super::{Ctx, RIG_LUN_BYTES, expect_code, fast, s};
use crate::coordinator::DeleteTarget;
use crate::trace::TraceEntry;

const A: &str = "iqn.2026-01.org.shadowlun.test:a";
const B: &str = "iqn.2026-01.org.shadowlun.test:b";

pub(super) fn one_lun_under_two_volumes(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(A, fast(), vec![])?;
    let before = ctx.lab().lun_count()?;
    let (set, _bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "F:"]))?;
    let after = ctx.lab().lun_count()?;
    ensure!(
        after == before + 1,
        "E: and F: share one LUN, yet {} snapshot LUNs were made",
        after - before
    );
    let n = rig
        .coord
        .query()
        .iter()
        .filter(|p| p.snapshot_set_id == set)
        .count();
    ensure!(n == 2, "{n} shadow copies listed, 2 expected");
    Ok("two volumes on one LUN: two shadow copies, one snapshot LUN".into())
}

pub(super) fn persistent_outlives_requester(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(A, fast(), vec![])?;
    let before = ctx.lab().lun_count()?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    let t0 = rig.coord.trace().len();
    s(bc.release())?;
    drop(bc);
    ensure!(
        !rig.coord
            .trace()
            .methods_since(t0)
            .contains(&Method::OnLunEmpty),
        "releasing the requester sent OnLunEmpty for a persistent copy"
    );
    ensure!(
        rig.coord.query().iter().any(|p| p.snapshot_set_id == set),
        "the persistent copy went with its requester"
    );
    ensure!(
        ctx.lab().lun_count()? == before + 1,
        "its snapshot LUN went"
    );
    let mut later = rig.coord.backup_components();
    let n = s(later.delete_snapshots(DeleteTarget::Set(set)))?;
    ensure!(n == 1, "{n} deleted");
    ensure!(
        ctx.lab().lun_count()? == before,
        "snapshot LUN not reclaimed"
    );
    Ok("a persistent copy outlived its requester; a later requester deleted it".into())
}

pub(super) fn delete_oldest(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(A, fast(), vec![])?;
    let (first, _b1) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    let (second, mut b2) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    let n = s(b2.delete_snapshots(DeleteTarget::Oldest("G:".into())))?;
    ensure!(n == 1, "delete oldest removed {n}");
    let q = rig.coord.query();
    ensure!(
        !q.iter().any(|p| p.snapshot_set_id == first),
        "the oldest copy is still listed"
    );
    ensure!(
        q.iter().any(|p| p.snapshot_set_id == second),
        "the newer copy was deleted"
    );
    s(b2.delete_snapshots(DeleteTarget::Set(second)))?;
    Ok("Oldest deleted the first of two copies of G: and kept the second".into())
}

pub(super) fn local_bcd_refused(ctx: &Ctx) -> Result<String, String> {
    let a = ctx.rig(A, fast(), vec![])?;
    let b = ctx.bare_rig(B, fast(), vec![])?;
    let (set, mut bc) = s(a.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    let bcd = s(bc.bcd(set))?;
    let before = ctx.lab().lun_count()?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(bcd))?;
    expect_code(ib.import_snapshots(), Hresult::VSS_E_NONTRANSPORTABLE_BCD)?;
    ensure!(
        !b.coord
            .trace()
            .methods_since(0)
            .contains(&Method::LocateLuns),
        "the provider was asked to locate a local set's LUNs"
    );
    ensure!(
        ctx.lab().lun_count()? == before,
        "the refused import changed the SAN"
    );
    s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
    Ok("a BCD of a set that is not transportable does not import on another host".into())
}

pub(super) fn resync_other_destination(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(A, fast(), vec![])?;
    s(rig.host.write_volume("E:", 4096, &[0xAB; 4096]))?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    // Another LUN of the host, as big, with a volume of its own.
    ctx.lab().create_lun(RIG_LUN_BYTES, A)?;
    let arrived = s(rig.host.rescan())?.arrived;
    let [dev] = arrived.as_slice() else {
        return Err(format!("{} disks arrived, 1 expected", arrived.len()));
    };
    s(rig.host.partition_disk(dev, &[2 << 20]))?;
    s(rig.host.mount("H:", &[(dev.clone(), 1)]))?;
    s(rig.host.write_volume("H:", 4096, &[0x11; 4096]))?;
    s(rig.host.write_volume("E:", 4096, &[0xCD; 4096]))?;
    let snap = rig
        .coord
        .query()
        .iter()
        .find(|p| p.snapshot_set_id == set)
        .ok_or("no snapshot")?
        .snapshot_id;
    s(bc.add_snapshot_to_recovery_set(snap, Some("H:".into())))?;
    s(bc.recover_set(RecoveryOptions::empty()))?;
    s(rig.host.rescan())?;
    let e = s(rig.host.read_volume("E:", 4096, 4096))?;
    ensure!(e == vec![0xCD; 4096], "the original E: changed");
    let disk = s(rig.host.disk(dev))?;
    let lba = s(rig.host.layout(dev))?
        .partitions
        .first()
        .ok_or("the destination has no partition")?
        .first_lba;
    let got = s(rig.host.storage().read(
        &disk.address,
        lba + 4096 / u64::from(disk.capacity.block_size),
        4096 / disk.capacity.block_size,
    ))?;
    ensure!(
        got == vec![0xAB; 4096],
        "the destination LUN does not hold the snapshot's data"
    );
    Ok(
        "resync of E:'s copy onto another LUN: the destination holds the copy, E: is untouched"
            .into(),
    )
}

pub(super) fn transportable_autorecover(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(A, fast(), vec![])?;
    // Recovery is the writers' (OnPostSnapshot on writable snapshot volumes).
    let w = rig.writer(7, &["E:"])?;
    let disks = rig.host.disks().len();
    let t0 = rig.coord.trace().len();
    let created = rig.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE | Attr::AUTORECOVER),
        &["E:"],
    );
    w.stop();
    let (set, _bc) = s(created)?;
    let args: Vec<String> = rig
        .coord
        .trace()
        .since(t0)
        .iter()
        .filter_map(|e| match e {
            TraceEntry::Call {
                method: Method::OnLunStateChange,
                args,
                ..
            } => Some(args.clone()),
            _ => None,
        })
        .collect();
    let at = |what: &str| args.iter().position(|a| a.contains(what));
    ensure!(
        at("PRE_RECOVERY") < at("POST_RECOVERY") && at("POST_RECOVERY") < at("DO_MASK_LUNS"),
        "recovery, then masking, expected: {args:?}"
    );
    ensure!(at("PRE_RECOVERY").is_some(), "no recovery: {args:?}");
    s(rig.host.rescan())?;
    ensure!(
        rig.host.disks().len() == disks,
        "the recovered LUNs are still visible on the creating host"
    );
    ensure!(
        !rig.coord.query().iter().any(|p| p.snapshot_set_id == set),
        "the creating host lists its transportable set"
    );
    Ok("transportable with auto-recovery: recovered locally, then DO_MASK_LUNS hid it".into())
}

pub(super) fn identities_never_reused(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(A, fast(), vec![])?;
    let mut seen: Vec<Vec<u8>> = rig
        .host
        .disks()
        .iter()
        .flat_map(|d| {
            d.lun_info
                .naa_identifiers()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    for round in 0..3 {
        let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
        let vols = bc.snapshot_volumes(set);
        let [(_, snap)] = vols.as_slice() else {
            return Err(format!("{} volumes surfaced", vols.len()));
        };
        let v = s(rig.host.volume(snap))?;
        for dev in v.devices() {
            let d = s(rig.host.disk(&dev))?;
            for naa in d.lun_info.naa_identifiers() {
                ensure!(
                    !seen.iter().any(|x| x == naa),
                    "round {round}: snapshot LUN reuses NAA {naa:02x?}"
                );
                seen.push(naa.to_vec());
            }
        }
        s(bc.delete_snapshots(DeleteTarget::Set(set)))?;
    }
    Ok("three snapshot LUNs made and deleted in turn: every NAA designator new".into())
}
