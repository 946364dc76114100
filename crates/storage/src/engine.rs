//! The embedded engine (`blockstore`): thin volumes, O(1) consistency-group snapshots and
//! writable clones. A VSS snapshot LUN `X` is a writable clone `X` of a read-only snapshot
//! `X.base`; every base of a set is taken by one `snapshot_group` (one metadata commit), so
//! the set is one instant and commit costs one commit whatever the set's size. The clone is
//! created right after (or on first use): until then the base stands for it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blockstore::{DeletePolicy, Pool, PoolOptions, VolumeKind};
use scsi::{BlockDevice, DeviceError};

use crate::{Backend, BackendError, LOGICAL_BLOCK_SIZE, PoolUsage, VolumeInfo};

const BASE: &str = ".base";

fn base_of(name: &str) -> String {
    format!("{name}{BASE}")
}

fn dev_err(e: blockstore::Error) -> DeviceError {
    use blockstore::Error as E;
    match e {
        E::NoSpace => DeviceError::NoSpace,
        E::OutOfRange { .. } => DeviceError::OutOfRange,
        E::ReadOnly { .. } => DeviceError::ReadOnly,
        other => DeviceError::Io(other.to_string()),
    }
}

/// A `blockstore` volume as a SCSI block device.
#[derive(Debug)]
pub struct EngineDevice {
    vol: blockstore::Volume,
}

impl BlockDevice for EngineDevice {
    fn block_size(&self) -> u32 {
        LOGICAL_BLOCK_SIZE
    }
    fn num_blocks(&self) -> u64 {
        self.vol.size().unwrap_or(0) / LOGICAL_BLOCK_SIZE as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.vol.read_at(offset, buf).map_err(dev_err)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        self.vol.write_at(offset, data, fua).map_err(dev_err)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.vol.flush().map_err(dev_err)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.vol.discard(offset, len).map_err(dev_err)
    }
    fn thin_provisioned(&self) -> bool {
        true
    }
    /// Whether the blocks are in the page cache. The transport runs a READ on its own thread
    /// if `read_now` finds them there, else on its pool, with every write (a write may wait
    /// for the pool's metadata lock).
    fn cached(&self, offset: u64, len: usize) -> bool {
        self.vol.cached(offset, len)
    }
    /// A READ tries its data with `preadv2(RWF_NOWAIT)` on the transport's thread
    /// (`Volume::read_now`) instead of a probe there and the read after.
    fn reads_now(&self) -> bool {
        true
    }
    fn read_now(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<bool, DeviceError> {
        let start = buf.len();
        buf.resize(start + len, 0);
        let r = self.vol.read_now(offset, &mut buf[start..]);
        if !matches!(r, Ok(true)) {
            buf.truncate(start);
        }
        r.map_err(dev_err)
    }
    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        self.vol.mapping_status(offset).map_err(dev_err)
    }
}

/// The engine backend over a `blockstore` pool (by default `<pool_dir>/engine`).
#[derive(Debug)]
pub struct EngineBackend {
    pool: Pool,
    /// The pool's directory: its file system bounds what the pool can still grow to.
    dir: std::path::PathBuf,
    /// Serialises clone creation so two first uses do not race.
    materializing: std::sync::Mutex<()>,
}

impl EngineBackend {
    /// Opens the engine pool in `dir`, creating it on first start. `capacity_bytes`: the most
    /// data the pool may hold (rounded down to whole chunks), applied at every start so a
    /// changed setting takes effect; `None` keeps what the pool has (no limit on a new one
    /// but the format's).
    pub fn open(dir: &Path, capacity_bytes: Option<u64>) -> Result<Self, BackendError> {
        let pool = match Pool::open(dir) {
            Ok(p) => p,
            Err(blockstore::Error::NotAPool { .. }) => {
                tracing::info!(dir = %dir.display(), "creating the engine pool");
                Pool::create(
                    dir,
                    PoolOptions {
                        size_limit: capacity_bytes,
                    },
                )?
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(limit) = capacity_bytes {
            if pool.stats()?.size_limit_bytes
                != limit / blockstore::CHUNK_SIZE * blockstore::CHUNK_SIZE
            {
                pool.set_size_limit(limit)?;
            }
        }
        Ok(Self {
            pool,
            dir: dir.to_path_buf(),
            materializing: std::sync::Mutex::new(()),
        })
    }

    fn delete_one(&self, name: &str) -> Result<(), BackendError> {
        self.pool
            .delete(name, DeletePolicy::Promote)
            .map_err(BackendError::from)
    }

    fn info(&self, name: &str) -> Result<blockstore::VolumeInfo, BackendError> {
        match self.pool.info(name) {
            Err(blockstore::Error::NotFound { .. }) => self
                .pool
                .info(&base_of(name))
                .map_err(|_| BackendError::NoVolume(name.into())),
            other => other.map_err(BackendError::from),
        }
    }
}

impl Backend for EngineBackend {
    fn size_granularity(&self) -> u64 {
        blockstore::CHUNK_SIZE
    }

    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.pool.create_volume(name, size_bytes)?;
        Ok(())
    }

    fn delete_volume(&self, name: &str) -> Result<(), BackendError> {
        let _g = self.materializing.lock().expect("materializing lock");
        let clone = self.delete_one(name);
        // A snapshot LUN's read-only base goes with it.
        let base = self.delete_one(&base_of(name));
        match (clone, base) {
            (Err(BackendError::NoVolume(_)), Err(BackendError::NoVolume(_))) => {
                Err(BackendError::NoVolume(name.into()))
            }
            (Err(e), _) if !matches!(e, BackendError::NoVolume(_)) => Err(e),
            (_, Err(e)) if !matches!(e, BackendError::NoVolume(_)) => Err(e),
            _ => Ok(()),
        }
    }

    fn materialize(&self, name: &str) -> Result<(), BackendError> {
        let _g = self.materializing.lock().expect("materializing lock");
        match self.pool.info(name) {
            Ok(_) => return Ok(()),
            Err(blockstore::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self.pool.clone_volume(&base_of(name), name) {
            Ok(_) | Err(blockstore::Error::AlreadyExists { .. }) => Ok(()),
            Err(blockstore::Error::NotFound { .. }) => Err(BackendError::NoVolume(name.into())),
            Err(e) => Err(e.into()),
        }
    }

    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.materialize(name)?;
        let cur = self.pool.info(name)?.size;
        if size_bytes < cur {
            return Err(BackendError::Shrink(name.into()));
        }
        self.pool
            .resize(name, size_bytes)
            .map_err(BackendError::from)
    }

    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        let bases: Vec<(String, String)> =
            pairs.iter().map(|(s, c)| (s.clone(), base_of(c))).collect();
        let members: Vec<(&str, &str)> = bases
            .iter()
            .map(|(s, b)| (s.as_str(), b.as_str()))
            .collect();
        for (_, clone) in pairs {
            if self.info(clone).is_ok() {
                return Err(BackendError::Exists(clone.clone()));
            }
        }
        self.pool.snapshot_group(&members)?;
        Ok(())
    }

    /// Metadata only: the group snapshot and the writable clones made after it each append
    /// one log frame naming every copy; neither takes a data chunk.
    fn snapshot_cost(&self, pairs: &[(String, String)]) -> Result<u64, BackendError> {
        for (src, _) in pairs {
            self.info(src)?;
        }
        let bases: Vec<String> = pairs.iter().map(|(_, c)| base_of(c)).collect();
        Ok(
            blockstore::copies_log_bytes(bases.iter().map(String::as_str))
                + blockstore::copies_log_bytes(pairs.iter().map(|(_, c)| c.as_str())),
        )
    }

    fn volumes(&self) -> Result<Vec<VolumeInfo>, BackendError> {
        let all = self.pool.list()?;
        let names: std::collections::BTreeSet<&str> = all.iter().map(|v| v.name.as_str()).collect();
        Ok(all
            .iter()
            .filter_map(|v| match v.name.strip_suffix(BASE) {
                // A base without its clone yet stands for the snapshot LUN.
                Some(clone) if v.kind == VolumeKind::Snapshot => {
                    (!names.contains(clone)).then(|| VolumeInfo {
                        name: clone.to_string(),
                        size_bytes: v.size,
                        allocated_bytes: v.allocated_bytes,
                    })
                }
                _ => Some(VolumeInfo {
                    name: v.name.clone(),
                    size_bytes: v.size,
                    allocated_bytes: v.allocated_bytes,
                }),
            })
            .collect())
    }

    fn volume(&self, name: &str) -> Result<VolumeInfo, BackendError> {
        let v = self.info(name)?;
        Ok(VolumeInfo {
            name: name.into(),
            size_bytes: v.size,
            allocated_bytes: v.allocated_bytes,
        })
    }

    fn usage(&self) -> Result<PoolUsage, BackendError> {
        let s = self.pool.stats()?;
        // A pool without a size limit is bounded by its file system: it can hold what it
        // holds now plus what the file system still gives it. Its limit, when it has one,
        // bounds that further.
        let room = crate::fs_room(&self.dir)?;
        Ok(PoolUsage {
            capacity_bytes: s.size_limit_bytes.min(s.used_bytes.saturating_add(room)),
            allocated_bytes: s.used_bytes,
        })
    }

    fn device(&self, name: &str) -> Result<scsi::Device, BackendError> {
        self.materialize(name)?;
        let vol = self.pool.open_volume(name)?;
        Ok(std::sync::Arc::new(EngineDevice { vol }))
    }

    fn plex_support(&self) -> Result<(), String> {
        Ok(())
    }

    /// The clone's shared chunks are copied into chunks of its own (`Pool::detach`), then its
    /// read-only base goes: nothing is left that ties it to its source.
    fn detach(
        &self,
        name: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        self.materialize(name)?;
        let job = self.pool.detach(name)?;
        follow(&job, progress, cancel);
        job.wait()?;
        let _g = self.materializing.lock().expect("materializing lock");
        match self.delete_one(&base_of(name)) {
            Ok(()) | Err(BackendError::NoVolume(_)) => {}
            Err(e) => return Err(e),
        }
        progress(100);
        Ok(())
    }

    fn resync(
        &self,
        from: &str,
        to: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        self.materialize(from)?;
        self.materialize(to)?;
        let job = self.pool.resync(from, to)?;
        follow(&job, progress, cancel);
        job.wait()?;
        progress(100);
        Ok(())
    }
}

/// Reports an engine job's progress until it finishes, cancelling it when asked.
fn follow(job: &blockstore::ResyncJob, progress: &(dyn Fn(u8) + Sync), cancel: &AtomicBool) {
    progress(0);
    loop {
        let p = job.progress();
        if p.finished {
            break;
        }
        if cancel.load(Ordering::Relaxed) {
            job.cancel();
        }
        if let Some(pct) = (p.done_chunks * 100).checked_div(p.total_chunks) {
            progress(pct.min(99) as u8);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
