//! Requests outside the SCSI command queue, answered one at a time: Text, NOP-Out ping and
//! task management.

use super::{InitiatorError, Session, encode_lun};
use crate::pdu::{Bhs, Pdu, RESERVED_TAG, op};
use crate::text::{self, TextPairs};

impl Session {
    /// Sends a text request and collects the whole answer (following continuations).
    pub fn text_request(&mut self, keys: &str) -> Result<TextPairs, InitiatorError> {
        let itt = self.alloc_itt();
        let mut ttt = RESERVED_TAG;
        let mut data = keys.replace(';', "\0").into_bytes();
        data.push(0);
        let mut all = Vec::new();
        loop {
            let mut b = Bhs::new(op::TEXT_REQ);
            b.set_immediate(true);
            b.set_flags(0x80);
            b.set_itt(itt);
            b.set_u32(20, ttt);
            b.set_u32(24, self.cmd_sn);
            b.set_u32(28, self.exp_stat_sn);
            self.send(&Pdu::with_data(b, std::mem::take(&mut data)))?;
            let r = self.wait_other(itt)?;
            if all.len() + r.data.len() > text::MAX_TEXT_LEN {
                return Err(InitiatorError::Protocol("text answer too long".into()));
            }
            all.extend_from_slice(&r.data);
            if r.bhs.flags() & 0x40 == 0 {
                break;
            }
            ttt = r.bhs.u32_at(20);
        }
        Ok(TextPairs::parse_list(&all)?)
    }

    /// Sends a NOP-Out ping and waits for the echo.
    pub fn ping(&mut self, payload: &[u8]) -> Result<Vec<u8>, InitiatorError> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(op::NOP_OUT);
        b.set_immediate(true);
        b.set_flags(0x80);
        b.set_itt(itt);
        b.set_u32(20, RESERVED_TAG);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        self.send(&Pdu::with_data(b, payload.to_vec()))?;
        Ok(self.wait_other(itt)?.data)
    }

    /// Sends a task management request; returns the response code (0 = complete).
    pub fn task_management(
        &mut self,
        lun: u64,
        function: u8,
        ref_tag: u32,
    ) -> Result<u8, InitiatorError> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(op::TMF_REQ);
        b.set_immediate(true);
        b.set_flags(0x80 | (function & 0x7f));
        b.set_lun(encode_lun(lun));
        b.set_itt(itt);
        b.set_u32(20, ref_tag);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        // RefCmdSN: the last command sent (ABORT TASK refers to an earlier command).
        b.set_u32(32, self.cmd_sn.wrapping_sub(1));
        self.send(&Pdu::new(b))?;
        Ok(self.wait_other(itt)?.bhs.0[2])
    }
}
