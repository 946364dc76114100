//! [`ArrayAdapter`]: a provider's [`ArrayControl`] straight into [`array::Array`]'s verbs, in
//! the process, with no HTTP: each call is the verb the control API's route would run, as the
//! host it was made for (`array::Scope::Host(name)`), and its failure becomes the
//! [`provider::ArrayError`] the HTTPS client would have made of the problem document. So a
//! provider under test meets the array's own rules, not a copy of them.

use api::{
    ArrayLun, JobId, JobStatus, LunId, LunKey, PlannedSnapshot, ResyncPair, SetSummary, SnapshotLun,
};
use provider::https::ClientError;
use provider::{ArrayControl, ControlError};
use vss::{SnapshotContext, VssId};

/// One host's channel to an in-process [`array::Array`].
#[derive(Clone, Debug)]
pub struct ArrayAdapter {
    array: array::Array,
    host: String,
}

impl ArrayAdapter {
    /// The channel of the host named `host` (it must exist on the array).
    pub fn new(array: array::Array, host: &str) -> Self {
        Self {
            array,
            host: host.into(),
        }
    }

    pub fn array(&self) -> &array::Array {
        &self.array
    }

    /// The host's name on the array.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn scope(&self) -> array::Scope {
        array::Scope::host(&self.host)
    }
}

/// What the provider hears of an array failure: the error the HTTPS client makes of the
/// problem document the control API would have sent.
pub fn control_error(e: array::ArrayError) -> ControlError {
    ClientError::Problem(e.problem()).into()
}

impl ArrayControl for ArrayAdapter {
    fn lookup(&self, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ControlError> {
        self.array.lookup(self.host(), keys).map_err(control_error)
    }

    fn prepare(
        &self,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ControlError> {
        self.array
            .prepare(self.host(), set_id, context, snapshots)
            .map_err(control_error)
    }

    fn end_prepare(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array
            .end_prepare(self.host(), set_id)
            .map_err(control_error)
    }

    fn commit(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array
            .commit(self.host(), set_id)
            .map_err(control_error)
    }

    fn complete(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array
            .complete(self.host(), set_id)
            .map_err(control_error)
    }

    fn abort(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array.abort(self.host(), set_id).map_err(control_error)
    }

    fn describe(&self, set_id: VssId, sources: &[LunId]) -> Result<Vec<SnapshotLun>, ControlError> {
        self.array
            .describe(self.host(), set_id, sources)
            .map_err(control_error)
    }

    fn expose(&self, luns: &[LunId]) -> Result<(), ControlError> {
        self.array.expose(self.host(), luns).map_err(control_error)
    }

    fn mask(&self, luns: &[LunId]) -> Result<(), ControlError> {
        self.array.mask(self.host(), luns).map_err(control_error)
    }

    fn release(&self, lun: &LunId) -> Result<(), ControlError> {
        self.array.release(self.host(), lun).map_err(control_error)
    }

    fn start_resync(&self, pairs: &[ResyncPair]) -> Result<JobId, ControlError> {
        self.array
            .start_resync(&self.scope(), pairs, false)
            .map_err(control_error)
    }

    fn resync_status(&self, job: &JobId) -> Result<JobStatus, ControlError> {
        self.array
            .resync_status(&self.scope(), job)
            .map_err(control_error)
    }

    fn cancel_resync(&self, job: &JobId) -> Result<(), ControlError> {
        self.array
            .cancel_resync(&self.scope(), job)
            .map_err(control_error)
    }

    fn list_sets(&self) -> Result<Vec<SetSummary>, ControlError> {
        Ok(self.array.list_sets(self.host()))
    }
}
