use std::sync::atomic::{AtomicU64, Ordering};

use api::{
    CreateHost, CreateLun, JobState, JobStatus, LunKey, MapLun, PlannedSnapshot, ResyncPair,
    SetState,
};
use storage::{BackendError, EngineBackend, FileBackend, MemoryBackend};
use vss::{SnapshotContext, VolumeSnapshotAttributes, VssId};

use super::*;

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Exporter for Recorder {
    fn map(&self, initiator: &str, n: u64, lun: &ExportedLun, _: &dyn Backend) {
        self.0
            .lock()
            .unwrap()
            .push(format!("map {initiator} {n} {}", lun.id));
    }
    fn unmap(&self, initiator: &str, n: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("unmap {initiator} {n}"));
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    array: Array,
    backend: Arc<dyn Backend>,
    rec: Arc<Recorder>,
    clock: Arc<AtomicU64>,
    a_lun: LunId,
    b_lun: LunId,
}

const IQN_A: &str = "iqn.1991-05.com.microsoft:host-a";
const IQN_B: &str = "iqn.1991-05.com.microsoft:host-b";

fn open(dir: &Path, backend: Arc<dyn Backend>, rec: Arc<Recorder>, clock: Arc<AtomicU64>) -> Array {
    let c = clock.clone();
    Array::open_with_clock(
        &dir.join("journal.log"),
        backend,
        rec,
        Policy {
            max_luns_per_set: 4,
            reaper_timeout: Duration::from_secs(600),
            ..Policy::default()
        },
        token_hash("admin-secret"),
        Box::new(move || c.load(Ordering::Relaxed)),
    )
    .unwrap()
}

fn fixture_with(backend: Arc<dyn Backend>, dir: tempfile::TempDir) -> Fixture {
    let rec = Arc::new(Recorder::default());
    let clock = Arc::new(AtomicU64::new(1_000_000));
    let array = open(dir.path(), backend.clone(), rec.clone(), clock.clone());
    let a_lun = array
        .create_lun(&CreateLun {
            name: "a-data".into(),
            size_bytes: 1 << 20,
        })
        .unwrap()
        .id;
    let b_lun = array
        .create_lun(&CreateLun {
            name: "b-data".into(),
            size_bytes: 1 << 20,
        })
        .unwrap()
        .id;
    for (h, iqn, lun) in [("a", IQN_A, &a_lun), ("b", IQN_B, &b_lun)] {
        array
            .create_host(&CreateHost {
                name: h.into(),
                initiators: vec![iqn.into()],
                chap_secret: None,
                import_from: vec![],
            })
            .unwrap();
        array
            .map_lun(
                h,
                &MapLun {
                    lun: lun.clone(),
                    lun_number: None,
                    shared: false,
                },
            )
            .unwrap();
    }
    Fixture {
        dir,
        array,
        backend,
        rec,
        clock,
        a_lun,
        b_lun,
    }
}

fn fixture() -> Fixture {
    fixture_with(
        Arc::new(MemoryBackend::new(None)),
        tempfile::tempdir().unwrap(),
    )
}

fn plan(src: &str) -> Vec<PlannedSnapshot> {
    vec![PlannedSnapshot {
        snapshot_id: uuid::Uuid::new_v4(),
        source: src.into(),
    }]
}

/// Host a's snapshot LUN of its LUN, in a set of its own, committed.
fn committed_snapshot_of_a(f: &Fixture) -> LunId {
    let set = uuid::Uuid::new_v4();
    f.array
        .prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    f.array.commit("a", set).unwrap();
    f.array
        .describe("a", set, std::slice::from_ref(&f.a_lun))
        .unwrap()[0]
        .lun
        .clone()
}

fn key_of(array: &Array, lun: &str) -> LunKey {
    let ident = array.lun_identity_pages(lun).unwrap();
    let info = vss::LunInfo::from_scsi(
        &ident.inquiry,
        ident.unit_serial.as_deref(),
        &ident.device_identification,
        vss::lun::BusType::UNKNOWN,
    )
    .unwrap();
    LunKey::of(&info)
}

#[test]
fn full_set_lifecycle_snapshots_point_in_time_and_maps_per_initiator() {
    let f = fixture();
    let a = &f.array;
    f.backend
        .device(&f.a_lun)
        .unwrap()
        .write_at(0, &[0xAA; 512], false)
        .unwrap();
    let set = uuid::Uuid::new_v4();
    a.prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    a.end_prepare("a", set).unwrap();
    a.commit("a", set).unwrap();
    f.backend
        .device(&f.a_lun)
        .unwrap()
        .write_at(0, &[0xBB; 512], false)
        .unwrap();
    let d = a
        .describe("a", set, std::slice::from_ref(&f.a_lun))
        .unwrap();
    assert_eq!(d.len(), 1);
    let snap = d[0].lun.clone();
    assert_ne!(snap, f.a_lun);
    // The snapshot holds the bytes of the commit instant.
    let mut buf = [0u8; 512];
    f.backend
        .device(&snap)
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(buf, [0xAA; 512]);
    // Lookup by the identity describe promised finds the snapshot with its origin.
    let found = a.lookup("a", &[key_of(a, &snap)]).unwrap();
    let origin = found[0].as_ref().unwrap().snapshot_of.as_ref().unwrap();
    assert_eq!(
        (origin.source.as_str(), origin.set_id),
        (f.a_lun.as_str(), set)
    );
    a.complete("a", set).unwrap();
    f.rec.0.lock().unwrap().clear();
    a.expose("a", std::slice::from_ref(&snap)).unwrap();
    a.mask("a", std::slice::from_ref(&snap)).unwrap();
    assert_eq!(
        *f.rec.0.lock().unwrap(),
        vec![format!("map {IQN_A} 1 {snap}"), format!("unmap {IQN_A} 1")]
    );
    a.release("a", &snap).unwrap();
    assert!(matches!(
        f.backend.volume(&snap),
        Err(BackendError::NoVolume(_))
    ));
    assert!(matches!(
        a.release("a", &snap),
        Err(ArrayError::NotFound(_))
    ));
}

#[test]
fn retried_prepare_commit_and_abort_create_nothing_twice() {
    let f = fixture();
    let a = &f.array;
    let set = uuid::Uuid::new_v4();
    let p = plan(&f.a_lun);
    a.prepare("a", set, SnapshotContext(0), &p).unwrap();
    a.prepare("a", set, SnapshotContext(0), &p).unwrap();
    a.commit("a", set).unwrap();
    let vols = f.backend.volumes().unwrap().len();
    a.commit("a", set).unwrap();
    assert_eq!(
        f.backend.volumes().unwrap().len(),
        vols,
        "no second snapshot"
    );
    assert_eq!(a.list_sets("a")[0].snapshots.len(), 1);
    a.abort("a", set).unwrap();
    a.abort("a", set).unwrap();
    assert_eq!(
        f.backend.volumes().unwrap().len(),
        2,
        "only the originals remain"
    );
    assert!(matches!(a.commit("a", set), Err(ArrayError::Conflict(_))));
}

#[test]
fn hosts_see_and_act_only_on_their_own_luns_and_sets() {
    let f = fixture();
    let a = &f.array;
    assert_eq!(a.lookup("b", &[key_of(a, &f.a_lun)]).unwrap(), vec![None]);
    assert!(a.lookup("a", &[key_of(a, &f.a_lun)]).unwrap()[0].is_some());
    let set = uuid::Uuid::new_v4();
    assert!(matches!(
        a.prepare("b", set, SnapshotContext(0), &plan(&f.a_lun)),
        Err(ArrayError::NotFound(_))
    ));
    a.prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    assert!(matches!(a.commit("b", set), Err(ArrayError::Forbidden(_))));
    a.commit("a", set).unwrap();
    let snap = a
        .describe("a", set, std::slice::from_ref(&f.a_lun))
        .unwrap()[0]
        .lun
        .clone();
    assert!(matches!(
        a.release("b", &snap),
        Err(ArrayError::NotFound(_))
    ));
    assert!(matches!(
        a.expose("b", std::slice::from_ref(&snap)),
        Err(ArrayError::NotFound(_))
    ));
    assert!(a.list_sets("b").is_empty());
    assert_eq!(a.authenticate("admin-secret"), Some(Scope::Admin));
    assert_eq!(a.authenticate("nope"), None);
    let _ = f.b_lun;
}

#[test]
fn state_rules_refuse_out_of_order_verbs() {
    let f = fixture();
    let a = &f.array;
    let set = uuid::Uuid::new_v4();
    assert!(matches!(a.commit("a", set), Err(ArrayError::NotFound(_))));
    a.prepare("a", set, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    assert!(matches!(
        a.describe("a", set, std::slice::from_ref(&f.a_lun)),
        Err(ArrayError::Conflict(_))
    ));
    assert!(matches!(a.complete("a", set), Err(ArrayError::Conflict(_))));
    a.commit("a", set).unwrap();
    assert!(matches!(
        a.prepare("a", set, SnapshotContext(0), &plan(&f.a_lun)),
        Err(ArrayError::Conflict(_))
    ));
    a.complete("a", set).unwrap();
    assert!(matches!(a.abort("a", set), Err(ArrayError::Conflict(_))));
    assert!(matches!(
        a.release("a", &f.a_lun),
        Err(ArrayError::Conflict(_))
    ));
    assert!(matches!(
        a.delete_lun(&f.a_lun),
        Err(ArrayError::Conflict(_))
    ));
}

#[test]
fn an_empty_set_commits_without_engine_work() {
    // The engine refuses empty consistency groups; the array must not ask for one.
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(EngineBackend::open(&dir.path().join("engine"), None).unwrap());
    let f = fixture_with(engine, dir);
    let set = uuid::Uuid::new_v4();
    f.array.prepare("a", set, SnapshotContext(0), &[]).unwrap();
    f.array.commit("a", set).unwrap();
    assert_eq!(f.array.list_sets("a")[0].state, SetState::Committed);
    assert_eq!(f.backend.volumes().unwrap().len(), 2);
}

#[test]
fn set_larger_than_the_limit_is_refused() {
    let f = fixture();
    let a = &f.array;
    let set = uuid::Uuid::new_v4();
    let many: Vec<PlannedSnapshot> = (0..5)
        .map(|i| {
            let id = a
                .create_lun(&CreateLun {
                    name: format!("x{i}"),
                    size_bytes: 4096,
                })
                .unwrap()
                .id;
            a.map_lun(
                "a",
                &MapLun {
                    lun: id.clone(),
                    lun_number: None,
                    shared: false,
                },
            )
            .unwrap();
            PlannedSnapshot {
                snapshot_id: uuid::Uuid::new_v4(),
                source: id,
            }
        })
        .collect();
    assert!(matches!(
        a.prepare("a", set, SnapshotContext(0), &many),
        Err(ArrayError::LimitReached(_))
    ));
}

#[test]
fn reaper_removes_stale_prepared_and_aborted_sets_never_committed_ones() {
    let f = fixture();
    let a = &f.array;
    let (stale, done, aborted) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    a.prepare("a", stale, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    a.prepare("a", done, SnapshotContext(0), &plan(&f.a_lun))
        .unwrap();
    a.commit("a", done).unwrap();
    a.prepare("b", aborted, SnapshotContext(0), &plan(&f.b_lun))
        .unwrap();
    a.abort("b", aborted).unwrap();
    assert!(a.reap(false).unwrap().sets.is_empty(), "nothing is due yet");
    f.clock.fetch_add(601, Ordering::Relaxed);
    let dry = a.reap(true).unwrap();
    let mut want = vec![stale, aborted];
    want.sort();
    let mut got = dry.sets.clone();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(a.admin_sets().len(), 3, "dry run removes nothing");
    let real = a.reap(false).unwrap();
    assert_eq!(real.sets.len(), 2);
    let left = a.admin_sets();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].set_id, done);
    assert_eq!(
        a.list_luns(true).len(),
        1,
        "the committed snapshot LUN stays"
    );
}

#[test]
fn journal_recovers_state_and_orphan_volumes_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(FileBackend::open(&dir.path().join("volumes")).unwrap());
    let path = dir.path().to_path_buf();
    let f = fixture_with(backend.clone(), dir);
    let set = uuid::Uuid::new_v4();
    f.array
        .prepare("a", set, SnapshotContext(0x10), &plan(&f.a_lun))
        .unwrap();
    f.array.commit("a", set).unwrap();
    let before = f.array.admin_sets();
    backend.create_volume("lun-999", 4096).unwrap(); // as if a crash hit mid-commit
    let rec = Arc::new(Recorder::default());
    drop(f.array);
    let again = open(&path, backend.clone(), rec.clone(), f.clock.clone());
    assert_eq!(again.admin_sets(), before);
    assert!(matches!(
        backend.volume("lun-999"),
        Err(BackendError::NoVolume(_))
    ));
    // Mappings are re-exported on start.
    let log = rec.0.lock().unwrap().clone();
    assert!(
        log.contains(&format!("map {IQN_A} 0 {}", f.a_lun)),
        "{log:?}"
    );
    // Numbers are never reused after a restart.
    let l = again
        .create_lun(&CreateLun {
            name: "new".into(),
            size_bytes: 4096,
        })
        .unwrap();
    assert_eq!(l.id, "lun-4");
}

#[test]
fn the_start_up_sweep_deletes_only_volumes_named_as_this_array_names_them() {
    let f = fixture();
    let strangers = ["lun-", "lun-7a", "vm-disk-1", "lun-3.base-of-someone"];
    for name in strangers.iter().chain(&["lun-999"]) {
        f.backend.create_volume(name, 1 << 20).unwrap();
    }
    drop(f.array);
    let _again = open(
        f.dir.path(),
        f.backend.clone(),
        f.rec.clone(),
        f.clock.clone(),
    );
    assert!(matches!(
        f.backend.volume("lun-999"),
        Err(BackendError::NoVolume(_))
    ));
    let mut left: Vec<String> = f
        .backend
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    left.sort();
    let mut want: Vec<String> = strangers.iter().map(|s| s.to_string()).collect();
    want.extend([f.a_lun.clone(), f.b_lun.clone()]);
    want.sort();
    assert_eq!(left, want);
    assert!(is_lun_id("lun-12") && !is_lun_id("lun-") && !is_lun_id("xlun-1"));
    assert_eq!(lun_id(12), "lun-12");
}

#[test]
fn resync_copies_snapshot_onto_destination_and_reports_finished() {
    let f = fixture();
    let a = &f.array;
    let dev = f.backend.device(&f.a_lun).unwrap();
    dev.write_at(512, &[3u8; 512], false).unwrap();
    let snap = committed_snapshot_of_a(&f);
    dev.write_at(512, &[4u8; 512], false).unwrap();
    let job = a
        .start_resync(
            &Scope::host("a"),
            &[ResyncPair {
                snapshot: snap,
                destination: f.a_lun.clone(),
            }],
            false,
        )
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = a.resync_status(&Scope::host("a"), &job).unwrap();
        if st.state != JobState::Running || std::time::Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        st,
        JobStatus {
            state: JobState::Finished,
            progress: 100
        }
    );
    let mut buf = [0u8; 512];
    dev.read_at(512, &mut buf).unwrap();
    assert_eq!(buf, [3u8; 512]);
    assert!(matches!(
        a.resync_status(&Scope::host("b"), &job),
        Err(ArrayError::NotFound(_))
    ));
}

#[test]
fn a_job_the_admin_started_reaches_the_admin_only_and_is_journaled_as_before() {
    let f = fixture();
    let a = &f.array;
    let snap = committed_snapshot_of_a(&f);
    let pair = ResyncPair {
        snapshot: snap,
        destination: f.b_lun.clone(),
    };
    // Host a may not see b's LUN; the administrator sees every LUN.
    assert!(matches!(
        a.start_resync(&Scope::host("a"), std::slice::from_ref(&pair), false),
        Err(ArrayError::NotFound(_))
    ));
    let job = a.start_resync(&Scope::Admin, &[pair], true).unwrap();
    a.resync_status(&Scope::Admin, &job).unwrap();
    for host in ["a", "b"] {
        assert!(matches!(
            a.resync_status(&Scope::host(host), &job),
            Err(ArrayError::NotFound(_))
        ));
        assert!(matches!(
            a.cancel_resync(&Scope::host(host), &job),
            Err(ArrayError::NotFound(_))
        ));
    }
    // The journal spells the administrator as it always has.
    let old = r#"{"job":{"id":"job-1","host":"*admin*","pairs":[],"status":{"state":"finished","progress":100}}}"#;
    let Record::Job(row) = serde_json::from_str::<Record>(old).unwrap() else {
        panic!("not a job record")
    };
    assert_eq!(row.host, Scope::Admin);
    assert_eq!(serde_json::to_string(&Record::Job(row)).unwrap(), old);
    let host: Scope = serde_json::from_str(r#""a""#).unwrap();
    assert_eq!(host, Scope::host("a"));
    assert!(Scope::Admin.reaches(&host) && host.reaches(&host));
    assert!(!host.reaches(&Scope::Admin) && !host.reaches(&Scope::host("b")));
}

#[test]
fn admin_input_is_validated_with_precise_errors() {
    let f = fixture();
    let a = &f.array;
    for (name, size) in [
        ("ok", 0u64),
        ("ok", 1000),
        ("bad name", 4096),
        ("ok", 1 << 62),
    ] {
        assert!(
            matches!(
                a.create_lun(&CreateLun {
                    name: name.into(),
                    size_bytes: size
                }),
                Err(ArrayError::BadRequest(_))
            ),
            "{name} {size}"
        );
    }
    assert!(matches!(
        a.create_lun(&CreateLun {
            name: "a-data".into(),
            size_bytes: 4096
        }),
        Err(ArrayError::Conflict(_))
    ));
    assert!(matches!(
        a.resize_lun(&f.a_lun, 4096),
        Err(ArrayError::BadRequest(_))
    ));
    assert_eq!(a.resize_lun(&f.a_lun, 2 << 20).unwrap().size_bytes, 2 << 20);
    assert!(matches!(
        a.create_host(&CreateHost {
            name: "c".into(),
            initiators: vec![IQN_A.into()],
            chap_secret: None,
            import_from: vec![],
        }),
        Err(ArrayError::Conflict(_))
    ));
    assert!(matches!(
        a.create_host(&CreateHost {
            name: "c".into(),
            initiators: vec!["Not An IQN".into()],
            chap_secret: None,
            import_from: vec![],
        }),
        Err(ArrayError::BadRequest(_))
    ));
    assert!(matches!(
        a.create_host(&CreateHost {
            name: "c".into(),
            initiators: vec!["iqn.2000-01.x:c".into()],
            chap_secret: Some("short".into()),
            import_from: vec![],
        }),
        Err(ArrayError::BadRequest(_))
    ));
    assert!(matches!(
        a.map_lun(
            "b",
            &MapLun {
                lun: f.a_lun.clone(),
                lun_number: Some(0),
                shared: false,
            }
        ),
        Err(ArrayError::Conflict(_))
    ));
}

#[test]
fn records_round_trip() {
    let set = SetRow {
        set_id: uuid::Uuid::new_v4(),
        host: "a".into(),
        state: SetState::Prepared,
        context: SnapshotContext(0),
        members: vec![],
        created_at: 1,
        updated_at: 2,
        imported_at: Some(3),
        reserved_bytes: Some(4096),
    };
    let host = HostRow {
        name: "a".into(),
        initiators: vec![IQN_A.into()],
        chap_secret: None,
        token_sha256: "00".into(),
        luns: [(3u64, "lun-1".to_string())].into_iter().collect(),
        import_from: vec!["b".into()],
    };
    for rec in [Record::Set(set), Record::Host(host)] {
        let j = serde_json::to_string(&rec).unwrap();
        let r: Record = serde_json::from_str(&j).unwrap();
        assert_eq!(r, rec);
    }
}

#[test]
fn a_host_importing_from_another_sees_its_snapshot_luns_but_never_its_originals() {
    let f = fixture();
    let a = &f.array;
    a.create_host(&CreateHost {
        name: "backup".into(),
        initiators: vec!["iqn.1991-05.com.microsoft:backup".into()],
        chap_secret: None,
        import_from: vec!["a".into()],
    })
    .unwrap();
    let snap = committed_snapshot_of_a(&f);
    assert!(a.lookup("backup", &[key_of(a, &snap)]).unwrap()[0].is_some());
    assert_eq!(
        a.lookup("backup", &[key_of(a, &f.a_lun)]).unwrap(),
        vec![None]
    );
    a.expose("backup", std::slice::from_ref(&snap)).unwrap();
    assert!(matches!(
        a.expose("backup", std::slice::from_ref(&f.a_lun)),
        Err(ArrayError::NotFound(_))
    ));
    assert!(matches!(
        a.prepare(
            "backup",
            uuid::Uuid::new_v4(),
            SnapshotContext(0),
            &plan(&f.a_lun)
        ),
        Err(ArrayError::NotFound(_))
    ));
    assert_eq!(a.lookup("b", &[key_of(a, &snap)]).unwrap(), vec![None]);
    a.release("backup", &snap).unwrap();
}

#[test]
fn idempotency_keys_are_bounded_by_count_and_age() {
    use super::idempotency::{KEEP_SECS, Keyed, MAX_KEYS};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(1_000));
    let a = open(
        dir.path(),
        Arc::new(MemoryBackend::new(None)),
        Arc::new(Recorder::default()),
        clock.clone(),
    );
    let run = |k: &str| matches!(a.idempotency_check(k, "h").unwrap(), Keyed::Run);
    for i in 0..=MAX_KEYS {
        clock.store(1_000 + i as u64, Ordering::Relaxed);
        a.idempotency_store(&format!("k{i}"), "h", 200, "{}".into())
            .unwrap();
    }
    assert!(run("k0"), "the oldest key goes past the count");
    assert!(!run("k1") && !run(&format!("k{MAX_KEYS}")));
    assert_eq!(a.lock().db.idem.len(), MAX_KEYS);
    // Past their age, keys are forgotten: by lookups at once, from the journal at the next
    // store.
    clock.fetch_add(KEEP_SECS + MAX_KEYS as u64 + 1, Ordering::Relaxed);
    assert!(run("k1"));
    a.idempotency_store("fresh", "h", 200, "{}".into()).unwrap();
    assert_eq!(a.lock().db.idem.len(), 1);
}

/// Host a's complete set of its LUN in `context`: (set, snapshot LUN).
fn complete_set_of_a(f: &Fixture, context: SnapshotContext) -> (VssId, LunId) {
    let set = uuid::Uuid::new_v4();
    f.array.prepare("a", set, context, &plan(&f.a_lun)).unwrap();
    f.array.commit("a", set).unwrap();
    f.array.complete("a", set).unwrap();
    let lun = f
        .array
        .describe("a", set, std::slice::from_ref(&f.a_lun))
        .unwrap()[0]
        .lun
        .clone();
    (set, lun)
}

fn wait_independent(a: &Array, lun: &str) -> api::PlexStatus {
    let t0 = std::time::Instant::now();
    loop {
        let rec = a.get_lun(lun).unwrap();
        let p = rec.plex.expect("a plex LUN has a plex status");
        if p.independent {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{p:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

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
