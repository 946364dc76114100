//! CDB parsing, separated from execution: bytes in, a typed [`Cdb`] or the [`Sense`] that
//! rejects them out. Nothing here touches a device or any state.

use crate::sense::Sense;

/// Operation codes this device model implements.
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// Not implemented (SET TARGET PORT GROUPS is its one service action here): named for
    /// the tests that check it is refused.
    pub const MAINTENANCE_OUT: u8 = 0xA4;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;

    /// SERVICE ACTION IN (16) service actions.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    pub const SA_REPORT_SUPPORTED_TMF: u8 = 0x0D;
}

/// Whether a command reads, writes, or neither, for reservation conflict rules (SPC-4 5.12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever reservation exists (INQUIRY, REPORT LUNS, PR IN, ...).
    Always,
    /// Conflicts under exclusive-access reservations for non-holders.
    Read,
    /// Conflicts under every reservation type for non-holders.
    Write,
    /// PERSISTENT RESERVE OUT: its own rules (keys), never a generic conflict.
    PrOut,
}

/// Page control of MODE SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

/// A parsed CDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cdb {
    TestUnitReady,
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    RequestSense {
        alloc: u32,
    },
    ReportLuns {
        select: u8,
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        ten: bool,
        len: u32,
    },
    Read {
        lba: u64,
        blocks: u32,
        /// Byte of the TRANSFER LENGTH field, for the field pointer of a too-long transfer.
        len_at: u16,
    },
    Write {
        lba: u64,
        blocks: u32,
        fua: bool,
        len_at: u16,
    },
    WriteAndVerify {
        lba: u64,
        blocks: u32,
        bytchk: bool,
        len_at: u16,
    },
    Verify {
        lba: u64,
        blocks: u32,
        /// BYTCHK: 0 medium check, 1 compare data-out, 3 compare one block to each.
        bytchk: u8,
        len_at: u16,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    SynchronizeCache {
        lba: u64,
        blocks: u32,
    },
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        len_at: u16,
    },
    Unmap {
        len: u32,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    ReportOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
        alloc: u32,
    },
    ReportTmf {
        repd: bool,
        alloc: u32,
    },
    /// REPORT TARGET PORT GROUPS; `extended`: PARAMETER DATA FORMAT 001b.
    ReportTargetPortGroups {
        extended: bool,
        alloc: u32,
    },
    PrIn {
        sa: u8,
        alloc: u32,
    },
    PrOut {
        sa: u8,
        scope: u8,
        kind: u8,
        len: u32,
    },
    Reserve6,
    Release6,
}

impl Cdb {
    /// The SCSI data length of the command in bytes (SAM-5 "expected data transfer length"):
    /// what a read returns in full or a write needs, given the logical unit's block size.
    /// For commands with an allocation or parameter list length, that length. A transport
    /// compares it with the initiator's expected length to report residuals.
    pub fn data_length(&self, block_size: u32) -> u64 {
        let bs = u64::from(block_size);
        match *self {
            Cdb::Read { blocks, .. }
            | Cdb::Write { blocks, .. }
            | Cdb::WriteAndVerify { blocks, .. } => u64::from(blocks) * bs,
            Cdb::Verify { blocks, bytchk, .. } => match bytchk {
                0 => 0,
                1 => u64::from(blocks) * bs,
                _ => bs,
            },
            Cdb::CompareAndWrite { blocks, .. } => 2 * u64::from(blocks) * bs,
            Cdb::WriteSame { ndob, .. } => {
                if ndob {
                    0
                } else {
                    bs
                }
            }
            Cdb::Inquiry { alloc, .. }
            | Cdb::RequestSense { alloc }
            | Cdb::ReportLuns { alloc, .. }
            | Cdb::ModeSense { alloc, .. }
            | Cdb::ReadCapacity16 { alloc }
            | Cdb::GetLbaStatus { alloc, .. }
            | Cdb::ReportOpcodes { alloc, .. }
            | Cdb::ReportTmf { alloc, .. }
            | Cdb::ReportTargetPortGroups { alloc, .. }
            | Cdb::PrIn { alloc, .. } => u64::from(alloc),
            Cdb::ModeSelect { len, .. } | Cdb::Unmap { len } | Cdb::PrOut { len, .. } => {
                u64::from(len)
            }
            Cdb::ReadCapacity10 => 8,
            Cdb::TestUnitReady | Cdb::SynchronizeCache { .. } | Cdb::Reserve6 | Cdb::Release6 => 0,
        }
    }

    /// How the command interacts with reservations.
    pub fn access(&self) -> Access {
        match self {
            Cdb::Inquiry { .. }
            | Cdb::RequestSense { .. }
            | Cdb::ReportLuns { .. }
            | Cdb::ReportOpcodes { .. }
            | Cdb::ReportTmf { .. }
            | Cdb::ReportTargetPortGroups { .. }
            | Cdb::PrIn { .. }
            | Cdb::TestUnitReady
            | Cdb::ReadCapacity10
            | Cdb::ReadCapacity16 { .. } => Access::Always,
            Cdb::Read { .. }
            | Cdb::Verify { .. }
            | Cdb::ModeSense { .. }
            | Cdb::GetLbaStatus { .. } => Access::Read,
            Cdb::Write { .. }
            | Cdb::WriteAndVerify { .. }
            | Cdb::WriteSame { .. }
            | Cdb::Unmap { .. }
            | Cdb::CompareAndWrite { .. }
            | Cdb::SynchronizeCache { .. }
            | Cdb::ModeSelect { .. }
            | Cdb::Reserve6
            | Cdb::Release6 => Access::Write,
            Cdb::PrOut { .. } => Access::PrOut,
        }
    }
}

/// How many (opcode, service action) pairs REPORT SUPPORTED OPERATION CODES lists for a
/// logical unit, thin-provisioned or not, seen through a port in a target port group or not.
pub fn opcode_table_len(thin: bool, port_group: bool) -> usize {
    crate::exec::opcodes::offered_len(crate::exec::opcodes::Offer { thin, port_group })
}

/// The CDB length for an operation code's group (SAM-5 table 43).
pub fn cdb_len(op: u8) -> usize {
    match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

/// Rejects a CONTROL byte with NACA or LINK set (neither is supported).
fn control(cdb: &[u8], at: usize) -> Result<(), Sense> {
    let c = cdb[at];
    if c & 0x04 != 0 {
        return Err(Sense::invalid_cdb(at as u16, Some(2)));
    }
    if c & 0x01 != 0 {
        return Err(Sense::invalid_cdb(at as u16, Some(0)));
    }
    Ok(())
}

/// Rejects a nonzero RDPROTECT/WRPROTECT (no protection information here).
fn no_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    Ok(())
}

/// Parses a CDB. `cdb` may be longer than the command's length (a padded 16-byte field).
pub fn parse(cdb: &[u8]) -> Result<Cdb, Sense> {
    let Some(&op) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let n = cdb_len(op);
    if cdb.len() < n {
        // Cannot even hold the control byte: treat as a malformed command.
        return Err(Sense::invalid_cdb(0, None));
    }
    let c = &cdb[..n];
    use opcode::*;
    let parsed = match op {
        TEST_UNIT_READY => Cdb::TestUnitReady,
        REQUEST_SENSE => {
            if c[1] & 0x01 != 0 {
                // DESC: descriptor-format sense is not supported.
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Cdb::RequestSense {
                alloc: u32::from(c[4]),
            }
        }
        INQUIRY => {
            if c[1] & 0x02 != 0 {
                return Err(Sense::invalid_cdb(1, Some(1)));
            }
            let evpd = c[1] & 0x01 != 0;
            if !evpd && c[2] != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            Cdb::Inquiry {
                evpd,
                page: c[2],
                alloc: be(&c[3..5]) as u32,
            }
        }
        REPORT_LUNS => {
            let select = c[2];
            if select > 2 {
                return Err(Sense::invalid_cdb(2, None));
            }
            let alloc = be(&c[6..10]) as u32;
            if alloc < 16 {
                return Err(Sense::invalid_cdb(6, None));
            }
            Cdb::ReportLuns { select, alloc }
        }
        MODE_SENSE_6 | MODE_SENSE_10 => {
            let ten = op == MODE_SENSE_10;
            let pc = match c[2] >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => {
                    return Err(Sense::new(
                        crate::sense::key::ILLEGAL_REQUEST,
                        crate::sense::Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
                    ));
                }
            };
            Cdb::ModeSense {
                ten,
                dbd: c[1] & 0x08 != 0,
                llbaa: ten && c[1] & 0x10 != 0,
                pc,
                page: c[2] & 0x3F,
                subpage: c[3],
                alloc: if ten {
                    be(&c[7..9]) as u32
                } else {
                    u32::from(c[4])
                },
            }
        }
        MODE_SELECT_6 | MODE_SELECT_10 => {
            let ten = op == MODE_SELECT_10;
            if c[1] & 0x01 != 0 {
                // SP: pages cannot be saved.
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            if c[1] & 0x10 == 0 {
                // PF = 0 means vendor-specific page format, which is not implemented.
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            Cdb::ModeSelect {
                ten,
                len: if ten {
                    be(&c[7..9]) as u32
                } else {
                    u32::from(c[4])
                },
            }
        }
        READ_6 | WRITE_6 => {
            let lba = be(&c[1..4]) & 0x1F_FFFF;
            let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
            if op == READ_6 {
                Cdb::Read {
                    lba,
                    blocks,
                    len_at: 4,
                }
            } else {
                Cdb::Write {
                    lba,
                    blocks,
                    fua: false,
                    len_at: 4,
                }
            }
        }
        READ_10 | READ_12 | READ_16 | WRITE_10 | WRITE_12 | WRITE_16 => {
            no_protect(c)?;
            let (lba, blocks, len_at) = lba_len(op, c);
            let fua = c[1] & 0x08 != 0;
            if matches!(op, READ_10 | READ_12 | READ_16) {
                Cdb::Read {
                    lba,
                    blocks,
                    len_at,
                }
            } else {
                Cdb::Write {
                    lba,
                    blocks,
                    fua,
                    len_at,
                }
            }
        }
        WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => {
            no_protect(c)?;
            let (lba, blocks, len_at) = lba_len(op, c);
            let bytchk = (c[1] >> 1) & 0x3;
            if bytchk > 1 {
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            Cdb::WriteAndVerify {
                lba,
                blocks,
                bytchk: bytchk == 1,
                len_at,
            }
        }
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            no_protect(c)?;
            let (lba, blocks, len_at) = lba_len(op, c);
            let bytchk = (c[1] >> 1) & 0x3;
            if bytchk == 2 {
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            Cdb::Verify {
                lba,
                blocks,
                bytchk,
                len_at,
            }
        }
        READ_CAPACITY_10 => {
            let pmi = c[8] & 0x01 != 0;
            if !pmi && be(&c[2..6]) != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            Cdb::ReadCapacity10
        }
        SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => {
            let (lba, blocks, _) = lba_len(op, c);
            Cdb::SynchronizeCache { lba, blocks }
        }
        WRITE_SAME_10 | WRITE_SAME_16 => {
            no_protect(c)?;
            if c[1] & 0x10 != 0 {
                // ANCHOR: anchored logical blocks are not supported.
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            let ndob = op == WRITE_SAME_16 && c[1] & 0x01 != 0;
            let (lba, blocks, len_at) = lba_len(op, c);
            Cdb::WriteSame {
                lba,
                blocks,
                unmap: c[1] & 0x08 != 0,
                ndob,
                len_at,
            }
        }
        UNMAP => {
            if c[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Cdb::Unmap {
                len: be(&c[7..9]) as u32,
            }
        }
        COMPARE_AND_WRITE => {
            no_protect(c)?;
            Cdb::CompareAndWrite {
                lba: be(&c[2..10]),
                blocks: u32::from(c[13]),
                fua: c[1] & 0x08 != 0,
            }
        }
        SERVICE_ACTION_IN_16 => match c[1] & 0x1F {
            SA_READ_CAPACITY_16 => Cdb::ReadCapacity16 {
                alloc: be(&c[10..14]) as u32,
            },
            SA_GET_LBA_STATUS => Cdb::GetLbaStatus {
                lba: be(&c[2..10]),
                alloc: be(&c[10..14]) as u32,
            },
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        },
        MAINTENANCE_IN => match c[1] & 0x1F {
            SA_REPORT_SUPPORTED_OPCODES => {
                let options = c[2] & 0x07;
                if options > 3 {
                    return Err(Sense::invalid_cdb(2, Some(2)));
                }
                Cdb::ReportOpcodes {
                    rctd: c[2] & 0x80 != 0,
                    options,
                    opcode: c[3],
                    sa: be(&c[4..6]) as u16,
                    alloc: be(&c[6..10]) as u32,
                }
            }
            SA_REPORT_TARGET_PORT_GROUPS => {
                let extended = match c[1] >> 5 {
                    0 => false,
                    1 => true,
                    _ => return Err(Sense::invalid_cdb(1, Some(7))),
                };
                Cdb::ReportTargetPortGroups {
                    extended,
                    alloc: be(&c[6..10]) as u32,
                }
            }
            SA_REPORT_SUPPORTED_TMF => Cdb::ReportTmf {
                repd: c[2] & 0x80 != 0,
                alloc: be(&c[6..10]) as u32,
            },
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        },
        PERSISTENT_RESERVE_IN => {
            let sa = c[1] & 0x1F;
            if sa > 3 {
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            Cdb::PrIn {
                sa,
                alloc: be(&c[7..9]) as u32,
            }
        }
        PERSISTENT_RESERVE_OUT => {
            let sa = c[1] & 0x1F;
            if sa > 6 {
                // REGISTER AND MOVE (7) and reserved codes.
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            Cdb::PrOut {
                sa,
                scope: c[2] >> 4,
                kind: c[2] & 0x0F,
                len: be(&c[5..9]) as u32,
            }
        }
        RESERVE_6 => {
            if c[1] & 0x01 != 0 {
                // Extents (obsolete) are not supported.
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Cdb::Reserve6
        }
        RELEASE_6 => {
            if c[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Cdb::Release6
        }
        _ => return Err(Sense::invalid_opcode()),
    };
    control(c, n - 1)?;
    Ok(parsed)
}

/// LBA, transfer length and the byte of the transfer length field, for the 10/12/16-byte
/// block commands.
fn lba_len(op: u8, c: &[u8]) -> (u64, u32, u16) {
    match cdb_len(op) {
        10 => (be(&c[2..6]), be(&c[7..9]) as u32, 7),
        12 => (be(&c[2..6]), be(&c[6..10]) as u32, 6),
        _ => (be(&c[2..10]), be(&c[10..14]) as u32, 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::{Asc, key};

    #[test]
    fn read_variants_decode_lba_and_length() {
        assert_eq!(
            parse(&[0x08, 0x1F, 0xFF, 0xFF, 0, 0]).unwrap(),
            Cdb::Read {
                lba: 0x1F_FFFF,
                blocks: 256,
                len_at: 4
            }
        );
        assert_eq!(
            parse(&[0x28, 0, 0, 0, 1, 2, 0, 0, 8, 0]).unwrap(),
            Cdb::Read {
                lba: 0x102,
                blocks: 8,
                len_at: 7
            }
        );
        let mut c16 = [0u8; 16];
        c16[0] = 0x8A;
        c16[1] = 0x08;
        c16[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        c16[10..14].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            parse(&c16).unwrap(),
            Cdb::Write {
                lba: 0x1_0000_0000,
                blocks: 3,
                fua: true,
                len_at: 10
            }
        );
    }

    #[test]
    fn protection_and_control_bits_are_rejected_with_pointer() {
        let e = parse(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(1, Some(7)));
        let e = parse(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x04]).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(9, Some(2)));
    }

    #[test]
    fn unknown_opcode_is_invalid_command_operation_code() {
        let e = parse(&[0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!((e.key, e.asc), (key::ILLEGAL_REQUEST, Asc(0x20, 0)));
        assert_eq!(e.encode()[15..18], [0xC0, 0, 0]);
        assert_eq!(parse(&[]).unwrap_err().asc, Asc(0x20, 0));
    }

    #[test]
    fn report_luns_needs_sixteen_bytes_of_allocation() {
        let e = parse(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(6, None));
        assert!(parse(&[0xA0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 0, 0]).is_err());
    }

    #[test]
    fn inquiry_page_without_evpd_is_invalid() {
        assert_eq!(
            parse(&[0x12, 0, 0x80, 0, 255, 0]).unwrap_err(),
            Sense::invalid_cdb(2, None)
        );
        assert_eq!(
            parse(&[0x12, 1, 0x83, 1, 0, 0]).unwrap(),
            Cdb::Inquiry {
                evpd: true,
                page: 0x83,
                alloc: 256
            }
        );
    }

    #[test]
    fn mode_sense_saved_values_are_not_supported() {
        let e = parse(&[0x1A, 0, 0xC8, 0, 255, 0]).unwrap_err();
        assert_eq!(e.asc, Asc(0x39, 0));
    }

    #[test]
    fn short_cdb_is_rejected() {
        assert!(parse(&[0x28, 0, 0]).is_err());
    }
}
