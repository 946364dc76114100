//! The provider interface as VSS sees it.

use std::sync::Arc;
use std::time::Duration;

use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext, VssId};

/// The answer to `OnUnload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadAnswer {
    /// `S_OK`: nothing pending, ready to be released.
    Ready,
    /// `S_FALSE`: please do not unload me (only allowed when the unload is not forced).
    Busy,
}

/// An asynchronous operation with `IVssAsync` semantics (returned by `ResyncLuns`).
pub trait AsyncOperation: Send + Sync {
    /// Blocks until the operation ends or `timeout` passes (`None` waits forever). Returns
    /// `Ok` even if the operation failed; the outcome is read with [`Self::query_status`].
    fn wait(&self, timeout: Option<Duration>) -> Result<(), Hresult>;

    /// `(status, progress)`: status is `VSS_S_ASYNC_PENDING` while running,
    /// `VSS_S_ASYNC_FINISHED` on success, `VSS_S_ASYNC_CANCELLED` after a cancel, or the
    /// failure code of the operation. Progress is 0..=100 (IVssAsync's reserved out value).
    fn query_status(&self) -> Result<(Hresult, i32), Hresult>;

    /// Requests cancellation. `Ok(S_OK)` when the request was taken,
    /// `Ok(VSS_S_ASYNC_FINISHED)` if the operation had already finished,
    /// `Ok(VSS_S_ASYNC_CANCELLED)` if it had already been cancelled.
    fn cancel(&self) -> Result<Hresult, Hresult>;
}

/// The methods VSS calls on a hardware provider (`docs/vss-contract.md` §4), in Rust types.
///
/// In/out LUN arrays are `&mut [LunInfo]` (VSS owns the array; a provider may change the
/// elements' fields but never the count). Every method may be called from any thread.
pub trait HardwareProvider: Send + Sync {
    // IVssHardwareSnapshotProvider
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult>;

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult>;

    fn fill_in_lun_info(&self, device: &str, lun: &mut LunInfo) -> Result<bool, Hresult>;

    fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult>;

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult>;

    fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), Hresult>;

    // IVssHardwareSnapshotProviderEx
    fn get_provider_capabilities(&self) -> Result<u64, Hresult>;

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult>;

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult>;

    fn on_reuse_luns(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
    ) -> Result<(), Hresult>;

    // IVssProviderCreateSnapshotSet
    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult>;
    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult>;
    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult>;
    fn post_commit_snapshots(&self, set_id: VssId, snapshot_count: i32) -> Result<(), Hresult>;
    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult>;
    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult>;
    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult>;

    // IVssProviderNotifications
    fn on_load(&self) -> Result<(), Hresult>;
    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult>;
}
