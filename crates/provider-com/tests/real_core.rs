//! The real provider core (`ShadowlunProvider` over the in-memory array) driven through the
//! COM vtables as vssvc drives it: a snapshot is created, found again on import and deleted,
//! and every CoTaskMem block is accounted for.
#![cfg(windows)]

mod common;

use std::sync::{Arc, Mutex};

use common::{Spy, SpyState};
use provider::testing::MemoryArray;
use provider::{HardwareProvider, ShadowlunProvider, UnloadAnswer};
use provider_com::{ComClient, ComProvider, EventLogWriter, VetoEntry, VetoLog};
use vss::lun::BusType;
use vss::{LunInfo, SnapshotContext};
use windows::Win32::System::Com::{
    COINIT_MULTITHREADED, CoInitializeEx, CoRegisterMallocSpy, CoRevokeMallocSpy, IMallocSpy,
};
use windows_core::{IUnknown, Interface};

#[derive(Default)]
struct Events(Mutex<Vec<VetoEntry>>);

impl EventLogWriter for Events {
    fn write(&self, e: &VetoEntry) {
        self.0.lock().unwrap().push(e.clone());
    }
}

#[test]
fn real_core_creates_imports_and_deletes_a_snapshot_through_the_vtables() {
    // SAFETY: plain COM initialisation of the test thread.
    let _ = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
    let spy = Arc::new(Mutex::new(SpyState::default()));
    let ispy: IMallocSpy = Spy(spy.clone()).into();
    // SAFETY: a live IMallocSpy, revoked at the end.
    unsafe { CoRegisterMallocSpy(&ispy) }.unwrap();

    let host = "iqn.1991-05.com.microsoft:backup-host";
    let array = MemoryArray::new();
    array.create_lun(1 << 20, &[host]);
    let (orig_id, identity, _) = array.visible_luns(host).remove(0);
    let source = LunInfo::from_identity(&identity, BusType::ISCSI).unwrap();

    let events = Arc::new(Events::default());
    let log = VetoLog::new(events.clone());
    let core: Arc<dyn HardwareProvider> = Arc::new(ShadowlunProvider::with_config(
        array.client(host),
        provider::ProviderConfig::default(),
        log.clone(),
    ));
    let unk: IUnknown = ComProvider::new(core, log).into_interface().cast().unwrap();
    let c = ComClient::from_unknown(&unk).unwrap();

    let dev = vec!["\\\\?\\mpio#disk&ven_shadowln#1".to_string()];
    let ctx = SnapshotContext::BACKUP;
    let set = uuid::Uuid::from_u128(0x5e7);
    c.on_load().unwrap();
    let mut l = vec![source.clone()];
    assert!(c.are_luns_supported(ctx, &dev, &mut l).unwrap());
    assert_eq!(l, vec![source.clone()], "AreLunsSupported changes nothing");
    c.begin_prepare_snapshot(set, uuid::Uuid::from_u128(1), ctx, &dev, &mut l)
        .unwrap();
    c.end_prepare_snapshots(set).unwrap();
    c.pre_commit_snapshots(set).unwrap();
    c.commit_snapshots(set).unwrap();
    c.post_commit_snapshots(set, 1).unwrap();
    let mut target = vec![LunInfo::default()];
    c.get_target_luns(&dev, std::slice::from_ref(&source), &mut target)
        .unwrap();
    c.pre_final_commit_snapshots(set).unwrap();
    c.post_final_commit_snapshots(set).unwrap();
    assert_ne!(target[0].serial_number, source.serial_number);
    assert!(target[0].interconnects.is_empty());

    // The snapshot LUN exists on the array; import surfaces it to this host.
    let snap_ids: Vec<_> = array
        .lun_ids()
        .into_iter()
        .filter(|id| *id != orig_id)
        .collect();
    assert_eq!(snap_ids.len(), 1);
    c.locate_luns(&target).unwrap();
    let (_, seen, _) = array
        .visible_luns(host)
        .into_iter()
        .find(|(id, _, _)| *id == snap_ids[0])
        .expect("LocateLuns made the snapshot visible");
    // What the host reads from the disk, after FillInLunInfo, matches GetTargetLuns.
    let mut found = LunInfo::from_identity(&seen, BusType::ISCSI).unwrap();
    assert!(c.fill_in_lun_info("\\\\?\\disk#snap", &mut found).unwrap());
    assert!(
        found.matches_for_import(&target[0]),
        "{found:?} vs {:?}",
        target[0]
    );

    assert!(array.lun_exists(&snap_ids[0]));
    c.on_lun_empty("\\\\?\\disk#snap", &target[0]).unwrap();
    assert!(
        !array.lun_exists(&snap_ids[0]),
        "OnLunEmpty deletes the snapshot"
    );
    assert_eq!(c.on_unload(false).unwrap(), UnloadAnswer::Ready);
    assert!(
        events.0.lock().unwrap().is_empty(),
        "no veto on the happy path"
    );

    drop((c, unk));
    let s = spy.lock().unwrap();
    assert!(
        s.bad_frees.is_empty(),
        "double or foreign frees: {:?}",
        s.bad_frees
    );
    assert!(
        s.live.is_empty(),
        "{} CoTaskMem blocks leaked",
        s.live.len()
    );
    drop(s);
    // SAFETY: registered above.
    let _ = unsafe { CoRevokeMallocSpy() };
}
