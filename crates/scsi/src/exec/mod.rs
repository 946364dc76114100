//! Command execution, one module per command family. Each function gets a parsed CDB's
//! fields and a [`Ctx`] and returns the data-in bytes or a [`Fail`].

pub(crate) mod alua;
pub(crate) mod block;
pub(crate) mod inquiry;
pub(crate) mod mode;
pub(crate) mod opcodes;
pub(crate) mod pr;

use crate::lu::LogicalUnit;
use crate::sense::Sense;
use crate::{Nexus, Outcome, status};

/// Everything a command may look at besides its CDB.
pub(crate) struct Ctx<'a> {
    pub lu: &'a LogicalUnit,
    pub nexus: &'a Nexus,
    pub target_name: &'a str,
    /// The target port group of the port the command came through, if it is in one.
    pub port_group: Option<u16>,
    pub data_out: &'a [u8],
}

/// Why a command did not complete with GOOD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fail {
    Check(Sense),
    Conflict,
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s)
    }
}

pub(crate) type Res = Result<Vec<u8>, Fail>;

impl Fail {
    pub fn outcome(self) -> Outcome {
        match self {
            Fail::Check(s) => Outcome::check(&s),
            Fail::Conflict => Outcome {
                status: status::RESERVATION_CONFLICT,
                sense: None,
                data_in: Vec::new(),
            },
        }
    }
}

/// Block limits advertised in VPD page 0xB0 and enforced by the block commands.
pub mod limits {
    /// Largest READ/WRITE transfer, in bytes (the iSCSI target's default largest data
    /// transfer, too).
    pub const MAX_TRANSFER_BYTES: u32 = 32 << 20;
    /// Largest COMPARE AND WRITE, in blocks.
    pub const MAX_COMPARE_AND_WRITE: u32 = 255;
    /// Most block descriptors in one UNMAP parameter list.
    pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

    pub fn max_transfer_blocks(bs: u32) -> u32 {
        MAX_TRANSFER_BYTES / bs.max(1)
    }
    pub fn optimal_transfer_blocks(bs: u32) -> u32 {
        (1 << 20) / bs.max(1)
    }
    /// Largest UNMAP range per descriptor and per command, in blocks: 1 GiB, and at most
    /// 2^20 blocks (initiators treat larger values as bogus).
    pub fn max_unmap_blocks(bs: u32) -> u32 {
        ((1 << 30) / bs.max(1)).min(1 << 20)
    }
    /// Largest WRITE SAME, in blocks (1 GiB).
    pub fn max_write_same_blocks(bs: u32) -> u64 {
        (1 << 30) / u64::from(bs.max(1))
    }
}
