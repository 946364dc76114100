//! Transportable sets on the creating host: they live only in their BCD until imported.

use vss::{Hresult, SnapshotContext, VolumeSnapshotAttributes as Attr};

use super::{Ctx, expect_code, fast, s};
use crate::coordinator::DeleteTarget;

pub(super) fn not_stored_on_creator(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let base = ctx.lab().lun_count()?;
    let (set, mut bc) = s(rig.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:", "G:"],
    ))?;
    let with_set = ctx.lab().lun_count()?;
    ensure!(
        with_set == base + 3,
        "{with_set} LUNs, {} expected",
        base + 3
    );
    ensure!(
        rig.coord.query().is_empty(),
        "the creating host lists the set"
    );
    let n = s(bc.delete_snapshots(DeleteTarget::All))?;
    ensure!(n == 0, "delete shadows all deleted {n}");
    expect_code(
        bc.delete_snapshots(DeleteTarget::Volume("E:".into())),
        Hresult::VSS_E_OBJECT_NOT_FOUND,
    )?;
    ensure!(
        ctx.lab().lun_count()? == with_set,
        "deleting on the creating host touched the set's LUNs"
    );
    // Import on the creating host, as Microsoft's own example does.
    let bcd = s(bc.bcd(set))?;
    let mut ib = rig.coord.backup_components();
    s(ib.load_bcd(bcd))?;
    let r = s(ib.import_snapshots())?;
    ensure!(
        r == Hresult::S_OK,
        "import on the creating host returned {r}"
    );
    let q = rig.coord.query();
    ensure!(
        q.len() == 2 && q.iter().all(|p| p.attributes & Attr::IMPORTED.bits() != 0),
        "after import: {q:?}"
    );
    // The imported disks get new GPT disk GUIDs (they collide with the originals).
    let originals: Vec<uuid::Uuid> = ["E:", "G:"]
        .iter()
        .flat_map(|v| rig.host.volume(v).map(|v| v.extents).unwrap_or_default())
        .filter_map(|e| rig.host.layout(&e.device).ok().map(|l| l.disk_guid))
        .collect();
    for (_, v) in ib.snapshot_volumes(set) {
        for e in s(rig.host.volume(&v))?.extents {
            let g = s(rig.host.layout(&e.device))?.disk_guid;
            ensure!(!originals.contains(&g), "{v}: disk GUID {g} collides");
        }
    }
    let n = s(ib.delete_snapshots(DeleteTarget::Set(set)))?;
    ensure!(n == 2, "{n} deleted after import");
    ensure!(
        ctx.lab().lun_count()? == base,
        "snapshot LUNs left after delete"
    );
    Ok("not listed or deletable on the creator; imported there and deleted".into())
}
