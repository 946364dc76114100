//! Test doubles shared by the Windows tests: a recording `HardwareProvider` and an
//! `IMallocSpy` that tracks every CoTaskMem block.
#![allow(dead_code, clippy::not_unsafe_ptr_arg_deref)]

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::lun::{CodeSet, IdentifierType, StorageIdentifier};
use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext, VssId};
use windows::Win32::System::Com::{IMallocSpy, IMallocSpy_Impl};
use windows_core::{BOOL, implement};

/// A LUN as an array would report it.
pub fn lun(serial: &str) -> LunInfo {
    LunInfo {
        version: 1,
        device_type: 0,
        command_queueing: true,
        bus_type: vss::lun::BusType::ISCSI,
        vendor_id: Some("SHADOWLN".into()),
        product_id: Some("thin volume".into()),
        product_revision: Some("0001".into()),
        serial_number: Some(serial.into()),
        id_descriptor_version: 1,
        identifiers: vec![StorageIdentifier {
            code_set: CodeSet::BINARY,
            id_type: IdentifierType::NAA,
            identifier: vec![
                0x60, 0x01, 0x40, 0x50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xfe,
            ],
        }],
        interconnects: vec![vss::lun::Interconnect {
            address_type: 5,
            port: vec![1, 2],
            address: vec![3, 4, 5],
        }],
        ..LunInfo::default()
    }
}

/// One recorded call: method name and a printable summary of its arguments.
pub type Call = (String, String);

/// A `HardwareProvider` that records every call and answers predictably:
/// - AreLunsSupported / BeginPrepareSnapshot reverse each serial number (a rewrite that keeps
///   the length, as the cross-process rule requires);
/// - FillInLunInfo upper-cases the serial number and answers TRUE for serials starting "SNAP";
/// - GetTargetLuns fills each destination from its source with serial `snap-<serial>` and a
///   new NAA identifier;
/// - any method listed in `fail` returns that HRESULT instead (after changing its copy).
#[derive(Default)]
pub struct Double {
    pub calls: Mutex<Vec<Call>>,
    pub fail: Mutex<HashMap<&'static str, Hresult>>,
    pub busy: Mutex<bool>,
    /// When set, every injected failure is also reported here, as the real core does.
    pub events: Mutex<Option<Arc<dyn provider::EventSink>>>,
}

impl Double {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn fail_with(&self, method: &'static str, h: Hresult) {
        self.fail.lock().unwrap().insert(method, h);
    }

    pub fn names(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }

    fn rec(&self, m: &'static str, args: String) -> Result<(), Hresult> {
        self.calls.lock().unwrap().push((m.into(), args));
        let Some(h) = self.fail.lock().unwrap().get(m).copied() else {
            return Ok(());
        };
        if let Some(sink) = self.events.lock().unwrap().as_ref() {
            let method = *vss::contract::Method::ALL
                .iter()
                .find(|x| x.name() == m)
                .unwrap();
            sink.report(&provider::ProviderEvent {
                method,
                hresult: h,
                class: provider::FailureClass::SetVetoed,
                detail: format!("the array refused {m}"),
                message: format!("the array refused {m}. Check the array."),
            });
        }
        Err(h)
    }
}

fn tag(_devices: &[String], luns: &mut [LunInfo]) {
    for l in luns.iter_mut() {
        l.serial_number = l.serial_number.as_ref().map(|s| s.chars().rev().collect());
    }
}

/// What [`Double`] makes of a serial number in AreLunsSupported / BeginPrepareSnapshot.
pub fn tagged(serial: &str) -> String {
    serial.chars().rev().collect()
}

impl HardwareProvider for Double {
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        tag(devices, luns);
        self.rec("AreLunsSupported", format!("{:#x} {devices:?}", context.0))?;
        Ok(true)
    }

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        tag(devices, luns);
        self.rec(
            "BeginPrepareSnapshot",
            format!("{set_id} {snapshot_id} {:#x} {devices:?}", context.0),
        )
    }

    fn fill_in_lun_info(&self, device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        lun.serial_number = lun.serial_number.as_ref().map(|s| s.to_uppercase());
        self.rec("FillInLunInfo", device.to_string())?;
        Ok(lun
            .serial_number
            .as_deref()
            .is_some_and(|s| s.starts_with("SNAP")))
    }

    fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        for (i, (s, d)) in sources.iter().zip(destinations.iter_mut()).enumerate() {
            *d = LunInfo {
                serial_number: Some(format!(
                    "snap-{}",
                    s.serial_number.clone().unwrap_or_default()
                )),
                identifiers: vec![StorageIdentifier {
                    code_set: CodeSet::BINARY,
                    id_type: IdentifierType::NAA,
                    identifier: vec![0x60, 0xAA, i as u8, 1, 2, 3, 4, 5],
                }],
                interconnects: d.interconnects.clone(),
                ..s.clone()
            };
        }
        self.rec("GetTargetLuns", format!("{devices:?}"))
    }

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        let s: Vec<_> = luns.iter().map(|l| l.serial_number.clone()).collect();
        self.rec("LocateLuns", format!("{s:?}"))
    }

    fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        self.rec("OnLunEmpty", format!("{device} {:?}", lun.serial_number))
    }

    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        self.rec("GetProviderCapabilities", String::new())?;
        Ok(0x1234_5678_9abc)
    }

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult> {
        self.rec(
            "OnLunStateChange",
            format!(
                "{} {} {:#x}",
                snapshot_luns.len(),
                original_luns.len(),
                flags.bits()
            ),
        )
    }

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        self.rec("ResyncLuns", format!("{} {}", sources.len(), targets.len()))?;
        Ok(Arc::new(Op::default()))
    }

    fn on_reuse_luns(&self, s: &[LunInfo], o: &[LunInfo]) -> Result<(), Hresult> {
        self.rec("OnReuseLuns", format!("{} {}", s.len(), o.len()))
    }

    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.rec("EndPrepareSnapshots", set_id.to_string())
    }
    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.rec("PreCommitSnapshots", set_id.to_string())
    }
    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.rec("CommitSnapshots", set_id.to_string())
    }
    fn post_commit_snapshots(&self, set_id: VssId, n: i32) -> Result<(), Hresult> {
        self.rec("PostCommitSnapshots", format!("{set_id} {n}"))
    }
    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.rec("PreFinalCommitSnapshots", set_id.to_string())
    }
    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.rec("PostFinalCommitSnapshots", set_id.to_string())
    }
    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.rec("AbortSnapshots", set_id.to_string())
    }
    fn on_load(&self) -> Result<(), Hresult> {
        self.rec("OnLoad", String::new())
    }
    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult> {
        self.rec("OnUnload", force.to_string())?;
        Ok(if *self.busy.lock().unwrap() {
            UnloadAnswer::Busy
        } else {
            UnloadAnswer::Ready
        })
    }
}

/// A resync job: pending until cancelled or `finish`ed.
#[derive(Default)]
pub struct Op {
    pub state: Mutex<Option<Hresult>>,
}

impl AsyncOperation for Op {
    fn wait(&self, _timeout: Option<Duration>) -> Result<(), Hresult> {
        let mut s = self.state.lock().unwrap();
        s.get_or_insert(Hresult::VSS_S_ASYNC_FINISHED);
        Ok(())
    }
    fn query_status(&self) -> Result<(Hresult, i32), Hresult> {
        Ok(match *self.state.lock().unwrap() {
            None => (Hresult::VSS_S_ASYNC_PENDING, 40),
            Some(h) => (h, 100),
        })
    }
    fn cancel(&self) -> Result<Hresult, Hresult> {
        let mut s = self.state.lock().unwrap();
        Ok(match *s {
            Some(h) => h,
            None => {
                *s = Some(Hresult::VSS_S_ASYNC_CANCELLED);
                Hresult::S_OK
            }
        })
    }
}

/// What the spy saw.
#[derive(Debug, Default)]
pub struct SpyState {
    pub live: HashSet<usize>,
    pub allocs: usize,
    pub frees: usize,
    /// Frees of pointers that were not live spied blocks: double frees or foreign frees.
    pub bad_frees: Vec<usize>,
    /// When set, allocation number N (counted from 1) and later fail.
    pub fail_from: Option<usize>,
    pending_free: usize,
}

/// An `IMallocSpy` recording every CoTaskMem allocation and free.
#[implement(IMallocSpy)]
pub struct Spy(pub Arc<Mutex<SpyState>>);

impl IMallocSpy_Impl for Spy_Impl {
    fn PreAlloc(&self, cb: usize) -> usize {
        let mut s = self.0.lock().unwrap();
        s.allocs += 1;
        match s.fail_from {
            // Returning 0 for a non-zero request makes the allocation fail.
            Some(n) if s.allocs >= n => 0,
            _ => cb,
        }
    }
    fn PostAlloc(&self, p: *const c_void) -> *mut c_void {
        if !p.is_null() {
            self.0.lock().unwrap().live.insert(p as usize);
        }
        p as *mut c_void
    }
    fn PreFree(&self, p: *const c_void, _spyed: BOOL) -> *mut c_void {
        if !p.is_null() {
            let mut s = self.0.lock().unwrap();
            s.frees += 1;
            if !s.live.remove(&(p as usize)) {
                s.bad_frees.push(p as usize);
            }
            s.pending_free = p as usize;
        }
        p as *mut c_void
    }
    fn PostFree(&self, _spyed: BOOL) {}
    fn PreRealloc(
        &self,
        p: *const c_void,
        cb: usize,
        pnew: *mut *mut c_void,
        _spyed: BOOL,
    ) -> usize {
        // SAFETY: COM passes a writable out pointer.
        unsafe { *pnew = p as *mut c_void };
        self.0.lock().unwrap().live.remove(&(p as usize));
        cb
    }
    fn PostRealloc(&self, p: *const c_void, _spyed: BOOL) -> *mut c_void {
        if !p.is_null() {
            self.0.lock().unwrap().live.insert(p as usize);
        }
        p as *mut c_void
    }
    fn PreGetSize(&self, p: *const c_void, _spyed: BOOL) -> *mut c_void {
        p as *mut c_void
    }
    fn PostGetSize(&self, cb: usize, _spyed: BOOL) -> usize {
        cb
    }
    fn PreDidAlloc(&self, p: *const c_void, _spyed: BOOL) -> *mut c_void {
        p as *mut c_void
    }
    fn PostDidAlloc(&self, _p: *const c_void, _spyed: BOOL, actual: i32) -> i32 {
        actual
    }
    fn PreHeapMinimize(&self) {}
    fn PostHeapMinimize(&self) {}
}

/// The device names the out-of-process client sends.
pub fn sample_devices(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("\\\\?\\mpio#disk&ven_shadowln&prod_thin_volume#{i}&\u{e9}"))
        .collect()
}

/// The LUNs the out-of-process client sends.
pub fn sample_luns(n: usize) -> Vec<LunInfo> {
    (0..n).map(|i| lun(&format!("SN{i:04}"))).collect()
}

/// What [`Double::get_target_luns`] makes of [`sample_luns`].
pub fn sample_targets(n: usize) -> Vec<LunInfo> {
    let mut t = vec![LunInfo::default(); n];
    Double::default()
        .get_target_luns(&sample_devices(n), &sample_luns(n), &mut t)
        .unwrap();
    t
}

/// A [`Double`] that also checks, on the far side of the process boundary, that every
/// argument arrived exactly as the client sent it. A mismatch fails the call with
/// `VSS_E_UNEXPECTED`; `GetProviderCapabilities` answers how many calls were checked.
#[derive(Default)]
pub struct FarSide {
    pub inner: Double,
    pub checked: std::sync::atomic::AtomicU64,
}

impl FarSide {
    fn check(&self, ok: bool, what: &str) -> Result<(), Hresult> {
        if ok {
            self.checked
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        } else {
            eprintln!("far side: {what} did not arrive as sent");
            Err(Hresult::VSS_E_UNEXPECTED)
        }
    }
}

impl HardwareProvider for FarSide {
    fn are_luns_supported(
        &self,
        c: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        let n = luns.len();
        self.check(
            devices == sample_devices(n).as_slice() && luns == sample_luns(n).as_slice(),
            "AreLunsSupported arguments",
        )?;
        self.inner.are_luns_supported(c, devices, luns)
    }
    fn begin_prepare_snapshot(
        &self,
        s: VssId,
        i: VssId,
        c: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        let n = luns.len();
        self.check(
            devices == sample_devices(n).as_slice() && luns == sample_luns(n).as_slice(),
            "BeginPrepareSnapshot arguments",
        )?;
        self.inner.begin_prepare_snapshot(s, i, c, devices, luns)
    }
    fn fill_in_lun_info(&self, device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        self.check(
            device == "\\\\?\\disk#snap" && *lun == sample_targets(1)[0],
            "FillInLunInfo arguments",
        )?;
        self.inner.fill_in_lun_info(device, lun)
    }
    fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        let n = sources.len();
        self.check(
            devices == sample_devices(n).as_slice()
                && sources == sample_luns(n).as_slice()
                && destinations.iter().all(|d| *d == LunInfo::default()),
            "GetTargetLuns arguments",
        )?;
        self.inner.get_target_luns(devices, sources, destinations)
    }
    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        self.check(
            luns == sample_targets(luns.len()).as_slice(),
            "LocateLuns arguments",
        )?;
        self.inner.locate_luns(luns)
    }
    fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        self.check(
            device == "\\\\?\\disk#snap" && *lun == sample_targets(1)[0],
            "OnLunEmpty arguments",
        )?;
        self.inner.on_lun_empty(device, lun)
    }
    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        Ok(self.checked.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn on_lun_state_change(
        &self,
        s: &[LunInfo],
        o: &[LunInfo],
        f: HardwareOptions,
    ) -> Result<(), Hresult> {
        self.check(
            s == sample_targets(s.len()).as_slice() && o == sample_luns(o.len()).as_slice(),
            "OnLunStateChange arguments",
        )?;
        self.inner.on_lun_state_change(s, o, f)
    }
    fn resync_luns(
        &self,
        s: &[LunInfo],
        t: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        self.check(
            s == sample_targets(s.len()).as_slice() && t == sample_luns(t.len()).as_slice(),
            "ResyncLuns arguments",
        )?;
        self.inner.resync_luns(s, t)
    }
    fn on_reuse_luns(&self, s: &[LunInfo], o: &[LunInfo]) -> Result<(), Hresult> {
        self.inner.on_reuse_luns(s, o)
    }
    fn end_prepare_snapshots(&self, s: VssId) -> Result<(), Hresult> {
        self.inner.end_prepare_snapshots(s)
    }
    fn pre_commit_snapshots(&self, s: VssId) -> Result<(), Hresult> {
        self.inner.pre_commit_snapshots(s)
    }
    fn commit_snapshots(&self, s: VssId) -> Result<(), Hresult> {
        if s == uuid::Uuid::from_u128(0xbad) {
            return Err(Hresult::VSS_E_PROVIDER_VETO);
        }
        self.inner.commit_snapshots(s)
    }
    fn post_commit_snapshots(&self, s: VssId, n: i32) -> Result<(), Hresult> {
        self.inner.post_commit_snapshots(s, n)
    }
    fn pre_final_commit_snapshots(&self, s: VssId) -> Result<(), Hresult> {
        self.inner.pre_final_commit_snapshots(s)
    }
    fn post_final_commit_snapshots(&self, s: VssId) -> Result<(), Hresult> {
        self.inner.post_final_commit_snapshots(s)
    }
    fn abort_snapshots(&self, s: VssId) -> Result<(), Hresult> {
        self.inner.abort_snapshots(s)
    }
    fn on_load(&self) -> Result<(), Hresult> {
        self.inner.on_load()
    }
    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult> {
        self.inner.on_unload(force)
    }
}

/// A core whose in/out methods apply `f` to the LUNs they receive and succeed.
pub struct Custom(pub Box<LunEdit>);

/// What [`Custom`] does to the LUNs it receives.
pub type LunEdit = dyn Fn(&mut [LunInfo]) + Send + Sync;

impl HardwareProvider for Custom {
    fn are_luns_supported(
        &self,
        _: SnapshotContext,
        _: &[String],
        l: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        (self.0)(l);
        Ok(true)
    }
    fn begin_prepare_snapshot(
        &self,
        _: VssId,
        _: VssId,
        _: SnapshotContext,
        _: &[String],
        l: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        (self.0)(l);
        Ok(())
    }
    fn fill_in_lun_info(&self, _: &str, l: &mut LunInfo) -> Result<bool, Hresult> {
        (self.0)(std::slice::from_mut(l));
        Ok(true)
    }
    fn get_target_luns(
        &self,
        _: &[String],
        _: &[LunInfo],
        d: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        (self.0)(d);
        Ok(())
    }
    fn locate_luns(&self, _: &[LunInfo]) -> Result<(), Hresult> {
        Ok(())
    }
    fn on_lun_empty(&self, _: &str, _: &LunInfo) -> Result<(), Hresult> {
        Ok(())
    }
    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        Ok(0)
    }
    fn on_lun_state_change(
        &self,
        _: &[LunInfo],
        _: &[LunInfo],
        _: HardwareOptions,
    ) -> Result<(), Hresult> {
        Ok(())
    }
    fn resync_luns(
        &self,
        _: &[LunInfo],
        _: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        Ok(Arc::new(Op::default()))
    }
    fn on_reuse_luns(&self, _: &[LunInfo], _: &[LunInfo]) -> Result<(), Hresult> {
        Ok(())
    }
    fn end_prepare_snapshots(&self, _: VssId) -> Result<(), Hresult> {
        Ok(())
    }
    fn pre_commit_snapshots(&self, _: VssId) -> Result<(), Hresult> {
        Ok(())
    }
    fn commit_snapshots(&self, _: VssId) -> Result<(), Hresult> {
        Ok(())
    }
    fn post_commit_snapshots(&self, _: VssId, _: i32) -> Result<(), Hresult> {
        Ok(())
    }
    fn pre_final_commit_snapshots(&self, _: VssId) -> Result<(), Hresult> {
        Ok(())
    }
    fn post_final_commit_snapshots(&self, _: VssId) -> Result<(), Hresult> {
        Ok(())
    }
    fn abort_snapshots(&self, _: VssId) -> Result<(), Hresult> {
        Ok(())
    }
    fn on_load(&self) -> Result<(), Hresult> {
        Ok(())
    }
    fn on_unload(&self, _: bool) -> Result<UnloadAnswer, Hresult> {
        Ok(UnloadAnswer::Ready)
    }
}
