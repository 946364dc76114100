//! The real provider core (`ShadowlunProvider` over HTTPS to a real array daemon) driven
//! through the COM vtables as vssvc drives it: a snapshot is created, found again on import
//! and deleted, and every CoTaskMem block is accounted for. The provider is given a dead
//! gateway before the array's: it passes over it.
//!
//! The array daemon runs on the Linux side (the Windows build of the array does not exist):
//! `scripts/ci.d/40-windows.sh` starts one on loopback and names it in
//! `SHADOWLUN_TEST_ARRAY` (its API URL), `SHADOWLUN_TEST_FINGERPRINT` and
//! `SHADOWLUN_TEST_ADMIN_TOKEN`.
#![cfg(windows)]

mod common;

use std::sync::{Arc, Mutex};

use api::{CreateHost, CreateLun, CreatedHost, HostRecord, LunRecord, MapLun, routes};
use common::{Spy, SpyState};
use provider::https::{Client, ClientConfig, HttpsArray};
use provider::{HardwareProvider, ShadowlunProvider, UnloadAnswer};
use provider_com::{ComClient, ComProvider, EventLogWriter, VetoEntry, VetoLog};
use vss::identity::LunIdentity;
use vss::lun::{BusType, ScsiIdentity};
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

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test needs an array daemon; scripts/ci.d/40-windows.sh starts one")
    })
}

/// The array's administrator and the URL and fingerprint a host's provider uses.
fn admin() -> (Client, String, String) {
    let (url, fingerprint) = (
        env("SHADOWLUN_TEST_ARRAY"),
        env("SHADOWLUN_TEST_FINGERPRINT"),
    );
    let token = env("SHADOWLUN_TEST_ADMIN_TOKEN");
    let c = Client::new(ClientConfig::new(&url, &token, &fingerprint)).expect("admin client");
    (c, url, fingerprint)
}

/// The identity pages a LUN serves: those whose designators carry the 60 bits of the NAA
/// the array reports for it (its array id and its number).
fn pages(admin: &Client, lun: &str) -> ScsiIdentity {
    let rec: LunRecord = admin
        .get(&routes::fill(routes::ADMIN_LUN, &[("lun", lun)]))
        .expect("the LUN exists");
    let bits = u64::from_str_radix(&rec.naa, 16).expect("hex NAA") & 0x0FFF_FFFF_FFFF_FFFF;
    LunIdentity::for_number(bits).scsi_identity(&[])
}

fn lun_exists(admin: &Client, lun: &str) -> bool {
    admin
        .get::<LunRecord>(&routes::fill(routes::ADMIN_LUN, &[("lun", lun)]))
        .is_ok()
}

#[test]
fn real_core_creates_imports_and_deletes_a_snapshot_through_the_vtables() {
    // SAFETY: plain COM initialisation of the test thread.
    let _ = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
    let spy = Arc::new(Mutex::new(SpyState::default()));
    let ispy: IMallocSpy = Spy(spy.clone()).into();
    // SAFETY: a live IMallocSpy, revoked at the end.
    unsafe { CoRegisterMallocSpy(&ispy) }.unwrap();

    // A host and a LUN of their own, whatever else the array holds.
    let (admin, url, fingerprint) = admin();
    let tag = format!("real-core-{}", std::process::id());
    let initiator = format!("iqn.1991-05.com.microsoft:{tag}");
    let host: CreatedHost = admin
        .post(
            routes::ADMIN_HOSTS,
            &CreateHost {
                name: tag.clone(),
                initiators: vec![initiator],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap();
    let orig: LunRecord = admin
        .post(
            routes::ADMIN_LUNS,
            &CreateLun {
                name: tag.clone(),
                size_bytes: 1 << 20,
            },
        )
        .unwrap();
    let map = routes::fill(routes::ADMIN_MAP, &[("host", &tag)]);
    let _: HostRecord = admin
        .post(
            &map,
            &MapLun {
                lun: orig.id.clone(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap();
    let source = LunInfo::from_identity(&pages(&admin, &orig.id), BusType::ISCSI).unwrap();
    // The provider is configured with two gateways, the first one dead (a port bound, then
    // closed): every call passes over it to the array and stays there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let array = HttpsArray::new(ClientConfig::with_urls(
        &[&dead, &url],
        &host.token,
        &fingerprint,
    ))
    .unwrap();
    let gateways = array.client().clone();
    assert_eq!(gateways.current_url(), dead);

    let events = Arc::new(Events::default());
    let log = VetoLog::new(events.clone());
    let core: Arc<dyn HardwareProvider> = Arc::new(ShadowlunProvider::with_config(
        array,
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
    let snap_ids: Vec<_> = admin
        .get::<Vec<LunRecord>>(routes::ADMIN_LUNS)
        .unwrap()
        .into_iter()
        .filter(|l| l.snapshot_of.as_ref().is_some_and(|o| o.source == orig.id))
        .map(|l| l.id)
        .collect();
    assert_eq!(snap_ids.len(), 1);
    c.locate_luns(&target).unwrap();
    let mapped: HostRecord = admin
        .get(&routes::fill(routes::ADMIN_HOST, &[("host", &tag)]))
        .unwrap();
    assert!(
        mapped.luns.iter().any(|l| l.lun == snap_ids[0]),
        "LocateLuns made the snapshot visible"
    );
    // What the host reads from the disk, after FillInLunInfo, matches GetTargetLuns.
    let mut found = LunInfo::from_identity(&pages(&admin, &snap_ids[0]), BusType::ISCSI).unwrap();
    assert!(c.fill_in_lun_info("\\\\?\\disk#snap", &mut found).unwrap());
    assert!(
        found.matches_for_import(&target[0]),
        "{found:?} vs {:?}",
        target[0]
    );

    assert!(lun_exists(&admin, &snap_ids[0]));
    c.on_lun_empty("\\\\?\\disk#snap", &target[0]).unwrap();
    assert!(
        !lun_exists(&admin, &snap_ids[0]),
        "OnLunEmpty deletes the snapshot"
    );
    assert_eq!(c.on_unload(false).unwrap(), UnloadAnswer::Ready);
    assert_eq!(
        gateways.current_url(),
        url,
        "the calls went to the live gateway"
    );
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
