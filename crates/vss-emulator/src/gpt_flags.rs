//! The GPT on a LUN, where Windows keeps VSS's per-LUN state (`docs/vss-contract.md` §6.8).
//!
//! Partition tables are read and written with the `gpt` crate over the host's SCSI block
//! reads and writes, so what the coordinator sets is on the LUN itself and travels with it
//! into snapshots, exactly as on Windows.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use thiserror::Error;

use crate::storage::{Capacity, DiskAddress, HostStorage, StorageError};

/// `GPT_BASIC_DATA_ATTRIBUTE_READ_ONLY`.
pub const READ_ONLY: u64 = 0x1000_0000_0000_0000;
/// `GPT_BASIC_DATA_ATTRIBUTE_SHADOW_COPY`.
pub const SHADOW_COPY: u64 = 0x2000_0000_0000_0000;
/// `GPT_BASIC_DATA_ATTRIBUTE_HIDDEN`.
pub const HIDDEN: u64 = 0x4000_0000_0000_0000;
/// `GPT_BASIC_DATA_ATTRIBUTE_NO_DRIVE_LETTER`.
pub const NO_DRIVE_LETTER: u64 = 0x8000_0000_0000_0000;
/// The four bits VSS sets on source LUNs before the freeze (`docs/vss-contract.md` §2.2
/// step 6).
pub const VSS_FLAGS: u64 = READ_ONLY | SHADOW_COPY | HIDDEN | NO_DRIVE_LETTER;

/// Why a partition table could not be read or written.
#[derive(Debug, Error)]
pub enum GptError {
    #[error("{disk}: no valid GPT: {message}")]
    NoTable { disk: DiskAddress, message: String },
    #[error("{disk}: GPT: {message}")]
    Table { disk: DiskAddress, message: String },
    #[error("{disk}: no room for a {bytes}-byte partition")]
    NoRoom { disk: DiskAddress, bytes: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One partition as the host uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    /// 1-based index in the table.
    pub index: u32,
    pub guid: uuid::Uuid,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub flags: u64,
}

impl PartitionEntry {
    pub fn blocks(&self) -> u64 {
        self.last_lba + 1 - self.first_lba
    }
}

/// A disk's GPT as read from the LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: uuid::Uuid,
    pub partitions: Vec<PartitionEntry>,
}

/// `Read + Write + Seek` over one LUN's blocks, for the `gpt` crate.
struct BlockIo {
    storage: Arc<dyn HostStorage>,
    disk: DiskAddress,
    cap: Capacity,
    pos: u64,
    /// Read-ahead: (first byte offset, bytes). The gpt crate reads 128-byte entries one by
    /// one; over iSCSI each would be a command.
    cache: Option<(u64, Vec<u8>)>,
}

/// Blocks fetched per read-ahead.
const READ_AHEAD_BLOCKS: u64 = 64;

impl std::fmt::Debug for BlockIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockIo({} @ {})", self.disk, self.pos)
    }
}

fn io_err(e: StorageError) -> io::Error {
    io::Error::other(e)
}

impl BlockIo {
    fn new(storage: Arc<dyn HostStorage>, disk: &DiskAddress) -> Result<Self, StorageError> {
        let cap = storage.read_capacity(disk)?;
        cap.validate()?;
        Ok(Self {
            storage,
            disk: disk.clone(),
            cap,
            pos: 0,
            cache: None,
        })
    }

    fn bs(&self) -> u64 {
        self.cap.block_size as u64
    }
}

impl Read for BlockIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.cap.bytes();
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let hit = matches!(&self.cache, Some((start, data)) if self.pos >= *start && self.pos < *start + data.len() as u64);
        if !hit {
            let bs = self.bs();
            let lba = self.pos / bs;
            let blocks = READ_AHEAD_BLOCKS.min(self.cap.blocks - lba) as u32;
            let data = self.storage.read(&self.disk, lba, blocks).map_err(io_err)?;
            self.cache = Some((lba * bs, data));
        }
        let Some((start, data)) = &self.cache else {
            return Ok(0);
        };
        let at = (self.pos - start) as usize;
        let n = buf.len().min(data.len() - at);
        buf[..n].copy_from_slice(&data[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for BlockIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let size = self.cap.bytes();
        if self.pos >= size {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "past end of LUN"));
        }
        let bs = self.bs();
        let lba = self.pos / bs;
        let in_block = (self.pos % bs) as usize;
        let n = (buf.len() as u64).min(size - self.pos).min(1 << 20) as usize;
        self.cache = None;
        let blocks = (in_block + n).div_ceil(bs as usize) as u32;
        let mut data = if in_block == 0 && n % bs as usize == 0 {
            vec![0u8; n]
        } else {
            self.storage.read(&self.disk, lba, blocks).map_err(io_err)?
        };
        data[in_block..in_block + n].copy_from_slice(&buf[..n]);
        self.storage.write(&self.disk, lba, &data).map_err(io_err)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for BlockIo {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let size = self.cap.bytes() as i128;
        let new = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

fn lb_size(cap: &Capacity) -> gpt::disk::LogicalBlockSize {
    if cap.block_size == 4096 {
        gpt::disk::LogicalBlockSize::Lb4096
    } else {
        gpt::disk::LogicalBlockSize::Lb512
    }
}

fn table_err(disk: &DiskAddress, e: impl std::fmt::Display) -> GptError {
    GptError::Table {
        disk: disk.clone(),
        message: e.to_string(),
    }
}

fn to_entries(
    parts: &std::collections::BTreeMap<u32, gpt::partition::Partition>,
) -> Vec<PartitionEntry> {
    parts
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| PartitionEntry {
            index: *i,
            guid: p.part_guid,
            name: p.name.clone(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            flags: p.flags,
        })
        .collect()
}

/// Writes a protective MBR and a new GPT with basic-data partitions of the given names and
/// sizes (bytes, rounded up to blocks, 1 MiB aligned), returning the layout.
pub fn create(
    storage: &Arc<dyn HostStorage>,
    disk: &DiskAddress,
    disk_guid: uuid::Uuid,
    partitions: &[(String, u64)],
) -> Result<Layout, GptError> {
    let mut io = BlockIo::new(Arc::clone(storage), disk)?;
    let lb = lb_size(&io.cap);
    let blocks = io.cap.blocks;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(blocks.saturating_sub(1)).unwrap_or(0xFFFF_FFFF),
    );
    mbr.overwrite_lba0(&mut io)
        .map_err(|e| table_err(disk, e))?;
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(io, Some(disk_guid))
        .map_err(|e| table_err(disk, e))?;
    let align = (1u64 << 20) / storage.read_capacity(disk)?.block_size as u64;
    for (name, bytes) in partitions {
        if *bytes == 0 {
            return Err(GptError::NoRoom {
                disk: disk.clone(),
                bytes: 0,
            });
        }
        g.add_partition(name, *bytes, gpt::partition_types::BASIC, 0, Some(align))
            .map_err(|_| GptError::NoRoom {
                disk: disk.clone(),
                bytes: *bytes,
            })?;
    }
    let layout = Layout {
        disk_guid: *g.guid(),
        partitions: to_entries(g.partitions()),
    };
    g.write().map_err(|e| table_err(disk, e))?;
    Ok(layout)
}

/// Reads the GPT of a LUN.
pub fn read(storage: &Arc<dyn HostStorage>, disk: &DiskAddress) -> Result<Layout, GptError> {
    let io = BlockIo::new(Arc::clone(storage), disk)?;
    let lb = lb_size(&io.cap);
    let g = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb)
        .open_from_device(io)
        .map_err(|e| GptError::NoTable {
            disk: disk.clone(),
            message: e.to_string(),
        })?;
    Ok(Layout {
        disk_guid: *g.guid(),
        partitions: to_entries(g.partitions()),
    })
}

/// Rewrites the GPT of a LUN: `set` bits are set and `clear` bits cleared on every partition,
/// and the disk GUID replaced when `new_guid` is given. Returns the new layout.
pub fn update(
    storage: &Arc<dyn HostStorage>,
    disk: &DiskAddress,
    set: u64,
    clear: u64,
    new_guid: Option<uuid::Uuid>,
) -> Result<Layout, GptError> {
    let io = BlockIo::new(Arc::clone(storage), disk)?;
    let lb = lb_size(&io.cap);
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .open_from_device(io)
        .map_err(|e| GptError::NoTable {
            disk: disk.clone(),
            message: e.to_string(),
        })?;
    let mut parts = g.partitions().clone();
    for p in parts.values_mut().filter(|p| p.is_used()) {
        p.flags = (p.flags | set) & !clear;
    }
    // The headers are rebuilt by update_partitions, so the GUID goes in first.
    if let Some(guid) = new_guid {
        g.update_guid(Some(guid));
    }
    g.update_partitions(parts).map_err(|e| table_err(disk, e))?;
    let layout = Layout {
        disk_guid: *g.guid(),
        partitions: to_entries(g.partitions()),
    };
    g.write().map_err(|e| table_err(disk, e))?;
    Ok(layout)
}
