//! Requester operations around a set: exposure, revert, the client-accessible context and
//! writers left out or required.

use vss::{Hresult, SnapshotContext, VssId};

use super::{Ctx, expect_code, fast, s};
use crate::coordinator::DeleteTarget;
use crate::writer::DatabaseWriter;

pub(super) fn expose(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    s(rig.host.write_volume("E:", 0, &[0x5A; 512]))?;
    let (set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    let snap = rig.coord.query()[0].snapshot_id;
    s(rig.host.write_volume("E:", 0, &[0x77; 512]))?;
    let at = s(bc.expose_snapshot(snap, "P:"))?;
    ensure!(at == "P:", "exposed at {at}");
    // Reachable at p:\ (any case), read-only, with the point-in-time data.
    ensure!(
        s(rig.host.read_volume("p:\\", 0, 512))? == vec![0x5A; 512],
        "P: does not hold the shadow copy's data"
    );
    ensure!(
        rig.host.write_volume("P:", 0, &[1; 512]).is_err(),
        "an exposed hardware shadow copy is writable"
    );
    expect_code(
        bc.expose_snapshot(snap, "Q:"),
        Hresult::VSS_E_OBJECT_ALREADY_EXISTS,
    )?;
    let q = rig.coord.query();
    ensure!(
        q[0].exposed_name.as_deref() == Some("P:")
            && q[0].attributes & vss::VolumeSnapshotAttributes::EXPOSED_LOCALLY.bits() != 0,
        "query: {:?}",
        q[0]
    );
    ensure!(
        s(bc.unexpose_snapshot("p:"))? == snap,
        "unexpose named another copy"
    );
    ensure!(rig.host.volume("P:").is_err(), "P: still mounted");
    s(bc.expose_snapshot(snap, "C:\\Mounts\\Snap\\"))?;
    let n = s(bc.delete_snapshots(DeleteTarget::Exposed("c:\\mounts\\snap".into())))?;
    ensure!(n == 1, "delete shadows exposed deleted {n}");
    ensure!(
        rig.coord.query().iter().all(|p| p.snapshot_set_id != set),
        "set still listed"
    );
    // Auto-release copies cannot be exposed.
    let (_v, mut vbc) = s(rig.create(SnapshotContext::BACKUP, &["F:"]))?;
    let vsnap = rig.coord.query()[0].snapshot_id;
    expect_code(vbc.expose_snapshot(vsnap, "R:"), Hresult::VSS_E_BAD_STATE)?;
    Ok("exposed read-only at P: and a folder, unexposed, deleted by exposed name".into())
}

pub(super) fn revert_and_client_accessible(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let (_set, mut bc) = s(rig.create(SnapshotContext::APP_ROLLBACK, &["E:"]))?;
    let snap = rig.coord.query()[0].snapshot_id;
    expect_code(bc.revert_to_snapshot(snap), Hresult::E_NOTIMPL)?;
    expect_code(
        bc.revert_to_snapshot(uuid::Uuid::new_v4()),
        Hresult::VSS_E_OBJECT_NOT_FOUND,
    )?;
    let t0 = rig.coord.trace().len();
    let mut ca = rig.coord.backup_components();
    s(ca.set_context(SnapshotContext::CLIENT_ACCESSIBLE))?;
    s(ca.start_snapshot_set())?;
    expect_code(
        ca.add_to_snapshot_set("E:", VssId::nil()),
        Hresult::VSS_E_VOLUME_NOT_SUPPORTED,
    )?;
    ensure!(
        rig.coord.trace().methods_since(t0).is_empty(),
        "a hardware provider was asked about a client-accessible copy"
    );
    Ok("revert E_NOTIMPL; client-accessible refused without asking the provider".into())
}

pub(super) fn writer_rules(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let w = DatabaseWriter::new("SqlServerWriter", "E:", "F:", None);
    rig.coord.add_writer(w.clone());
    // Excluded: not frozen; verified while excluded: creation fails before any provider call.
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(SnapshotContext::APP_ROLLBACK))?;
    bc.set_writer_rules(vec!["sqlserverwriter".into()], vec![]);
    s(bc.start_snapshot_set())?;
    s(bc.add_to_snapshot_set("E:", VssId::nil()))?;
    s(bc.do_snapshot_set())?;
    ensure!(
        w.events().is_empty(),
        "excluded writer got {:?}",
        w.events()
    );
    ensure!(
        s(bc.backup_complete())? == 0,
        "BackupComplete to an excluded writer"
    );
    let mut vb = rig.coord.backup_components();
    s(vb.set_context(SnapshotContext::APP_ROLLBACK))?;
    vb.set_writer_rules(
        vec!["SqlServerWriter".into()],
        vec!["SqlServerWriter".into()],
    );
    s(vb.start_snapshot_set())?;
    s(vb.add_to_snapshot_set("F:", VssId::nil()))?;
    let t0 = rig.coord.trace().len();
    expect_code(vb.do_snapshot_set(), Hresult::VSS_E_WRITER_NOT_RESPONDING)?;
    ensure!(
        !rig.coord
            .trace()
            .methods_since(t0)
            .contains(&vss::Method::EndPrepareSnapshots),
        "providers were driven although verification failed"
    );
    // Taking part, full then copy: BackupComplete truncates the log only after a full one.
    for (t, want) in [
        (
            crate::writer::BackupType::Full,
            "BackupComplete: log truncated",
        ),
        (
            crate::writer::BackupType::Copy,
            "BackupComplete: log kept (copy backup)",
        ),
    ] {
        let mut b = rig.coord.backup_components();
        s(b.set_context(SnapshotContext::APP_ROLLBACK))?;
        b.set_backup_type(t);
        b.set_writer_rules(vec![], vec!["SqlServerWriter".into()]);
        s(b.start_snapshot_set())?;
        s(b.add_to_snapshot_set("G:", VssId::nil()))?;
        // G: alone is not the writer's; E: brings it into the set.
        s(b.add_to_snapshot_set("E:", VssId::nil()))?;
        s(b.do_snapshot_set())?;
        ensure!(
            s(b.backup_complete())? == 1,
            "{t:?}: BackupComplete not sent"
        );
        let ev = w.events();
        ensure!(
            ev.iter().any(|e| e == &format!("PrepareForBackup({t:?})"))
                && ev.last().map(String::as_str) == Some(want),
            "{t:?}: events {ev:?}"
        );
    }
    Ok(
        "exclude leaves the writer out, verify fails early, full/copy differ at BackupComplete"
            .into(),
    )
}
