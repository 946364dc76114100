//! Plex copies (§6.6, §10.3): a full copy of the volume at the instant of the set, which
//! keeps its data when the original LUN is overwritten and then deleted. A provider may
//! decline plex (AreLunsSupported FALSE, so VSS refuses the volume); these scenarios then pass
//! on the clean refusal and say so, since declining is within the contract.

use vss::{Hresult, SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};

use super::{Ctx, Rig, fast, s};
use crate::VssError;
use crate::coordinator::BackupComponents;

/// `len` bytes that differ from offset to offset and from seed to seed.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

const LEN: usize = 64 << 10;

/// Where the scenarios write: the first and the last 64 KiB of the volume (on its first and
/// its last LUN for a spanned volume).
fn spots(rig: &Rig, volume: &str) -> Result<[u64; 2], String> {
    let bytes = s(rig.host.volume(volume))?.bytes();
    Ok([0, bytes - LEN as u64])
}

fn write_spots(rig: &Rig, volume: &str, seed: u8) -> Result<(), String> {
    for (i, at) in spots(rig, volume)?.iter().enumerate() {
        s(rig
            .host
            .write_volume(volume, *at, &pattern(seed + i as u8, LEN)))?;
    }
    Ok(())
}

fn check_spots(rig: &Rig, volume: &str, seed: u8, when: &str) -> Result<(), String> {
    for (i, at) in spots(rig, volume)?.iter().enumerate() {
        let got = s(rig.host.read_volume(volume, *at, LEN))?;
        ensure!(
            got == pattern(seed + i as u8, LEN),
            "{volume} at {at} does not hold what the original held at commit ({when})"
        );
    }
    Ok(())
}

/// VSS refused the volume because the provider does not make plex copies.
fn declined(r: &Result<(), VssError>) -> bool {
    matches!(r, Err(e) if [
        Hresult::VSS_E_VOLUME_NOT_SUPPORTED,
        Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
    ].contains(&e.code()))
}

/// Starts a plex set of `volumes`; `None` when the provider declines plex.
fn start_plex(
    rig: &Rig,
    context: SnapshotContext,
    volumes: &[&str],
) -> Result<Option<(VssId, BackupComponents)>, String> {
    let mut bc = rig.coord.backup_components();
    s(bc.set_context(context.with(Attr::PLEX)))?;
    let set = s(bc.start_snapshot_set())?;
    for v in volumes {
        let r = bc.add_to_snapshot_set(v, VssId::nil()).map(|_| ());
        if declined(&r) {
            return Ok(None);
        }
        s(r)?;
    }
    s(bc.do_snapshot_set())?;
    Ok(Some((set, bc)))
}

/// The NAA designators of the disks under `volume`.
fn disks_of(rig: &Rig, volume: &str) -> Result<Vec<Vec<u8>>, String> {
    let v = s(rig.host.volume(volume))?;
    let mut out = Vec::new();
    for dev in v.devices() {
        let d = s(rig.host.disk(&dev))?;
        let naa = d
            .lun_info
            .naa_identifiers()
            .next()
            .ok_or_else(|| format!("{dev} has no NAA designator"))?;
        out.push(naa.to_vec());
    }
    Ok(out)
}

/// Deletes the LUNs under `volume` on the SAN and checks the host lost the volume.
fn delete_originals(ctx: &Ctx, rig: &Rig, volume: &str) -> Result<usize, String> {
    let naas = disks_of(rig, volume)?;
    for naa in &naas {
        ctx.lab().delete_lun(naa)?;
    }
    s(rig.host.rescan())?;
    ensure!(
        rig.host.volume(volume).is_err(),
        "{volume} is still mounted after its LUNs were deleted"
    );
    Ok(naas.len())
}

pub(super) fn independent_of_original(ctx: &Ctx) -> Result<String, String> {
    let rig = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    write_spots(&rig, "E:", 10)?;
    let Some((set, bc)) = start_plex(&rig, SnapshotContext::BACKUP, &["E:"])? else {
        return Ok(
            "plex declined: VSS refused E: for this provider (AreLunsSupported FALSE)".into(),
        );
    };
    let q = rig.coord.query();
    let prop = q
        .iter()
        .find(|p| p.snapshot_set_id == set)
        .ok_or("the set is not listed")?;
    ensure!(
        prop.attributes & Attr::PLEX.bits() != 0,
        "the shadow copy's attributes lack PLEX: {:#x}",
        prop.attributes
    );
    let vols = bc.snapshot_volumes(set);
    let [(_, snap)] = vols.as_slice() else {
        return Err(format!(
            "{} snapshot volumes surfaced, 1 expected",
            vols.len()
        ));
    };
    write_spots(&rig, "E:", 50)?;
    check_spots(&rig, snap, 10, "after the original was overwritten")?;
    let n = delete_originals(ctx, &rig, "E:")?;
    check_spots(&rig, snap, 10, "after the original LUN was deleted")?;
    drop(bc);
    Ok(format!(
        "the plex copy kept the commit-time data after the original was overwritten and its {n} LUN deleted"
    ))
}

pub(super) fn transportable_imported_without_originals(ctx: &Ctx) -> Result<String, String> {
    let a = ctx.rig("iqn.2026-01.org.shadowlun.test:a", fast(), vec![])?;
    let b = ctx.bare_rig("iqn.2026-01.org.shadowlun.test:b", fast(), vec![])?;
    write_spots(&a, "G:", 20)?;
    let Some((set, bc)) = start_plex(
        &a,
        SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE),
        &["G:"],
    )?
    else {
        return Ok(
            "plex declined: VSS refused G: for this provider (AreLunsSupported FALSE)".into(),
        );
    };
    let bcd = s(bc.bcd(set))?;
    write_spots(&a, "G:", 60)?;
    let n = delete_originals(ctx, &a, "G:")?;
    let mut ib = b.coord.backup_components();
    s(ib.load_bcd(bcd))?;
    let r = s(ib.import_snapshots())?;
    ensure!(r == Hresult::S_OK, "import returned {r}");
    let vols = ib.snapshot_volumes(set);
    let [(_, snap)] = vols.as_slice() else {
        return Err(format!("{} volumes imported, 1 expected", vols.len()));
    };
    check_spots(
        &b,
        snap,
        20,
        "imported after the originals were overwritten and deleted",
    )?;
    let q = b.coord.query();
    ensure!(
        q.iter()
            .any(|p| p.snapshot_set_id == set && p.attributes & Attr::PLEX.bits() != 0),
        "the imported shadow copy lacks PLEX"
    );
    s(ib.delete_snapshots(crate::coordinator::DeleteTarget::Set(set)))?;
    Ok(format!(
        "a transportable plex copy of a volume on {n} LUNs imported on a second host after its originals were deleted"
    ))
}
