//! Space reservation at end-prepare: what a set's commit needs is reserved or the set is
//! refused, and released by commit, abort and the reaper.

use super::*;

/// The memory engine with a capacity, whose group snapshots are priced at `per_member` bytes
/// each (the memory engine's own price is nothing), to drive the reservation accounting.
struct Priced {
    inner: MemoryBackend,
    per_member: u64,
}

impl Backend for Priced {
    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.inner.create_volume(name, size_bytes)
    }
    fn delete_volume(&self, name: &str) -> Result<(), BackendError> {
        self.inner.delete_volume(name)
    }
    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.inner.resize_volume(name, size_bytes)
    }
    fn snapshot_cost(&self, pairs: &[(String, String)]) -> Result<u64, BackendError> {
        self.inner.snapshot_cost(pairs)?;
        Ok(pairs.len() as u64 * self.per_member)
    }
    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        self.inner.snapshot_group(pairs)
    }
    fn volumes(&self) -> Result<Vec<storage::VolumeInfo>, BackendError> {
        self.inner.volumes()
    }
    fn volume(&self, name: &str) -> Result<storage::VolumeInfo, BackendError> {
        self.inner.volume(name)
    }
    fn usage(&self) -> Result<storage::PoolUsage, BackendError> {
        self.inner.usage()
    }
    fn device(&self, name: &str) -> Result<scsi::Device, BackendError> {
        self.inner.device(name)
    }
}

const MIB: u64 = 1 << 20;

fn priced(capacity: u64, per_member: u64) -> Fixture {
    fixture_with(
        Arc::new(Priced {
            inner: MemoryBackend::new(Some(capacity)),
            per_member,
        }),
        tempfile::tempdir().unwrap(),
    )
}

fn reserved_of(array: &Array, set: vss::VssId) -> u64 {
    array
        .admin_sets()
        .into_iter()
        .find(|s| s.set_id == set)
        .unwrap()
        .reserved_bytes
}

#[test]
fn end_prepare_reserves_what_the_commit_needs_and_the_commit_releases_it() {
    // 16 MiB, 90 % critical: 14.4 MiB for sets. Each snapshot is priced at 8 MiB.
    let f = priced(16 * MIB, 8 * MIB);
    let a = uuid::Uuid::new_v4();
    f.array
        .prepare("a", a, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    assert_eq!(
        f.array.pool_space().unwrap().reserved_bytes,
        0,
        "not before end-prepare"
    );
    f.array.end_prepare("a", a).unwrap();
    let held = reserved_of(&f.array, a);
    assert!(
        held > 8 * MIB && held < 8 * MIB + 4096,
        "{held}: 8 MiB and the journal records"
    );
    let space = f.array.pool_space().unwrap();
    assert_eq!((space.reserved_bytes, space.reserving_sets), (held, 1));
    assert_eq!(f.array.pool_figures().reserved_bytes, held);
    f.array.end_prepare("a", a).unwrap();
    assert_eq!(
        reserved_of(&f.array, a),
        held,
        "a retry reserves nothing more"
    );

    // Host b's set would need 8 MiB more: 6.4 MiB are left. Refused, and nothing of it stays.
    let volumes = f.backend.volumes().unwrap();
    let b = uuid::Uuid::new_v4();
    f.array
        .prepare("b", b, SnapshotContext(0), &plan(&f.b_lun))
        .unwrap();
    let snap_b = f
        .array
        .admin_sets()
        .into_iter()
        .find(|s| s.set_id == b)
        .unwrap()
        .snapshots[0]
        .lun
        .clone();
    assert!(f.array.lock().db.luns.contains_key(&snap_b));
    let refused = f.array.end_prepare("b", b).unwrap_err();
    let ArrayError::NoSpace(msg) = &refused else {
        panic!("{refused:?}")
    };
    assert!(msg.contains("its commit needs 8.0 MiB"), "{msg}");
    assert!(
        msg.contains("reserved by 1 other set(s) in flight"),
        "{msg}"
    );
    assert_eq!(refused.code(), api::ProblemCode::NoSpace);
    let sets = f.array.admin_sets();
    let rec_b = sets.iter().find(|s| s.set_id == b).unwrap();
    assert_eq!(rec_b.state, SetState::Aborted);
    assert!(rec_b.snapshots[0].deleted);
    assert!(
        !f.array.lock().db.luns.contains_key(&snap_b),
        "no snapshot LUN left"
    );
    assert_eq!(f.backend.volumes().unwrap(), volumes, "no volume made");
    assert_eq!(f.array.pool_space().unwrap().reserved_bytes, held);
    assert_eq!(
        f.array.metrics().sets(crate::metrics::SetOutcome::Refused),
        1
    );
    // VSS then aborts the set: still fine.
    f.array.abort("b", b).unwrap();
    assert!(matches!(
        f.array.commit("b", b),
        Err(ArrayError::Conflict(_))
    ));

    // A's commit releases its reservation; a new set of b now fits.
    f.array.commit("a", a).unwrap();
    assert_eq!(reserved_of(&f.array, a), 0);
    assert_eq!(f.array.pool_space().unwrap().reserved_bytes, 0);
    let b2 = uuid::Uuid::new_v4();
    f.array
        .prepare("b", b2, SnapshotContext(0), &plan(&f.b_lun))
        .unwrap();
    f.array.end_prepare("b", b2).unwrap();
    f.array.commit("b", b2).unwrap();
}

#[test]
fn abort_reaping_and_new_members_release_or_renew_a_reservation_and_a_restart_keeps_it() {
    let f = priced(64 * MIB, 4 * MIB);
    let set = uuid::Uuid::new_v4();
    f.array
        .prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    f.array.end_prepare("a", set).unwrap();
    f.array.abort("a", set).unwrap();
    assert_eq!(
        f.array.pool_space().unwrap().reserved_bytes,
        0,
        "abort releases"
    );

    // Reserved, then the daemon restarts: the journal holds the reservation.
    let kept = uuid::Uuid::new_v4();
    f.array
        .prepare("a", kept, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    f.array.end_prepare("a", kept).unwrap();
    let held = f.array.pool_space().unwrap().reserved_bytes;
    assert!(held > 4 * MIB);
    let Fixture {
        dir,
        array,
        backend,
        rec,
        clock,
        ..
    } = f;
    drop(array);
    let array = open(dir.path(), backend, rec, clock.clone());
    assert_eq!(array.pool_space().unwrap().reserved_bytes, held);
    assert_eq!(reserved_of(&array, kept), held);

    // The reaper removes the stale prepared set, and its reservation with it.
    clock.fetch_add(601, Ordering::Relaxed);
    array.reap(false).unwrap();
    assert_eq!(
        array.pool_space().unwrap().reserved_bytes,
        0,
        "reaping releases"
    );
}

#[test]
fn members_added_after_end_prepare_are_reserved_for_again() {
    let f = priced(64 * MIB, 4 * MIB);
    let second = f
        .array
        .create_lun(&CreateLun {
            name: "a-logs".into(),
            size_bytes: MIB,
        })
        .unwrap()
        .id;
    f.array
        .map_lun(
            "a",
            &MapLun {
                lun: second.clone(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap();
    let set = uuid::Uuid::new_v4();
    f.array
        .prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    f.array.end_prepare("a", set).unwrap();
    let one = reserved_of(&f.array, set);
    f.array
        .prepare("a", set, SnapshotContext(0), &plan(&second))
        .unwrap();
    assert_eq!(reserved_of(&f.array, set), 0, "to be reckoned again");
    f.array.end_prepare("a", set).unwrap();
    assert!(reserved_of(&f.array, set) >= one + 4 * MIB);
}

#[test]
fn a_commit_without_end_prepare_reserves_first_and_refuses_before_any_snapshot() {
    let f = priced(8 * MIB, 8 * MIB);
    let set = uuid::Uuid::new_v4();
    f.array
        .prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    let volumes = f.backend.volumes().unwrap();
    assert!(matches!(
        f.array.commit("a", set),
        Err(ArrayError::NoSpace(_))
    ));
    assert_eq!(f.backend.volumes().unwrap(), volumes, "no snapshot taken");
    let rec = f.array.admin_sets().into_iter().find(|s| s.set_id == set);
    assert_eq!(
        rec.unwrap().state,
        SetState::Prepared,
        "left for VSS to abort"
    );
    f.array.abort("a", set).unwrap();
}

#[test]
fn a_plex_set_is_admitted_only_if_its_copies_fit() {
    // 4 MiB, 90 % critical; a-data holds 1 MiB, other data 2 MiB: 0.6 MiB left for sets.
    let f = fixture_with(
        Arc::new(MemoryBackend::new(Some(4 * MIB))),
        tempfile::tempdir().unwrap(),
    );
    f.backend
        .device(&f.a_lun)
        .unwrap()
        .write_at(0, &vec![1u8; MIB as usize], false)
        .unwrap();
    f.backend
        .device(&f.b_lun)
        .unwrap()
        .write_at(0, &vec![2u8; MIB as usize], false)
        .unwrap();
    let other = f
        .array
        .create_lun(&CreateLun {
            name: "other".into(),
            size_bytes: MIB,
        })
        .unwrap()
        .id;
    f.backend
        .device(&other)
        .unwrap()
        .write_at(0, &vec![3u8; MIB as usize], false)
        .unwrap();
    let plex = SnapshotContext::BACKUP.with(vss::VolumeSnapshotAttributes::PLEX);
    let set = uuid::Uuid::new_v4();
    f.array.prepare("a", set, plex, &plan(&f.a_lun)).unwrap();
    let Err(ArrayError::NoSpace(msg)) = f.array.end_prepare("a", set) else {
        panic!("a plex set whose copy cannot fit was admitted")
    };
    assert!(msg.contains("its commit needs 1.0 MiB"), "{msg}");
    // The same LUN in a differential set costs nothing on this engine and fits.
    let diff = uuid::Uuid::new_v4();
    f.array
        .prepare("a", diff, SnapshotContext::BACKUP, &plan(&f.a_lun))
        .unwrap();
    f.array.end_prepare("a", diff).unwrap();
}

#[test]
fn past_the_critical_threshold_new_sets_are_refused_even_when_they_cost_nothing() {
    // The memory engine prices a snapshot at nothing; 4 MiB, 90 % critical.
    let f = fixture_with(
        Arc::new(MemoryBackend::new(Some(4 * MIB))),
        tempfile::tempdir().unwrap(),
    );
    let data = vec![0x5Au8; MIB as usize];
    let dev = f.backend.device(&f.a_lun).unwrap();
    dev.write_at(0, &data, false).unwrap();
    let ok = uuid::Uuid::new_v4();
    f.array
        .prepare("a", ok, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    f.array.end_prepare("a", ok).unwrap();
    f.array.abort("a", ok).unwrap();
    // 3.75 MiB of 4 MiB used: 94 %.
    let big = f
        .array
        .create_lun(&CreateLun {
            name: "a-big".into(),
            size_bytes: 4 * MIB,
        })
        .unwrap()
        .id;
    let big_dev = f.backend.device(&big).unwrap();
    big_dev
        .write_at(0, &data[..(MIB as usize * 3 / 4)], false)
        .unwrap();
    big_dev.write_at(MIB, &data, false).unwrap();
    big_dev.write_at(2 * MIB, &data, false).unwrap();
    let set = uuid::Uuid::new_v4();
    f.array
        .prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    let Err(ArrayError::NoSpace(msg)) = f.array.end_prepare("a", set) else {
        panic!("admitted past the critical threshold")
    };
    assert!(msg.contains("its commit needs"), "{msg}");
    assert!(msg.contains("256 KiB free of 4 MiB"), "{msg}");
    assert!(
        msg.contains("kept free by the critical threshold (90% full)"),
        "{msg}"
    );
}
