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
/// - AreLunsSupported / BeginPrepareSnapshot append `@<device>` to each serial number;
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
                message: format!("the array refused {m}. Check the array."),
            });
        }
        Err(h)
    }
}

fn tag(devices: &[String], luns: &mut [LunInfo]) {
    for (d, l) in devices.iter().zip(luns.iter_mut()) {
        let s = l.serial_number.clone().unwrap_or_default();
        l.serial_number = Some(format!("{s}@{d}"));
    }
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
