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

mod plex;
mod reservation;
