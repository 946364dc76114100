//! SCSI command helpers over [`Session::command`]: TEST UNIT READY, REPORT LUNS, INQUIRY,
//! READ CAPACITY (16), READ (16), WRITE (16), SYNCHRONIZE CACHE (16), REPORT TARGET PORT
//! GROUPS.

use super::{DataDir, InitiatorError, Session};

/// Capacity from READ CAPACITY (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
}

/// One target port group descriptor of REPORT TARGET PORT GROUPS (SPC-4 6.36).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPortGroupState {
    pub group: u16,
    /// ASYMMETRIC ACCESS STATE code (0 Active/Optimized, 1 Active/Non-optimized, 2 Standby,
    /// 3 Unavailable, 0xE Offline, 0xF Transitioning).
    pub state: u8,
    /// PREF: the preferred group.
    pub preferred: bool,
    /// STATUS CODE (0 none, 1 altered by SET TARGET PORT GROUPS, 2 altered implicitly).
    pub status: u8,
    /// Relative target port identifiers of the group's ports.
    pub ports: Vec<u16>,
}

/// Decodes REPORT TARGET PORT GROUPS parameter data in the length-only format.
pub fn decode_target_port_groups(data: &[u8]) -> Result<Vec<TargetPortGroupState>, InitiatorError> {
    let short = || InitiatorError::Protocol("short REPORT TARGET PORT GROUPS data".into());
    let len = u32::from_be_bytes(data.get(0..4).ok_or_else(short)?.try_into().expect("4")) as usize;
    let body = data.get(4..4 + len).ok_or_else(short)?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let d = body.get(pos..pos + 8).ok_or_else(short)?;
        let count = d[7] as usize;
        let ports = body.get(pos + 8..pos + 8 + 4 * count).ok_or_else(short)?;
        out.push(TargetPortGroupState {
            group: u16::from_be_bytes([d[2], d[3]]),
            state: d[0] & 0x0F,
            preferred: d[0] & 0x80 != 0,
            status: d[5],
            ports: ports
                .chunks_exact(4)
                .map(|p| u16::from_be_bytes([p[2], p[3]]))
                .collect(),
        });
        pos += 8 + 4 * count;
    }
    Ok(out)
}

impl Session {
    /// REPORT TARGET PORT GROUPS for `lun`: each group's access state for that logical unit.
    pub fn report_target_port_groups(
        &mut self,
        lun: u64,
    ) -> Result<Vec<TargetPortGroupState>, InitiatorError> {
        let alloc: u32 = 8192;
        let mut cdb = [0u8; 12];
        cdb[0] = 0xA3;
        cdb[1] = 0x0A;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        let r = self.command(lun, &cdb, DataDir::Read(alloc))?;
        decode_target_port_groups(&r.data)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_port_groups_decode_state_status_and_ports() {
        let data = [
            0, 0, 0, 28, // two descriptors: one port, then two
            0x80, 0x8F, 0, 11, 0, 0x02, 0, 1, 0, 0, 0, 3, //
            0x02, 0x8F, 0, 12, 0, 0x00, 0, 2, 0, 0, 0, 4, 0, 0, 1, 5,
        ];
        let g = decode_target_port_groups(&data).unwrap();
        assert_eq!(
            g,
            vec![
                TargetPortGroupState {
                    group: 11,
                    state: 0,
                    preferred: true,
                    status: 2,
                    ports: vec![3]
                },
                TargetPortGroupState {
                    group: 12,
                    state: 2,
                    preferred: false,
                    status: 0,
                    ports: vec![4, 0x105]
                },
            ]
        );
        // A descriptor cut short is an error, not a group with fewer ports.
        let mut cut = data.to_vec();
        cut[3] = 26;
        assert!(decode_target_port_groups(&cut[..30]).is_err());
        assert!(decode_target_port_groups(&[0, 0]).is_err());
    }
}
