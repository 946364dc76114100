//! What a Windows host sees of its SAN: SCSI logical units reached through an initiator.
//!
//! [`HostStorage`] is deliberately at the level of SCSI commands (REPORT LUNS, INQUIRY, VPD,
//! READ CAPACITY, READ, WRITE) so that an iSCSI initiator implements it one command per method;
//! everything Windows derives from those answers (disk numbers, `LunInfo`, partition flags,
//! volumes) is done by [`crate::host::Host`] on top, the same way for every implementation.

use thiserror::Error;

/// Where a logical unit is reached: the target's name and the LUN number within it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DiskAddress {
    pub target: String,
    pub lun: u64,
}

impl std::fmt::Display for DiskAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} LUN {}", self.target, self.lun)
    }
}

/// READ CAPACITY: logical block size and number of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub block_size: u32,
    pub blocks: u64,
}

impl Capacity {
    /// Total size in bytes (saturating).
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }

    /// Checks what a device reported before anything is sized by it: the block size must be a
    /// power of two between 512 and 4096.
    pub fn validate(&self) -> Result<(), StorageError> {
        if !(512..=4096).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(StorageError::BadCapacity {
                block_size: self.block_size,
                blocks: self.blocks,
            });
        }
        Ok(())
    }
}

/// The most blocks one READ or WRITE may move (limits any allocation a device's answer sizes).
pub const MAX_TRANSFER_BYTES: usize = 8 << 20;

/// Why a SCSI-level operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorageError {
    #[error("{0} is not reachable from this initiator")]
    NoSuchDisk(DiskAddress),
    #[error("{disk} does not serve VPD page 0x{page:02X}")]
    NoSuchPage { disk: DiskAddress, page: u8 },
    #[error("blocks {lba}..{end} are outside {disk} ({blocks} blocks)")]
    OutOfRange {
        disk: DiskAddress,
        lba: u64,
        end: u64,
        blocks: u64,
    },
    #[error("transfer of {len} bytes is not a whole number of {block_size}-byte blocks")]
    Unaligned { len: usize, block_size: u32 },
    #[error("transfer of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("device reports block size {block_size} with {blocks} blocks")]
    BadCapacity { block_size: u32, blocks: u64 },
    #[error("I/O error on {disk}: {message}")]
    Io { disk: DiskAddress, message: String },
    #[error("transport: {0}")]
    Transport(String),
    /// Every path to a disk (or a target) was tried and none could serve the command.
    #[error("no usable path to {what}: {}", paths.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    NoPath { what: String, paths: Vec<PathTried> },
}

/// One path a command could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTried {
    pub portal: std::net::SocketAddr,
    pub why: String,
}

impl std::fmt::Display for PathTried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.portal, self.why)
    }
}

/// Refuses a READ of `blocks` blocks of `block_size` bytes past [`MAX_TRANSFER_BYTES`].
pub(crate) fn check_read(blocks: u32, block_size: u32) -> Result<(), StorageError> {
    let len = (blocks as usize).saturating_mul(block_size as usize);
    if len > MAX_TRANSFER_BYTES {
        return Err(StorageError::TooLarge {
            len,
            max: MAX_TRANSFER_BYTES,
        });
    }
    Ok(())
}

/// Refuses a WRITE of `len` bytes past [`MAX_TRANSFER_BYTES`] or not a whole number of
/// `block_size`-byte blocks.
pub(crate) fn check_write(len: usize, block_size: u32) -> Result<(), StorageError> {
    if len > MAX_TRANSFER_BYTES {
        return Err(StorageError::TooLarge {
            len,
            max: MAX_TRANSFER_BYTES,
        });
    }
    if len % block_size as usize != 0 {
        return Err(StorageError::Unaligned { len, block_size });
    }
    Ok(())
}

/// A host's view of its SAN through one initiator.
pub trait HostStorage: Send + Sync {
    /// The initiator name (iSCSI IQN) the array masks LUNs by.
    fn initiator_name(&self) -> String;

    /// REPORT LUNS on every target this initiator is logged in to: the LUNs it may see now.
    fn report_luns(&self) -> Result<Vec<DiskAddress>, StorageError>;

    /// Standard INQUIRY data.
    fn inquiry(&self, disk: &DiskAddress) -> Result<Vec<u8>, StorageError>;

    /// A VPD page (EVPD=1); [`StorageError::NoSuchPage`] if the device does not serve it.
    fn vpd(&self, disk: &DiskAddress, page: u8) -> Result<Vec<u8>, StorageError>;

    /// READ CAPACITY (16).
    fn read_capacity(&self, disk: &DiskAddress) -> Result<Capacity, StorageError>;

    /// READ: `blocks` blocks from `lba`.
    fn read(&self, disk: &DiskAddress, lba: u64, blocks: u32) -> Result<Vec<u8>, StorageError>;

    /// WRITE: `data` (a whole number of blocks) at `lba`.
    fn write(&self, disk: &DiskAddress, lba: u64, data: &[u8]) -> Result<(), StorageError>;

    /// SYNCHRONIZE CACHE: what was written to the disk is durable once this returns (a
    /// device with a volatile write cache, WCE set, may lose unflushed writes in a crash).
    /// Storage without such a cache has nothing to do.
    fn flush(&self, _disk: &DiskAddress) -> Result<(), StorageError> {
        Ok(())
    }
}
