//! The one interface between the transport and the SCSI device model.

use scsi::{Command, FileSpan, Nexus, Outcome, TaskManagement, TaskManagementResponse};

/// What the target needs from a SCSI device model. Implemented for [`scsi::Target`] in
/// `scsi_target.rs`; tests use small in-memory handlers.
///
/// `execute` may block (device I/O); the target calls it from a blocking thread pool (or,
/// for commands `is_quick` accepts, on the connection's thread) and runs many commands at
/// once, so implementations must be thread safe.
pub trait ScsiHandler: Send + Sync + 'static {
    fn execute(&self, cmd: &Command<'_>) -> Outcome;
    fn task_management(&self, nexus: &Nexus, lun: u64, f: TaskManagement)
    -> TaskManagementResponse;
    /// The I_T nexus is gone (session closed, reinstated or dropped).
    fn nexus_lost(&self, nexus: &Nexus);
    /// LUNs mapped to an initiator (by iSCSI InitiatorName). Used for login decisions and
    /// SendTargets; REPORT LUNS itself is answered by `execute`.
    fn luns_for(&self, initiator: &str) -> Vec<u64>;
    /// The data length in bytes the command's CDB calls for (SAM-5), when known. The
    /// transport compares it with the Expected Data Transfer Length to report residuals of
    /// data-out commands. `None`: residuals of writes are not reported.
    fn data_length(&self, cmd: &Command<'_>) -> Option<u64> {
        let _ = cmd;
        None
    }
    /// True if `execute` will finish `cmd` in microseconds without waiting on other
    /// commands (page-cache reads and writes). The target then runs it on the connection's
    /// own thread instead of the blocking pool. Default: false.
    fn is_quick(&self, cmd: &Command<'_>) -> bool {
        let _ = cmd;
        false
    }
    /// For a command `is_quick` refused: executes it on the connection's own thread if that
    /// needs no wait for storage, or answers `None`, having changed nothing, and the target
    /// hands it to the blocking pool as usual (see [`scsi::Target::execute_now`]: a READ
    /// that tries its data without waiting instead of probing for it first). Default: `None`.
    fn execute_now(&self, cmd: &Command<'_>) -> Option<Outcome> {
        let _ = cmd;
        None
    }
    /// As `execute`, but data-in may instead be returned as a file span that the target
    /// sends from the file (see [`scsi::Target::execute_zero_copy`]). Default: `execute`.
    fn execute_zero_copy(&self, cmd: &Command<'_>) -> (Outcome, Option<FileSpan>) {
        (self.execute(cmd), None)
    }
}

impl<T: ScsiHandler + ?Sized> ScsiHandler for std::sync::Arc<T> {
    fn execute(&self, cmd: &Command<'_>) -> Outcome {
        (**self).execute(cmd)
    }
    fn task_management(
        &self,
        nexus: &Nexus,
        lun: u64,
        f: TaskManagement,
    ) -> TaskManagementResponse {
        (**self).task_management(nexus, lun, f)
    }
    fn nexus_lost(&self, nexus: &Nexus) {
        (**self).nexus_lost(nexus)
    }
    fn luns_for(&self, initiator: &str) -> Vec<u64> {
        (**self).luns_for(initiator)
    }
    fn data_length(&self, cmd: &Command<'_>) -> Option<u64> {
        (**self).data_length(cmd)
    }
    fn is_quick(&self, cmd: &Command<'_>) -> bool {
        (**self).is_quick(cmd)
    }
    fn execute_now(&self, cmd: &Command<'_>) -> Option<Outcome> {
        (**self).execute_now(cmd)
    }
    fn execute_zero_copy(&self, cmd: &Command<'_>) -> (Outcome, Option<FileSpan>) {
        (**self).execute_zero_copy(cmd)
    }
}
