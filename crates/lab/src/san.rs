//! An in-process SAN: LUNs with shadowlun identities, per-initiator masking, data in memory or
//! in files. It stands in for the array and its iSCSI target in tests and in the conformance
//! catalogue until those are reached over the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;
use vss::identity::LunIdentity;
use vss::inquiry::{self, Designator};

use vss_emulator::storage::{Capacity, DiskAddress, HostStorage, MAX_TRANSFER_BYTES, StorageError};

/// The target name every LUN of a [`MemorySan`] is served under.
pub const TARGET: &str = "iqn.2026-01.org.shadowlun:emulated-array";

/// Block size of every LUN of a [`MemorySan`].
pub const BLOCK_SIZE: u32 = 512;

/// A LUN's number on the array (also its identity number, see [`LunIdentity`]).
pub type LunNumber = u64;

/// Why a SAN administration request failed.
#[derive(Debug, Error)]
pub enum SanError {
    #[error("no LUN number {0}")]
    NoSuchLun(LunNumber),
    #[error("LUN size {0} bytes is not a positive multiple of 512")]
    BadSize(u64),
    #[error("LUN {number} is {have} bytes, {need} are needed")]
    TooSmall {
        number: LunNumber,
        have: u64,
        need: u64,
    },
    #[error("LUN storage: {0}")]
    Io(#[from] std::io::Error),
}

enum Backing {
    Memory(Vec<u8>),
    File(File),
}

impl Backing {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Backing::Memory(v) => {
                let o = off as usize;
                buf.copy_from_slice(&v[o..o + buf.len()]);
                Ok(())
            }
            Backing::File(f) => f.read_exact_at(buf, off),
        }
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Backing::Memory(v) => {
                let o = off as usize;
                v[o..o + buf.len()].copy_from_slice(buf);
                Ok(())
            }
            Backing::File(f) => f.write_all_at(buf, off),
        }
    }
}

struct Lun {
    identity: LunIdentity,
    bytes: u64,
    data: Backing,
    visible_to: BTreeSet<String>,
    /// The LUN this one is a snapshot of.
    origin: Option<LunNumber>,
}

struct State {
    next_number: LunNumber,
    luns: BTreeMap<LunNumber, Lun>,
}

/// The in-process SAN. Cheap to share (`Arc`); every method takes `&self`.
pub struct MemorySan {
    dir: Option<PathBuf>,
    state: Mutex<State>,
}

impl std::fmt::Debug for MemorySan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySan")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A LUN as the administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSummary {
    pub number: LunNumber,
    pub bytes: u64,
    pub serial: String,
    pub visible_to: Vec<String>,
    pub origin: Option<LunNumber>,
}

impl MemorySan {
    /// A SAN whose LUN data lives in memory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            dir: None,
            state: Mutex::new(State {
                next_number: 1,
                luns: BTreeMap::new(),
            }),
        })
    }

    /// A SAN whose LUN data lives in sparse files under `dir` (one file per LUN).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<Arc<Self>, SanError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir: Some(dir),
            state: Mutex::new(State {
                next_number: 1,
                luns: BTreeMap::new(),
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("san lock")
    }

    fn backing(&self, number: LunNumber, bytes: u64) -> Result<Backing, SanError> {
        Ok(match &self.dir {
            None => Backing::Memory(vec![0; bytes as usize]),
            Some(d) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(d.join(format!("lun-{number}.img")))?;
                f.set_len(bytes)?;
                Backing::File(f)
            }
        })
    }

    /// Creates a zeroed LUN of `bytes` bytes, visible to the given initiators.
    pub fn create_lun(&self, bytes: u64, visible_to: &[&str]) -> Result<LunNumber, SanError> {
        if bytes == 0 || bytes % BLOCK_SIZE as u64 != 0 || bytes > (1 << 34) {
            return Err(SanError::BadSize(bytes));
        }
        let mut st = self.lock();
        let number = st.next_number;
        st.next_number += 1;
        let data = self.backing(number, bytes)?;
        st.luns.insert(
            number,
            Lun {
                identity: LunIdentity::for_number(number),
                bytes,
                data,
                visible_to: visible_to.iter().map(|s| s.to_string()).collect(),
                origin: None,
            },
        );
        tracing::debug!(number, bytes, "LUN created");
        Ok(number)
    }

    /// Snapshots several LUNs at one instant (one lock): each gets a new LUN with a new
    /// identity, the same size and a copy of the data, visible to nobody.
    pub fn snapshot_luns(&self, sources: &[LunNumber]) -> Result<Vec<LunNumber>, SanError> {
        let mut st = self.lock();
        for s in sources {
            if !st.luns.contains_key(s) {
                return Err(SanError::NoSuchLun(*s));
            }
        }
        let mut out = Vec::with_capacity(sources.len());
        for s in sources {
            let number = st.next_number;
            st.next_number += 1;
            let src = &st.luns[s];
            let bytes = src.bytes;
            let mut data = self.backing(number, bytes)?;
            copy_data(&src.data, &mut data, bytes)?;
            st.luns.insert(
                number,
                Lun {
                    identity: LunIdentity::for_number(number),
                    bytes,
                    data,
                    visible_to: BTreeSet::new(),
                    origin: Some(*s),
                },
            );
            out.push(number);
        }
        Ok(out)
    }

    /// Copies the whole content of `from` onto `to` (in-array resync). `to` must be at least
    /// as large; a larger `to` is shrunk to `from`'s size, as resync does.
    pub fn copy_lun(&self, from: LunNumber, to: LunNumber) -> Result<(), SanError> {
        let mut st = self.lock();
        let bytes = st.luns.get(&from).ok_or(SanError::NoSuchLun(from))?.bytes;
        let have = st.luns.get(&to).ok_or(SanError::NoSuchLun(to))?.bytes;
        if have < bytes {
            return Err(SanError::TooSmall {
                number: to,
                have,
                need: bytes,
            });
        }
        let mut data = self.backing_for_copy(to, bytes)?;
        copy_data(&st.luns[&from].data, &mut data, bytes)?;
        let dst = st.luns.get_mut(&to).ok_or(SanError::NoSuchLun(to))?;
        dst.data = data;
        dst.bytes = bytes;
        Ok(())
    }

    fn backing_for_copy(&self, number: LunNumber, bytes: u64) -> Result<Backing, SanError> {
        match &self.dir {
            None => Ok(Backing::Memory(vec![0; bytes as usize])),
            Some(d) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(d.join(format!("lun-{number}.resync")))?;
                f.set_len(bytes)?;
                std::fs::rename(
                    d.join(format!("lun-{number}.resync")),
                    d.join(format!("lun-{number}.img")),
                )?;
                Ok(Backing::File(f))
            }
        }
    }

    /// Deletes a LUN and its data.
    pub fn delete_lun(&self, number: LunNumber) -> Result<(), SanError> {
        let mut st = self.lock();
        st.luns.remove(&number).ok_or(SanError::NoSuchLun(number))?;
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_file(d.join(format!("lun-{number}.img")));
        }
        Ok(())
    }

    /// Makes a LUN visible to an initiator.
    pub fn unmask(&self, number: LunNumber, initiator: &str) -> Result<(), SanError> {
        let mut st = self.lock();
        let l = st
            .luns
            .get_mut(&number)
            .ok_or(SanError::NoSuchLun(number))?;
        l.visible_to.insert(initiator.to_string());
        Ok(())
    }

    /// Hides a LUN from an initiator.
    pub fn mask(&self, number: LunNumber, initiator: &str) -> Result<(), SanError> {
        let mut st = self.lock();
        let l = st
            .luns
            .get_mut(&number)
            .ok_or(SanError::NoSuchLun(number))?;
        l.visible_to.remove(initiator);
        Ok(())
    }

    /// The identity of a LUN.
    pub fn identity(&self, number: LunNumber) -> Result<LunIdentity, SanError> {
        let st = self.lock();
        Ok(st
            .luns
            .get(&number)
            .ok_or(SanError::NoSuchLun(number))?
            .identity
            .clone())
    }

    /// Finds the LUN whose NAA designator is `naa` (the raw designator bytes).
    pub fn find_by_naa(&self, naa: &[u8]) -> Option<LunNumber> {
        let st = self.lock();
        st.luns
            .iter()
            .find(|(_, l)| l.identity.designators.first().map(|d| d.value.as_slice()) == Some(naa))
            .map(|(n, _)| *n)
    }

    /// Every LUN, in number order.
    pub fn luns(&self) -> Vec<LunSummary> {
        let st = self.lock();
        st.luns
            .iter()
            .map(|(n, l)| LunSummary {
                number: *n,
                bytes: l.bytes,
                serial: l.identity.serial.clone(),
                visible_to: l.visible_to.iter().cloned().collect(),
                origin: l.origin,
            })
            .collect()
    }

    /// The view of the SAN through one initiator.
    pub fn host_storage(self: &Arc<Self>, initiator: &str) -> Arc<SanStorage> {
        Arc::new(SanStorage {
            san: Arc::clone(self),
            initiator: initiator.to_string(),
        })
    }

    fn target_ports() -> Vec<Designator> {
        let mut v = Designator::iscsi_target_port(TARGET, 1, 1).to_vec();
        v.push(Designator::iscsi_target_device(TARGET));
        v
    }
}

fn copy_data(from: &Backing, to: &mut Backing, bytes: u64) -> Result<(), SanError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < bytes {
        let n = ((bytes - off) as usize).min(buf.len());
        from.read_at(off, &mut buf[..n])?;
        to.write_at(off, &buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

/// [`HostStorage`] over a [`MemorySan`] for one initiator: it sees exactly the LUNs unmasked
/// to it, as LUN numbers of the one target [`TARGET`].
pub struct SanStorage {
    san: Arc<MemorySan>,
    initiator: String,
}

impl SanStorage {
    fn with_lun<T>(
        &self,
        disk: &DiskAddress,
        f: impl FnOnce(&mut Lun) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut st = self.san.lock();
        match st.luns.get_mut(&disk.lun) {
            Some(l) if disk.target == TARGET && l.visible_to.contains(&self.initiator) => f(l),
            _ => Err(StorageError::NoSuchDisk(disk.clone())),
        }
    }
}

/// The byte offset of a transfer of `len` bytes at block `lba` of a `bytes`-byte disk of
/// `block_size` blocks, refused as a SCSI device refuses it: too large, not whole blocks, or
/// past the end.
pub fn block_range(
    disk: &DiskAddress,
    bytes: u64,
    block_size: u32,
    lba: u64,
    len: usize,
) -> Result<u64, StorageError> {
    if len > MAX_TRANSFER_BYTES {
        return Err(StorageError::TooLarge {
            len,
            max: MAX_TRANSFER_BYTES,
        });
    }
    if len % block_size as usize != 0 {
        return Err(StorageError::Unaligned { len, block_size });
    }
    let blocks = bytes / block_size as u64;
    let end = lba.saturating_add(len as u64 / block_size as u64);
    if end > blocks {
        return Err(StorageError::OutOfRange {
            disk: disk.clone(),
            lba,
            end,
            blocks,
        });
    }
    Ok(lba * block_size as u64)
}

impl HostStorage for SanStorage {
    fn initiator_name(&self) -> String {
        self.initiator.clone()
    }

    fn report_luns(&self) -> Result<Vec<DiskAddress>, StorageError> {
        let st = self.san.lock();
        Ok(st
            .luns
            .iter()
            .filter(|(_, l)| l.visible_to.contains(&self.initiator))
            .map(|(n, _)| DiskAddress {
                target: TARGET.into(),
                lun: *n,
            })
            .collect())
    }

    fn inquiry(&self, disk: &DiskAddress) -> Result<Vec<u8>, StorageError> {
        self.with_lun(disk, |l| Ok(l.identity.inquiry().encode()))
    }

    fn vpd(&self, disk: &DiskAddress, page: u8) -> Result<Vec<u8>, StorageError> {
        self.with_lun(disk, |l| {
            let id = l.identity.scsi_identity(&MemorySan::target_ports());
            match page {
                inquiry::VPD_SUPPORTED_PAGES => Ok(inquiry::encode_supported_pages(
                    0,
                    &[
                        inquiry::VPD_SUPPORTED_PAGES,
                        inquiry::VPD_UNIT_SERIAL_NUMBER,
                        inquiry::VPD_DEVICE_IDENTIFICATION,
                    ],
                )),
                inquiry::VPD_UNIT_SERIAL_NUMBER => id.unit_serial.ok_or(StorageError::NoSuchPage {
                    disk: disk.clone(),
                    page,
                }),
                inquiry::VPD_DEVICE_IDENTIFICATION => Ok(id.device_identification),
                _ => Err(StorageError::NoSuchPage {
                    disk: disk.clone(),
                    page,
                }),
            }
        })
    }

    fn read_capacity(&self, disk: &DiskAddress) -> Result<Capacity, StorageError> {
        self.with_lun(disk, |l| {
            Ok(Capacity {
                block_size: BLOCK_SIZE,
                blocks: l.bytes / BLOCK_SIZE as u64,
            })
        })
    }

    fn read(&self, disk: &DiskAddress, lba: u64, blocks: u32) -> Result<Vec<u8>, StorageError> {
        let len = (blocks as usize).saturating_mul(BLOCK_SIZE as usize);
        self.with_lun(disk, |l| {
            let off = block_range(disk, l.bytes, BLOCK_SIZE, lba, len)?;
            let mut buf = vec![0u8; len];
            l.data
                .read_at(off, &mut buf)
                .map_err(|e| StorageError::Io {
                    disk: disk.clone(),
                    message: e.to_string(),
                })?;
            Ok(buf)
        })
    }

    fn write(&self, disk: &DiskAddress, lba: u64, data: &[u8]) -> Result<(), StorageError> {
        self.with_lun(disk, |l| {
            let off = block_range(disk, l.bytes, BLOCK_SIZE, lba, data.len())?;
            l.data.write_at(off, data).map_err(|e| StorageError::Io {
                disk: disk.clone(),
                message: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiator_sees_only_unmasked_luns() {
        let san = MemorySan::new();
        let a = san.create_lun(1 << 20, &["iqn.a"]).unwrap();
        let b = san.create_lun(1 << 20, &["iqn.b"]).unwrap();
        let sa = san.host_storage("iqn.a");
        let luns: Vec<u64> = sa.report_luns().unwrap().iter().map(|d| d.lun).collect();
        assert_eq!(luns, vec![a]);
        let hidden = DiskAddress {
            target: TARGET.into(),
            lun: b,
        };
        assert_eq!(
            sa.inquiry(&hidden),
            Err(StorageError::NoSuchDisk(hidden.clone()))
        );
        san.unmask(b, "iqn.a").unwrap();
        assert_eq!(sa.report_luns().unwrap().len(), 2);
        san.mask(b, "iqn.a").unwrap();
        assert_eq!(sa.report_luns().unwrap().len(), 1);
    }

    #[test]
    fn reads_and_writes_are_range_checked() {
        let san = MemorySan::new();
        let a = san.create_lun(8 * 512, &["i"]).unwrap();
        let s = san.host_storage("i");
        let d = DiskAddress {
            target: TARGET.into(),
            lun: a,
        };
        s.write(&d, 7, &[0xAB; 512]).unwrap();
        assert_eq!(s.read(&d, 7, 1).unwrap(), vec![0xAB; 512]);
        assert!(matches!(
            s.write(&d, 8, &[0; 512]),
            Err(StorageError::OutOfRange { end: 9, .. })
        ));
        assert!(matches!(
            s.write(&d, 0, &[0; 100]),
            Err(StorageError::Unaligned { len: 100, .. })
        ));
        assert!(matches!(
            s.read(&d, 0, u32::MAX),
            Err(StorageError::TooLarge { .. })
        ));
        assert!(matches!(
            s.read(&d, u64::MAX, 1),
            Err(StorageError::OutOfRange { .. })
        ));
    }

    #[test]
    fn snapshot_copies_data_with_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let san = MemorySan::in_dir(dir.path()).unwrap();
        let a = san.create_lun(4 * 512, &["i"]).unwrap();
        let s = san.host_storage("i");
        let d = |lun| DiskAddress {
            target: TARGET.into(),
            lun,
        };
        s.write(&d(a), 1, &[7; 512]).unwrap();
        let snaps = san.snapshot_luns(&[a]).unwrap();
        s.write(&d(a), 1, &[8; 512]).unwrap();
        san.unmask(snaps[0], "i").unwrap();
        assert_eq!(s.read(&d(snaps[0]), 1, 1).unwrap(), vec![7; 512]);
        assert_ne!(
            san.identity(a).unwrap().serial,
            san.identity(snaps[0]).unwrap().serial
        );
        assert!(dir.path().join(format!("lun-{}.img", snaps[0])).exists());
        san.copy_lun(snaps[0], a).unwrap();
        assert_eq!(s.read(&d(a), 1, 1).unwrap(), vec![7; 512]);
    }
}
