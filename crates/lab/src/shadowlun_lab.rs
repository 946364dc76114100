//! The catalogue's memory lab: shadowlun's own provider ([`provider::ShadowlunProvider`]) over
//! the real array on the memory engine ([`MemoryArray`], no HTTP), with hosts that see the
//! LUNs mapped to them through [`ArrayStorage`], at the LUN numbers the array gave them, with
//! the identity pages the array serves.

use std::sync::Arc;

use provider::{HardwareProvider, ShadowlunProvider};
use vss::VssId;
use vss::inquiry;
use vss::lun::ScsiIdentity;
use vss_emulator::conformance::{Lab, LabFactory};
use vss_emulator::storage::{Capacity, DiskAddress, HostStorage, StorageError};

use crate::memory_array::MemoryArray;
use crate::san::block_range;

/// Block size the hosts use on a [`MemoryArray`] (the storage engines' block).
pub const BLOCK_SIZE: u32 = storage::LOGICAL_BLOCK_SIZE;

/// The id shadowlun's provider registers under in the emulator.
pub const SHADOWLUN_PROVIDER_ID: VssId =
    uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002);

/// [`HostStorage`] over a [`MemoryArray`] for one initiator: the LUNs mapped to its host.
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

    /// The LUN at this address, its identity pages and size, if this initiator sees it.
    fn visible(&self, disk: &DiskAddress) -> Result<(String, ScsiIdentity, u64), StorageError> {
        let missing = || StorageError::NoSuchDisk(disk.clone());
        if disk.target != self.array.array().target_name() {
            return Err(missing());
        }
        let lun = self
            .array
            .mapped(&self.initiator)
            .remove(&disk.lun)
            .ok_or_else(missing)?;
        let pages = self.array.identity(&lun).ok_or_else(missing)?;
        let size = self.array.size(&lun).ok_or_else(missing)?;
        Ok((lun, pages, size))
    }

    fn io_error(disk: &DiskAddress, what: &str) -> StorageError {
        StorageError::Io {
            disk: disk.clone(),
            message: format!("{what} failed"),
        }
    }
}

impl HostStorage for ArrayStorage {
    fn initiator_name(&self) -> String {
        self.initiator.clone()
    }

    fn report_luns(&self) -> Result<Vec<DiskAddress>, StorageError> {
        let target = self.array.array().target_name();
        Ok(self
            .array
            .mapped(&self.initiator)
            .into_keys()
            .map(|lun| DiskAddress {
                target: target.into(),
                lun,
            })
            .collect())
    }

    fn inquiry(&self, disk: &DiskAddress) -> Result<Vec<u8>, StorageError> {
        Ok(self.visible(disk)?.1.inquiry)
    }

    fn vpd(&self, disk: &DiskAddress, page: u8) -> Result<Vec<u8>, StorageError> {
        let (_, id, _) = self.visible(disk)?;
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
        let (_, _, size) = self.visible(disk)?;
        Ok(Capacity {
            block_size: BLOCK_SIZE,
            blocks: size / BLOCK_SIZE as u64,
        })
    }

    fn read(&self, disk: &DiskAddress, lba: u64, blocks: u32) -> Result<Vec<u8>, StorageError> {
        let (lun, _, size) = self.visible(disk)?;
        let len = (blocks as usize).saturating_mul(BLOCK_SIZE as usize);
        let off = block_range(disk, size, BLOCK_SIZE, lba, len)?;
        self.array
            .read(&lun, off, len)
            .ok_or_else(|| Self::io_error(disk, "read"))
    }

    fn write(&self, disk: &DiskAddress, lba: u64, data: &[u8]) -> Result<(), StorageError> {
        let (lun, _, size) = self.visible(disk)?;
        let off = block_range(disk, size, BLOCK_SIZE, lba, data.len())?;
        if self.array.write(&lun, off, data) {
            Ok(())
        } else {
            Err(Self::io_error(disk, "write"))
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
        self.array.try_create_lun(bytes, &[initiator]).map(|_| ())
    }

    fn lun_count(&self) -> Result<usize, String> {
        Ok(self.array.lun_ids().len())
    }

    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String> {
        self.array.host(initiator)?;
        Ok(ArrayStorage::new(self.array.clone(), initiator))
    }

    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        self.array.host(initiator)?;
        Ok(Arc::new(ShadowlunProvider::new(
            self.array.client(initiator),
        )))
    }

    fn provider_id(&self) -> VssId {
        SHADOWLUN_PROVIDER_ID
    }

    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        let array = self.array.array();
        let naa = hex::encode(naa);
        let lun = array
            .list_luns(false)
            .into_iter()
            .find(|l| l.naa == naa)
            .ok_or_else(|| format!("no LUN with NAA {naa}"))?;
        for m in &lun.mapped_to {
            array
                .unmap_lun(&m.host, &lun.id)
                .map_err(|e| e.to_string())?;
        }
        crate::retry_while_held(|| array.delete_lun(&lun.id).map_err(|e| e.to_string()))
    }
}

/// The catalogue's default: a fresh [`ShadowlunLab`] per scenario.
#[derive(Debug, Default)]
pub struct ShadowlunLabFactory;

impl LabFactory for ShadowlunLabFactory {
    fn name(&self) -> String {
        "shadowlun provider + array on the memory engine (no HTTP)".into()
    }

    fn build(&self) -> Result<Box<dyn Lab>, String> {
        Ok(Box::new(ShadowlunLab {
            array: MemoryArray::try_new()?,
        }))
    }
}
