//! Plex copies made independent, unimported transportable sets expiring, and the
//! administrator's set delete.

use super::*;

#[test]
fn a_plex_copy_keeps_the_commit_instant_after_its_source_is_overwritten_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn Backend> =
        Arc::new(EngineBackend::open(&dir.path().join("engine"), None).unwrap());
    let f = fixture_with(engine, dir);
    let a = &f.array;
    let src = f.backend.device(&f.a_lun).unwrap();
    src.write_at(0, &[0x5A; 4096], true).unwrap();
    // Lookup says the array makes plex copies of this LUN.
    let found = a.lookup("a", &[key_of(a, &f.a_lun)]).unwrap();
    assert!(found[0].as_ref().unwrap().plex);
    let (_, plex) = complete_set_of_a(
        &f,
        SnapshotContext::BACKUP.with(VolumeSnapshotAttributes::PLEX),
    );
    let (_, diff) = complete_set_of_a(&f, SnapshotContext::BACKUP);
    assert!(a.get_lun(&diff).unwrap().plex.is_none());
    src.write_at(0, &[0xA5; 4096], true).unwrap();
    assert_eq!(wait_independent(a, &plex).progress, 100);
    // The differential copy still holds the source; once it goes, the source may go.
    a.unmap_lun("a", &f.a_lun).unwrap();
    let e = a.delete_lun(&f.a_lun).unwrap_err();
    assert!(e.to_string().contains(&diff), "{e}");
    a.delete_snapshot(&diff).unwrap();
    a.delete_lun(&f.a_lun).unwrap();
    let mut buf = [0u8; 4096];
    f.backend
        .device(&plex)
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(buf, [0x5A; 4096]);
    // Independence is durable: the journal says so after a restart.
    let (dir, backend, rec, clock) = (f.dir, f.backend, f.rec, f.clock);
    drop(f.array);
    let again = open(dir.path(), backend, rec, clock);
    assert_eq!(
        again.get_lun(&plex).unwrap().plex,
        Some(api::PlexStatus {
            independent: true,
            progress: 100
        })
    );
}

#[test]
fn a_plex_copy_is_refused_by_an_engine_that_cannot_make_one() {
    struct NoPlex(MemoryBackend);
    impl Backend for NoPlex {
        fn create_volume(&self, n: &str, s: u64) -> Result<(), BackendError> {
            self.0.create_volume(n, s)
        }
        fn delete_volume(&self, n: &str) -> Result<(), BackendError> {
            self.0.delete_volume(n)
        }
        fn resize_volume(&self, n: &str, s: u64) -> Result<(), BackendError> {
            self.0.resize_volume(n, s)
        }
        fn snapshot_group(&self, p: &[(String, String)]) -> Result<(), BackendError> {
            self.0.snapshot_group(p)
        }
        fn volumes(&self) -> Result<Vec<storage::VolumeInfo>, BackendError> {
            self.0.volumes()
        }
        fn volume(&self, n: &str) -> Result<storage::VolumeInfo, BackendError> {
            self.0.volume(n)
        }
        fn usage(&self) -> Result<storage::PoolUsage, BackendError> {
            self.0.usage()
        }
        fn device(&self, n: &str) -> Result<scsi::Device, BackendError> {
            self.0.device(n)
        }
    }
    let f = fixture_with(
        Arc::new(NoPlex(MemoryBackend::new(None))),
        tempfile::tempdir().unwrap(),
    );
    let a = &f.array;
    assert!(
        !a.lookup("a", &[key_of(a, &f.a_lun)]).unwrap()[0]
            .as_ref()
            .unwrap()
            .plex
    );
    let e = a
        .prepare(
            "a",
            uuid::Uuid::new_v4(),
            SnapshotContext::BACKUP.with(VolumeSnapshotAttributes::PLEX),
            &plan(&f.a_lun),
        )
        .unwrap_err();
    assert!(
        matches!(e, ArrayError::Conflict(ref m) if m.contains("plex")),
        "{e}"
    );
    assert!(a.admin_sets().is_empty());
}

#[test]
fn unimported_transportable_sets_expire_after_the_retention_and_only_they() {
    let f = fixture();
    let (dir, backend, rec, clock) = (f.dir, f.backend, f.rec, f.clock);
    drop(f.array);
    let c = clock.clone();
    let array = Array::open_with_clock(
        &dir.path().join("journal.log"),
        backend.clone(),
        rec.clone(),
        Policy {
            reaper_timeout: Duration::from_secs(600),
            transportable_retention: Some(Duration::from_secs(3600)),
            ..Policy::default()
        },
        token_hash("admin-secret"),
        Box::new(move || c.load(Ordering::Relaxed)),
    )
    .unwrap();
    let f = Fixture {
        dir,
        array,
        backend,
        rec,
        clock,
        a_lun: "lun-1".into(),
        b_lun: "lun-2".into(),
    };
    let t = SnapshotContext::APP_ROLLBACK.with(VolumeSnapshotAttributes::TRANSPORTABLE);
    let (orphan, orphan_lun) = complete_set_of_a(&f, t);
    let (imported, imported_lun) = complete_set_of_a(&f, t);
    let (local, _) = complete_set_of_a(&f, SnapshotContext::APP_ROLLBACK);
    // Exposed on its creating host after completion: an import.
    f.array
        .expose("a", std::slice::from_ref(&imported_lun))
        .unwrap();
    f.array
        .mask("a", std::slice::from_ref(&imported_lun))
        .unwrap();
    f.clock.fetch_add(3599, Ordering::Relaxed);
    assert!(f.array.reap(false).unwrap().sets.is_empty(), "not yet due");
    f.clock.fetch_add(1, Ordering::Relaxed);
    let dry = f.array.reap(true).unwrap();
    assert_eq!(
        (dry.sets.clone(), dry.expired.clone()),
        (vec![orphan], vec![orphan])
    );
    let r = f.array.reap(false).unwrap();
    assert_eq!(r.expired, vec![orphan]);
    assert_eq!(r.luns, vec![orphan_lun.clone()]);
    let left: Vec<VssId> = f.array.admin_sets().iter().map(|s| s.set_id).collect();
    assert!(left.contains(&imported) && left.contains(&local) && !left.contains(&orphan));
    assert!(f.array.get_lun(&orphan_lun).is_err());
    assert!(f.array.get_lun(&imported_lun).is_ok());
}

#[test]
fn an_admin_deletes_a_complete_set_with_guard_rails() {
    let f = fixture();
    let a = &f.array;
    let (set, lun) = complete_set_of_a(&f, SnapshotContext::APP_ROLLBACK);
    a.expose("a", std::slice::from_ref(&lun)).unwrap();
    let e = a.admin_delete_set(set, false).unwrap_err();
    assert!(
        matches!(e, ArrayError::Conflict(ref m) if m.contains("host a")),
        "{e}"
    );
    assert_eq!(a.admin_delete_set(set, true).unwrap(), vec![lun.clone()]);
    assert!(a.get_lun(&lun).is_err());
    assert!(matches!(
        a.admin_delete_set(set, false),
        Err(ArrayError::NotFound(_))
    ));
    let pending = uuid::Uuid::new_v4();
    a.prepare("a", pending, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    assert!(matches!(
        a.admin_delete_set(pending, true),
        Err(ArrayError::Conflict(ref m)) if m.contains("abort")
    ));
    // Two sets of one LUN, one taken of the other's snapshot LUN: the older waits.
    let (base, base_lun) = complete_set_of_a(&f, SnapshotContext::APP_ROLLBACK);
    let chained = uuid::Uuid::new_v4();
    a.expose("a", std::slice::from_ref(&base_lun)).unwrap();
    a.prepare("a", chained, SnapshotContext(0), &plan(&base_lun))
        .unwrap();
    a.commit("a", chained).unwrap();
    a.complete("a", chained).unwrap();
    let e = a.admin_delete_set(base, true).unwrap_err();
    assert!(e.to_string().contains("taken of"), "{e}");
}
