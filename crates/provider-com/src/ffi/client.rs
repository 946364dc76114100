//! The Windows side of the contract as a caller: drives a provider through its COM vtables
//! exactly as vssvc does (CoTaskMem arrays, `[in,out]` structures read back and freed).
//!
//! [`ComClient`] implements [`HardwareProvider`], so anything that drives a provider through
//! that trait (the emulator's conformance catalogue, the tests) can drive a COM provider, in
//! process or across a process boundary, without change.

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext, VssId};
use windows::Win32::Storage::VirtualDiskService::VDS_LUN_INFORMATION;
use windows::Win32::Storage::Vss::{
    IVssAsync, IVssHardwareSnapshotProvider, IVssHardwareSnapshotProviderEx,
    IVssProviderCreateSnapshotSet, IVssProviderNotifications,
};
use windows::Win32::System::Com::{CLSCTX_LOCAL_SERVER, CoCreateInstance, CoTaskMemFree};
use windows_core::{BOOL, GUID, HRESULT, IUnknown, Interface};

use super::{CoBuf, FfiError, alloc_lun, free_lun, read_lun};
use crate::ids::to_guid;

fn code(e: &windows_core::Error) -> Hresult {
    Hresult(e.code().0 as u32)
}

fn oom(e: FfiError) -> Hresult {
    e.hresult()
}

/// A CoTaskMem array of CoTaskMem `VDS_LUN_INFORMATION`, as VSS builds them.
pub struct LunArray {
    ptr: *mut VDS_LUN_INFORMATION,
    len: usize,
}

impl LunArray {
    pub fn new(luns: &[LunInfo]) -> Result<Self, FfiError> {
        let array = CoBuf::alloc(luns.len() * std::mem::size_of::<VDS_LUN_INFORMATION>())?;
        let out = Self {
            ptr: array.release(),
            len: 0,
        };
        let mut out = out;
        for l in luns {
            let v = alloc_lun(l)?;
            // SAFETY: out.len < luns.len() elements were allocated.
            unsafe { out.ptr.add(out.len).write(v) };
            out.len += 1;
        }
        Ok(out)
    }

    pub fn as_ptr(&self) -> *const VDS_LUN_INFORMATION {
        self.ptr
    }

    pub fn as_mut_ptr(&mut self) -> *mut VDS_LUN_INFORMATION {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element `i` as the provider left it.
    pub fn get(&self, i: usize) -> &VDS_LUN_INFORMATION {
        assert!(i < self.len);
        // SAFETY: i < len initialised elements.
        unsafe { &*self.ptr.add(i) }
    }

    /// Reads every element back.
    pub fn read(&self) -> Result<Vec<LunInfo>, FfiError> {
        // SAFETY: every element was built by alloc_lun and possibly rewritten by the provider
        // under the same rules.
        (0..self.len)
            .map(|i| unsafe { read_lun(self.get(i)) })
            .collect()
    }
}

impl Drop for LunArray {
    fn drop(&mut self) {
        for i in 0..self.len {
            // SAFETY: i < len elements; their pointers are CoTaskMem (docs/vss-contract.md §5.2).
            unsafe { free_lun(&mut *self.ptr.add(i)) };
        }
        // SAFETY: the array came from CoTaskMemAlloc.
        unsafe { CoTaskMemFree(Some(self.ptr.cast_const().cast())) };
    }
}

/// A CoTaskMem array of CoTaskMem `wchar_t*` device names.
pub struct WideArray {
    ptr: *mut *const u16,
    len: usize,
}

impl WideArray {
    pub fn new(names: &[String]) -> Result<Self, FfiError> {
        let array = CoBuf::alloc(names.len() * std::mem::size_of::<*const u16>())?;
        let mut out = Self {
            ptr: array.release(),
            len: 0,
        };
        for n in names {
            let w: Vec<u16> = n.encode_utf16().chain(Some(0)).collect();
            let b = CoBuf::alloc(w.len() * 2)?;
            // SAFETY: b holds w.len() u16 units.
            unsafe { ptr::copy_nonoverlapping(w.as_ptr(), b.0.cast::<u16>(), w.len()) };
            // SAFETY: out.len < names.len() slots were allocated.
            unsafe { out.ptr.add(out.len).write(b.release::<u16>()) };
            out.len += 1;
        }
        Ok(out)
    }

    pub fn as_ptr(&self) -> *const *const u16 {
        self.ptr
    }
}

impl Drop for WideArray {
    fn drop(&mut self) {
        for i in 0..self.len {
            // SAFETY: each slot holds a CoTaskMem string.
            unsafe { CoTaskMemFree(Some((*self.ptr.add(i)).cast::<c_void>())) };
        }
        // SAFETY: the array came from CoTaskMemAlloc.
        unsafe { CoTaskMemFree(Some(self.ptr.cast_const().cast())) };
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

/// A provider object seen through its three interfaces.
pub struct ComClient {
    ex: IVssHardwareSnapshotProviderEx,
    set: IVssProviderCreateSnapshotSet,
    notify: IVssProviderNotifications,
}

// SAFETY: the interfaces are used from the multithreaded apartment only (the client
// initialises COM with COINIT_MULTITHREADED); MTA pointers and proxies may be called from any
// MTA thread.
unsafe impl Send for ComClient {}
// SAFETY: as above; COM objects in the MTA are free-threaded.
unsafe impl Sync for ComClient {}

impl ComClient {
    /// Queries the three provider interfaces, as VSS does after activation.
    pub fn from_unknown(unk: &IUnknown) -> windows_core::Result<Self> {
        Ok(Self {
            ex: unk.cast()?,
            set: unk.cast()?,
            notify: unk.cast()?,
        })
    }

    /// `CoCreateInstance(clsid, CLSCTX_LOCAL_SERVER)`, as vssvc activates providers.
    pub fn create_local_server(clsid: &GUID) -> windows_core::Result<Self> {
        // SAFETY: clsid is valid for the call; COM is initialised by the caller.
        let unk: IUnknown = unsafe { CoCreateInstance(clsid, None, CLSCTX_LOCAL_SERVER) }?;
        Self::from_unknown(&unk)
    }

    /// The base interface (VSS on Windows Server 2003 asks for it).
    pub fn base(&self) -> windows_core::Result<IVssHardwareSnapshotProvider> {
        self.ex.cast()
    }

    fn in_out_result(
        luns: &mut [LunInfo],
        array: &LunArray,
        r: windows_core::Result<()>,
    ) -> Result<(), Hresult> {
        r.map_err(|e| code(&e))?;
        let back = array.read().map_err(oom)?;
        luns.clone_from_slice(&back);
        Ok(())
    }
}

impl HardwareProvider for ComClient {
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        let names = WideArray::new(devices).map_err(oom)?;
        let mut array = LunArray::new(luns).map_err(oom)?;
        let mut ok = BOOL(0);
        // SAFETY: arrays of luns.len() elements built as VSS builds them; `ok` is writable.
        let r = unsafe {
            self.ex.AreLunsSupported(
                luns.len() as i32,
                context.0 as i32,
                names.as_ptr(),
                array.as_mut_ptr(),
                &mut ok,
            )
        };
        Self::in_out_result(luns, &array, r)?;
        Ok(ok.as_bool())
    }

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        let names = WideArray::new(devices).map_err(oom)?;
        let mut array = LunArray::new(luns).map_err(oom)?;
        // SAFETY: as in are_luns_supported.
        let r = unsafe {
            self.ex.BeginPrepareSnapshot(
                to_guid(&set_id),
                to_guid(&snapshot_id),
                context.0 as i32,
                luns.len() as i32,
                names.as_ptr(),
                array.as_mut_ptr(),
            )
        };
        Self::in_out_result(luns, &array, r)
    }

    fn fill_in_lun_info(&self, device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        let name = wide(device);
        let mut array = LunArray::new(std::slice::from_ref(lun)).map_err(oom)?;
        let mut ok = BOOL(0);
        // SAFETY: a terminated name, one structure, a writable BOOL.
        let r = unsafe {
            self.ex
                .FillInLunInfo(name.as_ptr(), array.as_mut_ptr(), &mut ok)
        };
        Self::in_out_result(std::slice::from_mut(lun), &array, r)?;
        Ok(ok.as_bool())
    }

    fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        if sources.len() != destinations.len() {
            return Err(Hresult::E_INVALIDARG);
        }
        let names = WideArray::new(devices).map_err(oom)?;
        let src = LunArray::new(sources).map_err(oom)?;
        let mut dst = LunArray::new(destinations).map_err(oom)?;
        // SAFETY: parallel arrays of sources.len() elements.
        let r = unsafe {
            self.ex.GetTargetLuns(
                sources.len() as i32,
                names.as_ptr(),
                src.as_ptr(),
                dst.as_mut_ptr(),
            )
        };
        Self::in_out_result(destinations, &dst, r)
    }

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        let array = LunArray::new(luns).map_err(oom)?;
        // SAFETY: the slice covers the array's initialised elements.
        let slice = unsafe { std::slice::from_raw_parts(array.as_ptr(), array.len()) };
        // SAFETY: read-only [in] array.
        unsafe { self.ex.LocateLuns(slice) }.map_err(|e| code(&e))
    }

    fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        let name = wide(device);
        let array = LunArray::new(std::slice::from_ref(lun)).map_err(oom)?;
        // SAFETY: a terminated name and one structure.
        unsafe { self.ex.OnLunEmpty(name.as_ptr(), array.as_ptr()) }.map_err(|e| code(&e))
    }

    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        // SAFETY: no pointer arguments.
        unsafe { self.ex.GetProviderCapabilities() }.map_err(|e| code(&e))
    }

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult> {
        let (s, o) = pair(snapshot_luns, original_luns)?;
        // SAFETY: parallel arrays of s.len() elements.
        unsafe {
            self.ex
                .OnLunStateChange(s.as_ptr(), o.as_ptr(), s.len() as u32, flags.bits())
        }
        .map_err(|e| code(&e))
    }

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        let (s, t) = pair(sources, targets)?;
        // SAFETY: parallel arrays of s.len() elements.
        let a = unsafe { self.ex.ResyncLuns(s.as_ptr(), t.as_ptr(), s.len() as u32) }
            .map_err(|e| code(&e))?;
        Ok(Arc::new(ClientAsync(a)))
    }

    fn on_reuse_luns(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
    ) -> Result<(), Hresult> {
        let (s, o) = pair(snapshot_luns, original_luns)?;
        // SAFETY: parallel arrays of s.len() elements.
        unsafe { self.ex.OnReuseLuns(s.as_ptr(), o.as_ptr(), s.len() as u32) }.map_err(|e| code(&e))
    }

    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        // SAFETY: by-value GUID.
        unsafe { self.set.EndPrepareSnapshots(to_guid(&set_id)) }.map_err(|e| code(&e))
    }

    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        // SAFETY: by-value GUID.
        unsafe { self.set.PreCommitSnapshots(to_guid(&set_id)) }.map_err(|e| code(&e))
    }

    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        // SAFETY: by-value GUID.
        unsafe { self.set.CommitSnapshots(to_guid(&set_id)) }.map_err(|e| code(&e))
    }

    fn post_commit_snapshots(&self, set_id: VssId, snapshot_count: i32) -> Result<(), Hresult> {
        // SAFETY: by-value arguments.
        unsafe {
            self.set
                .PostCommitSnapshots(to_guid(&set_id), snapshot_count)
        }
        .map_err(|e| code(&e))
    }

    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        // SAFETY: by-value GUID.
        unsafe { self.set.PreFinalCommitSnapshots(to_guid(&set_id)) }.map_err(|e| code(&e))
    }

    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        // SAFETY: by-value GUID.
        unsafe { self.set.PostFinalCommitSnapshots(to_guid(&set_id)) }.map_err(|e| code(&e))
    }

    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        // SAFETY: by-value GUID.
        unsafe { self.set.AbortSnapshots(to_guid(&set_id)) }.map_err(|e| code(&e))
    }

    fn on_load(&self) -> Result<(), Hresult> {
        // SAFETY: a NULL callback, as VSS passes.
        unsafe { self.notify.OnLoad(None::<&IUnknown>) }.map_err(|e| code(&e))
    }

    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult> {
        // The raw vtable call: the wrapper would fold S_FALSE into success.
        // SAFETY: a live interface pointer and a by-value BOOL.
        let h: HRESULT = unsafe {
            (Interface::vtable(&self.notify).OnUnload)(
                Interface::as_raw(&self.notify),
                BOOL::from(force),
            )
        };
        match Hresult(h.0 as u32) {
            Hresult::S_OK => Ok(UnloadAnswer::Ready),
            Hresult::S_FALSE => Ok(UnloadAnswer::Busy),
            other => Err(other),
        }
    }
}

fn pair(a: &[LunInfo], b: &[LunInfo]) -> Result<(LunArray, LunArray), Hresult> {
    if a.len() != b.len() {
        return Err(Hresult::E_INVALIDARG);
    }
    Ok((
        LunArray::new(a).map_err(oom)?,
        LunArray::new(b).map_err(oom)?,
    ))
}

/// An `IVssAsync` returned by a provider, as a core [`AsyncOperation`].
pub struct ClientAsync(IVssAsync);

// SAFETY: see ComClient: used from the MTA only.
unsafe impl Send for ClientAsync {}
// SAFETY: as above.
unsafe impl Sync for ClientAsync {}

impl AsyncOperation for ClientAsync {
    fn wait(&self, timeout: Option<Duration>) -> Result<(), Hresult> {
        let ms = timeout.map_or(u32::MAX, |d| d.as_millis().min(u32::MAX as u128 - 1) as u32);
        // SAFETY: by-value argument.
        unsafe { self.0.Wait(ms) }.map_err(|e| code(&e))
    }

    fn query_status(&self) -> Result<(Hresult, i32), Hresult> {
        let mut h = HRESULT(0);
        let mut progress = 0i32;
        // SAFETY: two writable out pointers.
        unsafe { self.0.QueryStatus(&mut h, &mut progress) }.map_err(|e| code(&e))?;
        Ok((Hresult(h.0 as u32), progress))
    }

    fn cancel(&self) -> Result<Hresult, Hresult> {
        // Raw call: VSS_S_ASYNC_FINISHED / _CANCELLED are success codes the wrapper would hide.
        // SAFETY: a live interface pointer.
        let h: HRESULT = unsafe { (Interface::vtable(&self.0).Cancel)(Interface::as_raw(&self.0)) };
        let h = Hresult(h.0 as u32);
        if h.0 & 0x8000_0000 != 0 {
            Err(h)
        } else {
            Ok(h)
        }
    }
}
