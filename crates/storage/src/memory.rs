//! Volumes in memory: sparse 64 KiB chunks shared copy-on-write between a volume and its
//! clones. For unit tests and demos; nothing survives the process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use scsi::{BlockDevice, DeviceError};

use crate::{Backend, BackendError, LOGICAL_BLOCK_SIZE, PoolUsage, VolumeInfo};

const CHUNK: u64 = 64 * 1024;

#[derive(Debug)]
struct Pool {
    capacity: Option<u64>,
    allocated: AtomicU64,
}

impl Pool {
    fn charge(&self) -> Result<(), DeviceError> {
        let mut cur = self.allocated.load(Ordering::Relaxed);
        loop {
            if let Some(cap) = self.capacity {
                if cur + CHUNK > cap {
                    return Err(DeviceError::NoSpace);
                }
            }
            match self.allocated.compare_exchange(
                cur,
                cur + CHUNK,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    fn credit(&self, chunks: u64) {
        self.allocated.fetch_sub(chunks * CHUNK, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Default)]
struct Image {
    size: u64,
    chunks: BTreeMap<u64, Arc<Vec<u8>>>,
}

/// One in-memory volume; also its [`BlockDevice`].
#[derive(Debug)]
pub struct MemVolume {
    image: RwLock<Image>,
    pool: Arc<Pool>,
}

impl MemVolume {
    fn read_image(&self) -> std::sync::RwLockReadGuard<'_, Image> {
        self.image.read().expect("volume image lock")
    }
    fn write_image(&self) -> std::sync::RwLockWriteGuard<'_, Image> {
        self.image.write().expect("volume image lock")
    }
}

fn check_range(size: u64, offset: u64, len: usize) -> Result<(), DeviceError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange),
    }
}

impl BlockDevice for MemVolume {
    fn block_size(&self) -> u32 {
        LOGICAL_BLOCK_SIZE
    }

    fn num_blocks(&self) -> u64 {
        self.read_image().size / LOGICAL_BLOCK_SIZE as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let img = self.read_image();
        check_range(img.size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (idx, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(buf.len() - done);
            match img.chunks.get(&idx) {
                Some(c) => buf[done..done + n].copy_from_slice(&c[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), DeviceError> {
        let mut img = self.write_image();
        check_range(img.size, offset, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (idx, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(data.len() - done);
            let slot = match img.chunks.get_mut(&idx) {
                Some(c) => {
                    if Arc::get_mut(c).is_none() {
                        self.pool.charge()?;
                    }
                    Arc::make_mut(c)
                }
                None => {
                    self.pool.charge()?;
                    Arc::make_mut(
                        img.chunks
                            .entry(idx)
                            .or_insert_with(|| Arc::new(vec![0; CHUNK as usize])),
                    )
                }
            };
            slot[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        let mut img = self.write_image();
        check_range(img.size, offset, len as usize)?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (idx, within) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - within).min(end - pos);
            if n == CHUNK {
                if img.chunks.remove(&idx).is_some() {
                    self.pool.credit(1);
                }
            } else if let Some(c) = img.chunks.get_mut(&idx) {
                if Arc::get_mut(c).is_none() {
                    self.pool.charge()?;
                }
                Arc::make_mut(c)[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
        Ok(())
    }

    fn thin_provisioned(&self) -> bool {
        true
    }

    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        let img = self.read_image();
        if offset >= img.size {
            return Err(DeviceError::OutOfRange);
        }
        let mapped = img.chunks.contains_key(&(offset / CHUNK));
        let mut end = (offset / CHUNK + 1) * CHUNK;
        while end < img.size && img.chunks.contains_key(&(end / CHUNK)) == mapped {
            end += CHUNK;
        }
        Ok((mapped, end.min(img.size) - offset))
    }
}

/// The in-memory engine.
#[derive(Debug)]
pub struct MemoryBackend {
    pool: Arc<Pool>,
    volumes: Mutex<BTreeMap<String, Arc<MemVolume>>>,
}

impl MemoryBackend {
    /// A pool holding at most `capacity` bytes of written data (unbounded with `None`).
    pub fn new(capacity: Option<u64>) -> Self {
        Self {
            pool: Arc::new(Pool {
                capacity,
                allocated: AtomicU64::new(0),
            }),
            volumes: Mutex::new(BTreeMap::new()),
        }
    }

    fn vols(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<MemVolume>>> {
        self.volumes.lock().expect("volumes lock")
    }

    fn get(&self, name: &str) -> Result<Arc<MemVolume>, BackendError> {
        self.vols()
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::NoVolume(name.into()))
    }
}

fn info(name: &str, v: &MemVolume) -> VolumeInfo {
    let img = v.read_image();
    VolumeInfo {
        name: name.into(),
        size_bytes: img.size,
        allocated_bytes: img.chunks.len() as u64 * CHUNK,
    }
}

impl Backend for MemoryBackend {
    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        let mut vols = self.vols();
        if vols.contains_key(name) {
            return Err(BackendError::Exists(name.into()));
        }
        vols.insert(
            name.into(),
            Arc::new(MemVolume {
                image: RwLock::new(Image {
                    size: size_bytes,
                    chunks: BTreeMap::new(),
                }),
                pool: self.pool.clone(),
            }),
        );
        Ok(())
    }

    fn delete_volume(&self, name: &str) -> Result<(), BackendError> {
        let v = self
            .vols()
            .remove(name)
            .ok_or_else(|| BackendError::NoVolume(name.into()))?;
        let owned = v
            .read_image()
            .chunks
            .values()
            .filter(|c| Arc::strong_count(c) == 1)
            .count();
        self.pool.credit(owned as u64);
        Ok(())
    }

    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        let v = self.get(name)?;
        let mut img = v.write_image();
        if size_bytes < img.size {
            return Err(BackendError::Shrink(name.into()));
        }
        img.size = size_bytes;
        Ok(())
    }

    /// Nothing: a clone shares its source's chunks until either is written.
    fn snapshot_cost(&self, pairs: &[(String, String)]) -> Result<u64, BackendError> {
        let vols = self.vols();
        match pairs.iter().find(|(src, _)| !vols.contains_key(src)) {
            Some((src, _)) => Err(BackendError::NoVolume(src.clone())),
            None => Ok(0),
        }
    }

    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        let mut vols = self.vols();
        for (src, clone) in pairs {
            if !vols.contains_key(src) {
                return Err(BackendError::NoVolume(src.clone()));
            }
            if vols.contains_key(clone) {
                return Err(BackendError::Exists(clone.clone()));
            }
        }
        // Hold every source's write lock at once, in name order, so the images are one instant.
        let mut sources: Vec<&String> = pairs.iter().map(|(s, _)| s).collect();
        sources.sort();
        sources.dedup();
        let held: Vec<Arc<MemVolume>> = sources.iter().map(|s| vols[*s].clone()).collect();
        let guards: Vec<_> = held.iter().map(|v| v.write_image()).collect();
        let images: BTreeMap<&String, Image> = sources
            .iter()
            .zip(guards.iter())
            .map(|(s, g)| (*s, (**g).clone()))
            .collect();
        drop(guards);
        for (src, clone) in pairs {
            vols.insert(
                clone.clone(),
                Arc::new(MemVolume {
                    image: RwLock::new(images[src].clone()),
                    pool: self.pool.clone(),
                }),
            );
        }
        Ok(())
    }

    fn plex_support(&self) -> Result<(), String> {
        Ok(())
    }

    /// Every chunk the volume shares gets a private copy (charged to the pool).
    fn detach(
        &self,
        name: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        let v = self.get(name)?;
        let shared: Vec<u64> = v
            .read_image()
            .chunks
            .iter()
            .filter(|(_, c)| Arc::strong_count(c) > 1)
            .map(|(i, _)| *i)
            .collect();
        progress(0);
        for (n, idx) in shared.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(BackendError::Cancelled);
            }
            let mut img = v.write_image();
            if let Some(c) = img.chunks.get_mut(idx) {
                if Arc::strong_count(c) > 1 {
                    self.pool.charge()?;
                    *c = Arc::new(c.as_ref().clone());
                }
            }
            progress(((n + 1) * 100 / shared.len()).min(99) as u8);
        }
        progress(100);
        Ok(())
    }

    fn volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        Ok(self.vols().iter().map(|(n, v)| info(n, v)).collect())
    }

    fn volume(&self, name: &str) -> Result<VolumeInfo, BackendError> {
        let v = self.get(name)?;
        Ok(info(name, &v))
    }

    fn usage(&self) -> Result<PoolUsage, BackendError> {
        Ok(PoolUsage {
            capacity_bytes: self.pool.capacity.unwrap_or(u64::MAX),
            allocated_bytes: self.pool.allocated.load(Ordering::Relaxed),
        })
    }

    fn device(&self, name: &str) -> Result<scsi::Device, BackendError> {
        Ok(self.get(name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_pool_capacity_gives_no_space() {
        let b = MemoryBackend::new(Some(1 << 20));
        b.create_volume("a", 8 << 20).unwrap();
        let d = b.device("a").unwrap();
        d.write_at(0, &vec![1u8; 1 << 20], false).unwrap();
        assert_eq!(
            d.write_at(2 << 20, &[1u8; 512], false),
            Err(scsi::DeviceError::NoSpace)
        );
    }
}
