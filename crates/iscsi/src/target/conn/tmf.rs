//! Task management: tasks of this session that a function selects are aborted (writes
//! waiting for data dropped, executing commands left to finish without an answer), then
//! the device model applies the function and the response is sent.

use super::*;

impl Session {
    pub(super) async fn on_tmf(&mut self, p: Pdu) -> Result<(), ConnError> {
        let immediate = p.bhs.immediate();
        if !self.accept_cmd_sn(&p.bhs) {
            return Ok(());
        }
        let function = p.bhs.flags() & 0x7f;
        let lun = p.bhs.lun();
        let rtt = p.bhs.u32_at(20);
        let f = match function {
            1 => Some(TaskManagement::AbortTask { tag: rtt }),
            2 => Some(TaskManagement::AbortTaskSet),
            4 => Some(TaskManagement::ClearTaskSet),
            5 => Some(TaskManagement::LogicalUnitReset),
            6 => Some(TaskManagement::TargetWarmReset),
            7 => Some(TaskManagement::TargetColdReset),
            _ => None,
        };
        let code = match (f, &self.handler) {
            (Some(f), Some(h)) => {
                // Abort the affected tasks in this session: writes still waiting for data
                // are dropped, executing commands finish without sending a response.
                let selects = |t_lun: u64, tag: u32| match f {
                    TaskManagement::AbortTask { tag: want } => tag == want,
                    TaskManagement::AbortTaskSet
                    | TaskManagement::ClearTaskSet
                    | TaskManagement::LogicalUnitReset => t_lun == lun,
                    TaskManagement::TargetWarmReset | TaskManagement::TargetColdReset => true,
                };
                let mut found = false;
                let dropped: Vec<u32> = self
                    .writes
                    .iter()
                    .filter(|(k, w)| selects(w.lun, **k))
                    .map(|(k, _)| *k)
                    .collect();
                for k in dropped {
                    if let Some(w) = self.writes.remove(&k) {
                        self.release_slot(w.immediate);
                        found = true;
                    }
                }
                let mut waiting = Vec::new();
                for (k, t) in self.running.tasks.lock().expect("tasks lock").iter() {
                    if selects(t.lun, *k) {
                        t.aborted.store(true, Ordering::Release);
                        waiting.push(*k);
                    }
                }
                found |= !waiting.is_empty();
                self.running.wait_until_gone(&waiting).await;
                let h = h.clone();
                let nexus = self.nexus.clone();
                let r = self
                    .shared
                    .pool
                    .spawn_blocking(move || h.task_management(&nexus, lun, f))
                    .await
                    .unwrap_or(TaskManagementResponse::Rejected);
                match (f, r) {
                    // The transport knows whether the task is still here; the device model
                    // runs commands to completion and cannot tell.
                    (TaskManagement::AbortTask { .. }, TaskManagementResponse::LunDoesNotExist) => {
                        2
                    }
                    (TaskManagement::AbortTask { .. }, _) if found => 0,
                    (TaskManagement::AbortTask { .. }, _) => {
                        // RFC 7143 §11.5.1: a task not yet received (RefCmdSN inside the window)
                        // counts as aborted; one already answered does not exist.
                        let ref_sn = p.bhs.u32_at(32);
                        let exp = self.seq.exp_cmd_sn.load(Ordering::Acquire);
                        if sn_lt(ref_sn, exp) { 1 } else { 0 }
                    }
                    (_, TaskManagementResponse::Complete) => 0,
                    (_, TaskManagementResponse::TaskDoesNotExist) => 1,
                    (_, TaskManagementResponse::LunDoesNotExist) => 2,
                    (_, TaskManagementResponse::NotSupported) => 5,
                    (_, TaskManagementResponse::Rejected) => 255,
                }
            }
            (None, _) if function == 8 => 4, // TASK REASSIGN needs ERL 2
            (None, _) => 5,
            (Some(_), None) => 255,
        };
        self.release_slot(immediate);
        let mut b = Bhs::new(op::TMF_RESP);
        b.set_flags(0x80);
        b.0[2] = code;
        b.set_itt(p.bhs.itt());
        self.send(Pdu::new(b), Sn::Advance).await?;
        if f == Some(TaskManagement::TargetColdReset) && code == 0 {
            return Err(ConnError::Protocol(
                "target cold reset closes the connection",
            ));
        }
        Ok(())
    }
}
