//! SCSI command helpers over [`Session::command`]: TEST UNIT READY, REPORT LUNS, INQUIRY,
//! READ CAPACITY (16), READ (16), WRITE (16), SYNCHRONIZE CACHE (16).

use super::{DataDir, InitiatorError, Session};

/// Capacity from READ CAPACITY (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
}

impl Session {
    pub fn test_unit_ready(&mut self, lun: u64) -> Result<(), InitiatorError> {
        self.command(lun, &[0; 6], DataDir::None).map(|_| ())
    }

    /// REPORT LUNS; returns the LUN numbers.
    pub fn report_luns(&mut self) -> Result<Vec<u64>, InitiatorError> {
        let alloc: u32 = 16 + 8 * 1024;
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        let r = self.command(0, &cdb, DataDir::Read(alloc))?;
        if r.data.len() < 8 {
            return Err(InitiatorError::Protocol("short REPORT LUNS data".into()));
        }
        let n = u32::from_be_bytes(r.data[0..4].try_into().expect("4")) as usize / 8;
        // LUNs in an addressing method this initiator does not speak are left out.
        Ok(r.data[8..]
            .chunks_exact(8)
            .take(n)
            .filter_map(|c| scsi::decode_lun(u64::from_be_bytes(c.try_into().expect("8"))))
            .collect())
    }

    /// INQUIRY: standard data (`page = None`) or a VPD page.
    pub fn inquiry(&mut self, lun: u64, page: Option<u8>) -> Result<Vec<u8>, InitiatorError> {
        let alloc: u16 = 4096;
        let mut cdb = [0u8; 6];
        cdb[0] = 0x12;
        if let Some(p) = page {
            cdb[1] = 1;
            cdb[2] = p;
        }
        cdb[3..5].copy_from_slice(&alloc.to_be_bytes());
        Ok(self.command(lun, &cdb, DataDir::Read(alloc as u32))?.data)
    }

    pub fn read_capacity16(&mut self, lun: u64) -> Result<Capacity, InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let r = self.command(lun, &cdb, DataDir::Read(32))?;
        if r.data.len() < 12 {
            return Err(InitiatorError::Protocol("short READ CAPACITY data".into()));
        }
        Ok(Capacity {
            blocks: u64::from_be_bytes(r.data[0..8].try_into().expect("8")) + 1,
            block_size: u32::from_be_bytes(r.data[8..12].try_into().expect("4")),
        })
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes.
    pub fn read16(
        &mut self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Vec<u8>, InitiatorError> {
        let cdb = rw16(0x88, lba, blocks, false);
        let len = blocks
            .checked_mul(block_size)
            .ok_or(InitiatorError::Protocol("read too long".into()))?;
        Ok(self.command(lun, &cdb, DataDir::Read(len))?.data)
    }

    /// WRITE (16); `data` must be a whole number of blocks.
    pub fn write16(
        &mut self,
        lun: u64,
        lba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> Result<(), InitiatorError> {
        if block_size == 0 || data.len() % block_size as usize != 0 {
            return Err(InitiatorError::Protocol(
                "write length is not a multiple of the block size".into(),
            ));
        }
        let cdb = rw16(0x8a, lba, (data.len() / block_size as usize) as u32, fua);
        self.command(lun, &cdb, DataDir::Write(data.to_vec()))
            .map(|_| ())
    }

    pub fn synchronize_cache(&mut self, lun: u64) -> Result<(), InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x91;
        self.command(lun, &cdb, DataDir::None).map(|_| ())
    }
}

/// Builds a READ (16) / WRITE (16) CDB.
pub fn rw16(opcode: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    if fua {
        cdb[1] = 0x08;
    }
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}
