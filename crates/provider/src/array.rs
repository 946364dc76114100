//! `ArrayControl`: the provider's private channel to the array.
//!
//! Every call is keyed by VSS ids or LUN identity and is idempotent, so a retried call never
//! creates a second snapshot. The implementation is [`crate::https::HttpsArray`] (tests reach
//! the array's verbs in the process through an adapter in the `lab` crate). The objects
//! exchanged are the control API's wire types (crate `api`).

pub use api::types::*;
use vss::{SnapshotContext, VssId};

/// Why an [`ArrayControl`] call failed, as the provider sees it: what it needs to choose a
/// status code (`ProviderError::hresult`), whatever the transport. The array's own errors
/// (`array::ArrayError`) reach it as problem codes, which the HTTPS client maps onto these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the array cannot be reached: {0}")]
    Unreachable(String),
    #[error("the array did not answer in time ({0})")]
    Timeout(String),
    #[error("the array refused the credentials: {0}")]
    Unauthorized(String),
    #[error("not found on the array: {0}")]
    NotFound(String),
    #[error("the array refused the request in its current state: {0}")]
    Conflict(String),
    #[error("the array is out of space: {0}")]
    NoSpace(String),
    #[error("an array limit was reached: {0}")]
    LimitReached(String),
    #[error("the array rejected the request ({code}): {detail}")]
    Rejected { code: String, detail: String },
}

/// The operations a provider needs from the array.
pub trait ArrayControl: Send + Sync {
    /// For each key, the LUN the array owns with that identity, or `None`.
    fn lookup(&self, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ControlError>;

    /// Adds LUNs to set `set_id` (creating it), reserving names, identities and space.
    /// Idempotent per (set, source LUN).
    fn prepare(
        &self,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ControlError>;

    /// Returns when the set's preparation is complete and the commit path is ready.
    fn end_prepare(&self, set_id: VssId) -> Result<(), ControlError>;

    /// Snapshots every LUN of the set atomically, in one request.
    fn commit(&self, set_id: VssId) -> Result<(), ControlError>;

    /// Marks a committed set complete: from now on only release or an admin removes it.
    fn complete(&self, set_id: VssId) -> Result<(), ControlError>;

    /// Discards the set and everything created for it (refused once complete).
    fn abort(&self, set_id: VssId) -> Result<(), ControlError>;

    /// The snapshot LUNs of `sources` in the set, with the identity they will be served with.
    fn describe(&self, set_id: VssId, sources: &[LunId]) -> Result<Vec<SnapshotLun>, ControlError>;

    /// Maps snapshot LUNs to the calling host's initiators.
    fn expose(&self, luns: &[LunId]) -> Result<(), ControlError>;

    /// Unmaps LUNs from the calling host without deleting them.
    fn mask(&self, luns: &[LunId]) -> Result<(), ControlError>;

    /// Deletes a snapshot LUN no shadow copy uses any more (OnLunEmpty).
    fn release(&self, lun: &LunId) -> Result<(), ControlError>;

    fn start_resync(&self, pairs: &[ResyncPair]) -> Result<JobId, ControlError>;
    fn resync_status(&self, job: &JobId) -> Result<JobStatus, ControlError>;
    fn cancel_resync(&self, job: &JobId) -> Result<(), ControlError>;

    /// The sets the array's journal knows, for reconciliation.
    fn list_sets(&self) -> Result<Vec<SetSummary>, ControlError>;
}
