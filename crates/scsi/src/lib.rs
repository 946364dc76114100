//! The SCSI device model: what a logical unit answers to a CDB, independent of transport.
//!
//! The transport (the `iscsi` crate) hands every command to a [`Target`] as
//! `(nexus, lun, cdb, data-out)` and sends back the [`Outcome`]. The target routes by the
//! initiator's LUN map (masking), answers REPORT LUNS, keeps unit attentions per I_T nexus and
//! reservations, and lets each logical unit execute against its [`BlockDevice`].
//!
//! Layout: [`cdb`] parses CDBs into typed commands (no state), `exec` runs them (one module
//! per command family: inquiry, block, mode, pr, opcodes), [`sense`] is the only place sense
//! data is built, [`LogicalUnit`] holds per-LU state (unit attentions per I_T nexus,
//! reservations, write cache, asymmetric access state per target port group), and [`Target`]
//! does masking, routing and target port groups ([`PortGroup`], [`AccessState`]: asymmetric
//! logical unit access, implicit only). [`FileDevice`] and
//! [`MemDevice`] are ready-made [`BlockDevice`]s. `docs/scsi.md` has the command table.
//!
//! Not here: PDUs, sockets, sessions (see `iscsi`), or how blocks are stored (see `blockstore`).
#![forbid(unsafe_code)]

use std::sync::Arc;

mod alua;
pub mod cdb;
mod device;
mod exec;
mod fence;
mod lu;
mod pr_link;
mod readahead;
pub mod sense;
mod target;

pub use alua::{AccessState, PortGroup, PortGroupError, SUPPORTED_STATES};
pub use device::{FileDevice, MemDevice};
pub use exec::inquiry::{SUPPORTED_VPD, target_designators};
pub use exec::limits;
pub use exec::pr::{PrState, kind as pr_type, out_sa as pr_out_action};
pub use fence::{FenceError, WriteFence};
pub use lu::{IdentityError, LogicalUnit, LuIdentity};
pub use pr_link::PrLink;
pub use readahead::{ReadFn, Readahead};
pub use sense::Sense;
pub use target::{MAX_LUN, Target, decode_lun, encode_lun};

/// The requests a direct-I/O [`FileDevice`] reads sequential streams ahead with: bytes per
/// request, requests at once.
pub const READAHEAD_REQUEST: (usize, usize) = (readahead::CHUNK as usize, readahead::WORKERS);

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Errors a block device reports; the device model turns each into the right sense data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Thin pool out of space: DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (27/07).
    #[error("no space left in the pool")]
    NoSpace,
    /// Unrecovered read or write error at a byte offset: MEDIUM ERROR.
    #[error("medium error at byte offset {offset}")]
    Medium { offset: u64, write: bool },
    /// The device is write protected: DATA PROTECT / WRITE PROTECTED (27/00).
    #[error("device is write protected")]
    ReadOnly,
    /// Access beyond the end of the device.
    #[error("access beyond the end of the device")]
    OutOfRange,
    /// Any other failure: HARDWARE ERROR / INTERNAL TARGET FAILURE (44/00).
    #[error("I/O error: {0}")]
    Io(String),
    /// The storage behind the logical unit is gone (its volume was deleted outside the
    /// array) and does not come back by itself: NOT READY / LOGICAL UNIT NOT READY, MANUAL
    /// INTERVENTION REQUIRED (02/04/03), for every command that reaches the medium.
    #[error("the logical unit's storage is gone: {0}")]
    Gone(String),
}

/// Storage behind a logical unit. Offsets and lengths are in bytes and are always multiples
/// of [`BlockDevice::block_size`] when called by the device model.
pub trait BlockDevice: Send + Sync {
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Capacity in logical blocks.
    fn num_blocks(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Appends `len` bytes read at `offset` to `buf` (unchanged on error). Devices that can
    /// read into uninitialised capacity override it to skip zeroing the buffer first.
    fn read_to_vec(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), DeviceError> {
        let start = buf.len();
        buf.resize(start + len, 0);
        let r = self.read_at(offset, &mut buf[start..]);
        if r.is_err() {
            buf.truncate(start);
        }
        r
    }
    /// Writes `data`; with `fua` the data is durable when this returns.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError>;
    /// Makes every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> Result<(), DeviceError>;
    /// Whether the medium can be reached at all, for TEST UNIT READY: a device whose
    /// storage is gone answers [`DeviceError::Gone`]. Default: ready.
    fn ready(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Deallocates a range (UNMAP, WRITE SAME with UNMAP); reads of it return zeros afterwards.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        let _ = (offset, len);
        Err(DeviceError::Io("discard not supported".into()))
    }
    /// True if the device is thin provisioned and supports [`BlockDevice::discard`].
    fn thin_provisioned(&self) -> bool {
        false
    }
    /// True if reads and writes without FUA complete in microseconds (memory, page cache)
    /// and never wait on other commands. A transport may then run such commands on the
    /// thread that received them instead of handing them to a pool. Default: false.
    fn quick_io(&self) -> bool {
        false
    }
    /// True if the `len` bytes at `offset` can be read now without waiting for storage (in
    /// memory, or in the page cache at the moment). [`Target::is_quick`] asks it for every
    /// READ: a read that would wait for the disk goes to the transport's pool instead of
    /// holding up the commands behind it, and a read a slow device already holds in memory
    /// (read ahead) need not go there. A hint: the answer may be stale by the time the read
    /// runs, so the read must still be correct (and should be rare) if it waits. Default:
    /// [`BlockDevice::quick_io`].
    fn cached(&self, offset: u64, len: usize) -> bool {
        let _ = (offset, len);
        self.quick_io()
    }
    /// True if [`BlockDevice::read_now`] tries the read itself without waiting (one
    /// `preadv2(RWF_NOWAIT)` where [`BlockDevice::cached`] would probe and the read follow).
    /// [`Target::is_quick`] then leaves the device's READs to [`Target::execute_now`] instead
    /// of asking `cached`. Default: false.
    fn reads_now(&self) -> bool {
        false
    }
    /// Appends the `len` bytes at `offset` to `buf` as [`BlockDevice::read_to_vec`] does, but
    /// only if that needs no wait for storage (nor for a lock that waits for it), and says
    /// whether it did: `Ok(false)` leaves `buf` unchanged, and the read must then run where
    /// it may wait. The device checks the range itself ([`DeviceError::OutOfRange`]): this
    /// runs on the transport's thread, which must not wait for a size held behind a lock
    /// the device's I/O takes. Default: [`BlockDevice::cached`], then the read.
    fn read_now(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<bool, DeviceError> {
        if offset.saturating_add(len as u64) > self.num_blocks() * u64::from(self.block_size()) {
            return Err(DeviceError::OutOfRange);
        }
        if !self.cached(offset, len) {
            return Ok(false);
        }
        self.read_to_vec(offset, len, buf).map(|()| true)
    }
    /// Where the `len` bytes at `offset` lie, unchanged, in a file: a transport may then
    /// send them from that file (sendfile(2)) after the command completes instead of
    /// reading them into memory first. Offer it only where that file region holds this
    /// LUN's blocks for as long as the file is open (a plain file LUN), never storage that
    /// could be handed to other data. Default: `None`.
    fn file_span(&self, offset: u64, len: usize) -> Option<FileSpan> {
        let _ = (offset, len);
        None
    }
    /// For GET LBA STATUS: whether the range starting at `offset` is mapped, and for how many
    /// bytes that stays true. Default: everything mapped.
    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        let end = self.num_blocks() * self.block_size() as u64;
        Ok((true, end.saturating_sub(offset)))
    }
}

/// An I_T nexus: one initiator port talking to one target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexus {
    /// Initiator port name, e.g. `iqn.1991-05.com.microsoft:host1,i,0x400001370000`.
    pub initiator_port: String,
    /// Initiator device name (iSCSI InitiatorName); masking is keyed on it.
    pub initiator: String,
    /// Relative target port identifier of the port the nexus came through (SPC-4 7.8.7):
    /// unique among the array's target ports, it tells persistent reservations' target
    /// ports apart and is served in VPD 0x83.
    pub target_port: u16,
    /// iSCSI target portal group tag of that port: with the target name it names the target
    /// port (`<target>,t,0x<tag>`) in VPD 0x83.
    pub portal_group_tag: u16,
}

/// Task attribute of a command (SAM-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttribute {
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command as the transport received it.
#[derive(Debug)]
pub struct Command<'a> {
    pub nexus: &'a Nexus,
    /// The 64-bit LUN field as sent (SAM-5 single-level addressing for LUNs < 256 and
    /// flat addressing above).
    pub lun: u64,
    pub cdb: &'a [u8],
    /// Data received from the initiator (WRITE, UNMAP parameter list, ...).
    pub data_out: &'a [u8],
    /// Expected data transfer length from the transport (bytes the initiator allocated for
    /// data-in, or announced for data-out).
    pub expected_length: u32,
    pub task_tag: u32,
    pub attribute: TaskAttribute,
}

/// Data-in that stays in a file until the transport sends it ([`BlockDevice::file_span`],
/// [`Target::execute_zero_copy`]).
#[derive(Debug, Clone)]
pub struct FileSpan {
    pub file: std::sync::Arc<std::fs::File>,
    pub offset: u64,
    pub len: usize,
}

/// What the transport sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    /// Sense data (fixed format) with CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Data for the initiator, never longer than the command's allocation length.
    pub data_in: Vec<u8>,
}

impl Outcome {
    /// GOOD with data.
    pub fn good(data_in: Vec<u8>) -> Self {
        Self {
            status: status::GOOD,
            sense: None,
            data_in,
        }
    }

    /// CHECK CONDITION with the sense's fixed-format bytes.
    pub fn check(sense: &Sense) -> Self {
        Self {
            status: status::CHECK_CONDITION,
            sense: Some(sense.encode()),
            data_in: Vec::new(),
        }
    }
}

/// Task management functions (SAM-5) a transport forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskManagement {
    AbortTask { tag: u32 },
    AbortTaskSet,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
}

/// Response to a task management function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskManagementResponse {
    Complete,
    TaskDoesNotExist,
    LunDoesNotExist,
    NotSupported,
    Rejected,
}

/// A shared handle to storage behind a logical unit.
pub type Device = Arc<dyn BlockDevice>;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn target_and_units_are_shareable_between_worker_threads() {
        assert_send_sync::<super::Target>();
        assert_send_sync::<super::LogicalUnit>();
        assert_send_sync::<super::FileDevice>();
        assert_send_sync::<super::MemDevice>();
    }
}
