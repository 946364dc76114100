//! SCSI commands: a command PDU becomes a [`Request`] (reads at once, writes once their
//! data is in, see `write.rs`), runs on the connection's thread when the handler calls it
//! quick or on the server's blocking pool otherwise, and leaves the task table when done.
//! [`Running`] outlives the connection while commands still execute, and its last owner
//! releases the nexus.

use super::*;

pub(super) struct TaskInfo {
    pub(super) lun: u64,
    pub(super) aborted: Arc<AtomicBool>,
}

/// Commands that are executing. Shared by the session and every command it started, so
/// that it outlives the connection while commands still run on the blocking pool: the
/// last owner to let go ends the session ([`SessionEnd`]).
pub(super) struct Running {
    pub(super) tasks: Mutex<HashMap<u32, TaskInfo>>,
    pub(super) done: Notify,
    pub(super) end: Option<SessionEnd>,
}

/// What is left to do once the connection and every command it started have ended:
/// release the I_T nexus (after its last command, never before), free the session's slot
/// and tell a reinstating login that the old session is gone.
pub(super) struct SessionEnd {
    pub(super) shared: Arc<Shared>,
    pub(super) handler: Option<Arc<dyn ScsiHandler>>,
    pub(super) nexus: Arc<Nexus>,
    pub(super) key: Option<SessionKey>,
    pub(super) tsih: u16,
    pub(super) ended: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(end) = self.end.take() else { return };
        if let Some(h) = &end.handler
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.nexus_lost(&end.nexus)))
                .is_err()
        {
            tracing::error!(initiator = %end.nexus.initiator, "SCSI handler panicked releasing the nexus");
        }
        if let Some(k) = end.key {
            let mut sessions = end.shared.sessions.lock().expect("sessions lock");
            if sessions.get(&k).is_some_and(|v| v.tsih == end.tsih) {
                sessions.remove(&k);
            }
        }
        let _ = end.ended.send(true);
    }
}

impl Running {
    pub(super) async fn wait_until_gone(&self, tags: &[u32]) {
        loop {
            let n = self.done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            {
                let t = self.tasks.lock().expect("tasks lock");
                if !tags.iter().any(|k| t.contains_key(k)) {
                    return;
                }
            }
            n.await;
        }
    }
    pub(super) async fn wait_empty(&self) {
        loop {
            let n = self.done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.tasks.lock().expect("tasks lock").is_empty() {
                return;
            }
            n.await;
        }
    }
}

/// A SCSI command as the session received it, with all its data-out.
pub(super) struct Request {
    pub(super) itt: u32,
    pub(super) lun: u64,
    pub(super) cdb: Vec<u8>,
    pub(super) data_out: Vec<u8>,
    pub(super) edtl: u32,
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) attr: TaskAttribute,
    pub(super) immediate: bool,
}

/// One SCSI command handed to the device model.
pub(super) struct Job {
    pub(super) req: Request,
    pub(super) handler: Arc<dyn ScsiHandler>,
    pub(super) nexus: Arc<Nexus>,
    pub(super) aborted: Arc<AtomicBool>,
    pub(super) seq: Arc<Seq>,
    pub(super) running: Arc<Running>,
    pub(super) zero_copy: bool,
}

impl Job {
    fn command(&self) -> Command<'_> {
        Command {
            nexus: &self.nexus,
            lun: self.req.lun,
            cdb: &self.req.cdb,
            data_out: &self.req.data_out,
            expected_length: self.req.edtl,
            task_tag: self.req.itt,
            attribute: self.req.attr,
        }
    }

    /// The command's outcome if the handler can execute it on this thread without waiting
    /// for storage ([`ScsiHandler::execute_now`]); `None` leaves it as it was, for
    /// [`Job::run`] on the pool.
    fn try_now(&self) -> Option<Outcome> {
        let cmd = self.command();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handler.execute_now(&cmd)
        })) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    itt = self.req.itt,
                    "SCSI handler panicked; answering HARDWARE ERROR"
                );
                Some(Outcome::check(&Sense::internal_target_failure()))
            }
        }
    }

    /// Executes the command (blocking) and leaves the task table; `None` if it was aborted
    /// meanwhile (no response is sent then).
    pub(super) fn run(self) -> Option<ScsiDone> {
        let (outcome, span) = {
            let cmd = self.command();
            self.execute(&cmd)
        };
        self.finish(outcome, span)
    }

    fn execute(&self, cmd: &Command<'_>) -> (Outcome, Option<scsi::FileSpan>) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Small reads are cheaper copied: their answers are batched in the write
            // buffer, where a file span costs two system calls of its own.
            if self.zero_copy
                && self.req.read
                && !self.req.write
                && self.req.edtl as usize >= DIRECT_DATA
            {
                self.handler.execute_zero_copy(cmd)
            } else {
                (self.handler.execute(cmd), None)
            }
        })) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    itt = self.req.itt,
                    "SCSI handler panicked; answering HARDWARE ERROR"
                );
                (Outcome::check(&Sense::internal_target_failure()), None)
            }
        }
    }

    /// Leaves the task table with the command's outcome; `None` if it was aborted meanwhile.
    fn finish(self, outcome: Outcome, span: Option<scsi::FileSpan>) -> Option<ScsiDone> {
        let cdb_length = if self.req.write {
            self.handler.data_length(&self.command())
        } else {
            None
        };
        if !self.req.immediate {
            self.seq.max_cmd_sn.fetch_add(1, Ordering::AcqRel);
        }
        // Leave the task table and read the abort flag under one lock, so that an ABORT
        // TASK either finds the task (and no response is sent) or does not.
        let was_aborted = {
            let mut t = self.running.tasks.lock().expect("tasks lock");
            t.remove(&self.req.itt);
            self.aborted.load(Ordering::Acquire)
        };
        self.running.done.notify_waiters();
        (!was_aborted).then_some(ScsiDone {
            itt: self.req.itt,
            lun: self.req.lun,
            edtl: self.req.edtl,
            read: self.req.read,
            write: self.req.write,
            cdb_length,
            outcome,
            span,
        })
    }
}

impl Session {
    pub(super) async fn on_scsi_command(&mut self, p: Pdu) -> Result<(), ConnError> {
        let bhs = &p.bhs;
        let immediate = bhs.immediate();
        if self.handler.is_none() {
            self.send_reject(bhs, reject::PROTOCOL_ERROR).await;
            return Ok(());
        }
        if !self.accept_cmd_sn(bhs) {
            return Ok(());
        }
        let flags = bhs.flags();
        let (final_bit, read, write) = (flags & 0x80 != 0, flags & 0x40 != 0, flags & 0x20 != 0);
        let attr = match flags & 7 {
            2 => TaskAttribute::Ordered,
            3 => TaskAttribute::HeadOfQueue,
            4 => TaskAttribute::Aca,
            _ => TaskAttribute::Simple,
        };
        let itt = bhs.itt();
        let edtl = bhs.u32_at(20);
        let lun = bhs.lun();
        let cdb = match p.cdb() {
            Ok(c) => c,
            Err(_) => {
                self.release_slot(immediate);
                self.send_reject(bhs, reject::INVALID_PDU_FIELD).await;
                return Ok(());
            }
        };
        let busy = self.writes.contains_key(&itt)
            || self
                .running
                .tasks
                .lock()
                .expect("tasks lock")
                .contains_key(&itt);
        if itt == RESERVED_TAG || busy {
            self.release_slot(immediate);
            self.send_reject(
                bhs,
                if busy {
                    reject::TASK_IN_PROGRESS
                } else {
                    reject::INVALID_PDU_FIELD
                },
            )
            .await;
            return Ok(());
        }
        let imm_len = p.data.len() as u32;
        if !write {
            if imm_len > 0 || !final_bit {
                self.release_slot(immediate);
                self.send_reject(bhs, reject::PROTOCOL_ERROR).await;
                return Ok(());
            }
            self.dispatch(Request {
                itt,
                lun,
                cdb,
                data_out: Vec::new(),
                edtl,
                read,
                write: false,
                attr,
                immediate,
            })
            .await;
            return Ok(());
        }
        if (imm_len > 0 && !self.params.immediate_data)
            || imm_len > edtl
            || imm_len > self.params.first_burst
            || (!final_bit && self.params.initial_r2t)
        {
            self.release_slot(immediate);
            self.send_reject(bhs, reject::PROTOCOL_ERROR).await;
            return Err(ConnError::Protocol(
                "unsolicited data not allowed by the negotiated keys",
            ));
        }
        let refuse = (edtl > self.shared.config.max_transfer).then(|| {
            tracing::warn!(
                edtl,
                "write longer than the target's maximum transfer; refused"
            );
            Outcome::check(&Sense::invalid_cdb_field())
        });
        let unsol_end = if final_bit {
            imm_len
        } else {
            edtl.min(self.params.first_burst)
        };
        let w = WriteTask {
            lun,
            cdb,
            edtl,
            buf: if refuse.is_some() { Vec::new() } else { p.data },
            received: imm_len,
            unsol_end,
            unsol_done: final_bit,
            unsol_data_sn: 0,
            next_offset: imm_len,
            r2t_sn: 0,
            outstanding: Vec::new(),
            attr,
            immediate,
            refuse,
        };
        let complete = w.received == w.edtl && w.unsol_done;
        self.continue_write(itt, w, complete).await
    }

    /// Runs one command: on this thread when the handler calls it quick (for a file LUN: a
    /// plain read or write whose blocks are in the page cache), else on the blocking
    /// pool. Its answer goes to the writer either way.
    pub(super) async fn dispatch(&mut self, req: Request) {
        let Some(handler) = self.handler.clone() else {
            return;
        };
        let aborted = Arc::new(AtomicBool::new(false));
        self.running.tasks.lock().expect("tasks lock").insert(
            req.itt,
            TaskInfo {
                lun: req.lun,
                aborted: aborted.clone(),
            },
        );
        let mut job = Job {
            req,
            handler,
            nexus: self.nexus.clone(),
            aborted,
            seq: self.seq.clone(),
            running: self.running.clone(),
            zero_copy: self.zero_copy,
        };
        let quick = job.handler.is_quick(&job.command());
        // A READ the handler may still complete at once, trying its data without waiting
        // (an engine volume's page cache) instead of probing for it first.
        let now = if !quick && job.req.read && !job.req.write {
            job.try_now()
        } else {
            None
        };
        if quick || now.is_some() {
            let done = match now {
                Some(outcome) => job.finish(outcome, None),
                None => job.run(),
            };
            if let Some(done) = done {
                let large = done.data_in_len() >= DIRECT_DATA;
                let _ = self.tx.send(Out::Scsi(Box::new(done))).await;
                // Let the writer send a large answer now, so the initiator takes it in while
                // the next command executes; small answers go out in batches.
                self.yield_to_writer |= large;
            }
            return;
        }
        // Off this thread the data is read into memory: a file span would leave the wait
        // for the storage to this thread's sendfile.
        job.zero_copy = false;
        let tx = self.tx.clone();
        self.shared.pool.spawn_blocking(move || {
            if let Some(done) = job.run() {
                let _ = tx.blocking_send(Out::Scsi(Box::new(done)));
            }
        });
    }
}
