//! `IVssAsync` semantics over an array resync job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vss::Hresult;

use crate::array::{ArrayControl, JobId, JobState};
use crate::hardware::AsyncOperation;

/// A resync running on the array, polled on demand.
pub struct ResyncJob<A: ArrayControl> {
    array: Arc<A>,
    job: JobId,
    poll: Duration,
}

impl<A: ArrayControl> ResyncJob<A> {
    pub fn new(array: Arc<A>, job: JobId, poll: Duration) -> Self {
        Self { array, job, poll }
    }

    pub fn id(&self) -> &JobId {
        &self.job
    }
}

impl<A: ArrayControl> AsyncOperation for ResyncJob<A> {
    fn wait(&self, timeout: Option<Duration>) -> Result<(), Hresult> {
        let start = Instant::now();
        loop {
            match self.array.resync_status(&self.job) {
                Ok(s) if s.state != JobState::Running => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %self.job, "resync status unavailable: {e}");
                    return Err(Hresult::VSS_E_PROVIDER_VETO);
                }
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Ok(());
            }
            std::thread::sleep(self.poll);
        }
    }

    fn query_status(&self) -> Result<(Hresult, i32), Hresult> {
        let s = self.array.resync_status(&self.job).map_err(|e| {
            tracing::warn!(job = %self.job, "resync status unavailable: {e}");
            Hresult::VSS_E_PROVIDER_VETO
        })?;
        let code = match s.state {
            JobState::Running => Hresult::VSS_S_ASYNC_PENDING,
            JobState::Finished => Hresult::VSS_S_ASYNC_FINISHED,
            JobState::Cancelled => Hresult::VSS_S_ASYNC_CANCELLED,
            JobState::Failed { no_space: true, .. } => Hresult::VSS_E_INSUFFICIENT_STORAGE,
            JobState::Failed { .. } => Hresult::VSS_E_PROVIDER_VETO,
        };
        Ok((code, s.progress as i32))
    }

    fn cancel(&self) -> Result<Hresult, Hresult> {
        let s = self
            .array
            .resync_status(&self.job)
            .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
        match s.state {
            JobState::Finished | JobState::Failed { .. } => Ok(Hresult::VSS_S_ASYNC_FINISHED),
            JobState::Cancelled => Ok(Hresult::VSS_S_ASYNC_CANCELLED),
            JobState::Running => {
                self.array
                    .cancel_resync(&self.job)
                    .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
                Ok(Hresult::S_OK)
            }
        }
    }
}
