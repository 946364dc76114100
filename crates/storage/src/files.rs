//! Volumes as sparse files `<name>.img` in one directory (by default `<pool_dir>/volumes`). A snapshot is a sparse copy
//! taken while every source of the group is write-locked. Simple and durable; the embedded
//! `blockstore` engine replaces it for large volumes (clones there are metadata-only).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustix::fs::{FallocateFlags, SeekFrom};
use scsi::{BlockDevice, DeviceError};

use crate::{Backend, BackendError, LOGICAL_BLOCK_SIZE, PoolUsage, VolumeInfo};

/// One file-backed volume; also its [`BlockDevice`].
#[derive(Debug)]
pub struct FileVolume {
    file: File,
    size: AtomicU64,
    /// Shared by I/O, exclusive while a snapshot copies the file.
    gate: RwLock<()>,
}

fn dev_err(e: std::io::Error) -> DeviceError {
    if crate::error::is_no_space(&e) {
        DeviceError::NoSpace
    } else {
        DeviceError::Io(e.to_string())
    }
}

impl FileVolume {
    fn check(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size.load(Ordering::Acquire) => Ok(()),
            _ => Err(DeviceError::OutOfRange),
        }
    }
}

impl BlockDevice for FileVolume {
    fn block_size(&self) -> u32 {
        LOGICAL_BLOCK_SIZE
    }
    fn num_blocks(&self) -> u64 {
        self.size.load(Ordering::Acquire) / LOGICAL_BLOCK_SIZE as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check(offset, buf.len() as u64)?;
        let _g = self.gate.read().expect("volume gate lock");
        self.file.read_exact_at(buf, offset).map_err(dev_err)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        self.check(offset, data.len() as u64)?;
        let _g = self.gate.read().expect("volume gate lock");
        self.file.write_all_at(data, offset).map_err(dev_err)?;
        if fua {
            self.file.sync_data().map_err(dev_err)?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(dev_err)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.check(offset, len)?;
        let _g = self.gate.read().expect("volume gate lock");
        rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(|e| dev_err(e.into()))
    }
    fn thin_provisioned(&self) -> bool {
        true
    }
}

/// The file engine.
#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
    open: Mutex<BTreeMap<String, Arc<FileVolume>>>,
}

impl FileBackend {
    /// Opens (creating) the volume directory `dir` (by default `<pool_dir>/volumes`).
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            open: Mutex::new(BTreeMap::new()),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<FileVolume>>> {
        self.open.lock().expect("open volumes lock")
    }

    fn get_locked(
        &self,
        table: &mut BTreeMap<String, Arc<FileVolume>>,
        name: &str,
    ) -> Result<Arc<FileVolume>, BackendError> {
        if let Some(v) = table.get(name) {
            return Ok(v.clone());
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackendError::NoVolume(name.into()));
            }
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        let v = Arc::new(FileVolume {
            file,
            size: AtomicU64::new(size),
            gate: RwLock::new(()),
        });
        table.insert(name.into(), v.clone());
        Ok(v)
    }

    fn sync_dir(&self) -> Result<(), BackendError> {
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// Copies the data ranges of `src` into the (empty, same-size) `dst`, leaving holes as holes.
fn sparse_copy(src: &File, dst: &File, size: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(size);
        let mut off = data;
        while off < hole {
            let n = (hole - off).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], off)?;
            dst.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

impl Backend for FileBackend {
    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        let _t = self.table();
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(name))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BackendError::Exists(name.into()));
            }
            Err(e) => return Err(e.into()),
        };
        f.set_len(size_bytes)?;
        f.sync_all()?;
        self.sync_dir()
    }

    fn delete_volume(&self, name: &str) -> Result<(), BackendError> {
        let mut t = self.table();
        t.remove(name);
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BackendError::NoVolume(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        let mut t = self.table();
        let v = self.get_locked(&mut t, name)?;
        let _g = v.gate.write().expect("volume gate lock");
        if size_bytes < v.size.load(Ordering::Acquire) {
            return Err(BackendError::Shrink(name.into()));
        }
        v.file.set_len(size_bytes)?;
        v.file.sync_all()?;
        v.size.store(size_bytes, Ordering::Release);
        Ok(())
    }

    fn plex_support(&self) -> Result<(), String> {
        Ok(())
    }

    /// Nothing: a snapshot here is a copy already ([`Backend::snapshot_cost`] counts it).
    fn detach_cost(&self, _pairs: &[(String, String)]) -> Result<u64, BackendError> {
        Ok(0)
    }

    /// A snapshot here is a copy of its own from the start: nothing to do but check it exists.
    fn detach(
        &self,
        name: &str,
        progress: &(dyn Fn(u8) + Sync),
        _cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<(), BackendError> {
        self.volume(name)?;
        progress(100);
        Ok(())
    }

    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        let mut t = self.table();
        let mut sources = BTreeMap::new();
        for (src, clone) in pairs {
            sources.insert(src.clone(), self.get_locked(&mut t, src)?);
            if self.path(clone).exists() {
                return Err(BackendError::Exists(clone.clone()));
            }
        }
        let guards: Vec<_> = sources
            .values()
            .map(|v| v.gate.write().expect("volume gate lock"))
            .collect();
        let mut made = Vec::new();
        let result = (|| -> Result<(), BackendError> {
            for (src, clone) in pairs {
                let v = &sources[src];
                let path = self.path(clone);
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                made.push(path);
                let size = v.size.load(Ordering::Acquire);
                f.set_len(size)?;
                sparse_copy(&v.file, &f, size)?;
            }
            // One filesystem sync makes every clone and the directory durable at once.
            let dir = File::open(&self.dir)?;
            rustix::fs::syncfs(&dir)?;
            Ok(())
        })();
        drop(guards);
        if result.is_err() {
            for p in made {
                let _ = std::fs::remove_file(p);
            }
        }
        result
    }

    fn volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".img") {
                let m = e.metadata()?;
                out.push(VolumeInfo {
                    name: n.into(),
                    size_bytes: m.len(),
                    allocated_bytes: m.blocks() * 512,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn volume(&self, name: &str) -> Result<VolumeInfo, BackendError> {
        match std::fs::metadata(self.path(name)) {
            Ok(m) => Ok(VolumeInfo {
                name: name.into(),
                size_bytes: m.len(),
                allocated_bytes: m.blocks() * 512,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BackendError::NoVolume(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn usage(&self) -> Result<PoolUsage, BackendError> {
        let allocated: u64 = self.volumes()?.iter().map(|v| v.allocated_bytes).sum();
        // What the volumes hold now plus what the file system still gives them: other
        // files on the same file system are not the pool's, but they do bound it.
        Ok(PoolUsage {
            capacity_bytes: allocated.saturating_add(crate::fs_room(&self.dir)?),
            allocated_bytes: allocated,
        })
    }

    fn device(&self, name: &str) -> Result<scsi::Device, BackendError> {
        let mut t = self.table();
        Ok(self.get_locked(&mut t, name)?)
    }
}
