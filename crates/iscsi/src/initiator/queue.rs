//! Command submission (with immediate and unsolicited data within the command window), the
//! completion queue and the UNIT ATTENTION retry.

use super::{
    DataDir, InitiatorError, Pending, SENSE_UNIT_ATTENTION, ScsiResponse, Session, encode_lun,
};
use crate::pdu::{Bhs, Pdu, RESERVED_TAG, op, sn_lt};

impl Session {
    /// Commands submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Queues a SCSI command without waiting; returns its task tag for [`Session::wait`].
    /// Queued commands go to the target together, at the latest when the session next has
    /// to wait for the target ([`Session::wait`], [`Session::wait_any`] or any call that
    /// expects an answer), so that a burst of submissions costs one system call.
    pub fn submit(&mut self, lun: u64, cdb: &[u8], dir: DataDir) -> Result<u32, InitiatorError> {
        if self.target.is_none() {
            return Err(InitiatorError::Protocol(
                "SCSI commands need a normal session".into(),
            ));
        }
        if cdb.is_empty() || cdb.len() > 16 {
            return Err(InitiatorError::Protocol(format!(
                "CDB of {} bytes not supported",
                cdb.len()
            )));
        }
        // Respect the command window.
        while sn_lt(self.max_cmd_sn, self.cmd_sn) {
            self.flush()?;
            self.pump()?;
        }
        let itt = self.alloc_itt();
        let lun_field = encode_lun(lun);
        let mut b = Bhs::new(op::SCSI_CMD);
        let (read_len, data_out) = match dir {
            DataDir::None => (0, Vec::new()),
            DataDir::Read(n) => (n, Vec::new()),
            DataDir::Write(d) => (0, d),
        };
        let edtl = if data_out.is_empty() {
            read_len
        } else {
            data_out.len() as u32
        };
        let mut flags = 0x01u8; // SIMPLE
        if read_len > 0 {
            flags |= 0x40;
        }
        if !data_out.is_empty() {
            flags |= 0x20;
        }
        b.set_lun(lun_field);
        b.set_itt(itt);
        b.set_u32(20, edtl);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        let n = &self.neg;
        let imm = if n.immediate_data {
            data_out
                .len()
                .min(n.first_burst as usize)
                .min(n.max_send as usize)
        } else {
            0
        };
        let unsol_end = if n.initial_r2t {
            imm
        } else {
            data_out.len().min(n.first_burst as usize)
        };
        if unsol_end <= imm {
            flags |= 0x80;
        }
        b.set_flags(flags);
        // All the data as immediate data (the usual small write): it moves into the
        // command, and no R2T can ask for any of it again.
        let all_immediate = imm == data_out.len();
        let (immediate, data_out) = if all_immediate {
            (data_out, Vec::new())
        } else {
            (data_out[..imm].to_vec(), data_out)
        };
        let cmd = Pdu {
            bhs: b,
            ahs: Vec::new(),
            data: immediate,
        };
        self.send(&cmd)?;
        // Unsolicited Data-Out up to FirstBurstLength.
        let mut off = imm;
        let mut data_sn = 0;
        while off < unsol_end {
            let len = (unsol_end - off).min(self.neg.max_send as usize);
            let mut d = Bhs::new(op::DATA_OUT);
            if off + len == unsol_end {
                d.set_flags(0x80);
            }
            d.set_lun(lun_field);
            d.set_itt(itt);
            d.set_u32(20, RESERVED_TAG);
            d.set_u32(28, self.exp_stat_sn);
            d.set_u32(36, data_sn);
            d.set_u32(40, off as u32);
            let p = Pdu::with_data(d, data_out[off..off + len].to_vec());
            self.send(&p)?;
            data_sn += 1;
            off += len;
        }
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.pending.insert(
            itt,
            Pending {
                read_len,
                data_in: Vec::new(),
                data_out,
                lun: lun_field,
            },
        );
        Ok(itt)
    }

    /// Waits for the command with this tag.
    pub fn wait(&mut self, itt: u32) -> Result<ScsiResponse, InitiatorError> {
        loop {
            if let Some(r) = self.completed.remove(&itt) {
                self.order.retain(|t| *t != itt);
                return r;
            }
            if !self.pending.contains_key(&itt) {
                return Err(InitiatorError::Protocol(format!(
                    "no command with tag {itt}"
                )));
            }
            self.flush()?;
            self.pump()?;
            self.pump_buffered()?;
        }
    }

    /// Waits for whichever command finishes first.
    pub fn wait_any(
        &mut self,
    ) -> Result<(u32, Result<ScsiResponse, InitiatorError>), InitiatorError> {
        loop {
            if let Some(itt) = self.order.pop_front() {
                if let Some(r) = self.completed.remove(&itt) {
                    return Ok((itt, r));
                }
                continue;
            }
            if self.pending.is_empty() {
                return Err(InitiatorError::Protocol("no command in flight".into()));
            }
            // Only about to block: send what is queued first.
            self.flush()?;
            self.pump()?;
            self.pump_buffered()?;
        }
    }

    pub(super) fn complete(&mut self, itt: u32, r: Result<ScsiResponse, InitiatorError>) {
        self.pending.remove(&itt);
        self.completed.insert(itt, r);
        self.order.push_back(itt);
    }

    /// Runs one command to completion without any retry.
    pub fn execute(
        &mut self,
        lun: u64,
        cdb: &[u8],
        dir: DataDir,
    ) -> Result<ScsiResponse, InitiatorError> {
        let itt = self.submit(lun, cdb, dir)?;
        self.wait(itt)
    }

    /// Runs a command; a UNIT ATTENTION is recorded (see [`Session::take_unit_attentions`])
    /// and the command retried. Any other CHECK CONDITION becomes [`InitiatorError::Check`].
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        dir: DataDir,
    ) -> Result<ScsiResponse, InitiatorError> {
        let mut tries = 0;
        loop {
            let r = self.execute(lun, cdb, dir.clone())?;
            if r.status == scsi::status::CHECK_CONDITION
                && r.sense
                    .as_ref()
                    .is_some_and(|s| s.key == SENSE_UNIT_ATTENTION)
                && tries < self.cfg.ua_retries
            {
                let s = r.sense.clone().expect("sense");
                tracing::debug!(%s, "unit attention; retrying");
                self.unit_attentions.push(s);
                tries += 1;
                continue;
            }
            return r.into_result();
        }
    }
}
