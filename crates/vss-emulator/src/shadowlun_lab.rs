//! The catalogue's default lab: shadowlun's own provider ([`provider::ShadowlunProvider`])
//! over the provider crate's in-memory array ([`provider::testing::MemoryArray`]), with hosts
//! that read the array's LUNs through [`ArrayStorage`].

use std::sync::Arc;

use provider::testing::{MemoryArray, TARGET_NAME};
use provider::{HardwareProvider, ShadowlunProvider};
use vss::VssId;
use vss::inquiry;
use vss::lun::ScsiIdentity;

use crate::conformance::{Lab, LabFactory};
use crate::storage::{Capacity, DiskAddress, HostStorage, MAX_TRANSFER_BYTES, StorageError};

/// Block size the hosts use on a [`MemoryArray`].
pub const BLOCK_SIZE: u32 = 512;

/// The id shadowlun's provider registers under in the emulator.
pub const SHADOWLUN_PROVIDER_ID: VssId =
    uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002);

/// [`HostStorage`] over a [`MemoryArray`] for one initiator.
pub struct ArrayStorage {
    array: MemoryArray,
    initiator: String,
}

impl ArrayStorage {
    pub fn new(array: MemoryArray, initiator: &str) -> Arc<Self> {
        Arc::new(Self {
            array,
            initiator: initiator.to_string(),
        })
    }

    fn lun_id(disk: &DiskAddress) -> String {
        format!("lun-{}", disk.lun)
    }

    /// The LUN's identity pages and size, if this initiator sees it.
    fn visible(&self, disk: &DiskAddress) -> Result<(ScsiIdentity, u64), StorageError> {
        if disk.target != TARGET_NAME {
            return Err(StorageError::NoSuchDisk(disk.clone()));
        }
        let id = Self::lun_id(disk);
        self.array
            .visible_luns(&self.initiator)
            .into_iter()
            .find(|(l, _, _)| *l == id)
            .map(|(_, p, s)| (p, s))
            .ok_or_else(|| StorageError::NoSuchDisk(disk.clone()))
    }

    fn range(disk: &DiskAddress, size: u64, lba: u64, len: usize) -> Result<u64, StorageError> {
        if len > MAX_TRANSFER_BYTES {
            return Err(StorageError::TooLarge {
                len,
                max: MAX_TRANSFER_BYTES,
            });
        }
        if len % BLOCK_SIZE as usize != 0 {
            return Err(StorageError::Unaligned {
                len,
                block_size: BLOCK_SIZE,
            });
        }
        let blocks = size / BLOCK_SIZE as u64;
        let end = lba.saturating_add((len / BLOCK_SIZE as usize) as u64);
        if end > blocks {
            return Err(StorageError::OutOfRange {
                disk: disk.clone(),
                lba,
                end,
                blocks,
            });
        }
        Ok(lba * BLOCK_SIZE as u64)
    }
}

impl HostStorage for ArrayStorage {
    fn initiator_name(&self) -> String {
        self.initiator.clone()
    }

    fn report_luns(&self) -> Result<Vec<DiskAddress>, StorageError> {
        Ok(self
            .array
            .visible_luns(&self.initiator)
            .into_iter()
            .filter_map(|(id, _, _)| id.strip_prefix("lun-").and_then(|n| n.parse().ok()))
            .map(|lun| DiskAddress {
                target: TARGET_NAME.into(),
                lun,
            })
            .collect())
    }

    fn inquiry(&self, disk: &DiskAddress) -> Result<Vec<u8>, StorageError> {
        Ok(self.visible(disk)?.0.inquiry)
    }

    fn vpd(&self, disk: &DiskAddress, page: u8) -> Result<Vec<u8>, StorageError> {
        let (id, _) = self.visible(disk)?;
        let missing = || StorageError::NoSuchPage {
            disk: disk.clone(),
            page,
        };
        match page {
            inquiry::VPD_SUPPORTED_PAGES => {
                let mut pages = vec![inquiry::VPD_SUPPORTED_PAGES];
                if id.unit_serial.is_some() {
                    pages.push(inquiry::VPD_UNIT_SERIAL_NUMBER);
                }
                pages.push(inquiry::VPD_DEVICE_IDENTIFICATION);
                Ok(inquiry::encode_supported_pages(0, &pages))
            }
            inquiry::VPD_UNIT_SERIAL_NUMBER => id.unit_serial.ok_or_else(missing),
            inquiry::VPD_DEVICE_IDENTIFICATION => Ok(id.device_identification),
            _ => Err(missing()),
        }
    }

    fn read_capacity(&self, disk: &DiskAddress) -> Result<Capacity, StorageError> {
        let (_, size) = self.visible(disk)?;
        Ok(Capacity {
            block_size: BLOCK_SIZE,
            blocks: size / BLOCK_SIZE as u64,
        })
    }

    fn read(&self, disk: &DiskAddress, lba: u64, blocks: u32) -> Result<Vec<u8>, StorageError> {
        let (_, size) = self.visible(disk)?;
        let len = (blocks as usize).saturating_mul(BLOCK_SIZE as usize);
        let off = Self::range(disk, size, lba, len)?;
        self.array
            .read(&Self::lun_id(disk), off, len)
            .ok_or_else(|| StorageError::Io {
                disk: disk.clone(),
                message: "read failed".into(),
            })
    }

    fn write(&self, disk: &DiskAddress, lba: u64, data: &[u8]) -> Result<(), StorageError> {
        let (_, size) = self.visible(disk)?;
        let off = Self::range(disk, size, lba, data.len())?;
        if self.array.write(&Self::lun_id(disk), off, data) {
            Ok(())
        } else {
            Err(StorageError::Io {
                disk: disk.clone(),
                message: "write failed".into(),
            })
        }
    }
}

/// shadowlun's provider over a [`MemoryArray`].
pub struct ShadowlunLab {
    pub array: MemoryArray,
}

impl std::fmt::Debug for ShadowlunLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShadowlunLab")
    }
}

impl Lab for ShadowlunLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        self.array.create_lun(bytes, &[initiator]);
        Ok(())
    }

    fn lun_count(&self) -> Result<usize, String> {
        Ok(self.array.lun_ids().len())
    }

    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String> {
        Ok(ArrayStorage::new(self.array.clone(), initiator))
    }

    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        Ok(Arc::new(ShadowlunProvider::new(
            self.array.client(initiator),
        )))
    }

    fn provider_id(&self) -> VssId {
        SHADOWLUN_PROVIDER_ID
    }
}

/// The catalogue's default: a fresh [`ShadowlunLab`] per scenario.
#[derive(Debug, Default)]
pub struct ShadowlunLabFactory;

impl LabFactory for ShadowlunLabFactory {
    fn name(&self) -> String {
        "shadowlun provider + in-memory array".into()
    }

    fn build(&self) -> Result<Box<dyn Lab>, String> {
        Ok(Box::new(ShadowlunLab {
            array: MemoryArray::new(),
        }))
    }
}
