//! Scenarios whose provider misbehaves (wrapped in a [`crate::faults::FaultyProvider`]): each
//! passes when the emulator catches the fault.

use std::time::Duration;

use vss::{Hresult, Method, SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};

use super::{Ctx, expect_code, fast, s};
use crate::coordinator::Config;
use crate::faults::Fault;
use crate::trace::TraceEntry;

pub(super) fn mis_veto(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(
        "iqn.2026-01.org.shadowlun.test:a",
        fast(),
        vec![Fault::Fail(
            Method::BeginPrepareSnapshot,
            Hresult::VSS_E_PROVIDER_VETO,
        )],
    )?;
    let mut bc = rig.coord.backup_components();
    s(bc.start_snapshot_set())?;
    expect_code(
        bc.add_to_snapshot_set("E:", VssId::nil()),
        Hresult::VSS_E_PROVIDER_VETO,
    )?;
    Ok("a veto in BeginPrepareSnapshot reaches the requester as VSS_E_PROVIDER_VETO".into())
}

pub(super) fn mis_overrun(ctx: &Ctx) -> Result<String, String> {
    let cfg = Config {
        hold_window: Duration::from_millis(150),
        ..Config::default()
    };
    let rig = ctx.rig(
        "iqn.2026-01.org.shadowlun.test:a",
        cfg,
        vec![Fault::Delay(
            Method::CommitSnapshots,
            Duration::from_millis(400),
        )],
    )?;
    let base = ctx.lab().lun_count()?;
    let t0 = rig.coord.trace().len();
    expect_code(
        rig.create(SnapshotContext::BACKUP, &["E:"]),
        Hresult::VSS_E_HOLD_WRITES_TIMEOUT,
    )?;
    ensure!(
        rig.coord
            .trace()
            .methods_since(t0)
            .contains(&Method::AbortSnapshots),
        "no abort after the overrun"
    );
    ensure!(ctx.lab().lun_count()? == base, "overrun set leaked LUNs");
    Ok("a 400 ms commit in a 150 ms hold fails the set and aborts it".into())
}

pub(super) fn mis_disallowed(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(
        "iqn.2026-01.org.shadowlun.test:a",
        fast(),
        vec![Fault::Fail(Method::PreCommitSnapshots, Hresult::E_FAIL)],
    )?;
    let t0 = rig.coord.trace().len();
    expect_code(
        rig.create(SnapshotContext::BACKUP, &["E:"]),
        Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR,
    )?;
    let translated = rig.coord.trace().since(t0).iter().any(|e| {
        matches!(
            e,
            TraceEntry::Call {
                method: Method::PreCommitSnapshots,
                returned: Some(Hresult::E_FAIL),
                translated: Some(Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR),
                ..
            }
        )
    });
    ensure!(translated, "trace does not show the translation");
    // Abort's own result is never translated.
    let rig2 = ctx.rig(
        "iqn.2026-01.org.shadowlun.test:b",
        fast(),
        vec![
            Fault::Fail(Method::CommitSnapshots, Hresult::VSS_E_PROVIDER_VETO),
            Fault::Fail(Method::AbortSnapshots, Hresult::E_FAIL),
        ],
    )?;
    let t1 = rig2.coord.trace().len();
    expect_code(
        rig2.create(SnapshotContext::BACKUP, &["E:"]),
        Hresult::VSS_E_PROVIDER_VETO,
    )?;
    let abort_untranslated = rig2.coord.trace().since(t1).iter().any(|e| {
        matches!(
            e,
            TraceEntry::Call {
                method: Method::AbortSnapshots,
                returned: Some(Hresult::E_FAIL),
                translated: None,
                ..
            }
        )
    });
    ensure!(abort_untranslated, "AbortSnapshots result was translated");
    Ok("E_FAIL from PreCommit becomes VSS_E_UNEXPECTED_PROVIDER_ERROR; Abort untranslated".into())
}

pub(super) fn mis_lose_lun(ctx: &Ctx) -> Result<String, String> {
    // Auto-import: the set fails and is aborted.
    let rig = ctx.rig(
        "iqn.2026-01.org.shadowlun.test:a",
        fast(),
        vec![Fault::LoseLastLun],
    )?;
    expect_code(
        rig.create(SnapshotContext::APP_ROLLBACK, &["E:", "G:"]),
        Hresult::VSS_E_MISSING_DISK,
    )?;
    // This host is done (a lab may hold only two live providers at once).
    drop(rig);
    // Import: partial.
    let a = ctx.rig("iqn.2026-01.org.shadowlun.test:c", fast(), vec![])?;
    let b = ctx.bare_rig(
        "iqn.2026-01.org.shadowlun.test:d",
        fast(),
        vec![Fault::LoseLastLun],
    )?;
    let (set, bc) = s(a.create(
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["E:", "G:"],
    ))?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(s(bc.bcd(set))?))?;
    let r = s(ib.import_snapshots())?;
    ensure!(
        r == Hresult::VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED,
        "import returned {r}"
    );
    Ok("lost LUN: auto-import fails with VSS_E_MISSING_DISK; import is partial".into())
}

pub(super) fn mis_interconnects(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig(
        "iqn.2026-01.org.shadowlun.test:a",
        fast(),
        vec![Fault::TouchInterconnects],
    )?;
    let mut bc = rig.coord.backup_components();
    s(bc.start_snapshot_set())?;
    expect_code(
        bc.add_to_snapshot_set("E:", VssId::nil()),
        Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR,
    )?;
    Ok("a provider rewriting m_rgInterconnects is caught".into())
}
