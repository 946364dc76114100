//! The provider contract (`docs/vss-contract.md` §2 to §4) against the real array on the memory
//! engine (`lab::memory_array`).

use std::sync::{Arc, Mutex};

use lab::memory_array::{MemoryArray, MemoryArrayClient};
use provider::array::{ArrayControl, JobState, SetState};
use provider::{
    ControlError, EventSink, HardwareProvider, ProviderConfig, ProviderEvent, ShadowlunProvider,
    UnloadAnswer,
};
use vss::{
    BusType, HardwareOptions, Hresult, LunInfo, Method, SnapshotContext, VolumeSnapshotAttributes,
    VssId,
};

const HOST_A: &str = "iqn.1991-05.com.microsoft:host-a";
const HOST_B: &str = "iqn.1991-05.com.microsoft:host-b";
const MIB: u64 = 1 << 20;

#[derive(Default)]
struct Events(Mutex<Vec<ProviderEvent>>, Mutex<Vec<String>>);
impl EventSink for Events {
    fn report(&self, e: &ProviderEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
    fn log(&self, m: &str) {
        self.1.lock().unwrap().push(m.to_string());
    }
}

struct Rig {
    san: MemoryArray,
    p: ShadowlunProvider<MemoryArrayClient>,
    events: Arc<Events>,
}

fn rig() -> Rig {
    let san = MemoryArray::new();
    let events = Arc::new(Events::default());
    let p = ShadowlunProvider::with_config(
        san.client(HOST_A),
        ProviderConfig::default(),
        events.clone(),
    );
    Rig { san, p, events }
}

/// What host A sees for a LUN: LunInfo built from its SCSI pages the way Windows does.
fn host_view(san: &MemoryArray, lun: &str) -> LunInfo {
    let mut l = LunInfo::from_identity(&san.identity(lun).unwrap(), BusType::ISCSI).unwrap();
    l.disk_signature = uuid::Uuid::from_u128(0xD15C);
    l
}

fn id(n: u128) -> VssId {
    VssId::from_u128(n)
}

fn ctx() -> SnapshotContext {
    SnapshotContext::BACKUP.with(VolumeSnapshotAttributes::TRANSPORTABLE)
}

fn devs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r"\\?\PhysicalDrive{i}")).collect()
}

type Phase<'a> = Box<dyn Fn(&mut Vec<LunInfo>) -> Result<(), Hresult> + 'a>;

/// Runs the creation sequence up to and including `upto` (an index into the phases).
fn run_until(r: &Rig, set: VssId, luns: &[&str], upto: usize) -> Vec<Result<(), Hresult>> {
    let mut infos: Vec<LunInfo> = luns.iter().map(|l| host_view(&r.san, l)).collect();
    let mut out = vec![];
    let phases: Vec<Phase> = vec![
        Box::new(|i| {
            r.p.begin_prepare_snapshot(set, id(100), ctx(), &devs(i.len()), i)
        }),
        Box::new(|_| r.p.end_prepare_snapshots(set)),
        Box::new(|_| r.p.pre_commit_snapshots(set)),
        Box::new(|_| r.p.commit_snapshots(set)),
        Box::new(|_| r.p.post_commit_snapshots(set, 1)),
        Box::new(|i| {
            let mut d = vec![LunInfo::default(); i.len()];
            r.p.get_target_luns(&devs(i.len()), i, &mut d)
        }),
        Box::new(|_| r.p.pre_final_commit_snapshots(set)),
        Box::new(|_| r.p.post_final_commit_snapshots(set)),
    ];
    for ph in phases.iter().take(upto + 1) {
        out.push(ph(&mut infos));
    }
    out
}

#[test]
fn full_cycle_captures_the_point_in_time_and_surfaces_on_another_host() {
    let r = rig();
    let l1 = r.san.create_lun(4 * MIB, &[HOST_A]);
    let l2 = r.san.create_lun(2 * MIB, &[HOST_A]);
    r.san.write(&l1, 0, b"before-1");
    r.san.write(&l2, 4096, b"before-2");
    let set = id(1);
    let mut infos = vec![host_view(&r.san, &l1), host_view(&r.san, &l2)];
    let untouched = infos.clone();

    assert_eq!(
        r.p.are_luns_supported(ctx(), &devs(2), &mut infos),
        Ok(true)
    );
    assert_eq!(
        infos, untouched,
        "AreLunsSupported must not change the LUN information"
    );
    r.p.begin_prepare_snapshot(set, id(10), ctx(), &devs(2), &mut infos)
        .unwrap();
    r.p.end_prepare_snapshots(set).unwrap();
    r.p.pre_commit_snapshots(set).unwrap();
    r.p.commit_snapshots(set).unwrap();
    // Writes after the commit instant must not reach the snapshot.
    r.san.write(&l1, 0, b"after--1");
    r.p.post_commit_snapshots(set, 2).unwrap();

    let mut dest = vec![LunInfo::default(); 2];
    r.p.get_target_luns(&devs(2), &infos, &mut dest).unwrap();
    r.p.pre_final_commit_snapshots(set).unwrap();
    r.p.post_final_commit_snapshots(set).unwrap();
    assert_eq!(r.san.set_state(set), Some(SetState::Completed));

    // Transportable: import on host B from what GetTargetLuns said.
    let pb = ShadowlunProvider::new(r.san.client(HOST_B));
    assert!(r.san.visible_luns(HOST_B).is_empty());
    pb.locate_luns(&dest).unwrap();
    let arrived = r.san.visible_luns(HOST_B);
    assert_eq!(arrived.len(), 2);
    for (want, (lun, pages, _)) in dest.iter().zip(&arrived) {
        let mut seen = LunInfo::from_identity(pages, BusType::ISCSI).unwrap();
        seen.interconnects.push(vss::Interconnect {
            address_type: 5,
            port: vec![1],
            address: vec![2],
        });
        let before = seen.interconnects.clone();
        assert_eq!(pb.fill_in_lun_info("disk", &mut seen), Ok(true));
        assert_eq!(
            seen.interconnects, before,
            "FillInLunInfo must not touch interconnects"
        );
        assert!(
            want.matches_for_import(&seen),
            "GetTargetLuns {want:?} != arrival {seen:?}"
        );
        assert!(want.disk_signature.is_nil() && want.interconnects.is_empty());
        assert_ne!(lun, &l1);
        assert_ne!(lun, &l2);
    }
    assert_eq!(r.san.read(&arrived[0].0, 0, 8).unwrap(), b"before-1");
    assert_eq!(r.san.read(&arrived[1].0, 4096, 8).unwrap(), b"before-2");
    assert_eq!(r.san.read(&l1, 0, 8).unwrap(), b"after--1");
    assert!(r.events.0.lock().unwrap().is_empty());
}

#[test]
fn are_luns_supported_is_false_for_foreign_luns_plex_and_an_unreachable_array() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let mut ours = vec![host_view(&r.san, &l)];
    let mut foreign = ours.clone();
    foreign[0].vendor_id = Some("LIO-ORG ".into());
    assert_eq!(
        r.p.are_luns_supported(ctx(), &devs(1), &mut foreign),
        Ok(false)
    );
    // A spanned volume with one foreign LUN: all or nothing.
    let mut mixed = vec![ours[0].clone(), foreign[0].clone()];
    assert_eq!(
        r.p.are_luns_supported(ctx(), &devs(2), &mut mixed),
        Ok(false)
    );
    // Plex: TRUE while the array says it makes plex copies of the LUN, FALSE once it does not.
    let plex = ctx().with(VolumeSnapshotAttributes::PLEX);
    assert_eq!(r.p.are_luns_supported(plex, &devs(1), &mut ours), Ok(true));
    let both = plex.with(VolumeSnapshotAttributes::DIFFERENTIAL);
    assert_eq!(r.p.are_luns_supported(both, &devs(1), &mut ours), Ok(false));
    r.san.without_plex();
    assert_eq!(r.p.are_luns_supported(plex, &devs(1), &mut ours), Ok(false));
    let diff = ctx().with(VolumeSnapshotAttributes::DIFFERENTIAL);
    assert_eq!(r.p.are_luns_supported(diff, &devs(1), &mut ours), Ok(true));
    assert_eq!(
        r.p.are_luns_supported(SnapshotContext::ALL, &devs(1), &mut ours),
        Ok(false)
    );
    // Shadowlun-looking LUN the array does not know.
    let mut unknown = vec![
        LunInfo::from_identity(
            &vss::identity::LunIdentity::for_number(999).scsi_identity(&[]),
            BusType::ISCSI,
        )
        .unwrap(),
    ];
    assert_eq!(
        r.p.are_luns_supported(ctx(), &devs(1), &mut unknown),
        Ok(false)
    );
    r.san.fail_next(
        "lookup",
        ControlError::Unreachable("connection refused".into()),
    );
    assert_eq!(
        r.p.are_luns_supported(ctx(), &devs(1), &mut ours),
        Ok(false)
    );
    // Idempotent and side-effect free.
    for _ in 0..3 {
        assert_eq!(r.p.are_luns_supported(ctx(), &devs(1), &mut ours), Ok(true));
    }
    assert!(
        r.san.calls().iter().all(|c| c == "lookup"),
        "{:?}",
        r.san.calls()
    );
    assert_eq!(r.p.current_set(), None);
}

#[test]
fn same_lun_in_several_volumes_is_snapshotted_once() {
    let r = rig();
    let l1 = r.san.create_lun(MIB, &[HOST_A]);
    let l2 = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(2);
    let mut a = vec![host_view(&r.san, &l1)];
    let mut b = vec![host_view(&r.san, &l1), host_view(&r.san, &l2)];
    r.p.begin_prepare_snapshot(set, id(20), ctx(), &devs(1), &mut a)
        .unwrap();
    r.p.begin_prepare_snapshot(set, id(21), ctx(), &devs(2), &mut b)
        .unwrap();
    r.p.begin_prepare_snapshot(set, id(21), ctx(), &devs(2), &mut b)
        .unwrap();
    let sets = r.san.client(HOST_A).list_sets().unwrap();
    assert_eq!(sets[0].snapshots.len(), 2, "{:?}", sets[0].snapshots);
    for s in ["end", "pre", "commit"] {
        match s {
            "end" => r.p.end_prepare_snapshots(set).unwrap(),
            "pre" => r.p.pre_commit_snapshots(set).unwrap(),
            _ => r.p.commit_snapshots(set).unwrap(),
        }
    }
    assert_eq!(r.san.snapshot_luns().len(), 2);
}

#[test]
fn abandoned_set_is_cleaned_on_new_begin_prepare() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let mut i = vec![host_view(&r.san, &l)];
    r.p.begin_prepare_snapshot(id(3), id(30), ctx(), &devs(1), &mut i)
        .unwrap();
    r.p.begin_prepare_snapshot(id(4), id(40), ctx(), &devs(1), &mut i)
        .unwrap();
    assert_eq!(r.san.set_state(id(3)), Some(SetState::Aborted));
    assert_eq!(r.san.set_state(id(4)), Some(SetState::Prepared));
    assert_eq!(r.p.current_set().map(|s| s.0), Some(id(4)));
    // Also after EndPrepare (VSS never aborts an abandoned set).
    r.p.end_prepare_snapshots(id(4)).unwrap();
    r.p.begin_prepare_snapshot(id(5), id(50), ctx(), &devs(1), &mut i)
        .unwrap();
    assert_eq!(r.san.set_state(id(4)), Some(SetState::Aborted));
}

#[test]
fn out_of_order_calls_veto_and_discard_the_set() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(6);
    run_until(&r, set, &[&l], 1);
    // Commit without PreCommit.
    assert_eq!(r.p.commit_snapshots(set), Err(Hresult::VSS_E_PROVIDER_VETO));
    assert_eq!(r.san.set_state(set), Some(SetState::Aborted));
    assert!(r.san.snapshot_luns().is_empty());
    assert_eq!(r.p.current_set(), None);
    let ev = r.events.0.lock().unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].method, Method::CommitSnapshots);
    assert!(
        ev[0].message.contains("out of order") || ev[0].message.contains("state"),
        "{}",
        ev[0].message
    );
}

#[test]
fn unknown_set_ids_are_object_not_found_where_allowed() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(7), &[&l], 0);
    let other = id(8);
    assert_eq!(
        r.p.end_prepare_snapshots(other),
        Err(Hresult::VSS_E_OBJECT_NOT_FOUND)
    );
    assert_eq!(
        r.p.commit_snapshots(other),
        Err(Hresult::VSS_E_OBJECT_NOT_FOUND)
    );
    assert_eq!(
        r.p.pre_final_commit_snapshots(other),
        Err(Hresult::VSS_E_PROVIDER_VETO)
    );
    assert_eq!(
        r.p.abort_snapshots(other),
        Err(Hresult::VSS_E_OBJECT_NOT_FOUND)
    );
    // The set in progress is untouched by calls about another set.
    assert_eq!(r.san.set_state(id(7)), Some(SetState::Prepared));
}

#[test]
fn abort_after_any_phase_leaves_nothing_on_the_array() {
    for upto in 0..7 {
        let r = rig();
        let l = r.san.create_lun(MIB, &[HOST_A]);
        let set = id(9);
        let res = run_until(&r, set, &[&l], upto);
        assert!(res.iter().all(Result::is_ok), "phase {upto}: {res:?}");
        assert_eq!(r.p.abort_snapshots(set), Ok(()), "phase {upto}");
        assert!(r.san.snapshot_luns().is_empty(), "phase {upto}");
        assert_eq!(
            r.san.set_state(set),
            Some(SetState::Aborted),
            "phase {upto}"
        );
        assert_eq!(r.p.current_set(), None);
    }
}

#[test]
fn abort_after_completion_keeps_the_snapshots() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(11);
    assert!(run_until(&r, set, &[&l], 7).iter().all(Result::is_ok));
    assert_eq!(r.p.abort_snapshots(set), Ok(()));
    assert_eq!(r.san.snapshot_luns().len(), 1);
    assert_eq!(r.san.set_state(set), Some(SetState::Completed));
}

#[test]
fn abort_reaches_the_array_after_a_provider_reload() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(12);
    run_until(&r, set, &[&l], 3);
    let reloaded = ShadowlunProvider::new(r.san.client(HOST_A));
    assert_eq!(reloaded.abort_snapshots(set), Ok(()));
    assert!(r.san.snapshot_luns().is_empty());
}

#[test]
fn commit_is_exactly_one_array_call() {
    let r = rig();
    let l1 = r.san.create_lun(MIB, &[HOST_A]);
    let l2 = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(13), &[&l1, &l2], 2);
    r.san.clear_calls();
    r.p.commit_snapshots(id(13)).unwrap();
    assert_eq!(r.san.calls(), vec!["commit"]);
    assert!(r.p.last_commit_time().is_some());
}

#[test]
fn nothing_is_logged_between_precommit_and_postcommit() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(14);
    run_until(&r, set, &[&l], 1);
    let logged_before = r.events.1.lock().unwrap().len();
    r.p.pre_commit_snapshots(set).unwrap();
    r.p.commit_snapshots(set).unwrap();
    // An out-of-protocol call while frozen fails, but its veto waits too.
    assert_eq!(
        r.p.pre_final_commit_snapshots(id(99)),
        Err(Hresult::VSS_E_PROVIDER_VETO)
    );
    assert_eq!(
        r.events.1.lock().unwrap().len(),
        logged_before,
        "logged while frozen: {:?}",
        r.events.1.lock().unwrap()
    );
    assert!(
        r.events.0.lock().unwrap().is_empty(),
        "event log written while frozen"
    );
    r.p.post_commit_snapshots(set, 1).unwrap();
    let logs = r.events.1.lock().unwrap().clone();
    assert!(
        logs[logged_before..]
            .iter()
            .any(|m| m.contains("committed in")),
        "{logs:?}"
    );
    assert_eq!(
        r.events.0.lock().unwrap().len(),
        1,
        "deferred veto not written after PostCommit"
    );
}

#[test]
fn commit_failure_vetoes_and_abort_cleans_up() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(15);
    run_until(&r, set, &[&l], 2);
    r.san
        .fail_next("commit", ControlError::Timeout("commit".into()));
    assert_eq!(r.p.commit_snapshots(set), Err(Hresult::VSS_E_PROVIDER_VETO));
    assert_eq!(r.p.abort_snapshots(set), Ok(()));
    assert_eq!(r.san.set_state(set), Some(SetState::Aborted));
    assert!(r.san.snapshot_luns().is_empty());
    let ev = r.events.0.lock().unwrap();
    assert!(ev[0].message.contains("reachable"), "{}", ev[0].message);
}

#[test]
fn no_space_at_end_prepare_is_insufficient_storage() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(16), &[&l], 0);
    r.san
        .fail_next("end_prepare", ControlError::NoSpace("pool full".into()));
    assert_eq!(
        r.p.end_prepare_snapshots(id(16)),
        Err(Hresult::VSS_E_INSUFFICIENT_STORAGE)
    );
    assert_eq!(r.san.set_state(id(16)), Some(SetState::Aborted));
}

#[test]
fn begin_prepare_refuses_foreign_luns_plex_and_too_many_volumes() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let mut foreign = vec![
        LunInfo::from_identity(
            &vss::identity::LunIdentity::for_number(777).scsi_identity(&[]),
            BusType::ISCSI,
        )
        .unwrap(),
    ];
    assert_eq!(
        r.p.begin_prepare_snapshot(id(17), id(170), ctx(), &devs(1), &mut foreign),
        Err(Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER)
    );
    let mut i = vec![host_view(&r.san, &l)];
    assert_eq!(
        r.p.begin_prepare_snapshot(
            id(17),
            id(170),
            ctx().with(VolumeSnapshotAttributes::PLEX | VolumeSnapshotAttributes::DIFFERENTIAL),
            &devs(1),
            &mut i
        ),
        Err(Hresult::VSS_E_UNSUPPORTED_CONTEXT)
    );
    // An array that cannot make plex copies: refused before anything is prepared.
    let r2 = rig();
    let l2 = r2.san.create_lun(MIB, &[HOST_A]);
    let mut i2 = vec![host_view(&r2.san, &l2)];
    r2.san.without_plex();
    assert_eq!(
        r2.p.begin_prepare_snapshot(
            id(21),
            id(210),
            ctx().with(VolumeSnapshotAttributes::PLEX),
            &devs(1),
            &mut i2
        ),
        Err(Hresult::VSS_E_UNSUPPORTED_CONTEXT)
    );
    assert!(!r2.san.calls().contains(&"prepare".to_string()));
    let small = ShadowlunProvider::with_config(
        r.san.client(HOST_A),
        ProviderConfig {
            max_volumes_per_set: 2,
            ..Default::default()
        },
        Arc::new(Events::default()),
    );
    for v in 0..2 {
        small
            .begin_prepare_snapshot(id(18), id(180 + v), ctx(), &devs(1), &mut i)
            .unwrap();
    }
    assert_eq!(
        small.begin_prepare_snapshot(id(18), id(199), ctx(), &devs(1), &mut i),
        Err(Hresult::VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED)
    );
}

#[test]
fn get_target_luns_works_after_post_final_commit_too() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let set = id(19);
    let mut i = vec![host_view(&r.san, &l)];
    r.p.begin_prepare_snapshot(set, id(190), ctx(), &devs(1), &mut i)
        .unwrap();
    for f in [
        ShadowlunProvider::end_prepare_snapshots,
        ShadowlunProvider::pre_commit_snapshots,
        ShadowlunProvider::commit_snapshots,
    ] {
        f(&r.p, set).unwrap();
    }
    r.p.post_commit_snapshots(set, 1).unwrap();
    r.p.pre_final_commit_snapshots(set).unwrap();
    r.p.post_final_commit_snapshots(set).unwrap();
    let mut d = vec![LunInfo::default()];
    r.p.get_target_luns(&devs(1), &i, &mut d).unwrap();
    let snap = r.san.snapshot_luns().pop().unwrap();
    let mut arrived = host_view(&r.san, &snap);
    assert_eq!(r.p.fill_in_lun_info("disk", &mut arrived), Ok(true));
    assert!(d[0].matches_for_import(&arrived));
    // A LUN that was never in a set: invalid argument, destination left as given.
    let other = r.san.create_lun(MIB, &[HOST_A]);
    let mut d = vec![LunInfo::default()];
    assert_eq!(
        r.p.get_target_luns(&devs(1), &[host_view(&r.san, &other)], &mut d),
        Err(Hresult::E_INVALIDARG)
    );
    assert_eq!(d[0], LunInfo::default());
}

#[test]
fn on_lun_empty_releases_snapshots_only() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(21), &[&l], 7);
    let snap = r.san.snapshot_luns().pop().unwrap();
    let original = host_view(&r.san, &l);
    assert_eq!(
        r.p.on_lun_empty("disk", &original),
        Err(Hresult::VSS_E_PROVIDER_VETO)
    );
    assert!(
        r.san.lun_exists(&l),
        "an original LUN must never be deleted"
    );
    let snap_info = host_view(&r.san, &snap);
    assert_eq!(r.p.on_lun_empty("disk", &snap_info), Ok(()));
    assert!(!r.san.lun_exists(&snap));
    // Twice is harmless.
    assert_eq!(r.p.on_lun_empty("disk", &snap_info), Ok(()));
}

#[test]
fn do_mask_luns_masks_without_deleting_and_notifications_do_nothing() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(22), &[&l], 7);
    let snap = r.san.snapshot_luns().pop().unwrap();
    let si = vec![host_view(&r.san, &snap)];
    let oi = vec![host_view(&r.san, &l)];
    r.p.locate_luns(&si).unwrap();
    assert_eq!(r.san.visible_luns(HOST_A).len(), 2);
    r.san.clear_calls();
    for f in [
        HardwareOptions::ONLUNSTATECHANGE_NOTIFY_READ_WRITE,
        HardwareOptions::ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY,
        HardwareOptions::ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY,
    ] {
        r.p.on_lun_state_change(&si, &oi, f).unwrap();
    }
    assert!(r.san.calls().is_empty(), "{:?}", r.san.calls());
    r.p.on_lun_state_change(&si, &oi, HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS)
        .unwrap();
    assert_eq!(r.san.visible_luns(HOST_A).len(), 1);
    assert!(r.san.lun_exists(&snap));
}

#[test]
fn resync_copies_the_snapshot_onto_the_destination() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    r.san.write(&l, 100, b"golden");
    run_until(&r, id(23), &[&l], 7);
    r.san.write(&l, 100, b"broken");
    let snap = r.san.snapshot_luns().pop().unwrap();
    let job =
        r.p.resync_luns(&[host_view(&r.san, &snap)], &[host_view(&r.san, &l)])
            .unwrap();
    job.wait(None).unwrap();
    assert_eq!(job.query_status(), Ok((Hresult::VSS_S_ASYNC_FINISHED, 100)));
    assert_eq!(job.cancel(), Ok(Hresult::VSS_S_ASYNC_FINISHED));
    assert_eq!(r.san.read(&l, 100, 6).unwrap(), b"golden");
    // An original is not a valid resync source.
    assert!(
        r.p.resync_luns(&[host_view(&r.san, &l)], &[host_view(&r.san, &l)])
            .is_err()
    );
}

#[test]
fn resync_job_reports_failure_codes() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(24), &[&l], 7);
    let snap = r.san.snapshot_luns().pop().unwrap();
    r.san
        .fail_next("start_resync", ControlError::NoSpace("pool".into()));
    assert_eq!(
        r.p.resync_luns(&[host_view(&r.san, &snap)], &[host_view(&r.san, &l)])
            .err(),
        Some(Hresult::VSS_E_INSUFFICIENT_STORAGE)
    );
    let _ = JobState::Running;
}

#[test]
fn unload_is_refused_only_when_not_forced_and_a_set_is_in_flight() {
    let r = rig();
    assert_eq!(r.p.on_unload(false), Ok(UnloadAnswer::Ready));
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(25), &[&l], 3);
    assert_eq!(r.p.on_unload(false), Ok(UnloadAnswer::Busy));
    assert_eq!(r.san.set_state(id(25)), Some(SetState::Committed));
    assert_eq!(r.p.on_unload(true), Ok(UnloadAnswer::Ready));
    assert_eq!(r.san.set_state(id(25)), Some(SetState::Aborted));
    assert!(r.san.snapshot_luns().is_empty());
}

#[test]
fn fill_in_lun_info_recognises_own_luns_and_normalises() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    // A host may report the INQUIRY strings padded (as the device sends them) or trimmed;
    // both come out the same and no field grows (it could not cross back to vssvc).
    let mut padded = host_view(&r.san, &l);
    let before = padded.clone();
    let mut trimmed = padded.clone();
    trimmed.vendor_id = Some("SHADOWLN".into());
    trimmed.product_id = Some("shadowlun LUN".into());
    trimmed.serial_number = Some(format!("{} ", padded.serial_number.clone().unwrap()));
    assert_eq!(r.p.fill_in_lun_info("d", &mut padded), Ok(true));
    assert_eq!(r.p.fill_in_lun_info("d", &mut trimmed), Ok(true));
    assert!(padded.matches_for_import(&trimmed));
    assert!(trimmed.disk_signature.is_nil());
    assert!(padded.product_id.as_ref().unwrap().len() <= before.product_id.as_ref().unwrap().len());
    assert_eq!(padded.interconnects, before.interconnects);
    let want = before;
    let mut foreign = want.clone();
    foreign.vendor_id = Some("MSFT    ".into());
    let before = foreign.clone();
    assert_eq!(r.p.fill_in_lun_info("d", &mut foreign), Ok(false));
    assert_eq!(foreign, before);
}

/// Every method, under every array failure, returns only codes the contract allows it.
#[test]
fn every_method_returns_only_allowed_codes() {
    let failures = || {
        vec![
            ControlError::Unreachable("x".into()),
            ControlError::Timeout("x".into()),
            ControlError::Unauthorized("x".into()),
            ControlError::NotFound("x".into()),
            ControlError::Conflict("x".into()),
            ControlError::NoSpace("x".into()),
            ControlError::LimitReached("x".into()),
            ControlError::Rejected {
                code: "c".into(),
                detail: "d".into(),
            },
        ]
    };
    let verbs = [
        "lookup",
        "prepare",
        "end_prepare",
        "commit",
        "complete",
        "abort",
        "describe",
        "expose",
        "mask",
        "release",
        "start_resync",
        "resync_status",
    ];
    let mut checked = 0;
    for verb in verbs {
        for err in failures() {
            let r = rig();
            let l = r.san.create_lun(MIB, &[HOST_A]);
            r.san.fail_next(verb, err.clone());
            let set = id(30);
            let res = run_until(&r, set, &[&l], 7);
            let methods = [
                Method::BeginPrepareSnapshot,
                Method::EndPrepareSnapshots,
                Method::PreCommitSnapshots,
                Method::CommitSnapshots,
                Method::PostCommitSnapshots,
                Method::GetTargetLuns,
                Method::PreFinalCommitSnapshots,
                Method::PostFinalCommitSnapshots,
            ];
            for (m, r) in methods.iter().zip(&res) {
                if let Err(h) = r {
                    assert!(
                        m.allows(*h),
                        "{m} returned {h} with {verb} failing as {err:?}"
                    );
                    checked += 1;
                }
            }
            let h = r.p.abort_snapshots(set).err().unwrap_or(Hresult::S_OK);
            assert!(Method::AbortSnapshots.allows(h), "Abort returned {h}");
            let snaps = r.san.snapshot_luns();
            let si: Vec<LunInfo> = snaps.iter().map(|s| host_view(&r.san, s)).collect();
            let oi = vec![host_view(&r.san, &l); si.len()];
            r.san.fail_next(verb, err.clone());
            if let Err(h) = r.p.locate_luns(&si) {
                assert!(Method::LocateLuns.allows(h), "LocateLuns {h}");
            }
            r.san.fail_next(verb, err.clone());
            if let Err(h) =
                r.p.on_lun_state_change(&si, &oi, HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS)
            {
                assert!(Method::OnLunStateChange.allows(h), "OnLunStateChange {h}");
            }
            r.san.fail_next(verb, err.clone());
            if let Err(h) = r.p.resync_luns(&si, &oi) {
                assert!(Method::ResyncLuns.allows(h), "ResyncLuns {h}");
            }
            r.san.fail_next(verb, err.clone());
            for s in &si {
                if let Err(h) = r.p.on_lun_empty("d", s) {
                    assert!(Method::OnLunEmpty.allows(h), "OnLunEmpty {h}");
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} failures exercised");
}

#[test]
fn concurrent_support_queries_during_a_set_are_safe() {
    let r = Arc::new(rig());
    let l = r.san.create_lun(MIB, &[HOST_A]);
    let info = host_view(&r.san, &l);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let r = r.clone();
            let info = info.clone();
            s.spawn(move || {
                for _ in 0..50 {
                    let mut v = vec![info.clone()];
                    assert_eq!(r.p.are_luns_supported(ctx(), &devs(1), &mut v), Ok(true));
                }
            });
        }
        let res = run_until(&r, id(31), &[&l], 7);
        assert!(res.iter().all(Result::is_ok), "{res:?}");
    });
    assert_eq!(r.san.snapshot_luns().len(), 1);
}

#[test]
fn a_snapshot_deleted_on_the_array_is_reported_as_such_not_as_a_foreign_lun() {
    let r = rig();
    let l = r.san.create_lun(MIB, &[HOST_A]);
    run_until(&r, id(31), &[&l], 7);
    let snap = r.san.snapshot_luns().pop().unwrap();
    let snap_info = host_view(&r.san, &snap);
    // Deleted on the array (as `shadowlun snapshot delete` or OnLunEmpty does) while a
    // backup components document still names it.
    assert_eq!(r.p.on_lun_empty("disk", &snap_info), Ok(()));
    assert!(!r.san.lun_exists(&snap));
    r.events.0.lock().unwrap().clear();
    let pb = ShadowlunProvider::with_config(
        r.san.client(HOST_B),
        ProviderConfig::default(),
        r.events.clone(),
    );
    let code = pb
        .locate_luns(std::slice::from_ref(&snap_info))
        .unwrap_err();
    assert!(Method::LocateLuns.allows(code), "{code}");
    assert!(r.san.visible_luns(HOST_B).is_empty());
    // A foreign LUN still reads as one.
    let mut foreign = snap_info.clone();
    foreign.vendor_id = Some("OTHERVND".into());
    assert!(r.p.locate_luns(&[foreign]).is_err());
    let ev = r.events.0.lock().unwrap();
    assert!(
        ev.iter().any(|e| e.message.contains("deleted on the array")
            && !e.message.contains("another provider")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| e.message.contains("not a shadowlun LUN")),
        "{ev:?}"
    );
}
