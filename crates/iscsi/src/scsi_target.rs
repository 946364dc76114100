//! [`ScsiHandler`] for the device model's [`scsi::Target`].

use scsi::{Command, FileSpan, Nexus, Outcome, TaskManagement, TaskManagementResponse};

use crate::handler::ScsiHandler;

impl ScsiHandler for scsi::Target {
    fn execute(&self, cmd: &Command<'_>) -> Outcome {
        scsi::Target::execute(self, cmd)
    }
    fn task_management(
        &self,
        nexus: &Nexus,
        lun: u64,
        f: TaskManagement,
    ) -> TaskManagementResponse {
        scsi::Target::task_management(self, nexus, lun, f)
    }
    fn nexus_lost(&self, nexus: &Nexus) {
        scsi::Target::nexus_lost(self, nexus)
    }
    fn luns_for(&self, initiator: &str) -> Vec<u64> {
        scsi::Target::luns_for(self, initiator)
    }
    fn data_length(&self, cmd: &Command<'_>) -> Option<u64> {
        scsi::Target::data_length(self, cmd)
    }
    fn is_quick(&self, cmd: &Command<'_>) -> bool {
        scsi::Target::is_quick(self, cmd)
    }
    fn execute_now(&self, cmd: &Command<'_>) -> Option<Outcome> {
        scsi::Target::execute_now(self, cmd)
    }
    fn execute_zero_copy(&self, cmd: &Command<'_>) -> (Outcome, Option<FileSpan>) {
        scsi::Target::execute_zero_copy(self, cmd)
    }
}
