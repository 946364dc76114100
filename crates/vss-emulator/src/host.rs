//! An emulated Windows host: disks found by rescanning its [`HostStorage`], `LunInfo` built
//! from their SCSI pages with [`LunInfo::from_scsi`], volumes made of GPT partitions, and the
//! kernel's flush-and-hold of writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use vss::inquiry::{self, InquiryError};
use vss::{BusType, Interconnect, LunInfo};

use crate::gpt_flags::{self, GptError, Layout};
use crate::storage::{Capacity, DiskAddress, HostStorage, StorageError};

/// Why a host operation failed.
#[derive(Debug, Error)]
pub enum HostError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{disk}: bad identity data: {source}")]
    Identity {
        disk: DiskAddress,
        #[source]
        source: InquiryError,
    },
    #[error(transparent)]
    Gpt(#[from] GptError),
    #[error("no disk {0} on this host")]
    NoSuchDisk(String),
    #[error("no volume {0} on this host")]
    NoSuchVolume(String),
    #[error("volume {0} already exists")]
    VolumeExists(String),
    #[error("disk {device} has no partition {index}")]
    NoSuchPartition { device: String, index: u32 },
    #[error("volume {volume}: {offset}+{len} is outside its {size} bytes or not block aligned")]
    VolumeRange {
        volume: String,
        offset: u64,
        len: usize,
        size: u64,
    },
    #[error("volume {0} is read-only")]
    ReadOnly(String),
}

/// A disk as the host sees it after a rescan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `\\.\PHYSICALDRIVEn`: the name VSS hands providers.
    pub device: String,
    pub address: DiskAddress,
    /// What Windows builds for this disk (with the GPT disk GUID as disk signature and this
    /// host's interconnect).
    pub lun_info: LunInfo,
    pub capacity: Capacity,
}

/// A run of blocks of a volume on one disk (a GPT partition).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    pub device: String,
    pub first_lba: u64,
    pub blocks: u64,
}

/// A mounted volume: its extents in order (several for a spanned volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The name it was mounted under (`E:`, or a shadow copy device name).
    pub name: String,
    pub extents: Vec<Extent>,
    /// Mounted read-only (the partitions carry `GPT_BASIC_DATA_ATTRIBUTE_READ_ONLY`).
    pub read_only: bool,
    pub block_size: u32,
    /// The mount manager's id: the volume is also `\\?\Volume{guid}\`.
    pub guid: uuid::Uuid,
    /// Folders the volume is mounted at besides its name (`C:\Mounts\Logs\`).
    pub mount_points: Vec<String>,
}

/// A volume name as Windows compares them: any case, with or without the trailing
/// backslash (`e:`, `E:\`, `\\?\volume{…}` and `C:\Mounts\Logs` are all fine).
pub fn normalize_volume_name(name: &str) -> String {
    name.trim().trim_end_matches('\\').to_ascii_uppercase()
}

impl Volume {
    /// `\\?\Volume{guid}\`.
    pub fn guid_path(&self) -> String {
        format!("\\\\?\\Volume{{{}}}\\", self.guid)
    }

    /// True if `name` names this volume: its name, its volume GUID path or a mount point,
    /// compared as Windows compares them ([`normalize_volume_name`]).
    pub fn is_named(&self, name: &str) -> bool {
        let n = normalize_volume_name(name);
        !n.is_empty()
            && (normalize_volume_name(&self.name) == n
                || normalize_volume_name(&self.guid_path()) == n
                || self
                    .mount_points
                    .iter()
                    .any(|m| normalize_volume_name(m) == n))
    }

    pub fn bytes(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| e.blocks * self.block_size as u64)
            .sum()
    }

    /// The disks the volume lives on, in extent order, without repeats.
    pub fn devices(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.extents
            .iter()
            .filter(|e| seen.insert(e.device.clone()))
            .map(|e| e.device.clone())
            .collect()
    }
}

/// What a rescan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescanReport {
    pub arrived: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Default)]
struct State {
    disks: BTreeMap<String, Disk>,
    next_drive: u32,
    volumes: BTreeMap<String, Volume>,
}

/// Flush-and-hold of writes (`IOCTL_VOLSNAP_FLUSH_AND_HOLD_WRITES`): writes to held disks
/// wait until release, or until the hold's deadline, when the hold lapses on its own.
#[derive(Default)]
struct HoldGate {
    state: Mutex<HoldState>,
    cv: Condvar,
}

#[derive(Default)]
struct HoldState {
    held: BTreeSet<String>,
    deadline: Option<Instant>,
    lapsed: bool,
}

/// A host with an initiator.
pub struct Host {
    name: String,
    storage: Arc<dyn HostStorage>,
    bus_type: BusType,
    state: Mutex<State>,
    hold: HoldGate,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host named `name` reaching its disks through `storage` (iSCSI bus type).
    pub fn new(name: &str, storage: Arc<dyn HostStorage>) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            storage,
            bus_type: BusType::ISCSI,
            state: Mutex::new(State::default()),
            hold: HoldGate::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn initiator_name(&self) -> String {
        self.storage.initiator_name()
    }

    pub fn storage(&self) -> &Arc<dyn HostStorage> {
        &self.storage
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("host state lock")
    }

    /// Reads a disk's identity the way Windows does: INQUIRY, VPD 0x00, 0x80 (if listed) and
    /// 0x83, then [`LunInfo::from_scsi`].
    fn identify(&self, addr: &DiskAddress) -> Result<(LunInfo, Capacity), HostError> {
        let id_err = |source| HostError::Identity {
            disk: addr.clone(),
            source,
        };
        let inquiry = self.storage.inquiry(addr)?;
        let pages = self.storage.vpd(addr, inquiry::VPD_SUPPORTED_PAGES)?;
        let (_, pages) = inquiry::decode_supported_pages(&pages).map_err(id_err)?;
        let serial = if pages.contains(&inquiry::VPD_UNIT_SERIAL_NUMBER) {
            Some(self.storage.vpd(addr, inquiry::VPD_UNIT_SERIAL_NUMBER)?)
        } else {
            None
        };
        let ident = self.storage.vpd(addr, inquiry::VPD_DEVICE_IDENTIFICATION)?;
        let mut info = LunInfo::from_scsi(&inquiry, serial.as_deref(), &ident, self.bus_type)
            .map_err(id_err)?;
        info.interconnects = vec![Interconnect {
            address_type: 0,
            port: self.storage.initiator_name().into_bytes(),
            address: format!("{},{}", addr.target, addr.lun).into_bytes(),
        }];
        let cap = self.storage.read_capacity(addr)?;
        cap.validate()?;
        Ok((info, cap))
    }

    /// Rescans the bus: disks that appeared get the next free disk number, disks that went
    /// away (or whose identity changed) are removed along with the volumes on them.
    pub fn rescan(&self) -> Result<RescanReport, HostError> {
        let addrs = self.storage.report_luns()?;
        let mut found = Vec::with_capacity(addrs.len().min(4096));
        for a in addrs.iter().take(4096) {
            let (info, cap) = self.identify(a)?;
            found.push((a.clone(), info, cap));
        }
        let mut st = self.lock();
        let mut report = RescanReport::default();
        let gone: Vec<String> = st
            .disks
            .values()
            .filter(|d| {
                !found
                    .iter()
                    .any(|(a, i, _)| *a == d.address && i.matches_for_import(&d.lun_info))
            })
            .map(|d| d.device.clone())
            .collect();
        for dev in &gone {
            st.disks.remove(dev);
            st.volumes
                .retain(|_, v| !v.extents.iter().any(|e| &e.device == dev));
        }
        report.removed = gone;
        for (addr, mut info, cap) in found {
            if st.disks.values().any(|d| d.address == addr) {
                continue;
            }
            let device = format!("\\\\.\\PHYSICALDRIVE{}", st.next_drive);
            st.next_drive += 1;
            if let Ok(l) = gpt_flags::read(&self.storage, &addr) {
                info.disk_signature = l.disk_guid;
            }
            tracing::debug!(host = %self.name, %device, lun = %info.describe(), "disk arrived");
            st.disks.insert(
                device.clone(),
                Disk {
                    device: device.clone(),
                    address: addr,
                    lun_info: info,
                    capacity: cap,
                },
            );
            report.arrived.push(device);
        }
        Ok(report)
    }

    /// Every disk, by device name.
    pub fn disks(&self) -> Vec<Disk> {
        self.lock().disks.values().cloned().collect()
    }

    pub fn disk(&self, device: &str) -> Result<Disk, HostError> {
        self.lock()
            .disks
            .get(device)
            .cloned()
            .ok_or_else(|| HostError::NoSuchDisk(device.to_string()))
    }

    /// The disk whose identity matches `info` (import rule), if present.
    pub fn find_disk(&self, info: &LunInfo) -> Option<Disk> {
        self.lock()
            .disks
            .values()
            .find(|d| d.lun_info.matches_for_import(info))
            .cloned()
    }

    /// Writes a fresh GPT with partitions of the given sizes (bytes) to a disk.
    pub fn partition_disk(&self, device: &str, sizes: &[u64]) -> Result<Layout, HostError> {
        let disk = self.disk(device)?;
        let parts: Vec<(String, u64)> = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("data{}", i + 1), *s))
            .collect();
        let layout = gpt_flags::create(&self.storage, &disk.address, uuid::Uuid::new_v4(), &parts)?;
        // Windows flushes a partition table it writes: it must survive a crash of the array.
        self.storage.flush(&disk.address)?;
        self.refresh_signature(device, layout.disk_guid);
        Ok(layout)
    }

    fn refresh_signature(&self, device: &str, guid: uuid::Uuid) {
        if let Some(d) = self.lock().disks.get_mut(device) {
            d.lun_info.disk_signature = guid;
        }
    }

    /// The GPT of a disk.
    pub fn layout(&self, device: &str) -> Result<Layout, HostError> {
        let disk = self.disk(device)?;
        Ok(gpt_flags::read(&self.storage, &disk.address)?)
    }

    /// Sets and clears partition attribute bits on every partition of a disk, optionally
    /// giving it a new disk GUID.
    pub fn update_gpt(
        &self,
        device: &str,
        set: u64,
        clear: u64,
        new_guid: Option<uuid::Uuid>,
    ) -> Result<Layout, HostError> {
        let disk = self.disk(device)?;
        let layout = gpt_flags::update(&self.storage, &disk.address, set, clear, new_guid)?;
        self.storage.flush(&disk.address)?;
        self.refresh_signature(device, layout.disk_guid);
        Ok(layout)
    }

    /// Mounts a volume made of the given partitions (`(device, 1-based partition index)`, in
    /// order: several make a spanned volume). Read-only if the partitions say so.
    pub fn mount(&self, name: &str, parts: &[(String, u32)]) -> Result<Volume, HostError> {
        let mut extents = Vec::with_capacity(parts.len());
        let mut read_only = false;
        let mut block_size = 512;
        for (device, index) in parts {
            let disk = self.disk(device)?;
            block_size = disk.capacity.block_size;
            let layout = gpt_flags::read(&self.storage, &disk.address)?;
            let p = layout
                .partitions
                .iter()
                .find(|p| p.index == *index)
                .ok_or_else(|| HostError::NoSuchPartition {
                    device: device.clone(),
                    index: *index,
                })?;
            read_only |= p.flags & gpt_flags::READ_ONLY != 0;
            extents.push(Extent {
                device: device.clone(),
                first_lba: p.first_lba,
                blocks: p.blocks(),
            });
        }
        self.mount_extents(name, extents, read_only, block_size)
    }

    /// Mounts a volume from known extents.
    pub fn mount_extents(
        &self,
        name: &str,
        extents: Vec<Extent>,
        read_only: bool,
        block_size: u32,
    ) -> Result<Volume, HostError> {
        let mut st = self.lock();
        if st.volumes.contains_key(name) {
            return Err(HostError::VolumeExists(name.to_string()));
        }
        let v = Volume {
            name: name.to_string(),
            extents,
            read_only,
            block_size,
            guid: uuid::Uuid::new_v4(),
            mount_points: Vec::new(),
        };
        st.volumes.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Dismounts a volume (no effect on the disks).
    pub fn dismount(&self, name: &str) -> Result<Volume, HostError> {
        self.lock()
            .volumes
            .remove(name)
            .ok_or_else(|| HostError::NoSuchVolume(name.to_string()))
    }

    /// Changes whether a mounted volume is read-only.
    pub fn set_read_only(&self, name: &str, read_only: bool) -> Result<(), HostError> {
        let mut st = self.lock();
        let v = st
            .volumes
            .get_mut(name)
            .ok_or_else(|| HostError::NoSuchVolume(name.to_string()))?;
        v.read_only = read_only;
        Ok(())
    }

    /// The volume `name` names: its own name, its `\\?\Volume{guid}\` path or one of its
    /// mount points, in any case, with or without the trailing backslash.
    pub fn volume(&self, name: &str) -> Result<Volume, HostError> {
        let st = self.lock();
        if let Some(v) = st.volumes.get(name) {
            return Ok(v.clone());
        }
        st.volumes
            .values()
            .find(|v| v.is_named(name))
            .cloned()
            .ok_or_else(|| HostError::NoSuchVolume(name.to_string()))
    }

    /// Mounts a volume at a folder as well (`C:\Mounts\Logs\`). The folder must not name
    /// another volume.
    pub fn add_mount_point(&self, volume: &str, folder: &str) -> Result<(), HostError> {
        let mut st = self.lock();
        if normalize_volume_name(folder).is_empty()
            || st.volumes.values().any(|v| v.is_named(folder))
        {
            return Err(HostError::VolumeExists(folder.to_string()));
        }
        let v = st
            .volumes
            .values_mut()
            .find(|v| v.is_named(volume))
            .ok_or_else(|| HostError::NoSuchVolume(volume.to_string()))?;
        v.mount_points.push(folder.to_string());
        Ok(())
    }

    /// Removes a mount point added with [`Host::add_mount_point`].
    pub fn remove_mount_point(&self, folder: &str) -> Result<String, HostError> {
        let n = normalize_volume_name(folder);
        let mut st = self.lock();
        for v in st.volumes.values_mut() {
            if let Some(i) = v
                .mount_points
                .iter()
                .position(|m| normalize_volume_name(m) == n)
            {
                v.mount_points.remove(i);
                return Ok(v.name.clone());
            }
        }
        Err(HostError::NoSuchVolume(folder.to_string()))
    }

    pub fn volumes(&self) -> Vec<Volume> {
        self.lock().volumes.values().cloned().collect()
    }

    /// Splits `[offset, offset+len)` of a volume into per-extent block runs.
    fn runs(v: &Volume, offset: u64, len: usize) -> Result<Vec<(Extent, u64, u64)>, HostError> {
        let bs = v.block_size as u64;
        let bad = || HostError::VolumeRange {
            volume: v.name.clone(),
            offset,
            len,
            size: v.bytes(),
        };
        if offset % bs != 0 || len as u64 % bs != 0 || offset.saturating_add(len as u64) > v.bytes()
        {
            return Err(bad());
        }
        let mut runs = Vec::new();
        let mut first = offset / bs;
        let mut left = len as u64 / bs;
        for e in &v.extents {
            if left == 0 {
                break;
            }
            if first >= e.blocks {
                first -= e.blocks;
                continue;
            }
            let n = (e.blocks - first).min(left);
            runs.push((e.clone(), e.first_lba + first, n));
            left -= n;
            first = 0;
        }
        Ok(runs)
    }

    /// Reads `len` bytes at `offset` of a volume (block aligned).
    pub fn read_volume(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, HostError> {
        let v = self.volume(name)?;
        let mut out = Vec::with_capacity(len.min(crate::storage::MAX_TRANSFER_BYTES));
        for (e, lba, n) in Self::runs(&v, offset, len)? {
            let addr = self.disk(&e.device)?.address;
            out.extend(self.storage.read(&addr, lba, n as u32)?);
        }
        Ok(out)
    }

    /// Writes to a volume (block aligned). Waits while the volume's disks are held.
    pub fn write_volume(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), HostError> {
        let v = self.volume(name)?;
        if v.read_only {
            return Err(HostError::ReadOnly(name.to_string()));
        }
        let bs = v.block_size as usize;
        let mut at = 0usize;
        for (e, lba, n) in Self::runs(&v, offset, data.len())? {
            self.wait_for_hold(&e.device);
            let addr = self.disk(&e.device)?.address;
            let bytes = n as usize * bs;
            self.storage.write(&addr, lba, &data[at..at + bytes])?;
            at += bytes;
        }
        Ok(())
    }

    /// Flushes the write cache of every disk a volume spans (SYNCHRONIZE CACHE), as
    /// `FlushFileBuffers` does: what was written to the volume is durable once this returns.
    pub fn flush_volume(&self, name: &str) -> Result<(), HostError> {
        let v = self.volume(name)?;
        let mut devices: Vec<&String> = v.extents.iter().map(|e| &e.device).collect();
        devices.dedup();
        for d in devices {
            let addr = self.disk(d)?.address;
            self.storage.flush(&addr)?;
        }
        Ok(())
    }

    fn wait_for_hold(&self, device: &str) {
        let mut st = self.hold.state.lock().expect("write hold lock");
        while st.held.contains(device) {
            let Some(deadline) = st.deadline else { break };
            let now = Instant::now();
            if now >= deadline {
                // The kernel cancels a hold that outlives its window and lets writes through.
                st.held.clear();
                st.lapsed = true;
                self.hold.cv.notify_all();
                break;
            }
            st = self
                .hold
                .cv
                .wait_timeout(st, deadline - now)
                .expect("write hold lock")
                .0;
        }
    }

    /// Flush and hold writes to the given disks for at most `window`.
    pub fn hold_writes(&self, devices: &[String], window: Duration) {
        let mut st = self.hold.state.lock().expect("write hold lock");
        st.held = devices.iter().cloned().collect();
        st.deadline = Some(Instant::now() + window);
        st.lapsed = false;
    }

    /// Releases held writes. Returns false if the hold had already lapsed (its window passed).
    pub fn release_writes(&self) -> bool {
        let mut st = self.hold.state.lock().expect("write hold lock");
        let lapsed = st.lapsed || st.deadline.is_some_and(|d| Instant::now() > d);
        st.held.clear();
        st.deadline = None;
        st.lapsed = false;
        self.hold.cv.notify_all();
        !lapsed
    }
}
