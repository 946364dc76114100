//! Every provider method called through its COM vtable, in process, with CoTaskMem arrays
//! built as VSS builds them, and every CoTaskMem block tracked by an IMallocSpy.
#![cfg(windows)]

mod common;

use std::sync::{Arc, Mutex, MutexGuard};

use common::{Double, Spy, SpyState, lun, tagged};
use provider::{HardwareProvider, UnloadAnswer};
use provider_com::ffi::client::{LunArray, WideArray};
use provider_com::ffi::{ProviderFactory, read_lun};
use provider_com::server::Lifetime;
use provider_com::{ComClient, ComProvider, EventLogWriter, VetoEntry, VetoLog};
use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext};
use windows::Win32::Storage::Vss::{
    IVssHardwareSnapshotProvider, IVssHardwareSnapshotProviderEx, IVssProviderCreateSnapshotSet,
    IVssProviderNotifications,
};
use windows::Win32::System::Com::{
    COINIT_MULTITHREADED, CoInitializeEx, CoRegisterMallocSpy, CoRevokeMallocSpy, IMallocSpy,
};
use windows_core::{BOOL, GUID, IUnknown, Interface};

/// The spy is process-wide: tests that use it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Events(Mutex<Vec<VetoEntry>>);

impl EventLogWriter for Events {
    fn write(&self, e: &VetoEntry) {
        self.0.lock().unwrap().push(e.clone());
    }
}

struct Fixture {
    _serial: MutexGuard<'static, ()>,
    spy: Arc<Mutex<SpyState>>,
    double: Arc<Double>,
    events: Arc<Events>,
    unk: IUnknown,
}

impl Fixture {
    fn new() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: plain COM initialisation of the test thread.
        let _ = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
        let spy = Arc::new(Mutex::new(SpyState::default()));
        let ispy: IMallocSpy = Spy(spy.clone()).into();
        // SAFETY: a live IMallocSpy; revoked in Drop.
        unsafe { CoRegisterMallocSpy(&ispy) }.expect("CoRegisterMallocSpy");
        let double = Double::new();
        let events = Arc::new(Events::default());
        let unk: IUnknown = ComProvider::new(double.clone(), VetoLog::new(events.clone()))
            .into_interface()
            .cast()
            .unwrap();
        Fixture {
            _serial: serial,
            spy,
            double,
            events,
            unk,
        }
    }

    fn ex(&self) -> IVssHardwareSnapshotProviderEx {
        self.unk.cast().unwrap()
    }

    fn client(&self) -> ComClient {
        ComClient::from_unknown(&self.unk).unwrap()
    }

    fn live(&self) -> usize {
        self.spy.lock().unwrap().live.len()
    }

    fn allocs(&self) -> usize {
        self.spy.lock().unwrap().allocs
    }

    fn assert_clean(&self) {
        let s = self.spy.lock().unwrap();
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
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: registered in new().
        let _ = unsafe { CoRevokeMallocSpy() };
    }
}

fn devices(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("\\\\?\\mpio#disk&ven_shadowln&prod_thin_volume#{i}"))
        .collect()
}

#[test]
fn in_out_rewrites_only_changed_fields_and_frees_the_old_buffer() {
    let f = Fixture::new();
    let names = WideArray::new(&devices(2)).unwrap();
    let mut luns = LunArray::new(&[lun("A1"), lun("B2")]).unwrap();
    let before: Vec<_> = (0..2).map(|i| *luns.get(i)).collect();
    let mut ok = BOOL(0);
    // SAFETY: arrays of two elements built like VSS's.
    unsafe {
        f.ex()
            .AreLunsSupported(2, 0, names.as_ptr(), luns.as_mut_ptr(), &mut ok)
    }
    .unwrap();
    assert!(ok.as_bool());
    for (i, b) in before.iter().enumerate() {
        let a = luns.get(i);
        // Unchanged fields keep the caller's buffers.
        assert_eq!(a.m_szVendorId, b.m_szVendorId);
        assert_eq!(a.m_szProductId, b.m_szProductId);
        assert_eq!(
            a.m_deviceIdDescriptor.m_rgIdentifiers,
            b.m_deviceIdDescriptor.m_rgIdentifiers
        );
        assert_eq!(a.m_rgInterconnects, b.m_rgInterconnects);
        // The changed serial is a new CoTaskMem block; the old one was freed.
        assert_ne!(a.m_szSerialNumber, b.m_szSerialNumber);
        let s = f.spy.lock().unwrap();
        assert!(s.live.contains(&(a.m_szSerialNumber as usize)));
        assert!(!s.live.contains(&(b.m_szSerialNumber as usize)));
    }
    let back = luns.read().unwrap();
    assert_eq!(
        back[0].serial_number.as_deref(),
        Some(tagged("A1").as_str())
    );
    assert_eq!(
        back[1].serial_number.as_deref(),
        Some(tagged("B2").as_str())
    );
    assert!(
        f.double.calls.lock().unwrap()[0]
            .1
            .contains(&format!("{:?}", devices(2)))
    );
    assert_eq!(back[1].interconnects, lun("B2").interconnects);
    drop((names, luns));
    f.assert_clean();
}

#[test]
fn get_target_luns_fills_zeroed_destinations_with_cotaskmem() {
    let f = Fixture::new();
    let names = WideArray::new(&devices(2)).unwrap();
    let src = LunArray::new(&[lun("A1"), lun("B2")]).unwrap();
    let mut dst = LunArray::new(&[LunInfo::default(), LunInfo::default()]).unwrap();
    assert!(dst.get(0).m_szSerialNumber.is_null());
    // SAFETY: parallel arrays of two elements.
    unsafe {
        f.ex()
            .GetTargetLuns(2, names.as_ptr(), src.as_ptr(), dst.as_mut_ptr())
    }
    .unwrap();
    let out = dst.read().unwrap();
    assert_eq!(out[1].serial_number.as_deref(), Some("snap-B2"));
    assert_eq!(
        out[1].identifiers[0].identifier,
        vec![0x60, 0xAA, 1, 1, 2, 3, 4, 5]
    );
    assert_eq!(dst.get(1).m_deviceIdDescriptor.m_cIdentifiers, 1);
    assert!(!dst.get(1).m_deviceIdDescriptor.m_rgIdentifiers.is_null());
    assert!(
        out[0].interconnects.is_empty(),
        "interconnects must stay empty"
    );
    {
        let s = f.spy.lock().unwrap();
        let d = dst.get(0);
        for p in [
            d.m_szVendorId,
            d.m_szSerialNumber,
            d.m_deviceIdDescriptor.m_rgIdentifiers.cast(),
        ] {
            assert!(s.live.contains(&(p as usize)), "not CoTaskMem: {p:?}");
        }
    }
    // The sources are [in]: untouched.
    assert_eq!(src.read().unwrap(), vec![lun("A1"), lun("B2")]);
    drop((names, src, dst));
    f.assert_clean();
}

#[test]
fn core_failure_leaves_in_out_structures_as_received() {
    let f = Fixture::new();
    f.double
        .fail_with("BeginPrepareSnapshot", Hresult::VSS_E_PROVIDER_VETO);
    let names = WideArray::new(&devices(1)).unwrap();
    let mut luns = LunArray::new(&[lun("A1")]).unwrap();
    let before = *luns.get(0);
    let allocs = f.allocs();
    // SAFETY: one-element arrays.
    let e = unsafe {
        f.ex().BeginPrepareSnapshot(
            GUID::from_u128(1),
            GUID::from_u128(2),
            0,
            1,
            names.as_ptr(),
            luns.as_mut_ptr(),
        )
    }
    .unwrap_err();
    assert_eq!(e.code().0 as u32, Hresult::VSS_E_PROVIDER_VETO.0);
    assert_eq!(f.allocs(), allocs, "nothing allocated on the error path");
    assert_eq!(luns.get(0).m_szSerialNumber, before.m_szSerialNumber);
    assert_eq!(luns.read().unwrap(), vec![lun("A1")]);
    // A veto outside the freeze window is logged at once, with the set id.
    let ev = f.events.0.lock().unwrap().clone();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].method, "BeginPrepareSnapshot");
    assert_eq!(ev[0].set_id, Some(uuid::Uuid::from_u128(1)));
    drop((names, luns));
    f.assert_clean();
}

#[test]
fn allocation_failure_mid_write_changes_nothing_and_leaks_nothing() {
    let f = Fixture::new();
    let names = WideArray::new(&devices(3)).unwrap();
    let mut luns = LunArray::new(&[lun("A1"), lun("B2"), lun("C3")]).unwrap();
    let before: Vec<_> = (0..3).map(|i| *luns.get(i)).collect();
    let live = f.live();
    // Fail the third new serial string: two were already allocated.
    f.spy.lock().unwrap().fail_from = Some(f.allocs() + 3);
    let mut ok = BOOL(0);
    // SAFETY: three-element arrays.
    let e = unsafe {
        f.ex()
            .AreLunsSupported(3, 0, names.as_ptr(), luns.as_mut_ptr(), &mut ok)
    }
    .unwrap_err();
    f.spy.lock().unwrap().fail_from = None;
    assert_eq!(e.code().0 as u32, Hresult::E_OUTOFMEMORY.0);
    assert_eq!(f.live(), live, "the partial allocations were freed");
    for (i, b) in before.iter().enumerate() {
        assert_eq!(luns.get(i).m_szSerialNumber, b.m_szSerialNumber);
    }
    assert_eq!(luns.read().unwrap(), vec![lun("A1"), lun("B2"), lun("C3")]);
    drop((names, luns));
    f.assert_clean();
}

#[test]
fn bad_counts_and_null_pointers_are_invalidarg_before_the_core_is_called() {
    let f = Fixture::new();
    let ex = f.ex();
    let mut luns = LunArray::new(&[lun("A1")]).unwrap();
    let mut ok = BOOL(0);
    let code = |r: windows_core::Result<()>| r.unwrap_err().code().0 as u32;
    // SAFETY: deliberately bad counts / NULLs the provider must reject without touching memory.
    unsafe {
        assert_eq!(
            code(ex.AreLunsSupported(-1, 0, std::ptr::null(), luns.as_mut_ptr(), &mut ok)),
            Hresult::E_INVALIDARG.0
        );
        assert_eq!(
            code(ex.AreLunsSupported(1 << 30, 0, std::ptr::null(), luns.as_mut_ptr(), &mut ok)),
            Hresult::E_INVALIDARG.0
        );
        assert_eq!(
            code(ex.AreLunsSupported(1, 0, std::ptr::null(), std::ptr::null_mut(), &mut ok)),
            Hresult::E_INVALIDARG.0
        );
        assert_eq!(
            code(ex.AreLunsSupported(
                1,
                0,
                std::ptr::null(),
                luns.as_mut_ptr(),
                std::ptr::null_mut()
            )),
            Hresult::E_INVALIDARG.0
        );
        assert_eq!(
            code(ex.OnLunEmpty(std::ptr::null(), std::ptr::null())),
            Hresult::E_INVALIDARG.0
        );
        assert_eq!(
            code(ex.OnLunStateChange(std::ptr::null(), std::ptr::null(), 2, 0)),
            Hresult::E_INVALIDARG.0
        );
        assert_eq!(
            code(
                ex.ResyncLuns(luns.as_ptr(), std::ptr::null(), 1)
                    .map(|_| ())
            ),
            Hresult::E_INVALIDARG.0
        );
    }
    // An identifier count beyond the limit is refused, not allocated.
    // SAFETY: writing a count field of our own structure.
    unsafe { (*luns.as_mut_ptr()).m_deviceIdDescriptor.m_cIdentifiers = 1_000_000 };
    // SAFETY: as above; the provider must reject the count before reading.
    let r = unsafe { ex.LocateLuns(std::slice::from_raw_parts(luns.as_ptr(), 1)) };
    // SAFETY: restore the real count so the array frees correctly.
    unsafe { (*luns.as_mut_ptr()).m_deviceIdDescriptor.m_cIdentifiers = 1 };
    assert_eq!(code(r), Hresult::E_INVALIDARG.0);
    assert!(
        f.double.names().is_empty(),
        "the core saw a bad call: {:?}",
        f.double.names()
    );
    drop(luns);
    f.assert_clean();
}

#[test]
fn full_vss_sequence_through_the_vtables_reaches_the_core_in_order_without_leaks() {
    let f = Fixture::new();
    let c = f.client();
    let set = uuid::Uuid::from_u128(0x5e7);
    let snap = uuid::Uuid::from_u128(0x5a9);
    let dev = devices(1);
    let ctx = SnapshotContext::from_i32(0x0001_0000 | 0x2); // transportable | persistent-ish
    c.on_load().unwrap();
    assert_eq!(c.get_provider_capabilities().unwrap(), 0x1234_5678_9abc);
    let mut l = vec![lun("A1")];
    assert!(c.are_luns_supported(ctx, &dev, &mut l).unwrap());
    assert_eq!(l[0].serial_number.as_deref(), Some(tagged("A1").as_str()));
    let mut l = vec![lun("A1")];
    c.begin_prepare_snapshot(set, snap, ctx, &dev, &mut l)
        .unwrap();
    c.end_prepare_snapshots(set).unwrap();
    c.pre_commit_snapshots(set).unwrap();
    c.commit_snapshots(set).unwrap();
    c.post_commit_snapshots(set, 1).unwrap();
    let mut dst = vec![LunInfo::default()];
    c.get_target_luns(&dev, &[lun("A1")], &mut dst).unwrap();
    assert_eq!(dst[0].serial_number.as_deref(), Some("snap-A1"));
    c.pre_final_commit_snapshots(set).unwrap();
    c.post_final_commit_snapshots(set).unwrap();
    c.locate_luns(&dst).unwrap();
    let mut found = dst[0].clone();
    assert!(c.fill_in_lun_info("\\\\?\\disk#2", &mut found).unwrap());
    assert_eq!(found.serial_number.as_deref(), Some("SNAP-A1"));
    c.on_lun_state_change(
        &dst,
        &[lun("A1")],
        HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS,
    )
    .unwrap();
    c.on_reuse_luns(&dst, &[lun("A1")]).unwrap();
    c.on_lun_empty("\\\\?\\disk#2", &dst[0]).unwrap();
    c.abort_snapshots(set).unwrap();
    assert_eq!(c.on_unload(false).unwrap(), UnloadAnswer::Ready);
    assert_eq!(
        f.double.names(),
        [
            "OnLoad",
            "GetProviderCapabilities",
            "AreLunsSupported",
            "BeginPrepareSnapshot",
            "EndPrepareSnapshots",
            "PreCommitSnapshots",
            "CommitSnapshots",
            "PostCommitSnapshots",
            "GetTargetLuns",
            "PreFinalCommitSnapshots",
            "PostFinalCommitSnapshots",
            "LocateLuns",
            "FillInLunInfo",
            "OnLunStateChange",
            "OnReuseLuns",
            "OnLunEmpty",
            "AbortSnapshots",
            "OnUnload",
        ]
    );
    let calls = f.double.calls.lock().unwrap().clone();
    assert_eq!(calls[3].1, format!("{set} {snap} {:#x} {dev:?}", ctx.0));
    assert_eq!(calls[7].1, format!("{set} 1"));
    assert_eq!(calls[13].1, "1 1 0x800");
    assert_eq!(calls[15].1, "\\\\?\\disk#2 Some(\"snap-A1\")");
    drop(c);
    f.assert_clean();
}

#[test]
fn veto_while_frozen_is_logged_only_after_post_commit_returns() {
    let f = Fixture::new();
    let c = f.client();
    let set = uuid::Uuid::from_u128(7);
    f.double
        .fail_with("CommitSnapshots", Hresult::VSS_E_PROVIDER_VETO);
    c.pre_commit_snapshots(set).unwrap();
    assert_eq!(c.commit_snapshots(set), Err(Hresult::VSS_E_PROVIDER_VETO));
    assert!(
        f.events.0.lock().unwrap().is_empty(),
        "event written inside the freeze window"
    );
    c.post_commit_snapshots(set, 1).unwrap();
    let ev = f.events.0.lock().unwrap().clone();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].method, "CommitSnapshots");
    assert!(ev[0].message().contains("0x80042306"));
    assert!(ev[0].message().contains("status"));
}

#[test]
fn veto_in_pre_commit_is_logged_when_abort_returns() {
    let f = Fixture::new();
    let c = f.client();
    let set = uuid::Uuid::from_u128(8);
    f.double
        .fail_with("PreCommitSnapshots", Hresult::VSS_E_PROVIDER_VETO);
    assert_eq!(
        c.pre_commit_snapshots(set),
        Err(Hresult::VSS_E_PROVIDER_VETO)
    );
    assert!(f.events.0.lock().unwrap().is_empty());
    c.abort_snapshots(set).unwrap();
    assert_eq!(f.events.0.lock().unwrap().len(), 1);
}

#[test]
fn veto_reported_by_the_core_is_written_once_with_its_text_after_the_freeze() {
    let f = Fixture::new();
    let log = VetoLog::new(f.events.clone());
    *f.double.events.lock().unwrap() = Some(log.clone());
    let unk: IUnknown = ComProvider::new(f.double.clone(), log)
        .into_interface()
        .cast()
        .unwrap();
    let c = ComClient::from_unknown(&unk).unwrap();
    let set = uuid::Uuid::from_u128(9);
    f.double
        .fail_with("CommitSnapshots", Hresult::VSS_E_PROVIDER_VETO);
    c.pre_commit_snapshots(set).unwrap();
    assert_eq!(c.commit_snapshots(set), Err(Hresult::VSS_E_PROVIDER_VETO));
    assert!(f.events.0.lock().unwrap().is_empty());
    c.post_commit_snapshots(set, 1).unwrap();
    let ev = f.events.0.lock().unwrap().clone();
    assert_eq!(ev.len(), 1, "one entry, not a generic one as well: {ev:?}");
    assert!(
        ev[0]
            .message()
            .contains("the array refused CommitSnapshots")
    );
}

/// A core that lengthens the serial number and shortens the product id.
struct Grower;

impl Grower {
    fn grow(luns: &mut [LunInfo]) {
        for l in luns {
            l.serial_number = Some("a much longer serial number than VSS passed".into());
            l.product_id = Some("thin".into());
        }
    }
}

#[test]
fn a_lengthened_field_is_left_as_received_as_it_would_overflow_across_processes() {
    let f = Fixture::new();
    let names = WideArray::new(&devices(1)).unwrap();
    let mut luns = LunArray::new(&[lun("A1")]).unwrap();
    let before = *luns.get(0);
    let allocs = f.allocs();
    let core = Arc::new(common::Custom(Box::new(|luns: &mut [LunInfo]| {
        Grower::grow(luns)
    })));
    let p: IVssHardwareSnapshotProviderEx =
        ComProvider::new(core, VetoLog::new(f.events.clone())).into_interface();
    let mut ok = BOOL(0);
    // SAFETY: one-element arrays.
    unsafe { p.AreLunsSupported(1, 0, names.as_ptr(), luns.as_mut_ptr(), &mut ok) }.unwrap();
    assert!(ok.as_bool());
    // The serial that would overflow is untouched; the shorter product id is written.
    assert_eq!(f.allocs(), allocs + 1);
    assert_eq!(luns.get(0).m_szSerialNumber, before.m_szSerialNumber);
    assert_ne!(luns.get(0).m_szProductId, before.m_szProductId);
    let back = luns.read().unwrap();
    assert_eq!(back[0].serial_number.as_deref(), Some("A1"));
    assert_eq!(back[0].product_id.as_deref(), Some("thin"));
    // Zeroed destinations (NULL fields) may receive anything.
    let mut dst = LunArray::new(&[LunInfo::default()]).unwrap();
    let src = LunArray::new(&[lun("A1")]).unwrap();
    // SAFETY: one-element arrays.
    unsafe { p.GetTargetLuns(1, names.as_ptr(), src.as_ptr(), dst.as_mut_ptr()) }.unwrap();
    assert_eq!(
        dst.read().unwrap()[0].serial_number.as_deref(),
        Some("a much longer serial number than VSS passed")
    );
    drop((names, luns, dst, src, p));
    f.assert_clean();
}

#[test]
fn on_unload_busy_is_s_false_unless_forced() {
    let f = Fixture::new();
    *f.double.busy.lock().unwrap() = true;
    let n: IVssProviderNotifications = f.unk.cast().unwrap();
    // SAFETY: raw vtable calls with by-value BOOLs.
    let (soft, forced) = unsafe {
        (
            (Interface::vtable(&n).OnUnload)(Interface::as_raw(&n), BOOL(0)),
            (Interface::vtable(&n).OnUnload)(Interface::as_raw(&n), BOOL(1)),
        )
    };
    assert_eq!(soft.0, 1, "S_FALSE when not forced");
    assert_eq!(forced.0, 0, "S_OK when forced");
}

#[test]
fn resync_returns_an_ivssasync_reporting_pending_cancelled_and_finished() {
    let f = Fixture::new();
    let c = f.client();
    let op = c.resync_luns(&[lun("S")], &[lun("T")]).unwrap();
    assert_eq!(
        op.query_status().unwrap(),
        (Hresult::VSS_S_ASYNC_PENDING, 40)
    );
    assert_eq!(op.cancel().unwrap(), Hresult::S_OK);
    assert_eq!(
        op.query_status().unwrap(),
        (Hresult::VSS_S_ASYNC_CANCELLED, 100)
    );
    assert_eq!(op.cancel().unwrap(), Hresult::VSS_S_ASYNC_CANCELLED);
    let op = c.resync_luns(&[lun("S")], &[lun("T")]).unwrap();
    op.wait(None).unwrap();
    assert_eq!(
        op.query_status().unwrap(),
        (Hresult::VSS_S_ASYNC_FINISHED, 100)
    );
    assert_eq!(op.cancel().unwrap(), Hresult::VSS_S_ASYNC_FINISHED);
    f.double
        .fail_with("ResyncLuns", Hresult::VSS_E_INSUFFICIENT_STORAGE);
    assert_eq!(
        c.resync_luns(&[lun("S")], &[lun("T")]).err(),
        Some(Hresult::VSS_E_INSUFFICIENT_STORAGE)
    );
    drop((op, c));
    f.assert_clean();
}

#[test]
fn class_factory_serves_every_interface_counts_objects_and_refuses_aggregation() {
    let f = Fixture::new();
    let double = f.double.clone();
    let lifetime = Lifetime::new();
    let factory = ProviderFactory::new(
        Arc::new(move || Ok(double.clone() as Arc<dyn HardwareProvider>)),
        VetoLog::new(f.events.clone()),
        lifetime.clone(),
    )
    .into_interface();
    // SAFETY: plain IClassFactory calls with valid out pointers.
    unsafe {
        let p: IVssHardwareSnapshotProviderEx = factory.CreateInstance(None).unwrap();
        assert_eq!(lifetime.objects(), 1);
        let _: IVssHardwareSnapshotProvider = p.cast().unwrap();
        let _: IVssProviderCreateSnapshotSet = p.cast().unwrap();
        let _: IVssProviderNotifications = p.cast().unwrap();
        drop(p);
        assert_eq!(lifetime.objects(), 0);
        let outer: IUnknown = ComProvider::new(f.double.clone(), VetoLog::new(f.events.clone()))
            .into_interface()
            .cast()
            .unwrap();
        let e = factory
            .CreateInstance::<_, IVssHardwareSnapshotProviderEx>(&outer)
            .unwrap_err();
        assert_eq!(e.code(), windows::Win32::Foundation::CLASS_E_NOAGGREGATION);
    }
}

#[test]
fn latin1_strings_and_binary_identifiers_survive_the_round_trip() {
    let f = Fixture::new();
    let mut l = lun("\u{e9}\u{ff}serial");
    l.identifiers[0].identifier = (0..=255).collect();
    let arr = LunArray::new(std::slice::from_ref(&l)).unwrap();
    // The C bytes are the Latin-1 chars one for one.
    // SAFETY: serial is a terminated CoTaskMem string.
    let bytes = unsafe { std::ffi::CStr::from_ptr(arr.get(0).m_szSerialNumber.cast()) };
    assert_eq!(bytes.to_bytes(), b"\xe9\xffserial");
    // SAFETY: built by alloc_lun.
    assert_eq!(unsafe { read_lun(arr.get(0)) }.unwrap(), l);
    drop(arr);
    f.assert_clean();
}
