//! What the target sends: Data-In, SCSI responses, R2T (answered with Data-Out), NOP-In,
//! asynchronous messages, rejects and the answers other requests wait for.

use super::{InitiatorError, ScsiResponse, Sense, Session};
use crate::pdu::{self, Bhs, Pdu, RESERVED_TAG, op, sn_le, sn_lt};

impl Session {
    /// Handles every PDU that is already whole in the read buffer (no system call), so
    /// that answers which arrived together complete together.
    pub(super) fn pump_buffered(&mut self) -> Result<(), InitiatorError> {
        loop {
            let buf = self.rd.buffer();
            let Some(head) = buf.get(..pdu::BHS_LEN) else {
                return Ok(());
            };
            let bhs = Bhs(head.try_into().expect("48 bytes"));
            if buf.len() < pdu::wire_len(&bhs, self.digests) {
                return Ok(());
            }
            self.pump()?;
        }
    }

    fn note_sn(&mut self, b: &Bhs, status: bool) {
        if status {
            self.exp_stat_sn = b.u32_at(24).wrapping_add(1);
        }
        let exp = b.u32_at(28);
        let max = b.u32_at(32);
        if sn_le(exp, max.wrapping_add(1)) && sn_lt(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
    }

    /// Reads and handles one PDU from the target.
    pub(super) fn pump(&mut self) -> Result<(), InitiatorError> {
        let max = self.cfg.max_recv_data_segment as usize;
        let p = match pdu::read_sync(&mut self.rd, self.digests, max) {
            Ok(p) => p,
            Err(e) => {
                let tags: Vec<u32> = self.pending.keys().copied().collect();
                for t in tags {
                    self.complete(t, Err(InitiatorError::ConnectionLost));
                }
                return Err(e.into());
            }
        };
        let b = &p.bhs;
        match b.opcode() {
            op::DATA_IN => {
                let itt = b.itt();
                let status = b.flags() & 0x01 != 0;
                self.note_sn(b, status);
                let Some(pd) = self.pending.get_mut(&itt) else {
                    return Err(InitiatorError::Protocol(format!(
                        "Data-In for unknown tag {itt}"
                    )));
                };
                let off = b.u32_at(40) as usize;
                if off != pd.data_in.len() || off + p.data.len() > pd.read_len as usize {
                    return Err(InitiatorError::Protocol(
                        "Data-In out of order or too long".into(),
                    ));
                }
                if pd.data_in.is_empty() {
                    // The common case: the whole read in one Data-In; keep its buffer.
                    pd.data_in = p.data;
                } else {
                    pd.data_in.extend_from_slice(&p.data);
                }
                if status {
                    let data = std::mem::take(&mut pd.data_in);
                    let r = ScsiResponse {
                        status: b.0[3],
                        sense: None,
                        data,
                        residual: residual(b),
                    };
                    self.complete(itt, Ok(r));
                }
            }
            op::SCSI_RESP => {
                let itt = b.itt();
                self.note_sn(b, true);
                let Some(pd) = self.pending.get_mut(&itt) else {
                    return Err(InitiatorError::Protocol(format!(
                        "SCSI Response for unknown tag {itt}"
                    )));
                };
                let sense = if p.data.len() >= 2 {
                    let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                    p.data.get(2..2 + n).and_then(Sense::parse)
                } else {
                    None
                };
                let data = std::mem::take(&mut pd.data_in);
                let r = if b.0[2] != 0 {
                    Err(InitiatorError::Protocol(format!(
                        "iSCSI response code {:#x}",
                        b.0[2]
                    )))
                } else {
                    Ok(ScsiResponse {
                        status: b.0[3],
                        sense,
                        data,
                        residual: residual(b),
                    })
                };
                self.complete(itt, r);
            }
            op::R2T => {
                self.note_sn(b, false);
                let itt = b.itt();
                let ttt = b.u32_at(20);
                let off = b.u32_at(40) as usize;
                let len = b.u32_at(44) as usize;
                let exp_stat_sn = self.exp_stat_sn;
                let max_send = self.neg.max_send as usize;
                let Some(pd) = self.pending.get(&itt) else {
                    return Err(InitiatorError::Protocol(format!(
                        "R2T for unknown tag {itt}"
                    )));
                };
                if off + len > pd.data_out.len() {
                    return Err(InitiatorError::Protocol("R2T beyond the data".into()));
                }
                let lun = pd.lun;
                let mut pos = off;
                let mut data_sn = 0u32;
                let mut out = Vec::new();
                while pos < off + len {
                    let n = (off + len - pos).min(max_send);
                    let mut d = Bhs::new(op::DATA_OUT);
                    if pos + n == off + len {
                        d.set_flags(0x80);
                    }
                    d.set_lun(lun);
                    d.set_itt(itt);
                    d.set_u32(20, ttt);
                    d.set_u32(28, exp_stat_sn);
                    d.set_u32(36, data_sn);
                    d.set_u32(40, pos as u32);
                    out.push(Pdu::with_data(d, pd.data_out[pos..pos + n].to_vec()));
                    data_sn += 1;
                    pos += n;
                }
                for p in &out {
                    self.send(p)?;
                }
                self.flush()?;
            }
            op::NOP_IN => {
                let itt = b.itt();
                self.note_sn(b, itt != RESERVED_TAG);
                let ttt = b.u32_at(20);
                if ttt != RESERVED_TAG {
                    let mut r = Bhs::new(op::NOP_OUT);
                    r.set_immediate(true);
                    r.set_flags(0x80);
                    r.set_lun(b.lun());
                    r.set_itt(RESERVED_TAG);
                    r.set_u32(20, ttt);
                    r.set_u32(24, self.cmd_sn);
                    r.set_u32(28, self.exp_stat_sn);
                    self.send(&Pdu::new(r))?;
                    self.flush()?;
                } else if itt != RESERVED_TAG {
                    self.others.insert(itt, p);
                }
            }
            op::ASYNC => {
                self.note_sn(b, true);
                match b.0[36] {
                    1 => self.logout_requested = true,
                    0 => {
                        if let Some(s) = p.data.get(2..).and_then(Sense::parse) {
                            self.unit_attentions.push(s);
                        }
                    }
                    _ => {}
                }
            }
            op::REJECT => {
                self.note_sn(b, true);
                let reason = b.0[2];
                if p.data.len() >= 48 {
                    let rejected = Bhs(p.data[..48].try_into().expect("48"));
                    let itt = rejected.itt();
                    if self.pending.contains_key(&itt) {
                        self.complete(itt, Err(InitiatorError::Rejected { reason }));
                        return Ok(());
                    }
                    if itt != RESERVED_TAG {
                        self.others.insert(itt, p);
                        return Ok(());
                    }
                }
                return Err(InitiatorError::Rejected { reason });
            }
            op::TMF_RESP | op::TEXT_RESP | op::LOGOUT_RESP => {
                self.note_sn(b, true);
                self.others.insert(b.itt(), p);
            }
            other => {
                return Err(InitiatorError::Protocol(format!(
                    "unexpected opcode {other:#x} from target"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn wait_other(&mut self, itt: u32) -> Result<Pdu, InitiatorError> {
        self.flush()?;
        loop {
            if let Some(p) = self.others.remove(&itt) {
                if p.bhs.opcode() == op::REJECT {
                    return Err(InitiatorError::Rejected { reason: p.bhs.0[2] });
                }
                return Ok(p);
            }
            self.pump()?;
        }
    }
}

fn residual(b: &Bhs) -> i64 {
    let count = i64::from(b.u32_at(44));
    let flags = b.flags();
    if flags & 0x02 != 0 {
        count
    } else if flags & 0x04 != 0 {
        -count
    } else {
        0
    }
}
