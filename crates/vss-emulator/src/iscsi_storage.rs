//! [`HostStorage`] over shadowlun's iSCSI initiator: what a Windows host with the Microsoft
//! iSCSI initiator sees, one SCSI command per trait method.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};

use crate::storage::{Capacity, DiskAddress, HostStorage, StorageError, check_read, check_write};

/// Sense key ILLEGAL REQUEST.
const ILLEGAL_REQUEST: u8 = 0x5;
/// ASC LOGICAL UNIT NOT SUPPORTED.
const LUN_NOT_SUPPORTED: u8 = 0x25;

/// What an initiator's failure means to a host: LOGICAL UNIT NOT SUPPORTED is no such disk,
/// anything else a transport failure.
pub(crate) fn storage_error(disk: &DiskAddress, e: InitiatorError) -> StorageError {
    match e {
        InitiatorError::Check(s) if s.key == ILLEGAL_REQUEST && s.asc == LUN_NOT_SUPPORTED => {
            StorageError::NoSuchDisk(disk.clone())
        }
        other => StorageError::Transport(other.to_string()),
    }
}

/// One session to one target, logged in on first use and again after a connection loss.
pub struct IscsiStorage {
    portal: SocketAddr,
    target: String,
    config: InitiatorConfig,
    session: Mutex<Option<Session>>,
    block_sizes: Mutex<HashMap<u64, u32>>,
}

impl std::fmt::Debug for IscsiStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiStorage")
            .field("portal", &self.portal)
            .field("target", &self.target)
            .field("initiator", &self.config.initiator_name)
            .finish()
    }
}

impl IscsiStorage {
    /// Storage reached through `portal`, target `target`, as initiator `initiator`. No
    /// connection is made until the first command.
    pub fn new(portal: SocketAddr, target: &str, initiator: &str) -> Arc<Self> {
        Self::with_config(portal, target, InitiatorConfig::new(initiator))
    }

    pub fn with_config(portal: SocketAddr, target: &str, config: InitiatorConfig) -> Arc<Self> {
        Arc::new(Self {
            portal,
            target: target.to_string(),
            config,
            session: Mutex::new(None),
            block_sizes: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        self.session.lock().expect("session lock")
    }

    /// Runs `f` on the session (logging in if needed; once more after a lost connection).
    fn with_session<T>(
        &self,
        f: impl Fn(&mut Session) -> Result<T, InitiatorError>,
    ) -> Result<T, InitiatorError> {
        let mut guard = self.lock();
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(Session::login(self.portal, &self.target, &self.config)?);
            }
            let Some(s) = guard.as_mut() else {
                continue;
            };
            match f(s) {
                Err(InitiatorError::ConnectionLost | InitiatorError::Pdu(_)) if attempt == 0 => {
                    *guard = None;
                }
                r => return r,
            }
        }
        Err(InitiatorError::ConnectionLost)
    }

    fn check_target(&self, disk: &DiskAddress) -> Result<(), StorageError> {
        if disk.target == self.target {
            Ok(())
        } else {
            Err(StorageError::NoSuchDisk(disk.clone()))
        }
    }

    fn block_size(&self, disk: &DiskAddress) -> Result<u32, StorageError> {
        if let Some(b) = self
            .block_sizes
            .lock()
            .expect("block sizes lock")
            .get(&disk.lun)
        {
            return Ok(*b);
        }
        Ok(self.read_capacity(disk)?.block_size)
    }
}

impl HostStorage for IscsiStorage {
    fn initiator_name(&self) -> String {
        self.config.initiator_name.clone()
    }

    fn report_luns(&self) -> Result<Vec<DiskAddress>, StorageError> {
        match self.with_session(|s| s.report_luns()) {
            Ok(luns) => Ok(luns
                .into_iter()
                .map(|lun| DiskAddress {
                    target: self.target.clone(),
                    lun,
                })
                .collect()),
            // A target admits an initiator only while it has LUNs mapped: no login, no disks.
            Err(InitiatorError::LoginRefused { class: 2, .. }) => Ok(Vec::new()),
            Err(e) => Err(StorageError::Transport(e.to_string())),
        }
    }

    fn inquiry(&self, disk: &DiskAddress) -> Result<Vec<u8>, StorageError> {
        self.check_target(disk)?;
        self.with_session(|s| s.inquiry(disk.lun, None))
            .map_err(|e| storage_error(disk, e))
    }

    fn vpd(&self, disk: &DiskAddress, page: u8) -> Result<Vec<u8>, StorageError> {
        self.check_target(disk)?;
        self.with_session(|s| s.inquiry(disk.lun, Some(page)))
            .map_err(|e| match e {
                InitiatorError::Check(s) if s.key == ILLEGAL_REQUEST && s.asc == 0x24 => {
                    StorageError::NoSuchPage {
                        disk: disk.clone(),
                        page,
                    }
                }
                e => storage_error(disk, e),
            })
    }

    fn read_capacity(&self, disk: &DiskAddress) -> Result<Capacity, StorageError> {
        self.check_target(disk)?;
        let c = self
            .with_session(|s| s.read_capacity16(disk.lun))
            .map_err(|e| storage_error(disk, e))?;
        let cap = Capacity {
            block_size: c.block_size,
            blocks: c.blocks,
        };
        cap.validate()?;
        self.block_sizes
            .lock()
            .expect("block sizes lock")
            .insert(disk.lun, c.block_size);
        Ok(cap)
    }

    fn read(&self, disk: &DiskAddress, lba: u64, blocks: u32) -> Result<Vec<u8>, StorageError> {
        self.check_target(disk)?;
        let bs = self.block_size(disk)?;
        check_read(blocks, bs)?;
        self.with_session(|s| s.read16(disk.lun, lba, blocks, bs))
            .map_err(|e| storage_error(disk, e))
    }

    fn write(&self, disk: &DiskAddress, lba: u64, data: &[u8]) -> Result<(), StorageError> {
        self.check_target(disk)?;
        let bs = self.block_size(disk)?;
        check_write(data.len(), bs)?;
        self.with_session(|s| s.write16(disk.lun, lba, data, bs, false))
            .map_err(|e| storage_error(disk, e))
    }

    fn flush(&self, disk: &DiskAddress) -> Result<(), StorageError> {
        self.check_target(disk)?;
        self.with_session(|s| s.synchronize_cache(disk.lun))
            .map_err(|e| storage_error(disk, e))
    }
}
