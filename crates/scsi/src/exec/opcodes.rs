//! REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
//! (SPC-4 6.35, 6.36), from one table of what this device model implements.

use super::Res;
use crate::cdb::opcode::*;
use crate::sense::Sense;

/// One supported command: opcode, service action (if the opcode has them) and the CDB usage
/// data (opcode, then a mask of the bits the device server looks at in each further byte).
pub struct OpInfo {
    pub opcode: u8,
    pub sa: Option<u8>,
    pub usage: &'static [u8],
    /// Which logical units offer it.
    pub offered: Offered,
}

/// Which logical units offer a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Always,
    /// Thin-provisioned logical units.
    Thin,
    /// Through a port in a target port group (asymmetric access, `alua.rs`).
    PortGroup,
}

/// What decides which commands a logical unit offers through a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub thin: bool,
    pub port_group: bool,
}

impl OpInfo {
    fn offered(&self, o: Offer) -> bool {
        match self.offered {
            Offered::Always => true,
            Offered::Thin => o.thin,
            Offered::PortGroup => o.port_group,
        }
    }
}

const fn op(opcode: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        sa: None,
        usage,
        offered: Offered::Always,
    }
}

const fn op_sa(opcode: u8, sa: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        sa: Some(sa),
        usage,
        offered: Offered::Always,
    }
}

const C: u8 = 0x07; // CONTROL byte: NACA and LINK are examined.
const FF: u8 = 0xFF;

/// Every command implemented, ascending by opcode and service action.
pub static COMMANDS: &[OpInfo] = &[
    op(TEST_UNIT_READY, &[TEST_UNIT_READY, 0, 0, 0, 0, C]),
    op(REQUEST_SENSE, &[REQUEST_SENSE, 0x01, 0, 0, FF, C]),
    op(READ_6, &[READ_6, 0x1F, FF, FF, FF, C]),
    op(WRITE_6, &[WRITE_6, 0x1F, FF, FF, FF, C]),
    op(INQUIRY, &[INQUIRY, 0x03, FF, FF, FF, C]),
    op(MODE_SELECT_6, &[MODE_SELECT_6, 0x11, 0, 0, FF, C]),
    op(RESERVE_6, &[RESERVE_6, 0x01, 0, 0, 0, C]),
    op(RELEASE_6, &[RELEASE_6, 0x01, 0, 0, 0, C]),
    op(MODE_SENSE_6, &[MODE_SENSE_6, 0x08, FF, FF, FF, C]),
    op(
        READ_CAPACITY_10,
        &[READ_CAPACITY_10, 0, FF, FF, FF, FF, 0, 0, 0x01, C],
    ),
    op(READ_10, &[READ_10, 0xF8, FF, FF, FF, FF, 0, FF, FF, C]),
    op(WRITE_10, &[WRITE_10, 0xF8, FF, FF, FF, FF, 0, FF, FF, C]),
    op(
        WRITE_AND_VERIFY_10,
        &[WRITE_AND_VERIFY_10, 0xF6, FF, FF, FF, FF, 0, FF, FF, C],
    ),
    op(VERIFY_10, &[VERIFY_10, 0xF6, FF, FF, FF, FF, 0, FF, FF, C]),
    op(
        SYNCHRONIZE_CACHE_10,
        &[SYNCHRONIZE_CACHE_10, 0, FF, FF, FF, FF, 0, FF, FF, C],
    ),
    op(
        WRITE_SAME_10,
        &[WRITE_SAME_10, 0xF8, FF, FF, FF, FF, 0, FF, FF, C],
    ),
    OpInfo {
        opcode: UNMAP,
        sa: None,
        usage: &[UNMAP, 0x01, 0, 0, 0, 0, 0, FF, FF, C],
        offered: Offered::Thin,
    },
    op(
        MODE_SELECT_10,
        &[MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, FF, FF, C],
    ),
    op(
        MODE_SENSE_10,
        &[MODE_SENSE_10, 0x18, FF, FF, 0, 0, 0, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_IN,
        0,
        &[PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_IN,
        1,
        &[PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_IN,
        2,
        &[PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_IN,
        3,
        &[PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        0,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        1,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        2,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        3,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        4,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        5,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op_sa(
        PERSISTENT_RESERVE_OUT,
        6,
        &[PERSISTENT_RESERVE_OUT, 0x1F, FF, 0, 0, FF, FF, FF, FF, C],
    ),
    op(
        READ_16,
        &[
            READ_16, 0xF8, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, C,
        ],
    ),
    op(
        COMPARE_AND_WRITE,
        &[
            COMPARE_AND_WRITE,
            0xF8,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
            0,
            FF,
            0,
            C,
        ],
    ),
    op(
        WRITE_16,
        &[
            WRITE_16, 0xF8, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, C,
        ],
    ),
    op(
        WRITE_AND_VERIFY_16,
        &[
            WRITE_AND_VERIFY_16,
            0xF6,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            C,
        ],
    ),
    op(
        VERIFY_16,
        &[
            VERIFY_16, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, C,
        ],
    ),
    op(
        SYNCHRONIZE_CACHE_16,
        &[
            SYNCHRONIZE_CACHE_16,
            0,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            C,
        ],
    ),
    op(
        WRITE_SAME_16,
        &[
            WRITE_SAME_16,
            0xF9,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            C,
        ],
    ),
    op_sa(
        SERVICE_ACTION_IN_16,
        SA_READ_CAPACITY_16,
        &[
            SERVICE_ACTION_IN_16,
            0x1F,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
            C,
        ],
    ),
    op_sa(
        SERVICE_ACTION_IN_16,
        SA_GET_LBA_STATUS,
        &[
            SERVICE_ACTION_IN_16,
            0x1F,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            C,
        ],
    ),
    op(
        REPORT_LUNS,
        &[REPORT_LUNS, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, C],
    ),
    OpInfo {
        opcode: MAINTENANCE_IN,
        sa: Some(SA_REPORT_TARGET_PORT_GROUPS),
        usage: &[MAINTENANCE_IN, 0xFF, 0, 0, 0, 0, FF, FF, FF, FF, 0, C],
        offered: Offered::PortGroup,
    },
    op_sa(
        MAINTENANCE_IN,
        SA_REPORT_SUPPORTED_OPCODES,
        &[MAINTENANCE_IN, 0x1F, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, C],
    ),
    op_sa(
        MAINTENANCE_IN,
        SA_REPORT_SUPPORTED_TMF,
        &[MAINTENANCE_IN, 0x1F, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, C],
    ),
    op(
        READ_12,
        &[READ_12, 0xF8, FF, FF, FF, FF, FF, FF, FF, FF, 0, C],
    ),
    op(
        WRITE_12,
        &[WRITE_12, 0xF8, FF, FF, FF, FF, FF, FF, FF, FF, 0, C],
    ),
    op(
        WRITE_AND_VERIFY_12,
        &[
            WRITE_AND_VERIFY_12,
            0xF6,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            C,
        ],
    ),
    op(
        VERIFY_12,
        &[VERIFY_12, 0xF6, FF, FF, FF, FF, FF, FF, FF, FF, 0, C],
    ),
];

fn has_sa(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.sa.is_some())
}

/// Command timeouts descriptor: none advertised (0 = not specified).
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t
}

/// How many commands REPORT SUPPORTED OPERATION CODES lists under `offer`.
pub(crate) fn offered_len(offer: Offer) -> usize {
    COMMANDS.iter().filter(|c| c.offered(offer)).count()
}

pub(crate) fn report_opcodes(offer: Offer, rctd: bool, options: u8, opcode: u8, sa: u16) -> Res {
    let offered = |c: &&OpInfo| c.offered(offer);
    if options == 0 {
        let mut body = Vec::new();
        for c in COMMANDS.iter().filter(offered) {
            body.push(c.opcode);
            body.push(0);
            body.extend_from_slice(&u16::from(c.sa.unwrap_or(0)).to_be_bytes());
            body.push(0);
            body.push((rctd as u8) << 1 | c.sa.is_some() as u8);
            body.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            if rctd {
                body.extend_from_slice(&timeouts());
            }
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        return Ok(out);
    }
    let with_sa = has_sa(opcode);
    let found = match options {
        1 if with_sa => return Err(Sense::invalid_cdb(2, Some(2)).into()),
        1 => COMMANDS.iter().filter(offered).find(|c| c.opcode == opcode),
        2 if !with_sa && COMMANDS.iter().any(|c| c.opcode == opcode) => {
            return Err(Sense::invalid_cdb(2, Some(2)).into());
        }
        _ => COMMANDS
            .iter()
            .filter(offered)
            .find(|c| c.opcode == opcode && (c.sa.is_none() || c.sa.map(u16::from) == Some(sa))),
    };
    let mut out = vec![0u8; 4];
    out[1] = (rctd as u8) << 7;
    match found {
        Some(c) => {
            out[1] |= 0x03; // supported, conforming to a standard
            out[2..4].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
            out.extend_from_slice(c.usage);
            if let Some(s) = c.sa {
                // The service action sits in byte 1 of every command here, below the
                // bits of byte 1 the device server looks at.
                out[5] = (c.usage[1] & 0xE0) | s;
            }
            if rctd {
                out.extend_from_slice(&timeouts());
            }
        }
        None => {
            out[1] |= 0x01; // not supported
        }
    }
    Ok(out)
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
/// LOGICAL UNIT RESET, TARGET RESET.
pub(crate) fn report_tmf(repd: bool) -> Vec<u8> {
    let mut b = vec![0u8; if repd { 16 } else { 4 }];
    b[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;
    if repd {
        b[3] = 0x0C;
    }
    b
}
