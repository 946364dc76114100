//! The COM objects VSS talks to: the provider object, `IVssAsync` and the class factory.

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext, VssId};
use windows::Win32::Foundation::{CLASS_E_NOAGGREGATION, E_POINTER};
use windows::Win32::Storage::VirtualDiskService::VDS_LUN_INFORMATION;
use windows::Win32::Storage::Vss::{
    IVssAsync, IVssAsync_Impl, IVssHardwareSnapshotProvider_Impl, IVssHardwareSnapshotProviderEx,
    IVssHardwareSnapshotProviderEx_Impl, IVssProviderCreateSnapshotSet,
    IVssProviderCreateSnapshotSet_Impl, IVssProviderNotifications, IVssProviderNotifications_Impl,
};
use windows::Win32::System::Com::{IClassFactory, IClassFactory_Impl};
use windows_core::{BOOL, GUID, HRESULT, IUnknown, Interface, Ref, implement};

use crate::ids::to_uuid;
use crate::server::{Lifetime, LifetimeGuard};
use crate::veto::VetoLog;

use super::{FfiError, MAX_LUNS, check_count, read_devices, read_luns, read_wstr, write_back};

// ---------------------------------------------------------------------------------------------
// HRESULT plumbing

fn hr(h: Hresult) -> windows_core::Error {
    let code = if h.0 == 0 {
        Hresult::E_UNEXPECTED.0
    } else {
        h.0
    };
    windows_core::Error::from_hresult(HRESULT(code as i32))
}

fn ffi_err(method: &'static str, e: FfiError) -> windows_core::Error {
    tracing::error!(method, error = %e, "bad arguments from the caller");
    hr(e.hresult())
}

/// Writes `*p = v` when `p` is not NULL; NULL is `E_INVALIDARG`.
fn write_out<T>(p: *mut T, v: T, what: &'static str) -> Result<(), FfiError> {
    if p.is_null() {
        return Err(FfiError::Null { what });
    }
    // SAFETY: p is a non-NULL [out] pointer supplied by the caller.
    unsafe { p.write(v) };
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The provider object

/// The COM object VSS talks to: converts arguments and delegates to the core.
#[implement(
    IVssHardwareSnapshotProviderEx,
    IVssProviderCreateSnapshotSet,
    IVssProviderNotifications
)]
pub struct ComProvider {
    core: Arc<dyn HardwareProvider>,
    veto: Arc<VetoLog>,
    _alive: Option<LifetimeGuard>,
}

impl ComProvider {
    /// A provider object over `core`; vetoes the core did not report itself go to `veto`
    /// (normally the same log the core reports to).
    pub fn new(core: Arc<dyn HardwareProvider>, veto: Arc<VetoLog>) -> Self {
        Self {
            core,
            veto,
            _alive: None,
        }
    }

    /// The same, keeping the server process alive while the object exists.
    pub fn with_lifetime(
        core: Arc<dyn HardwareProvider>,
        veto: Arc<VetoLog>,
        lifetime: &Arc<Lifetime>,
    ) -> Self {
        Self {
            _alive: Some(lifetime.guard()),
            ..Self::new(core, veto)
        }
    }

    /// The object as the interface VSS asks for first.
    pub fn into_interface(self) -> IVssHardwareSnapshotProviderEx {
        self.into()
    }

    /// Runs one core call, logs its outcome and makes sure a veto has an event-log entry.
    fn finish<T>(
        &self,
        method: &'static str,
        set: Option<&GUID>,
        call: impl FnOnce() -> Result<T, Hresult>,
    ) -> windows_core::Result<T> {
        let reported = self.veto.reported();
        let r = call();
        let code = r.as_ref().err().copied().unwrap_or(Hresult::S_OK);
        tracing::debug!(method, hresult = %format_args!("0x{:08X}", code.0), "call returned");
        if self.veto.reported() == reported {
            self.veto.record(method, set.map(to_uuid), code);
        }
        r.map_err(hr)
    }

    /// The common shape of the `[in,out]` LUN-array methods: read, call, write back.
    fn in_out<R>(
        &self,
        method: &'static str,
        set: Option<&GUID>,
        luns: *mut VDS_LUN_INFORMATION,
        count: i64,
        call: impl FnOnce(&mut [LunInfo]) -> Result<R, Hresult>,
    ) -> windows_core::Result<R> {
        // SAFETY: VSS passes `count` structures at `luns` (checked for NULL and range inside).
        let before =
            unsafe { read_luns(luns, count, "LUN array") }.map_err(|e| ffi_err(method, e))?;
        let mut after = before.clone();
        let r = self.finish(method, set, || call(&mut after))?;
        // SAFETY: same array, same count, just read.
        unsafe { write_back(luns, &before, &after) }.map_err(|e| ffi_err(method, e))?;
        Ok(r)
    }
}

fn vss_id(g: &GUID) -> VssId {
    to_uuid(g)
}

impl IVssHardwareSnapshotProvider_Impl for ComProvider_Impl {
    fn AreLunsSupported(
        &self,
        lluncount: i32,
        lcontext: i32,
        rgwszdevices: *const *const u16,
        pluninformation: *mut VDS_LUN_INFORMATION,
        pbissupported: *mut BOOL,
    ) -> windows_core::Result<()> {
        const M: &str = "AreLunsSupported";
        if pbissupported.is_null() {
            return Err(ffi_err(
                M,
                FfiError::Null {
                    what: "pbIsSupported",
                },
            ));
        }
        let n = check_count("lLunCount", lluncount as i64, MAX_LUNS).map_err(|e| ffi_err(M, e))?;
        // SAFETY: VSS passes `n` device names (or NULL).
        let devices = unsafe { read_devices(rgwszdevices, n) }.map_err(|e| ffi_err(M, e))?;
        let ctx = SnapshotContext::from_i32(lcontext);
        let ok = self.in_out(M, None, pluninformation, n as i64, |luns| {
            self.core.are_luns_supported(ctx, &devices, luns)
        })?;
        write_out(pbissupported, BOOL::from(ok), "pbIsSupported").map_err(|e| ffi_err(M, e))
    }

    fn FillInLunInfo(
        &self,
        wszdevicename: *const u16,
        pluninfo: *mut VDS_LUN_INFORMATION,
        pbissupported: *mut BOOL,
    ) -> windows_core::Result<()> {
        const M: &str = "FillInLunInfo";
        if pbissupported.is_null() {
            return Err(ffi_err(
                M,
                FfiError::Null {
                    what: "pbIsSupported",
                },
            ));
        }
        // SAFETY: NULL or a terminated string from VSS.
        let device =
            unsafe { read_wstr(wszdevicename, "wszDeviceName") }.map_err(|e| ffi_err(M, e))?;
        let ok = self.in_out(M, None, pluninfo, 1, |luns| {
            self.core.fill_in_lun_info(&device, &mut luns[0])
        })?;
        write_out(pbissupported, BOOL::from(ok), "pbIsSupported").map_err(|e| ffi_err(M, e))
    }

    fn BeginPrepareSnapshot(
        &self,
        snapshotsetid: &GUID,
        snapshotid: &GUID,
        lcontext: i32,
        lluncount: i32,
        rgdevicenames: *const *const u16,
        rgluninformation: *mut VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "BeginPrepareSnapshot";
        let n = check_count("lLunCount", lluncount as i64, MAX_LUNS).map_err(|e| ffi_err(M, e))?;
        // SAFETY: VSS passes `n` device names (or NULL).
        let devices = unsafe { read_devices(rgdevicenames, n) }.map_err(|e| ffi_err(M, e))?;
        let ctx = SnapshotContext::from_i32(lcontext);
        let (set, snap) = (vss_id(snapshotsetid), vss_id(snapshotid));
        self.in_out(M, Some(snapshotsetid), rgluninformation, n as i64, |luns| {
            self.core
                .begin_prepare_snapshot(set, snap, ctx, &devices, luns)
        })
    }

    fn GetTargetLuns(
        &self,
        lluncount: i32,
        rgdevicenames: *const *const u16,
        rgsourceluns: *const VDS_LUN_INFORMATION,
        rgdestinationluns: *mut VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "GetTargetLuns";
        let n = check_count("lLunCount", lluncount as i64, MAX_LUNS).map_err(|e| ffi_err(M, e))?;
        // SAFETY: VSS passes `n` device names (or NULL) and `n` source structures.
        let devices = unsafe { read_devices(rgdevicenames, n) }.map_err(|e| ffi_err(M, e))?;
        // SAFETY: as above.
        let sources = unsafe { read_luns(rgsourceluns, n as i64, "rgSourceLuns") }
            .map_err(|e| ffi_err(M, e))?;
        self.in_out(M, None, rgdestinationluns, n as i64, |dst| {
            self.core.get_target_luns(&devices, &sources, dst)
        })
    }

    fn LocateLuns(
        &self,
        lluncount: i32,
        rgsourceluns: *const VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "LocateLuns";
        // SAFETY: VSS passes `lluncount` structures.
        let luns = unsafe { read_luns(rgsourceluns, lluncount as i64, "rgSourceLuns") }
            .map_err(|e| ffi_err(M, e))?;
        self.finish(M, None, || self.core.locate_luns(&luns))
    }

    fn OnLunEmpty(
        &self,
        wszdevicename: *const u16,
        pinformation: *const VDS_LUN_INFORMATION,
    ) -> windows_core::Result<()> {
        const M: &str = "OnLunEmpty";
        // SAFETY: NULL or a terminated string from VSS.
        let device =
            unsafe { read_wstr(wszdevicename, "wszDeviceName") }.map_err(|e| ffi_err(M, e))?;
        // SAFETY: one structure (NULL is rejected inside).
        let lun =
            unsafe { read_luns(pinformation, 1, "pInformation") }.map_err(|e| ffi_err(M, e))?;
        self.finish(M, None, || self.core.on_lun_empty(&device, &lun[0]))
    }
}

/// Reads the two parallel `[in]` arrays of the Ex methods.
fn pair(
    a: *const VDS_LUN_INFORMATION,
    b: *const VDS_LUN_INFORMATION,
    count: u32,
) -> Result<(Vec<LunInfo>, Vec<LunInfo>), FfiError> {
    // SAFETY: VSS passes `count` structures in each array.
    let x = unsafe { read_luns(a, count as i64, "first LUN array") }?;
    // SAFETY: as above.
    let y = unsafe { read_luns(b, count as i64, "second LUN array") }?;
    Ok((x, y))
}

impl IVssHardwareSnapshotProviderEx_Impl for ComProvider_Impl {
    fn GetProviderCapabilities(&self) -> windows_core::Result<u64> {
        self.finish("GetProviderCapabilities", None, || {
            self.core.get_provider_capabilities()
        })
    }

    fn OnLunStateChange(
        &self,
        psnapshotluns: *const VDS_LUN_INFORMATION,
        poriginalluns: *const VDS_LUN_INFORMATION,
        dwcount: u32,
        dwflags: u32,
    ) -> windows_core::Result<()> {
        const M: &str = "OnLunStateChange";
        let (s, o) = pair(psnapshotluns, poriginalluns, dwcount).map_err(|e| ffi_err(M, e))?;
        let flags = HardwareOptions::from_bits_retain(dwflags);
        self.finish(M, None, || self.core.on_lun_state_change(&s, &o, flags))
    }

    fn ResyncLuns(
        &self,
        psourceluns: *const VDS_LUN_INFORMATION,
        ptargetluns: *const VDS_LUN_INFORMATION,
        dwcount: u32,
    ) -> windows_core::Result<IVssAsync> {
        const M: &str = "ResyncLuns";
        let (s, t) = pair(psourceluns, ptargetluns, dwcount).map_err(|e| ffi_err(M, e))?;
        let op = self.finish(M, None, || self.core.resync_luns(&s, &t))?;
        Ok(ComAsync::new(op).into())
    }

    fn OnReuseLuns(
        &self,
        psnapshotluns: *const VDS_LUN_INFORMATION,
        poriginalluns: *const VDS_LUN_INFORMATION,
        dwcount: u32,
    ) -> windows_core::Result<()> {
        const M: &str = "OnReuseLuns";
        let (s, o) = pair(psnapshotluns, poriginalluns, dwcount).map_err(|e| ffi_err(M, e))?;
        self.finish(M, None, || self.core.on_reuse_luns(&s, &o))
    }
}

impl IVssProviderCreateSnapshotSet_Impl for ComProvider_Impl {
    fn EndPrepareSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("EndPrepareSnapshots", Some(id), || {
            self.core.end_prepare_snapshots(vss_id(id))
        })
    }

    fn PreCommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        // From here until PostCommit (or Abort) returns, the applications are frozen.
        self.veto.freeze();
        self.finish("PreCommitSnapshots", Some(id), || {
            self.core.pre_commit_snapshots(vss_id(id))
        })
    }

    fn CommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("CommitSnapshots", Some(id), || {
            self.core.commit_snapshots(vss_id(id))
        })
    }

    fn PostCommitSnapshots(&self, id: &GUID, count: i32) -> windows_core::Result<()> {
        let r = self.finish("PostCommitSnapshots", Some(id), || {
            self.core.post_commit_snapshots(vss_id(id), count)
        });
        self.veto.thaw();
        r
    }

    fn PreFinalCommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("PreFinalCommitSnapshots", Some(id), || {
            self.core.pre_final_commit_snapshots(vss_id(id))
        })
    }

    fn PostFinalCommitSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        self.finish("PostFinalCommitSnapshots", Some(id), || {
            self.core.post_final_commit_snapshots(vss_id(id))
        })
    }

    fn AbortSnapshots(&self, id: &GUID) -> windows_core::Result<()> {
        let r = self.finish("AbortSnapshots", Some(id), || {
            self.core.abort_snapshots(vss_id(id))
        });
        self.veto.thaw();
        r
    }
}

impl IVssProviderNotifications_Impl for ComProvider_Impl {
    fn OnLoad(&self, _callback: Ref<IUnknown>) -> windows_core::Result<()> {
        self.finish("OnLoad", None, || self.core.on_load())
    }

    fn OnUnload(&self, force: BOOL) -> windows_core::Result<()> {
        let force = force.as_bool();
        match self.finish("OnUnload", None, || self.core.on_unload(force))? {
            UnloadAnswer::Ready => Ok(()),
            UnloadAnswer::Busy if force => {
                tracing::warn!("core answered Busy to a forced unload; returning S_OK");
                Ok(())
            }
            UnloadAnswer::Busy => Err(hr(Hresult::S_FALSE)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IVssAsync

/// `IVssAsync` over a core [`AsyncOperation`] (returned by `ResyncLuns`).
#[implement(IVssAsync)]
pub struct ComAsync {
    op: Arc<dyn AsyncOperation>,
}

impl ComAsync {
    pub fn new(op: Arc<dyn AsyncOperation>) -> Self {
        Self { op }
    }
}

impl IVssAsync_Impl for ComAsync_Impl {
    fn Cancel(&self) -> windows_core::Result<()> {
        match self.op.cancel().map_err(hr)? {
            Hresult::S_OK => Ok(()),
            // Success codes (VSS_S_ASYNC_FINISHED / _CANCELLED) travel as the method's HRESULT.
            other => Err(hr(other)),
        }
    }

    fn Wait(&self, ms: u32) -> windows_core::Result<()> {
        let timeout = (ms != u32::MAX).then(|| Duration::from_millis(ms as u64));
        self.op.wait(timeout).map_err(hr)
    }

    fn QueryStatus(
        &self,
        phrresult: *mut HRESULT,
        preserved: *mut i32,
    ) -> windows_core::Result<()> {
        if phrresult.is_null() {
            return Err(hr(Hresult::E_INVALIDARG));
        }
        let (status, progress) = self.op.query_status().map_err(hr)?;
        write_out(phrresult, HRESULT(status.0 as i32), "pHrResult").map_err(|e| hr(e.hresult()))?;
        if !preserved.is_null() {
            write_out(preserved, progress, "pReserved").map_err(|e| hr(e.hresult()))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Class factory

/// Builds the core for each new provider object.
pub type CoreFactory = dyn Fn() -> Result<Arc<dyn HardwareProvider>, Hresult> + Send + Sync;

/// The class factory registered with `CoRegisterClassObject`.
#[implement(IClassFactory)]
pub struct ProviderFactory {
    make: Arc<CoreFactory>,
    veto: Arc<VetoLog>,
    lifetime: Arc<Lifetime>,
}

impl ProviderFactory {
    pub fn new(make: Arc<CoreFactory>, veto: Arc<VetoLog>, lifetime: Arc<Lifetime>) -> Self {
        Self {
            make,
            veto,
            lifetime,
        }
    }

    pub fn into_interface(self) -> IClassFactory {
        self.into()
    }
}

impl IClassFactory_Impl for ProviderFactory_Impl {
    fn CreateInstance(
        &self,
        outer: Ref<IUnknown>,
        riid: *const GUID,
        ppv: *mut *mut c_void,
    ) -> windows_core::Result<()> {
        if ppv.is_null() || riid.is_null() {
            return Err(E_POINTER.into());
        }
        // SAFETY: ppv is a non-NULL [out] pointer.
        unsafe { ppv.write(ptr::null_mut()) };
        if outer.is_some() {
            return Err(CLASS_E_NOAGGREGATION.into());
        }
        let core = (self.make)().map_err(|h| {
            tracing::error!(hresult = %format_args!("0x{:08X}", h.0), "cannot build the provider core");
            hr(h)
        })?;
        let obj = ComProvider::with_lifetime(core, self.veto.clone(), &self.lifetime);
        let unk: IUnknown = obj.into();
        // SAFETY: riid and ppv are valid (checked above); query AddRefs on success.
        unsafe { unk.query(riid, ppv) }.ok()
    }

    fn LockServer(&self, lock: BOOL) -> windows_core::Result<()> {
        self.lifetime.lock_server(lock.as_bool());
        Ok(())
    }
}

/// The IIDs a client may ask the provider object for.
pub fn provider_iids() -> [GUID; 3] {
    [
        IVssHardwareSnapshotProviderEx::IID,
        IVssProviderCreateSnapshotSet::IID,
        IVssProviderNotifications::IID,
    ]
}

/// Keeps `IClassFactory` nameable for callers that build the factory themselves.
pub type ClassFactory = IClassFactory;
