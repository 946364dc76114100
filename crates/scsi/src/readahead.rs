//! Readahead for storage that nothing reads ahead of: direct-I/O file LUNs, and RBD images
//! (librbd reads ahead only through its object cache, and only for the first 50 MiB an
//! image is read after it is opened).
//!
//! With `O_DIRECT` nothing reads ahead for us: an initiator streaming 64 KiB reads at QD8
//! keeps only the commands it has in flight at the storage, and of those only the part of
//! each command's life not spent on the network and in hand-offs. A [`Readahead`] notices
//! sequential streams and reads the chunks in front of them, [`CHUNK`] bytes at a time, on
//! threads of its own; reads that fall in those chunks are copied from memory.
//!
//! Coherence with writes: every write through the device calls [`Readahead::invalidate`]
//! after the write reached the file and before it completes to the initiator. A chunk that
//! is in memory is dropped; a chunk still being read is marked stale and dropped when its
//! read returns, since that read may have started before the write landed. A chunk is only
//! ever registered before its read starts, so a chunk that is not stale was read entirely
//! after every completed write to it. A read served while a write to the same blocks is in
//! flight may see either the old or the new data, as SAM allows for overlapping commands.
//! Writers that bypass the device (another process writing the file) are not seen; the
//! chunks live only until the stream has passed them.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Bytes read ahead per request to the storage.
pub(crate) const CHUNK: u64 = 1 << 20;
/// Chunks kept in front of a stream.
const WINDOW: u64 = 4;
/// Sequential streams followed at once.
const STREAMS: usize = 4;
/// Reads in a row, each starting within a chunk of where the last ended, before a stream
/// is read ahead.
const CONFIRM: u32 = 3;
/// Chunks held at most (read, being read or waiting to be), so memory stays bounded: with
/// the buffers kept for reuse, `(MAX_CHUNKS + WINDOW) * CHUNK` bytes (28 MiB) per device.
const MAX_CHUNKS: usize = STREAMS * (WINDOW as usize + 2);
/// Threads reading chunks: requests at the storage at once.
pub(crate) const WORKERS: usize = 2;
/// Reads larger than this go to the storage directly; they are large enough on their own.
const MAX_SERVED: usize = 2 * CHUNK as usize;

/// Reads `buf.len()` bytes at an offset into an aligned buffer.
pub type ReadFn = dyn Fn(u64, &mut [u8]) -> io::Result<()> + Send + Sync;

/// A chunk's memory, aligned for direct I/O.
struct Buf {
    mem: Vec<u8>,
    pad: usize,
    len: usize,
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        &self.mem[self.pad..self.pad + self.len]
    }
}

enum Chunk {
    /// Being read (or queued) by job `id`; `stale` once a write overlapped it.
    Pending {
        id: u64,
        stale: bool,
    },
    Ready {
        buf: Arc<Buf>,
        used: u64,
    },
}

struct Stream {
    /// Where the next read of the stream is expected.
    next: u64,
    run: u32,
    used: u64,
}

struct Job {
    start: u64,
    len: usize,
    id: u64,
}

#[derive(Default)]
struct State {
    chunks: BTreeMap<u64, Chunk>,
    streams: Vec<Stream>,
    queue: VecDeque<Job>,
    free: Vec<Vec<u8>>,
    tick: u64,
    next_id: u64,
    closing: bool,
    /// Counters for tests and diagnostics.
    chunk_reads: u64,
    served: u64,
}

struct Shared {
    state: Mutex<State>,
    /// A chunk became ready, stale or was dropped.
    changed: Condvar,
    /// A job was queued, or the readahead is closing.
    work: Condvar,
    read: Box<ReadFn>,
    align: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("readahead lock")
    }

    /// The lock for the reading threads and for closing, which carry on past a poisoned
    /// lock (an exception to the rule in ARCHITECTURE.md, "Locks"): a reading thread that
    /// died would leave commands waiting forever on the chunks it was reading, and a close
    /// that panicked would leave the threads running. They only finish reads, wake the
    /// waiters and stop; every command thread re-raises the panic at its next lock, so
    /// nothing read from a poisoned state is served.
    fn lock_past_poison(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Readahead state of one device, with its reading threads. The device serves every read
/// through [`Readahead::read`] first and calls [`Readahead::invalidate`] after every write,
/// discard or resize, before it completes (see the module's notes on coherence).
pub struct Readahead {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Readahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Readahead")
            .field("chunks", &st.chunks.len())
            .field("streams", &st.streams.len())
            .finish()
    }
}

impl Readahead {
    /// `read` fills a buffer aligned to `align` bytes (1: any) from the storage; the reading
    /// threads ([`READAHEAD_REQUEST`](crate::READAHEAD_REQUEST)) start now and stop on drop.
    pub fn new(align: usize, read: Box<ReadFn>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            work: Condvar::new(),
            read,
            align: align.max(1),
        });
        let mut workers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("readahead".into())
                .spawn(move || worker(&s));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    close(&shared, workers);
                    return Err(e);
                }
            }
        }
        Ok(Self { shared, workers })
    }

    /// Serves the `len` bytes at `offset` from chunks read ahead, handing each piece and its
    /// position to `take`, and reads ahead of the stream the read belongs to. Waits for
    /// chunks that are being read. Returns false (and has called `take` for nothing) if the
    /// range is not all read ahead; the caller then reads it from the storage. `end` is the
    /// device's size in bytes.
    pub fn read(
        &self,
        offset: u64,
        len: usize,
        end: u64,
        mut take: impl FnMut(&[u8], usize),
    ) -> bool {
        let mut st = self.shared.lock();
        if let Some(next) = note_stream(&mut st, offset, len) {
            schedule(&self.shared, &mut st, next, end);
        }
        if len == 0 || len > MAX_SERVED {
            return false;
        }
        let last = offset + len as u64;
        let pieces = loop {
            let mut pieces = Vec::with_capacity(2);
            let mut wait = false;
            let mut at = offset - offset % CHUNK;
            while at < last {
                match st.chunks.get(&at) {
                    Some(Chunk::Ready { buf, .. }) if buf.len as u64 >= (last - at).min(CHUNK) => {
                        pieces.push((at, buf.clone()))
                    }
                    Some(Chunk::Pending { stale: false, .. }) => wait = true,
                    _ => return false,
                }
                at += CHUNK;
            }
            if !wait {
                break pieces;
            }
            st = self.shared.changed.wait(st).expect("readahead lock");
        };
        st.tick += 1;
        let tick = st.tick;
        for (at, _) in &pieces {
            if let Some(Chunk::Ready { used, .. }) = st.chunks.get_mut(at) {
                *used = tick;
            }
        }
        st.served += 1;
        // Chunks a whole chunk behind this read are done with.
        let behind = (offset - offset % CHUNK).saturating_sub(CHUNK);
        drop_ready_below(&mut st, behind);
        drop(st);
        for (at, buf) in pieces {
            let from = offset.max(at);
            let to = last.min(at + CHUNK);
            let piece = &buf.bytes()[(from - at) as usize..(to - at) as usize];
            take(piece, (from - offset) as usize);
        }
        true
    }

    /// True if every byte of the range is in a chunk read ahead (no storage wait).
    pub fn cached(&self, offset: u64, len: usize) -> bool {
        if len == 0 || len > MAX_SERVED {
            return false;
        }
        let st = self.shared.lock();
        let last = offset + len as u64;
        let mut at = offset - offset % CHUNK;
        while at < last {
            match st.chunks.get(&at) {
                Some(Chunk::Ready { buf, .. }) if buf.len as u64 >= (last - at).min(CHUNK) => {}
                _ => return false,
            }
            at += CHUNK;
        }
        true
    }

    /// Forgets what was read ahead of the `len` bytes at `offset`: call after writing them
    /// (or after discarding, or resizing, with the whole device), before the write
    /// completes.
    pub fn invalidate(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut st = self.shared.lock();
        let first = offset - offset % CHUNK;
        let last = offset.saturating_add(len);
        let keys: Vec<u64> = st.chunks.range(first..last).map(|(k, _)| *k).collect();
        for k in keys {
            match st.chunks.get_mut(&k) {
                Some(Chunk::Pending { stale, .. }) => *stale = true,
                Some(Chunk::Ready { .. }) => {
                    if let Some(Chunk::Ready { buf, .. }) = st.chunks.remove(&k) {
                        recycle(&mut st, buf);
                    }
                }
                None => {}
            }
        }
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Chunks read from the storage and reads served from memory, since creation.
    #[cfg(test)]
    fn counters(&self) -> (u64, u64) {
        let st = self.shared.lock();
        (st.chunk_reads, st.served)
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.shared.lock().chunks.len()
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        close(&self.shared, std::mem::take(&mut self.workers));
    }
}

fn close(shared: &Shared, workers: Vec<JoinHandle<()>>) {
    shared.lock_past_poison().closing = true;
    shared.work.notify_all();
    for w in workers {
        let _ = w.join();
    }
}

/// Files the read under a stream. Returns where the stream goes on if it is sequential
/// enough to read ahead of.
fn note_stream(st: &mut State, offset: u64, len: usize) -> Option<u64> {
    st.tick += 1;
    let tick = st.tick;
    let end = offset.saturating_add(len as u64);
    // Commands of one stream reach the device slightly out of order (they run on several
    // threads), so anything within a chunk of the expected offset continues it.
    if let Some(s) = st
        .streams
        .iter_mut()
        .find(|s| offset.abs_diff(s.next) <= CHUNK)
    {
        s.next = s.next.max(end);
        s.run = s.run.saturating_add(1);
        s.used = tick;
        return (s.run >= CONFIRM).then_some(s.next);
    }
    let fresh = Stream {
        next: end,
        run: 1,
        used: tick,
    };
    if st.streams.len() < STREAMS {
        st.streams.push(fresh);
    } else if let Some(oldest) = st.streams.iter_mut().min_by_key(|s| s.used) {
        *oldest = fresh;
    }
    None
}

/// Registers and queues the chunks of the window in front of `next`.
fn schedule(shared: &Shared, st: &mut State, next: u64, end: u64) {
    let first = next - next % CHUNK;
    let mut queued = false;
    for i in 0..WINDOW {
        let start = first + i * CHUNK;
        if start >= end {
            break;
        }
        if st.chunks.contains_key(&start) {
            continue;
        }
        if st.chunks.len() >= MAX_CHUNKS && !evict_one(st) {
            break;
        }
        st.next_id += 1;
        let id = st.next_id;
        st.chunks.insert(start, Chunk::Pending { id, stale: false });
        let len = (end - start).min(CHUNK) as usize;
        st.queue.push_back(Job { start, len, id });
        queued = true;
    }
    if queued {
        shared.work.notify_all();
    }
}

/// Drops the least recently used chunk that is in memory; false if every chunk is being
/// read.
fn evict_one(st: &mut State) -> bool {
    let victim = st
        .chunks
        .iter()
        .filter_map(|(k, c)| match c {
            Chunk::Ready { used, .. } => Some((*used, *k)),
            Chunk::Pending { .. } => None,
        })
        .min();
    match victim {
        Some((_, k)) => {
            if let Some(Chunk::Ready { buf, .. }) = st.chunks.remove(&k) {
                recycle(st, buf);
            }
            true
        }
        None => false,
    }
}

fn drop_ready_below(st: &mut State, below: u64) {
    let keys: Vec<u64> = st
        .chunks
        .range(..below)
        .filter(|(k, c)| **k + CHUNK <= below && matches!(c, Chunk::Ready { .. }))
        .map(|(k, _)| *k)
        .collect();
    for k in keys {
        if let Some(Chunk::Ready { buf, .. }) = st.chunks.remove(&k) {
            recycle(st, buf);
        }
    }
}

/// Keeps a dropped chunk's memory for the next read, once no reader holds it.
fn recycle(st: &mut State, buf: Arc<Buf>) {
    if let Ok(b) = Arc::try_unwrap(buf) {
        keep_free(st, b.mem);
    }
}

/// Keeps up to a window's worth of chunk buffers for reuse.
fn keep_free(st: &mut State, mem: Vec<u8>) {
    if st.free.len() < WINDOW as usize {
        st.free.push(mem);
    }
}

fn worker(shared: &Shared) {
    loop {
        let (job, mut mem) = {
            let mut st = shared.lock_past_poison();
            loop {
                if st.closing {
                    return;
                }
                if let Some(job) = st.queue.pop_front() {
                    // A chunk written before its read started is not worth reading.
                    if matches!(
                        st.chunks.get(&job.start),
                        Some(Chunk::Pending { id, stale: true }) if *id == job.id
                    ) {
                        st.chunks.remove(&job.start);
                        continue;
                    }
                    let mem = st.free.pop().unwrap_or_default();
                    break (job, mem);
                }
                // Past a poisoned lock too, see `Shared::lock_past_poison`.
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let need = CHUNK as usize + shared.align;
        if mem.len() < need {
            mem.resize(need, 0);
        }
        let pad = mem.as_ptr().align_offset(shared.align);
        let result = (shared.read)(job.start, &mut mem[pad..pad + job.len]);
        let mut st = shared.lock_past_poison();
        st.chunk_reads += 1;
        let current = matches!(
            st.chunks.get(&job.start),
            Some(Chunk::Pending { id, .. }) if *id == job.id
        );
        if current {
            let stale = matches!(
                st.chunks.get(&job.start),
                Some(Chunk::Pending { stale: true, .. })
            );
            if result.is_ok() && !stale {
                let used = st.tick;
                st.chunks.insert(
                    job.start,
                    Chunk::Ready {
                        buf: Arc::new(Buf {
                            mem,
                            pad,
                            len: job.len,
                        }),
                        used,
                    },
                );
            } else {
                // A failed read is left to the command that needs the blocks: it reads
                // them itself and reports the error with its own offset.
                if let Err(e) = &result {
                    tracing::debug!(offset = job.start, error = %e, "readahead failed");
                }
                st.chunks.remove(&job.start);
                keep_free(&mut st, mem);
            }
        } else {
            keep_free(&mut st, mem);
        }
        drop(st);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A "disk" in memory whose reads can be held, after they copied the bytes, to open
    /// the window between a read of the storage and its completion.
    struct Disk {
        data: Mutex<Vec<u8>>,
        hold: AtomicBool,
        fail: AtomicBool,
    }

    fn disk(len: usize) -> Arc<Disk> {
        Arc::new(Disk {
            data: Mutex::new((0..len).map(|i| (i / 512 % 251) as u8).collect()),
            hold: AtomicBool::new(false),
            fail: AtomicBool::new(false),
        })
    }

    fn readahead(d: &Arc<Disk>) -> Readahead {
        let d = d.clone();
        Readahead::new(
            512,
            Box::new(move |at, buf| {
                if d.fail.load(Ordering::SeqCst) {
                    return Err(io::Error::other("medium error"));
                }
                let data = d.data.lock().unwrap();
                buf.copy_from_slice(&data[at as usize..at as usize + buf.len()]);
                drop(data);
                // Held after the copy: the read has the old bytes but has not returned.
                while d.hold.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(())
            }),
        )
        .unwrap()
    }

    /// What a device read does: from the readahead if it can, else from the disk.
    fn read(ra: &Readahead, d: &Disk, offset: u64, len: usize) -> (Vec<u8>, bool) {
        let mut out = vec![0u8; len];
        let end = d.data.lock().unwrap().len() as u64;
        let served = ra.read(offset, len, end, |piece, at| {
            out[at..at + piece.len()].copy_from_slice(piece)
        });
        if !served {
            out.copy_from_slice(&d.data.lock().unwrap()[offset as usize..offset as usize + len]);
        }
        (out, served)
    }

    fn write(ra: &Readahead, d: &Disk, offset: u64, byte: u8, len: usize) {
        d.data.lock().unwrap()[offset as usize..offset as usize + len].fill(byte);
        ra.invalidate(offset, len as u64);
    }

    fn wait_ready(ra: &Readahead, offset: u64, len: usize) {
        for _ in 0..5000 {
            if ra.cached(offset, len) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("never read ahead");
    }

    #[test]
    fn a_sequential_stream_is_served_from_chunks_read_ahead_with_the_disk_bytes() {
        let d = disk(16 << 20);
        let ra = readahead(&d);
        let mut served = 0;
        for i in 0..128u64 {
            let off = i * 65536;
            let (got, from_ra) = read(&ra, &d, off, 65536);
            assert_eq!(
                got,
                d.data.lock().unwrap()[off as usize..off as usize + 65536]
            );
            served += u64::from(from_ra);
        }
        // Three reads confirm the stream; nearly all the rest come from memory.
        assert!(served >= 120, "served {served} of 128");
        let (chunk_reads, _) = ra.counters();
        assert!(
            chunk_reads <= 8 + WINDOW,
            "{chunk_reads} chunk reads for 8 MiB"
        );
        assert!(ra.held() <= MAX_CHUNKS);
    }

    #[test]
    fn reads_that_jump_around_read_nothing_ahead() {
        let d = disk(64 << 20);
        let ra = readahead(&d);
        // Each read lands at least 4 MiB from where any of the last streams would go on.
        for i in 0..200u64 {
            let off = ((i * 5 % 64) << 20) + (i % 7) * 4096;
            let (got, from_ra) = read(&ra, &d, off, 4096);
            assert!(!from_ra);
            assert_eq!(
                got,
                d.data.lock().unwrap()[off as usize..off as usize + 4096]
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ra.counters().0, 0);
        assert_eq!(ra.held(), 0);
    }

    #[test]
    fn a_write_drops_a_chunk_already_read_ahead() {
        let d = disk(8 << 20);
        let ra = readahead(&d);
        for i in 0..3 {
            read(&ra, &d, i * 65536, 65536);
        }
        wait_ready(&ra, CHUNK, 65536);
        write(&ra, &d, CHUNK + 4096, 0xAB, 512);
        assert!(!ra.cached(CHUNK, 8192));
        let (got, _) = read(&ra, &d, CHUNK, 8192);
        assert!(got[4096..4608].iter().all(|&b| b == 0xAB));
        assert_eq!(
            got[..4096],
            d.data.lock().unwrap()[CHUNK as usize..][..4096]
        );
    }

    #[test]
    fn a_write_during_the_chunk_read_makes_the_chunk_stale() {
        let d = disk(8 << 20);
        let ra = readahead(&d);
        d.hold.store(true, Ordering::SeqCst);
        // The third read ends at the first chunk's end: chunks 1 to 4 are read ahead, and
        // none of the three reads waits for them.
        for i in (1..=3).rev() {
            read(&ra, &d, CHUNK - i * 65536, 65536);
        }
        // Let the workers copy the old bytes of chunks 1 and 2 (they are then held).
        std::thread::sleep(std::time::Duration::from_millis(50));
        write(&ra, &d, 2 * CHUNK, 0xCD, 4096);
        d.hold.store(false, Ordering::SeqCst);
        wait_ready(&ra, 3 * CHUNK, 4096);
        // The stale chunk was dropped, so the read goes to the disk and sees the write.
        for _ in 0..100 {
            if !matches!(
                ra.shared.lock().chunks.get(&(2 * CHUNK)),
                Some(Chunk::Pending { .. })
            ) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!ra.cached(2 * CHUNK, 4096));
        let (got, _) = read(&ra, &d, 2 * CHUNK, 4096);
        assert!(got.iter().all(|&b| b == 0xCD));
        assert!(ra.cached(CHUNK, 4096), "the chunk no write touched stays");
    }

    #[test]
    fn a_failed_chunk_read_leaves_the_read_to_the_command() {
        let d = disk(8 << 20);
        let ra = readahead(&d);
        d.fail.store(true, Ordering::SeqCst);
        for i in 0..3 {
            read(&ra, &d, i * 65536, 65536);
        }
        let (got, from_ra) = read(&ra, &d, CHUNK, 65536);
        assert!(!from_ra);
        assert_eq!(
            got,
            d.data.lock().unwrap()[CHUNK as usize..CHUNK as usize + 65536]
        );
        for _ in 0..1000 {
            if ra.held() == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("failed chunks are still held");
    }

    #[test]
    fn reads_ahead_stop_at_the_device_end() {
        let d = disk((2 << 20) + 8192);
        let ra = readahead(&d);
        for i in 0..40u64 {
            let off = i * 32768;
            if off + 32768 > (2 << 20) + 8192 {
                break;
            }
            let (got, _) = read(&ra, &d, off, 32768);
            assert_eq!(
                got,
                d.data.lock().unwrap()[off as usize..off as usize + 32768]
            );
        }
        wait_ready(&ra, 2 << 20, 8192);
        assert!(!ra.cached(2 << 20, 8704));
    }
}
