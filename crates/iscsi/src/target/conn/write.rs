//! Write data: immediate and unsolicited data, R2Ts within MaxOutstandingR2T and
//! MaxBurstLength, Data-Out checked against its R2T (offset, DataSN, length), and the
//! command handed on once its data is complete.

use super::*;

pub(super) struct R2tState {
    pub(super) ttt: u32,
    pub(super) offset: u32,
    pub(super) len: u32,
    /// DataSN expected next in this R2T's sequence.
    pub(super) data_sn: u32,
}

/// A write command waiting for its data.
pub(super) struct WriteTask {
    pub(super) lun: u64,
    pub(super) cdb: Vec<u8>,
    pub(super) edtl: u32,
    pub(super) buf: Vec<u8>,
    /// Data received so far (equals `buf.len()` unless the command is being discarded).
    pub(super) received: u32,
    /// End of the unsolicited burst (immediate + unsolicited Data-Out).
    pub(super) unsol_end: u32,
    pub(super) unsol_done: bool,
    /// DataSN expected next in the unsolicited sequence.
    pub(super) unsol_data_sn: u32,
    pub(super) next_offset: u32,
    pub(super) r2t_sn: u32,
    pub(super) outstanding: Vec<R2tState>,
    pub(super) attr: TaskAttribute,
    pub(super) immediate: bool,
    /// The command is refused (e.g. too long): its data is counted and dropped.
    pub(super) refuse: Option<Outcome>,
}

impl WriteTask {
    /// The write's answer without executing it (refused, or its data lost).
    fn answer(&self, itt: u32, outcome: Outcome) -> ScsiDone {
        ScsiDone {
            itt,
            lun: self.lun,
            edtl: self.edtl,
            read: false,
            write: true,
            cdb_length: None,
            outcome,
            span: None,
        }
    }
}

impl Session {
    pub(super) async fn issue_r2ts(
        &mut self,
        itt: u32,
        w: &mut WriteTask,
    ) -> Result<(), ConnError> {
        while (w.outstanding.len() as u32) < self.params.max_outstanding_r2t
            && w.next_offset < w.edtl
        {
            let len = (w.edtl - w.next_offset).min(self.params.max_burst);
            let ttt = self.alloc_ttt();
            let mut b = Bhs::new(op::R2T);
            b.set_flags(0x80);
            b.set_lun(w.lun);
            b.set_itt(itt);
            b.set_u32(20, ttt);
            b.set_u32(36, w.r2t_sn);
            b.set_u32(40, w.next_offset);
            b.set_u32(44, len);
            w.outstanding.push(R2tState {
                ttt,
                offset: w.next_offset,
                len,
                data_sn: 0,
            });
            w.r2t_sn = w.r2t_sn.wrapping_add(1);
            w.next_offset += len;
            self.send(Pdu::new(b), Sn::Current).await?;
        }
        Ok(())
    }

    pub(super) async fn on_data_out(&mut self, p: Pdu) -> Result<(), ConnError> {
        let itt = p.bhs.itt();
        let ttt = p.bhs.u32_at(20);
        let offset = p.bhs.u32_at(40);
        let len = p.data.len() as u32;
        let final_bit = p.bhs.final_bit();
        let Some(mut w) = self.writes.remove(&itt) else {
            // Data for a task that was aborted or never existed: ignored (RFC 7143 §11.7).
            tracing::debug!(itt, "Data-Out for an unknown task ignored");
            return Ok(());
        };
        if offset != w.received || offset.checked_add(len).is_none_or(|e| e > w.edtl) {
            self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
            return Err(ConnError::Protocol(
                "Data-Out offset out of order or beyond the transfer length",
            ));
        }
        let data_sn = p.bhs.u32_at(36);
        if ttt == RESERVED_TAG {
            if w.unsol_done || offset + len > w.unsol_end {
                self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Err(ConnError::Protocol(
                    "unsolicited data beyond FirstBurstLength",
                ));
            }
            if data_sn != w.unsol_data_sn {
                return self.fail_data_sn(itt, w, &p.bhs).await;
            }
            w.unsol_data_sn += 1;
        } else {
            let Some(i) = w.outstanding.iter().position(|r| r.ttt == ttt) else {
                self.send_reject(&p.bhs, reject::INVALID_PDU_FIELD).await;
                return Err(ConnError::Protocol(
                    "Data-Out with an unknown Target Transfer Tag",
                ));
            };
            let r = &mut w.outstanding[i];
            if offset < r.offset || offset + len > r.offset + r.len {
                self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                return Err(ConnError::Protocol("Data-Out outside its R2T"));
            }
            if data_sn != r.data_sn {
                return self.fail_data_sn(itt, w, &p.bhs).await;
            }
            r.data_sn += 1;
        }
        if w.refuse.is_none() {
            if w.buf.capacity() == w.buf.len() {
                // Grow with the data actually received, never from the announced length alone.
                w.buf.reserve(
                    (w.edtl as usize - w.buf.len())
                        .min(4 * 1024 * 1024)
                        .max(len as usize),
                );
            }
            w.buf.extend_from_slice(&p.data);
        }
        w.received += len;
        if final_bit {
            if ttt == RESERVED_TAG {
                w.unsol_done = true;
                w.next_offset = w.received;
            } else if let Some(i) = w.outstanding.iter().position(|r| r.ttt == ttt) {
                let r = w.outstanding.remove(i);
                if w.received < r.offset + r.len {
                    self.send_reject(&p.bhs, reject::PROTOCOL_ERROR).await;
                    return Err(ConnError::Protocol("R2T sequence ended early"));
                }
            }
        } else if ttt == RESERVED_TAG && w.received == w.unsol_end {
            // Some initiators leave F clear; the burst is complete anyway.
            w.unsol_done = true;
            w.next_offset = w.received;
        }
        let complete = w.received == w.edtl && w.outstanding.is_empty();
        self.continue_write(itt, w, complete).await
    }

    /// Hands on a write whose data is `complete`, or answers one that was refused once its
    /// unsolicited data is in (a refused command solicits nothing); otherwise solicits
    /// what is missing and keeps the write waiting for it.
    pub(super) async fn continue_write(
        &mut self,
        itt: u32,
        mut w: WriteTask,
        complete: bool,
    ) -> Result<(), ConnError> {
        if complete || (w.unsol_done && w.refuse.is_some() && w.outstanding.is_empty()) {
            self.finish_write(itt, w).await;
            return Ok(());
        }
        if w.unsol_done {
            self.issue_r2ts(itt, &mut w).await?;
        }
        self.writes.insert(itt, w);
        Ok(())
    }

    /// A Data-Out with the wrong DataSN (a lost or reordered PDU): at ERL 0 the data cannot
    /// be recovered, so the PDU is rejected and the command ends with ABORTED COMMAND / DATA
    /// PHASE ERROR; the connection stays up. Later Data-Out for the task is ignored.
    pub(super) async fn fail_data_sn(
        &mut self,
        itt: u32,
        w: WriteTask,
        bad: &Bhs,
    ) -> Result<(), ConnError> {
        tracing::warn!(
            itt,
            data_sn = bad.u32_at(36),
            "Data-Out with an unexpected DataSN"
        );
        self.send_reject(bad, reject::PROTOCOL_ERROR).await;
        self.release_slot(w.immediate);
        let done = w.answer(itt, Outcome::check(&Sense::data_phase_error()));
        self.tx
            .send(Out::Scsi(Box::new(done)))
            .await
            .map_err(|_| ConnError::WriterGone)
    }

    pub(super) async fn finish_write(&mut self, itt: u32, mut w: WriteTask) {
        if let Some(outcome) = w.refuse.take() {
            self.release_slot(w.immediate);
            let done = w.answer(itt, outcome);
            let tx = self.tx.clone();
            tokio::spawn(async move { tx.send(Out::Scsi(Box::new(done))).await });
            return;
        }
        self.dispatch(Request {
            itt,
            lun: w.lun,
            cdb: w.cdb,
            data_out: w.buf,
            edtl: w.edtl,
            read: false,
            write: true,
            attr: w.attr,
            immediate: w.immediate,
        })
        .await;
    }
}
