//! Coordinator rules not covered by a catalogue scenario of their own.

use std::sync::Arc;
use std::time::Duration;

use lab::reference::{MemoryLab, REFERENCE_PROVIDER_ID, ReferenceProvider};
use lab::san::MemorySan;
use vss::{Hresult, Method, SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};
use vss_emulator::bcd::Bcd;
use vss_emulator::conformance::{Ctx, Rig};
use vss_emulator::coordinator::{Config, DeleteTarget};
use vss_emulator::faults::{Fault, FaultyProvider};

fn ctx() -> (Ctx, Arc<MemorySan>) {
    let san = MemorySan::new();
    (Ctx::new(Box::new(MemoryLab { san: san.clone() })), san)
}

fn rig(ctx: &Ctx, config: Config, faults: Vec<Fault>) -> Rig {
    ctx.rig("iqn.2026-01.org.shadowlun.test:a", config, faults)
        .unwrap()
}

#[test]
fn guid_null_asks_providers_in_order_until_one_supports_the_volume() {
    let (ctx, san) = ctx();
    let r = rig(&ctx, Config::default(), vec![]);
    // A coordinator with a declining provider registered before the reference provider.
    let coord = vss_emulator::Coordinator::new(r.host.clone(), Config::default());
    let decliner = FaultyProvider::new(
        ReferenceProvider::new(san.clone(), "iqn.2026-01.org.shadowlun.test:a"),
        vec![Fault::SupportNothing],
    );
    let other = uuid::Uuid::from_u128(7);
    coord
        .register_provider(other, "decliner", decliner)
        .unwrap();
    coord
        .register_provider(
            REFERENCE_PROVIDER_ID,
            "reference",
            ReferenceProvider::new(san.clone(), "iqn.2026-01.org.shadowlun.test:a"),
        )
        .unwrap();
    let mut bc = coord.backup_components();
    bc.start_snapshot_set().unwrap();
    let t0 = coord.trace().len();
    bc.add_to_snapshot_set("E:", VssId::nil()).unwrap();
    let calls: Vec<(String, Method)> = coord
        .trace()
        .since(t0)
        .into_iter()
        .filter_map(|e| match e {
            vss_emulator::trace::TraceEntry::Call {
                provider, method, ..
            } => Some((provider, method)),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ("decliner".to_string(), Method::AreLunsSupported),
            ("reference".to_string(), Method::AreLunsSupported),
            ("reference".to_string(), Method::BeginPrepareSnapshot),
        ]
    );
    let e = bc.add_to_snapshot_set("F:", other).unwrap_err();
    assert_eq!(e.code(), Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER);
    let e = bc
        .add_to_snapshot_set("F:", uuid::Uuid::from_u128(99))
        .unwrap_err();
    assert_eq!(e.code(), Hresult::VSS_E_PROVIDER_NOT_REGISTERED);
    let e = bc.add_to_snapshot_set("E:", VssId::nil()).unwrap_err();
    assert_eq!(e.code(), Hresult::VSS_E_OBJECT_ALREADY_EXISTS);
}

#[test]
fn writer_left_frozen_past_its_window_fails_the_set_with_writer_timeout() {
    let (ctx, san) = ctx();
    let cfg = Config {
        freeze_window: Duration::from_millis(100),
        ..Config::default()
    };
    let r = rig(
        &ctx,
        cfg,
        vec![Fault::Delay(
            Method::PreCommitSnapshots,
            Duration::from_millis(300),
        )],
    );
    let w = r.writer(5, &["E:"]).unwrap();
    let luns = san.luns().len();
    let t0 = r.coord.trace().len();
    let e = r.create(SnapshotContext::BACKUP, &["E:"]).unwrap_err();
    assert_eq!(e.code(), Hresult::VSS_E_WRITERERROR_TIMEOUT);
    assert!(
        r.coord
            .trace()
            .methods_since(t0)
            .contains(&Method::AbortSnapshots)
    );
    assert_eq!(san.luns().len(), luns, "aborted snapshot LUNs are gone");
    w.stop();
}

#[test]
fn no_writers_context_does_not_freeze_writers() {
    let (ctx, _san) = ctx();
    let r = rig(&ctx, Config::default(), vec![]);
    let w = r.writer(6, &["E:"]).unwrap();
    let t0 = r.coord.trace().len();
    let _set = r.create(SnapshotContext::NAS_ROLLBACK, &["E:"]).unwrap();
    let labels = r.coord.trace().labels_since(t0);
    assert!(!labels.iter().any(|l| l.starts_with("W: ")), "{labels:?}");
    assert_eq!(w.frozen_at(), None);
    w.stop();
}

#[test]
fn delete_oldest_removes_only_the_first_snapshot_of_the_volume() {
    let (ctx, _san) = ctx();
    let r = rig(&ctx, Config::default(), vec![]);
    let (first, mut bc) = r.create(SnapshotContext::APP_ROLLBACK, &["F:"]).unwrap();
    let (second, _bc2) = r.create(SnapshotContext::APP_ROLLBACK, &["F:"]).unwrap();
    assert_eq!(
        bc.delete_snapshots(DeleteTarget::Oldest("F:".into()))
            .unwrap(),
        1
    );
    let left: Vec<VssId> = r.coord.query().iter().map(|p| p.snapshot_set_id).collect();
    assert_eq!(left, vec![second]);
    assert_ne!(first, second);
    let e = bc.delete_snapshots(DeleteTarget::Set(first)).unwrap_err();
    assert_eq!(e.code(), Hresult::VSS_E_OBJECT_NOT_FOUND);
}

#[test]
fn import_refuses_a_non_transportable_bcd_and_malformed_documents() {
    let (ctx, _san) = ctx();
    let a = rig(&ctx, Config::default(), vec![]);
    let b = ctx
        .bare_rig(
            "iqn.2026-01.org.shadowlun.test:b",
            Config::default(),
            vec![],
        )
        .unwrap();
    let (set, bc) = a.create(SnapshotContext::APP_ROLLBACK, &["E:"]).unwrap();
    let bcd = bc.bcd(set).unwrap();
    let mut ib = b.coord.backup_components();
    ib.load_bcd(bcd.clone()).unwrap();
    assert_eq!(
        ib.import_snapshots().unwrap_err().code(),
        Hresult::VSS_E_NONTRANSPORTABLE_BCD
    );

    let mut broken = bcd.clone();
    broken.set.snapshots[0].extents[0].lun = 9;
    assert_eq!(
        ib.load_bcd(broken).unwrap_err().code(),
        Hresult::VSS_E_INVALID_XML_DOCUMENT
    );
    let e = Bcd::from_json("{\"format\": 1}").unwrap_err();
    assert_eq!(e.hresult(), Hresult::VSS_E_CORRUPT_XML_DOCUMENT);
    let mut v2 = bcd;
    v2.version = 2;
    assert_eq!(
        Bcd::from_json(&v2.to_json()).unwrap_err().hresult(),
        Hresult::VSS_E_INVALID_XML_DOCUMENT
    );
}

#[test]
fn transportable_set_is_not_surfaced_on_the_creating_host() {
    let (ctx, san) = ctx();
    let r = rig(&ctx, Config::default(), vec![]);
    let disks = r.host.disks().len();
    let t0 = r.coord.trace().len();
    let (set, bc) = r
        .create(SnapshotContext::BACKUP.with(Attr::TRANSPORTABLE), &["G:"])
        .unwrap();
    let m = r.coord.trace().methods_since(t0);
    assert!(!m.contains(&Method::LocateLuns));
    assert!(m.contains(&Method::GetTargetLuns));
    assert_eq!(r.host.disks().len(), disks);
    let bcd = bc.bcd(set).unwrap();
    assert_eq!(bcd.set.luns.len(), 2);
    // The snapshot LUNs exist on the array, masked from everybody.
    let snaps: Vec<_> = san
        .luns()
        .into_iter()
        .filter(|l| l.origin.is_some())
        .collect();
    assert_eq!(snaps.len(), 2);
    assert!(snaps.iter().all(|l| l.visible_to.is_empty()));
}

/// Storage whose REPORT LUNS fails once `cut` is set, as a host's does when the array goes
/// away; every other command still reaches the SAN.
struct CutStorage {
    inner: Arc<dyn vss_emulator::storage::HostStorage>,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl vss_emulator::storage::HostStorage for CutStorage {
    fn initiator_name(&self) -> String {
        self.inner.initiator_name()
    }
    fn report_luns(
        &self,
    ) -> Result<Vec<vss_emulator::storage::DiskAddress>, vss_emulator::storage::StorageError> {
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(vss_emulator::storage::StorageError::Transport(
                "connection refused".into(),
            ));
        }
        self.inner.report_luns()
    }
    fn inquiry(
        &self,
        disk: &vss_emulator::storage::DiskAddress,
    ) -> Result<Vec<u8>, vss_emulator::storage::StorageError> {
        self.inner.inquiry(disk)
    }
    fn vpd(
        &self,
        disk: &vss_emulator::storage::DiskAddress,
        page: u8,
    ) -> Result<Vec<u8>, vss_emulator::storage::StorageError> {
        self.inner.vpd(disk, page)
    }
    fn read_capacity(
        &self,
        disk: &vss_emulator::storage::DiskAddress,
    ) -> Result<vss_emulator::storage::Capacity, vss_emulator::storage::StorageError> {
        self.inner.read_capacity(disk)
    }
    fn read(
        &self,
        disk: &vss_emulator::storage::DiskAddress,
        lba: u64,
        blocks: u32,
    ) -> Result<Vec<u8>, vss_emulator::storage::StorageError> {
        self.inner.read(disk, lba, blocks)
    }
    fn write(
        &self,
        disk: &vss_emulator::storage::DiskAddress,
        lba: u64,
        data: &[u8],
    ) -> Result<(), vss_emulator::storage::StorageError> {
        self.inner.write(disk, lba, data)
    }
}

/// The memory lab, with hosts whose storage can be cut.
struct CutLab {
    inner: MemoryLab,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl vss_emulator::conformance::Lab for CutLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        self.inner.create_lun(bytes, initiator)
    }
    fn lun_count(&self) -> Result<usize, String> {
        self.inner.lun_count()
    }
    fn storage(
        &self,
        initiator: &str,
    ) -> Result<Arc<dyn vss_emulator::storage::HostStorage>, String> {
        Ok(Arc::new(CutStorage {
            inner: self.inner.storage(initiator)?,
            cut: self.cut.clone(),
        }))
    }
    fn provider(&self, initiator: &str) -> Result<Arc<dyn provider::HardwareProvider>, String> {
        self.inner.provider(initiator)
    }
    fn provider_id(&self) -> VssId {
        self.inner.provider_id()
    }
    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        self.inner.delete_lun(naa)
    }
}

#[test]
fn a_recovery_whose_rescan_fails_leaves_the_destination_volumes_mounted() {
    use vss::RecoveryOptions;
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctx = Ctx::new(Box::new(CutLab {
        inner: MemoryLab {
            san: MemorySan::new(),
        },
        cut: cut.clone(),
    }));
    let r = rig(&ctx, Config::default(), vec![]);
    r.host.write_volume("E:", 0, &[0xAA; 512]).unwrap();
    let (set, mut bc) = r.create(SnapshotContext::APP_ROLLBACK, &["E:"]).unwrap();
    r.host.write_volume("E:", 0, &[0xBB; 512]).unwrap();
    let snap = r
        .coord
        .query()
        .iter()
        .find(|p| p.snapshot_set_id == set)
        .unwrap()
        .snapshot_id;
    bc.add_snapshot_to_recovery_set(snap, None).unwrap();
    // The array goes away after the resync: the host's rescan of the destination fails.
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = bc
        .recover_set(RecoveryOptions::NO_VOLUME_CHECK)
        .expect_err("a recovery whose rescan fails reports it");
    assert!(e.to_string().contains("connection refused"), "{e}");
    for v in ["E:", "F:"] {
        assert!(
            r.host.volume(v).is_ok(),
            "{v} (on the destination LUN) is mounted again after the failed recovery"
        );
    }
    // Back: the recovery runs again and E: holds the snapshot's data.
    cut.store(false, std::sync::atomic::Ordering::SeqCst);
    bc.add_snapshot_to_recovery_set(snap, None).unwrap();
    bc.recover_set(RecoveryOptions::NO_VOLUME_CHECK).unwrap();
    assert_eq!(r.host.read_volume("E:", 0, 512).unwrap(), vec![0xAA; 512]);
}
