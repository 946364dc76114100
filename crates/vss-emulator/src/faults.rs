//! Misbehaving providers: a decorator that makes any provider veto, stall, return codes it
//! must not return, lose a LUN or touch what it must not, so the catalogue can show that the
//! emulator catches each.

use std::sync::Arc;
use std::time::Duration;

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::{HardwareOptions, Hresult, LunInfo, Method, SnapshotContext, VssId};

/// One injected misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The method returns this code instead of doing its work.
    Fail(Method, Hresult),
    /// The method sleeps this long before doing its work.
    Delay(Method, Duration),
    /// LocateLuns leaves the last LUN it is given masked.
    LoseLastLun,
    /// AreLunsSupported and BeginPrepareSnapshot rewrite the LUNs' interconnects.
    TouchInterconnects,
    /// AreLunsSupported answers FALSE for everything.
    SupportNothing,
}

/// A provider with faults injected.
pub struct FaultyProvider {
    inner: Arc<dyn HardwareProvider>,
    faults: Vec<Fault>,
}

impl std::fmt::Debug for FaultyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyProvider({:?})", self.faults)
    }
}

impl FaultyProvider {
    pub fn new(inner: Arc<dyn HardwareProvider>, faults: Vec<Fault>) -> Arc<Self> {
        Arc::new(Self { inner, faults })
    }

    fn before(&self, m: Method) -> Result<(), Hresult> {
        for f in &self.faults {
            match f {
                Fault::Delay(x, d) if *x == m => std::thread::sleep(*d),
                Fault::Fail(x, code) if *x == m => return Err(*code),
                _ => {}
            }
        }
        Ok(())
    }

    fn has(&self, f: &Fault) -> bool {
        self.faults.contains(f)
    }

    fn touch(&self, luns: &mut [LunInfo]) {
        if self.has(&Fault::TouchInterconnects) {
            for l in luns {
                l.interconnects.clear();
            }
        }
    }
}

impl HardwareProvider for FaultyProvider {
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        self.before(Method::AreLunsSupported)?;
        if self.has(&Fault::SupportNothing) {
            return Ok(false);
        }
        let r = self.inner.are_luns_supported(context, devices, luns);
        self.touch(luns);
        r
    }

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        self.before(Method::BeginPrepareSnapshot)?;
        let r = self
            .inner
            .begin_prepare_snapshot(set_id, snapshot_id, context, devices, luns);
        self.touch(luns);
        r
    }

    fn fill_in_lun_info(&self, device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        self.before(Method::FillInLunInfo)?;
        self.inner.fill_in_lun_info(device, lun)
    }

    fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        self.before(Method::GetTargetLuns)?;
        self.inner.get_target_luns(devices, sources, destinations)
    }

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        self.before(Method::LocateLuns)?;
        if self.has(&Fault::LoseLastLun) && !luns.is_empty() {
            return self.inner.locate_luns(&luns[..luns.len() - 1]);
        }
        self.inner.locate_luns(luns)
    }

    fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        self.before(Method::OnLunEmpty)?;
        self.inner.on_lun_empty(device, lun)
    }

    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        self.before(Method::GetProviderCapabilities)?;
        self.inner.get_provider_capabilities()
    }

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult> {
        self.before(Method::OnLunStateChange)?;
        self.inner
            .on_lun_state_change(snapshot_luns, original_luns, flags)
    }

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        self.before(Method::ResyncLuns)?;
        self.inner.resync_luns(sources, targets)
    }

    fn on_reuse_luns(&self, s: &[LunInfo], o: &[LunInfo]) -> Result<(), Hresult> {
        self.before(Method::OnReuseLuns)?;
        self.inner.on_reuse_luns(s, o)
    }

    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.before(Method::EndPrepareSnapshots)?;
        self.inner.end_prepare_snapshots(set_id)
    }

    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.before(Method::PreCommitSnapshots)?;
        self.inner.pre_commit_snapshots(set_id)
    }

    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.before(Method::CommitSnapshots)?;
        self.inner.commit_snapshots(set_id)
    }

    fn post_commit_snapshots(&self, set_id: VssId, n: i32) -> Result<(), Hresult> {
        self.before(Method::PostCommitSnapshots)?;
        self.inner.post_commit_snapshots(set_id, n)
    }

    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.before(Method::PreFinalCommitSnapshots)?;
        self.inner.pre_final_commit_snapshots(set_id)
    }

    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.before(Method::PostFinalCommitSnapshots)?;
        self.inner.post_final_commit_snapshots(set_id)
    }

    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.before(Method::AbortSnapshots)?;
        self.inner.abort_snapshots(set_id)
    }

    fn on_load(&self) -> Result<(), Hresult> {
        self.before(Method::OnLoad)?;
        self.inner.on_load()
    }

    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult> {
        self.before(Method::OnUnload)?;
        self.inner.on_unload(force)
    }
}
