//! What the daemon needs from a storage engine, and the engines it ships with.
//!
//! Volumes are named by the daemon (the LUN id). A snapshot LUN is a writable clone of a
//! point-in-time image of its source: VSS writes signatures on it. All LUNs of a set are
//! cloned at one instant by [`Backend::snapshot_group`].

mod engine;
mod files;
mod memory;

use std::sync::atomic::AtomicBool;

pub use engine::{EngineBackend, EngineDevice};
pub use files::FileBackend;
pub use memory::MemoryBackend;

use crate::error::BackendError;

/// A volume as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
}

/// Pool accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Bytes the pool may hold (`u64::MAX` when unbounded).
    pub capacity_bytes: u64,
    pub allocated_bytes: u64,
}

/// Block size every volume is addressed in.
pub const BLOCK_SIZE: u32 = 512;

/// A storage engine.
pub trait Backend: Send + Sync {
    /// Volume sizes must be multiples of this many bytes.
    fn size_granularity(&self) -> u64 {
        BLOCK_SIZE as u64
    }
    /// Creates a thin volume of `size_bytes` (a multiple of [`BLOCK_SIZE`]).
    fn create_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError>;
    /// Deletes a volume. Deleting a missing volume is an error ([`BackendError::NoVolume`]).
    fn delete_volume(&self, name: &str) -> Result<(), BackendError>;
    /// Grows a volume.
    fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<(), BackendError>;
    /// Creates, for every `(source, clone)` pair, a writable clone named `clone` of `source`,
    /// all at one instant: no write to any source lands in some clones and not others.
    /// On error no clone exists. The point-in-time images are durable on return; an engine
    /// may create the writable clone itself later ([`Backend::materialize`]), as long as every
    /// other method treats the clone as existing.
    fn snapshot_group(&self, pairs: &[(String, String)]) -> Result<(), BackendError>;
    /// Makes sure the writable clone of a snapshot taken by [`Backend::snapshot_group`] exists
    /// (for engines that create it lazily). Idempotent.
    fn materialize(&self, name: &str) -> Result<(), BackendError> {
        let _ = name;
        Ok(())
    }
    /// Every volume in the pool.
    fn volumes(&self) -> Result<Vec<VolumeInfo>, BackendError>;
    /// One volume.
    fn volume(&self, name: &str) -> Result<VolumeInfo, BackendError>;
    fn usage(&self) -> Result<PoolUsage, BackendError>;
    /// The block device the SCSI layer serves for this volume.
    fn device(&self, name: &str) -> Result<scsi::Device, BackendError>;
    /// Copies `from` onto `to` (resizing `to` to `from`'s size), reporting progress in percent
    /// and stopping with [`BackendError::Cancelled`] when `cancel` becomes true. Blocking.
    fn resync(
        &self,
        from: &str,
        to: &str,
        progress: &(dyn Fn(u8) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        copy_volume(self, from, to, progress, cancel)
    }
}

/// Block-by-block resync through the devices: reads every chunk of `from`, writes it to `to`
/// (discarding ranges that read back as zeros when the destination is thin).
pub fn copy_volume<B: Backend + ?Sized>(
    backend: &B,
    from: &str,
    to: &str,
    progress: &(dyn Fn(u8) + Sync),
    cancel: &AtomicBool,
) -> Result<(), BackendError> {
    use std::sync::atomic::Ordering;
    let size = backend.volume(from)?.size_bytes;
    let dst_size = backend.volume(to)?.size_bytes;
    if dst_size < size {
        backend.resize_volume(to, size)?;
    }
    let src = backend.device(from)?;
    let dst = backend.device(to)?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    let mut last = 0u8;
    progress(0);
    while off < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Cancelled);
        }
        let n = CHUNK.min(size - off) as usize;
        src.read_at(off, &mut buf[..n])?;
        if buf[..n].iter().all(|b| *b == 0) && dst.thin_provisioned() {
            dst.discard(off, n as u64)?;
        } else {
            dst.write_at(off, &buf[..n], false)?;
        }
        off += n as u64;
        let pct = ((off as u128 * 100) / size as u128) as u8;
        if pct != last {
            last = pct;
            progress(pct.min(99));
        }
    }
    dst.flush()?;
    progress(100);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn backends() -> Vec<(Box<dyn Backend>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        vec![
            (Box::new(MemoryBackend::new(None)), None),
            (Box::new(FileBackend::open(dir.path()).unwrap()), Some(dir)),
            (
                Box::new(EngineBackend::open(dir2.path()).unwrap()),
                Some(dir2),
            ),
        ]
    }

    #[test]
    fn group_snapshot_is_point_in_time_and_writable() {
        for (b, _dir) in backends() {
            b.create_volume("a", 1 << 20).unwrap();
            b.create_volume("b", 1 << 20).unwrap();
            let a = b.device("a").unwrap();
            a.write_at(4096, &[7u8; 512], false).unwrap();
            b.snapshot_group(&[("a".into(), "a1".into()), ("b".into(), "b1".into())])
                .unwrap();
            a.write_at(4096, &[9u8; 512], false).unwrap();
            let s = b.device("a1").unwrap();
            let mut buf = [0u8; 512];
            s.read_at(4096, &mut buf).unwrap();
            assert_eq!(buf, [7u8; 512], "clone keeps the instant's data");
            s.write_at(0, &[1u8; 512], false).unwrap();
            a.read_at(0, &mut buf).unwrap();
            assert_eq!(
                buf, [0u8; 512],
                "writes to the clone do not reach the source"
            );
            assert_eq!(b.volume("b1").unwrap().size_bytes, 1 << 20);
        }
    }

    #[test]
    fn snapshot_group_of_missing_source_creates_nothing() {
        for (b, _dir) in backends() {
            b.create_volume("a", 1 << 20).unwrap();
            let err = b
                .snapshot_group(&[("a".into(), "a1".into()), ("zz".into(), "z1".into())])
                .unwrap_err();
            assert_eq!(err, BackendError::NoVolume("zz".into()));
            assert!(matches!(b.volume("a1"), Err(BackendError::NoVolume(_))));
        }
    }

    #[test]
    fn resync_copies_and_can_be_cancelled() {
        for (b, _dir) in backends() {
            b.create_volume("s", 3 << 20).unwrap();
            b.create_volume("d", 1 << 20).unwrap();
            b.device("s")
                .unwrap()
                .write_at((2 << 20) + 512, &[5u8; 512], false)
                .unwrap();
            let seen = std::sync::Mutex::new(Vec::new());
            b.resync(
                "s",
                "d",
                &|p| seen.lock().unwrap().push(p),
                &AtomicBool::new(false),
            )
            .unwrap();
            let mut buf = [0u8; 512];
            b.device("d")
                .unwrap()
                .read_at((2 << 20) + 512, &mut buf)
                .unwrap();
            assert_eq!(buf, [5u8; 512]);
            assert_eq!(b.volume("d").unwrap().size_bytes, 3 << 20);
            assert_eq!(seen.lock().unwrap().last(), Some(&100));
            let err = b
                .resync("s", "d", &|_| {}, &AtomicBool::new(true))
                .unwrap_err();
            assert_eq!(err, BackendError::Cancelled);
        }
    }

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
