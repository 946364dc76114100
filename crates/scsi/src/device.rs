//! Two [`BlockDevice`]s: [`FileDevice`] over a regular file and [`MemDevice`] in memory.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::readahead::Readahead;
use crate::{BlockDevice, DeviceError};

fn io_err(e: io::Error, offset: u64, write: bool) -> DeviceError {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::IO.raw_os_error() => {
            DeviceError::Medium { offset, write }
        }
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => DeviceError::NoSpace,
        Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => DeviceError::ReadOnly,
        _ => DeviceError::Io(e.to_string()),
    }
}

/// A block device over a regular file (or a block device node): `pread`/`pwrite`, `fdatasync`
/// for flush, `pwritev2(RWF_DSYNC)` for FUA writes, hole punching for discard (zeros written
/// where the filesystem cannot punch) and `SEEK_DATA`/`SEEK_HOLE` for mapping status.
///
/// Opened with [`FileDevice::open_direct`], reads and writes bypass the page cache
/// (`O_DIRECT`): the storage under the file is what the initiator measures, nothing is
/// cached twice (once here, once in the initiator's own cache), and commands run on the
/// transport's worker pool so that several reach the storage at once. Sequential read
/// streams are read ahead in 1 MiB chunks (a few MiB per stream, see `readahead.rs`),
/// coherent with writes through the device.
#[derive(Debug)]
pub struct FileDevice {
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`, for reads and writes.
    direct: Option<Direct>,
    block_size: u32,
    num_blocks: AtomicU64,
    read_only: bool,
    punch: AtomicBool,
    /// `pwritev2(RWF_DSYNC)` works here (checked on first FUA write).
    dsync: AtomicBool,
    /// `preadv2(RWF_NOWAIT)` works here (checked on first use): page-cache residency can
    /// be probed ([`BlockDevice::cached`]).
    nowait: AtomicBool,
}

impl FileDevice {
    /// Opens an existing file; its length (rounded down to whole blocks) is the capacity.
    pub fn open(path: &Path, block_size: u32, read_only: bool) -> io::Result<Self> {
        if !matches!(block_size, 512 | 4096) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block size {block_size} is not 512 or 4096"),
            ));
        }
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        // The end offset, not the metadata length, so that block devices work too.
        let len = rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0))?;
        Ok(Self {
            file: Arc::new(file),
            direct: None,
            block_size,
            num_blocks: AtomicU64::new(len / u64::from(block_size)),
            read_only,
            punch: AtomicBool::new(true),
            dsync: AtomicBool::new(true),
            nowait: AtomicBool::new(true),
        })
    }

    /// Opens an existing file for direct I/O (`O_DIRECT`): reads and writes go to the
    /// storage without the page cache. Fails with `Unsupported` where the file system cannot
    /// do direct I/O on this file, and with `InvalidInput` where it needs an offset alignment
    /// larger than `block_size` (a 512-byte LUN on storage with 4096-byte sectors).
    pub fn open_direct(path: &Path, block_size: u32, read_only: bool) -> io::Result<Self> {
        use rustix::fs::{AtFlags, StatxFlags, statx};
        let mut dev = Self::open(path, block_size, read_only)?;
        let st = statx(&*dev.file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN)?;
        // Kernels before 6.1 do not report the alignment: assume the block size for offsets
        // and a page for memory.
        let (mem_align, offset_align) = if st.stx_mask & StatxFlags::DIOALIGN.bits() != 0 {
            (st.stx_dio_mem_align, st.stx_dio_offset_align)
        } else {
            (4096, block_size)
        };
        if offset_align == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: the file system cannot do direct I/O on this file",
                    path.display()
                ),
            ));
        }
        if block_size % offset_align != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: direct I/O here needs {offset_align}-byte aligned offsets, more than \
                     the {block_size}-byte blocks; use a block size of {offset_align} or \
                     buffered I/O",
                    path.display()
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)?;
        let file = Arc::new(file);
        let mem_align = (mem_align as usize).max(512);
        let ra_file = file.clone();
        let readahead = Readahead::new(
            mem_align,
            Box::new(move |at, buf| ra_file.read_exact_at(buf, at)),
        )?;
        dev.direct = Some(Direct {
            file,
            mem_align,
            readahead,
        });
        Ok(dev)
    }

    /// True if reads and writes bypass the page cache ([`FileDevice::open_direct`]).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Creates (or truncates) a sparse file of `num_blocks` blocks and opens it.
    pub fn create(path: &Path, block_size: u32, num_blocks: u64) -> io::Result<Self> {
        let len = num_blocks
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "size overflows"))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        f.set_len(len)?;
        drop(f);
        Self::open(path, block_size, false)
    }

    /// Grows or shrinks the file to `num_blocks`. Tell the logical unit afterwards
    /// ([`crate::LogicalUnit::capacity_changed`]).
    pub fn resize(&self, num_blocks: u64) -> io::Result<()> {
        let len = num_blocks
            .checked_mul(u64::from(self.block_size))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "size overflows"))?;
        let r = self.file.set_len(len);
        if r.is_ok() {
            self.num_blocks.store(num_blocks, Ordering::SeqCst);
        }
        self.forget(0, u64::MAX);
        r
    }

    /// Drops what was read ahead of a range just written (direct I/O).
    fn forget(&self, offset: u64, len: u64) {
        if let Some(d) = &self.direct {
            d.readahead.invalidate(offset, len);
        }
    }

    /// A direct read: from the chunks read ahead where the range is in them, else from
    /// the storage.
    fn read_direct(
        &self,
        d: &Direct,
        offset: u64,
        len: usize,
        mut take: impl FnMut(&[u8], usize),
    ) -> Result<(), DeviceError> {
        if d.readahead.read(offset, len, self.end(), &mut take) {
            return Ok(());
        }
        d.read(offset, len, take)
    }

    fn end(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed) * u64::from(self.block_size)
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        match offset.checked_add(len) {
            Some(e) if e <= self.end() => Ok(()),
            _ => Err(DeviceError::OutOfRange),
        }
    }

    /// A FUA write: `pwritev2` with `RWF_DSYNC`, durable when it returns, without flushing
    /// the rest of the file.
    fn write_dsync(&self, offset: u64, data: &[u8]) -> Result<(), rustix::io::Errno> {
        match &self.direct {
            Some(d) => d.with_copy(data, |chunk, at| {
                pwrite_dsync(&d.file, offset + at as u64, chunk)
            }),
            None => pwrite_dsync(&self.file, offset, data),
        }
    }

    fn write_zeros(&self, mut offset: u64, len: u64) -> Result<(), DeviceError> {
        let zeros = vec![0u8; (1 << 20).min(len as usize)];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.write_plain(offset, &zeros[..n])?;
            offset += n as u64;
        }
        Ok(())
    }

    /// A write without FUA, through the direct descriptor when there is one.
    fn write_plain(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match &self.direct {
            Some(d) => d
                .with_copy(data, |chunk, at| {
                    d.file
                        .write_all_at(chunk, offset + at as u64)
                        .map_err(|e| (e, at))
                })
                .map_err(|(e, at)| io_err(e, offset + at as u64, true)),
            None => self
                .file
                .write_all_at(data, offset)
                .map_err(|e| io_err(e, offset, true)),
        }
    }

    /// [`BlockDevice::write_at`] once the range is checked.
    fn write_checked(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        if fua && self.dsync.load(Ordering::Relaxed) {
            match self.write_dsync(offset, data) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                    tracing::info!("pwritev2(RWF_DSYNC) unsupported; FUA writes flush the file");
                    self.dsync.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(io_err(e.into(), offset, true)),
            }
        }
        self.write_plain(offset, data)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// [`BlockDevice::discard`] once the range is checked.
    fn discard_checked(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if self.punch.load(Ordering::Relaxed) {
            use rustix::fs::{FallocateFlags, fallocate};
            match fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                    tracing::info!("filesystem cannot punch holes; discard writes zeros");
                    self.punch.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(io_err(e.into(), offset, true)),
            }
        }
        self.write_zeros(offset, len)
    }
}

/// `pwritev2(RWF_DSYNC)` of all of `data`.
fn pwrite_dsync(file: &File, mut offset: u64, mut data: &[u8]) -> Result<(), rustix::io::Errno> {
    use rustix::io::{ReadWriteFlags, pwritev2};
    while !data.is_empty() {
        let n = pwritev2(
            file,
            &[std::io::IoSlice::new(data)],
            offset,
            ReadWriteFlags::DSYNC,
        )?;
        if n == 0 {
            return Err(rustix::io::Errno::IO);
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// The `O_DIRECT` descriptor of a [`FileDevice`] and the memory alignment its buffers need.
/// Data passes through a per-thread aligned buffer, since the transport's buffers are not
/// aligned; offsets and lengths are (whole blocks, checked at open).
#[derive(Debug)]
struct Direct {
    file: Arc<File>,
    mem_align: usize,
    readahead: Readahead,
}

/// Largest piece moved through the aligned buffer at once.
const DIRECT_CHUNK: usize = 1 << 20;

thread_local! {
    static DIRECT_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Direct {
    /// Runs `f` on an aligned scratch buffer of at least `len` bytes (`len` at most
    /// [`DIRECT_CHUNK`]).
    fn with_buf<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        DIRECT_BUF.with(|cell| {
            let mut v = cell.borrow_mut();
            let need = len + self.mem_align;
            if v.len() < need {
                v.resize(need, 0);
            }
            let pad = v.as_ptr().align_offset(self.mem_align);
            f(&mut v[pad..pad + len])
        })
    }

    /// Reads `len` bytes at `offset` through the aligned buffer, handing each piece and its
    /// position to `take`.
    fn read(
        &self,
        offset: u64,
        len: usize,
        mut take: impl FnMut(&[u8], usize),
    ) -> Result<(), DeviceError> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(DIRECT_CHUNK);
            let at = offset + done as u64;
            self.with_buf(n, |b| {
                self.file
                    .read_exact_at(b, at)
                    .map_err(|e| io_err(e, at, false))?;
                take(b, done);
                Ok(())
            })?;
            done += n;
        }
        Ok(())
    }

    /// Calls `write(chunk, position in data)` for each piece of `data`, copied to the
    /// aligned buffer first.
    fn with_copy<E>(
        &self,
        data: &[u8],
        mut write: impl FnMut(&[u8], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        for (i, piece) in data.chunks(DIRECT_CHUNK).enumerate() {
            self.with_buf(piece.len(), |b| {
                b.copy_from_slice(piece);
                write(b, i * DIRECT_CHUNK)
            })?;
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Page-cache I/O completes in microseconds; direct I/O waits for the storage.
    fn quick_io(&self) -> bool {
        self.direct.is_none()
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check(offset, buf.len() as u64)?;
        if let Some(d) = &self.direct {
            return self.read_direct(d, offset, buf.len(), |piece, at| {
                buf[at..at + piece.len()].copy_from_slice(piece)
            });
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_err(e, offset, false))
    }

    /// Probes the first and the last byte of the range with a one-byte
    /// `preadv2(RWF_NOWAIT)`, which fails instead of waiting for storage (and starts the
    /// readahead that a read there would). Pages between them are taken to follow: the
    /// page cache fills files in runs. Where the file system cannot answer without
    /// waiting, every read counts as cached, as it did before the probe existed. With
    /// direct I/O, a range is cached if all of it was read ahead (see `readahead.rs`).
    fn cached(&self, offset: u64, len: usize) -> bool {
        if let Some(d) = &self.direct {
            return d.readahead.cached(offset, len);
        }
        if len == 0 || !self.nowait.load(Ordering::Relaxed) {
            return true;
        }
        let probe = |at: u64| {
            let mut byte = [0u8; 1];
            match rustix::io::preadv2(
                &*self.file,
                &mut [io::IoSliceMut::new(&mut byte)],
                at,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(n) => n == 1,
                Err(rustix::io::Errno::AGAIN) => false,
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
                    self.nowait.store(false, Ordering::Relaxed);
                    true
                }
                Err(_) => false,
            }
        };
        let last = offset + len as u64 - 1;
        probe(offset) && (last / 4096 == offset / 4096 || probe(last))
    }

    /// Not for direct I/O: sendfile(2) would read through the page cache, on the
    /// transport's sending thread.
    fn file_span(&self, offset: u64, len: usize) -> Option<crate::FileSpan> {
        if self.direct.is_some() {
            return None;
        }
        self.check(offset, len as u64).ok()?;
        Some(crate::FileSpan {
            file: self.file.clone(),
            offset,
            len,
        })
    }

    fn read_to_vec(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), DeviceError> {
        self.check(offset, len as u64)?;
        let start = buf.len();
        if let Some(d) = &self.direct {
            buf.reserve_exact(len);
            let r = self.read_direct(d, offset, len, |piece, _| buf.extend_from_slice(piece));
            if r.is_err() {
                buf.truncate(start);
            }
            return r;
        }
        let end = start + len;
        buf.reserve_exact(len);
        while buf.len() < end {
            let done = (buf.len() - start) as u64;
            match rustix::io::pread(
                &self.file,
                rustix::buffer::spare_capacity(&mut *buf),
                offset + done,
            ) {
                Ok(0) => {
                    buf.truncate(start);
                    let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Err(io_err(e, offset + done, false));
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    buf.truncate(start);
                    return Err(io_err(e.into(), offset + done, false));
                }
            }
        }
        // The spare capacity may have been larger than asked for.
        buf.truncate(end);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        self.check(offset, data.len() as u64)?;
        // Whatever happened, the blocks may have changed.
        let r = self.write_checked(offset, data, fua);
        self.forget(offset, data.len() as u64);
        r
    }

    fn flush(&self) -> Result<(), DeviceError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| match io_err(e, 0, true) {
            // A failed fdatasync names no block: report it as a target failure.
            DeviceError::Medium { .. } => DeviceError::Io("fdatasync: I/O error".into()),
            other => other,
        })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let r = self.discard_checked(offset, len);
        self.forget(offset, len);
        r
    }
    fn thin_provisioned(&self) -> bool {
        !self.read_only
    }

    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        use rustix::fs::{SeekFrom, seek};
        let end = self.end();
        if offset >= end {
            return Err(DeviceError::OutOfRange);
        }
        let io = |e: rustix::io::Errno| DeviceError::Io(e.to_string());
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) if d <= offset => {
                let hole = seek(&self.file, SeekFrom::Hole(offset)).map_err(io)?;
                Ok((true, hole.min(end).saturating_sub(offset).max(1)))
            }
            Ok(d) => Ok((false, d.min(end) - offset)),
            Err(rustix::io::Errno::NXIO) => Ok((false, end - offset)),
            Err(rustix::io::Errno::INVAL) => Ok((true, end - offset)),
            Err(e) => Err(io(e)),
        }
    }
}

/// An in-memory, thin-provisioned block device for tests and benchmarks: data in 64 KiB
/// chunks allocated on first write, a per-block mapped bit, an optional pool limit (writes
/// needing more blocks fail with [`DeviceError::NoSpace`]), injectable medium errors and a
/// write-protect switch.
#[derive(Debug)]
pub struct MemDevice {
    block_size: u32,
    inner: RwLock<MemInner>,
    read_only: AtomicBool,
    flushes: AtomicU64,
    bad_blocks: Mutex<Vec<u64>>,
}

#[derive(Debug)]
struct MemInner {
    num_blocks: u64,
    chunks: std::collections::HashMap<u64, Box<[u8]>>,
    mapped: Vec<u64>,
    mapped_count: u64,
    pool_limit: Option<u64>,
}

const CHUNK: u64 = 64 * 1024;

impl MemInner {
    fn is_mapped(&self, b: u64) -> bool {
        self.mapped[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
    fn set_mapped(&mut self, b: u64, on: bool) {
        let w = &mut self.mapped[(b / 64) as usize];
        let bit = 1u64 << (b % 64);
        if on && *w & bit == 0 {
            *w |= bit;
            self.mapped_count += 1;
        } else if !on && *w & bit != 0 {
            *w &= !bit;
            self.mapped_count -= 1;
        }
    }
}

impl MemDevice {
    /// A zero-filled device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        Self {
            block_size,
            inner: RwLock::new(MemInner {
                num_blocks,
                chunks: Default::default(),
                mapped: vec![0; num_blocks.div_ceil(64) as usize],
                mapped_count: 0,
                pool_limit: None,
            }),
            read_only: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            bad_blocks: Mutex::new(Vec::new()),
        }
    }

    /// Limits how many blocks may be mapped at once (a thin pool of that size).
    pub fn set_pool_limit(&self, blocks: Option<u64>) {
        self.inner.write().expect("memory device lock").pool_limit = blocks;
    }

    pub fn set_read_only(&self, ro: bool) {
        self.read_only.store(ro, Ordering::SeqCst);
    }

    /// Makes reads and writes touching `lba` fail with a medium error.
    pub fn inject_medium_error(&self, lba: u64) {
        self.bad_blocks.lock().expect("bad blocks lock").push(lba);
    }

    /// Number of completed flushes (SYNCHRONIZE CACHE and FUA writes).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Blocks currently mapped.
    pub fn mapped_blocks(&self) -> u64 {
        self.inner.read().expect("memory device lock").mapped_count
    }

    /// Changes the capacity; blocks beyond a shrunk end are dropped.
    pub fn resize(&self, num_blocks: u64) {
        let mut g = self.inner.write().expect("memory device lock");
        for b in num_blocks..g.num_blocks {
            g.set_mapped(b, false);
        }
        let bs = u64::from(self.block_size);
        let end = num_blocks * bs;
        g.chunks.retain(|&c, _| c * CHUNK < end);
        // Bytes past a shrunk end must read as zeros if the device grows again.
        if let Some(chunk) = g.chunks.get_mut(&(end / CHUNK)) {
            chunk[(end % CHUNK) as usize..].fill(0);
        }
        g.mapped.resize(num_blocks.div_ceil(64) as usize, 0);
        g.num_blocks = num_blocks;
    }

    fn bad(&self, offset: u64, len: u64, write: bool) -> Result<(), DeviceError> {
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        let last = (offset + len).div_ceil(bs);
        if let Some(&b) = self
            .bad_blocks
            .lock()
            .expect("bad blocks lock")
            .iter()
            .filter(|&&b| b >= first && b < last)
            .min()
        {
            return Err(DeviceError::Medium {
                offset: b * bs,
                write,
            });
        }
        Ok(())
    }

    fn range(&self, g: &MemInner, offset: u64, len: u64) -> Result<(), DeviceError> {
        match offset.checked_add(len) {
            Some(e) if e <= g.num_blocks * u64::from(self.block_size) => Ok(()),
            _ => Err(DeviceError::OutOfRange),
        }
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn quick_io(&self) -> bool {
        true
    }

    fn num_blocks(&self) -> u64 {
        self.inner.read().expect("memory device lock").num_blocks
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let g = self.inner.read().expect("memory device lock");
        self.range(&g, offset, buf.len() as u64)?;
        self.bad(offset, buf.len() as u64, false)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (c, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(buf.len() - done);
            match g.chunks.get(&c) {
                Some(chunk) => buf[done..done + n].copy_from_slice(&chunk[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        if self.read_only.load(Ordering::SeqCst) {
            return Err(DeviceError::ReadOnly);
        }
        let mut g = self.inner.write().expect("memory device lock");
        self.range(&g, offset, data.len() as u64)?;
        self.bad(offset, data.len() as u64, true)?;
        let bs = u64::from(self.block_size);
        let (first, last) = (offset / bs, (offset + data.len() as u64).div_ceil(bs));
        if let Some(limit) = g.pool_limit {
            let new = (first..last).filter(|&b| !g.is_mapped(b)).count() as u64;
            if g.mapped_count + new > limit {
                return Err(DeviceError::NoSpace);
            }
        }
        for b in first..last {
            g.set_mapped(b, true);
        }
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let (c, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(data.len() - done);
            let chunk = g
                .chunks
                .entry(c)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            chunk[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        drop(g);
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if self.read_only.load(Ordering::SeqCst) {
            return Err(DeviceError::ReadOnly);
        }
        let mut g = self.inner.write().expect("memory device lock");
        self.range(&g, offset, len)?;
        let bs = u64::from(self.block_size);
        for b in offset / bs..(offset + len) / bs {
            g.set_mapped(b, false);
        }
        let mut pos = offset;
        while pos < offset + len {
            let (c, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK - within as u64).min(offset + len - pos) as usize;
            if within == 0 && n == CHUNK as usize {
                g.chunks.remove(&c);
            } else if let Some(chunk) = g.chunks.get_mut(&c) {
                chunk[within..within + n].fill(0);
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn thin_provisioned(&self) -> bool {
        true
    }

    fn mapping_status(&self, offset: u64) -> Result<(bool, u64), DeviceError> {
        let g = self.inner.read().expect("memory device lock");
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        if first >= g.num_blocks {
            return Err(DeviceError::OutOfRange);
        }
        let state = g.is_mapped(first);
        let mut b = first + 1;
        while b < g.num_blocks && g.is_mapped(b) == state {
            b += 1;
        }
        Ok((state, b * bs - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_tracks_mapping_and_pool_limit() {
        let d = MemDevice::new(512, 1000);
        d.set_pool_limit(Some(4));
        d.write_at(512 * 10, &[1u8; 1024], false).unwrap();
        assert_eq!(d.mapped_blocks(), 2);
        assert_eq!(d.mapping_status(0).unwrap(), (false, 5120));
        assert_eq!(d.mapping_status(5120).unwrap(), (true, 1024));
        assert_eq!(
            d.write_at(0, &[1u8; 1536], false),
            Err(DeviceError::NoSpace)
        );
        d.discard(512 * 10, 512).unwrap();
        assert_eq!(d.mapped_blocks(), 1);
        let mut b = [9u8; 1024];
        d.read_at(512 * 10, &mut b).unwrap();
        assert_eq!(&b[..512], &[0u8; 512]);
        assert_eq!(&b[512..], &[1u8; 512]);
    }

    #[test]
    fn mem_device_shrink_then_grow_reads_zeros() {
        let d = MemDevice::new(512, 256);
        d.write_at(0, &[7u8; 512 * 256], false).unwrap();
        d.resize(10);
        assert_eq!(d.mapped_blocks(), 10);
        d.resize(256);
        let mut b = vec![1u8; 512];
        d.read_at(512 * 10, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        d.read_at(512 * 9, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 7));
    }

    #[test]
    fn mem_device_reads_across_chunks() {
        let d = MemDevice::new(512, 1024);
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        d.write_at(CHUNK - 1024, &data, false).unwrap();
        let mut back = vec![0u8; 4096];
        d.read_at(CHUNK - 1024, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            d.read_at(512 * 1024, &mut [0u8; 512]),
            Err(DeviceError::OutOfRange)
        );
    }

    #[test]
    fn file_device_punches_holes_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img");
        let d = FileDevice::create(&p, 512, 2048).unwrap();
        assert_eq!(d.num_blocks(), 2048);
        assert!(!d.mapping_status(0).unwrap().0);
        d.write_at(0, &[7u8; 1 << 16], true).unwrap();
        let (mapped, len) = d.mapping_status(0).unwrap();
        assert!(mapped);
        assert!(len >= 1 << 16);
        d.discard(0, 1 << 16).unwrap();
        let mut b = vec![1u8; 1 << 16];
        d.read_at(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        // tmpfs and ext4 both punch: the range is a hole again.
        assert!(!d.mapping_status(0).unwrap().0);
        assert_eq!(
            d.read_at(2048 * 512, &mut [0u8; 512]),
            Err(DeviceError::OutOfRange)
        );
    }

    #[test]
    fn file_device_data_survives_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img");
        {
            let d = FileDevice::create(&p, 4096, 16).unwrap();
            d.write_at(4096 * 3, &[0xA5; 4096], false).unwrap();
            d.flush().unwrap();
        }
        let d = FileDevice::open(&p, 4096, true).unwrap();
        let mut b = [0u8; 4096];
        d.read_at(4096 * 3, &mut b).unwrap();
        assert_eq!(b, [0xA5; 4096]);
        assert_eq!(d.write_at(0, &b, false), Err(DeviceError::ReadOnly));
    }
}
