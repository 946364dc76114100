//! Volume names as Windows accepts them: any letter case, with or without the trailing
//! backslash, `\\?\Volume{…}\` paths and mount points, when adding volumes to a set and when
//! deleting a volume's shadow copies.

use vss::{Hresult, SnapshotContext, VssId};

use super::{Ctx, RIG_MOUNT_POINT, expect_code, fast, s};
use crate::coordinator::DeleteTarget;

pub(super) fn volume_names(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let g = s(rig.host.volume("G:"))?;
    let guid_path = g.guid_path().to_ascii_lowercase();
    ensure!(
        guid_path.starts_with("\\\\?\\volume{") && guid_path.ends_with("}\\"),
        "volume GUID path {guid_path}"
    );
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(SnapshotContext::APP_ROLLBACK))?;
    let set = s(bc.start_snapshot_set())?;
    s(bc.add_to_snapshot_set("e:\\", VssId::nil()))?;
    // The GUID path without its trailing backslash, in lower case.
    s(bc.add_to_snapshot_set(guid_path.trim_end_matches('\\'), VssId::nil()))?;
    // G: again, by its mount point: the same volume.
    expect_code(
        bc.add_to_snapshot_set(&RIG_MOUNT_POINT.to_ascii_lowercase(), VssId::nil()),
        Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
    )?;
    expect_code(
        bc.add_to_snapshot_set("E:", VssId::nil()),
        Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
    )?;
    expect_code(
        bc.add_to_snapshot_set(
            "\\\\?\\Volume{00000000-0000-0000-0000-000000000000}\\",
            VssId::nil(),
        ),
        Hresult::VSS_E_OBJECT_NOT_FOUND,
    )?;
    s(bc.do_snapshot_set())?;
    let mut originals: Vec<String> = rig
        .coord
        .query()
        .into_iter()
        .filter(|p| p.snapshot_set_id == set)
        .map(|p| p.original_volume)
        .collect();
    originals.sort();
    ensure!(
        originals == ["E:", "G:"],
        "the set records {originals:?}, not the volumes' own names"
    );
    Ok(
        "e:\\, a lower-case GUID path without backslash and a mount point name the same volumes"
            .into(),
    )
}

pub(super) fn delete_by_name(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let base = ctx.lab().lun_count()?;
    let (first, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]))?;
    let (second, _bc2) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["G:"]))?;
    // `oldest` by the mount point, lower case, no trailing backslash: G: of the first set.
    let n = s(bc.delete_snapshots(DeleteTarget::Oldest(
        RIG_MOUNT_POINT.trim_end_matches('\\').to_ascii_lowercase(),
    )))?;
    ensure!(n == 1, "oldest deleted {n}");
    let left: Vec<(VssId, String)> = rig
        .coord
        .query()
        .into_iter()
        .map(|p| (p.snapshot_set_id, p.original_volume))
        .collect();
    ensure!(
        left.contains(&(first, "E:".into())) && left.contains(&(second, "G:".into())),
        "oldest removed the wrong snapshot: {left:?}"
    );
    let guid = s(rig.host.volume("G:"))?.guid_path();
    let n = s(bc.delete_snapshots(DeleteTarget::Volume(guid)))?;
    ensure!(n == 1, "volume by GUID path deleted {n}");
    let n = s(bc.delete_snapshots(DeleteTarget::Volume("e:\\".into())))?;
    ensure!(n == 1, "volume e:\\ deleted {n}");
    ensure!(rig.coord.query().is_empty(), "snapshots left");
    ensure!(
        ctx.lab().lun_count()? == base,
        "snapshot LUNs left on the array"
    );
    expect_code(
        bc.delete_snapshots(DeleteTarget::Volume("e:".into())),
        Hresult::VSS_E_OBJECT_NOT_FOUND,
    )?;
    Ok("oldest by mount point, volume by GUID path and by e:\\; LUNs reclaimed".into())
}
