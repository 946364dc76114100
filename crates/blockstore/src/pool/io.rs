//! Volume I/O: reads, writes (in place or copy-on-write), discards and mapping status.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{Inner, VolumeKind, apply};
use crate::error::{Error, Result, io_err, io_err_with};
use crate::format::Record;
use crate::state::{CHUNK_SIZE, Entry, FULL_MASK, MASK_BLOCK_SIZE, Source, State};

/// Uncommitted metadata after which a write commits by itself.
pub(super) const AUTO_COMMIT_BYTES: usize = if cfg!(test) { 4096 } else { 4 << 20 };

/// A handle for I/O on one volume, snapshot or clone. Cheap to clone; thread-safe. After the
/// volume is deleted every call returns [`Error::NotFound`].
#[derive(Clone)]
pub struct Volume {
    pub(super) inner: Arc<Inner>,
    pub(super) id: u64,
    pub(super) name: String,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

/// Data writes planned by one request: (file offset, bytes), contiguous ones merged.
#[derive(Default)]
struct Pending(Vec<(u64, Vec<u8>)>);

impl Pending {
    /// Appends `buf` to the last write if it continues it; returns whether it did.
    fn extend_last(&mut self, at: u64, buf: &[u8]) -> bool {
        match self.0.last_mut() {
            Some((o, b)) if *o + b.len() as u64 == at => {
                b.extend_from_slice(buf);
                true
            }
            _ => false,
        }
    }

    fn push(&mut self, at: u64, buf: &[u8]) {
        if !self.extend_last(at, buf) {
            self.0.push((at, buf.to_vec()));
        }
    }

    /// Like `push`, for a buffer built for this write: kept as it is unless it continues the
    /// previous one.
    fn push_vec(&mut self, at: u64, buf: Vec<u8>) {
        if !self.extend_last(at, &buf) {
            self.0.push((at, buf));
        }
    }
}

/// One chunk's share of a request.
struct Piece {
    idx: u32,
    within: u64,
    len: usize,
    at: usize,
}

fn pieces(offset: u64, len: usize) -> impl Iterator<Item = Piece> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let pos = offset + at as u64;
        let within = pos % CHUNK_SIZE;
        let n = ((CHUNK_SIZE - within) as usize).min(len - at);
        let p = Piece {
            idx: (pos / CHUNK_SIZE) as u32,
            within,
            len: n,
            at,
        };
        at += n;
        Some(p)
    })
}

fn touched_mask(within: u64, len: usize) -> u16 {
    let b0 = within / MASK_BLOCK_SIZE;
    let b1 = (within + len as u64 - 1) / MASK_BLOCK_SIZE;
    let mut m = 0u16;
    for b in b0..=b1 {
        m |= 1 << b;
    }
    m
}

impl Volume {
    /// The name it was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current size in bytes.
    pub fn size(&self) -> Result<u64> {
        let st = self.inner.read()?;
        Ok(self.meta(&st)?.size)
    }

    /// True for snapshots.
    pub fn is_read_only(&self) -> Result<bool> {
        let st = self.inner.read()?;
        Ok(self.meta(&st)?.kind == VolumeKind::Snapshot)
    }

    fn meta<'a>(&self, st: &'a State) -> Result<&'a crate::state::VolMeta> {
        st.vols.get(&self.id).ok_or_else(|| Error::NotFound {
            name: self.name.clone(),
        })
    }

    fn check_range(&self, st: &State, offset: u64, len: u64) -> Result<u64> {
        let size = self.meta(st)?.size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(size),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`; never-written ranges read as zeros.
    ///
    /// The state lock is held until the data is read: a chunk this read maps cannot be freed,
    /// and so cannot be handed to another volume, before its bytes are copied. Contiguous
    /// runs of the data file are read with one call; nothing is allocated on the way.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let st = self.inner.read()?;
        self.gather(&st, offset, buf, false).map(|_| ())
    }

    /// As [`Volume::read_at`] if that needs no wait, and says whether it read: `Ok(false)`
    /// (with `buf` holding nothing of use) when a pool operation holds the state lock (a
    /// commit holds it across its syncs) or some bytes are not in the page cache, which
    /// each run's `preadv2(RWF_NOWAIT)` finds out instead of waiting; also where the file
    /// system cannot read without waiting, and for a failed read, which `read_at` then
    /// reports. For a transport that runs reads whose data is at hand on its own thread: it
    /// tries the read itself rather than asking [`Volume::cached`] and reading after.
    pub fn read_now(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let Ok(st) = self.inner.state.try_read() else {
            return Ok(false);
        };
        self.gather(&st, offset, buf, true)
    }

    /// Reads through the mapping under `st`; with `now`, each run of the data file without
    /// waiting (false when one would wait).
    fn gather(&self, st: &State, offset: u64, buf: &mut [u8], now: bool) -> Result<bool> {
        self.check_range(st, offset, buf.len() as u64)?;
        let root = self.meta(st)?.root;
        // The run being gathered: its source (file offset, or None for zeros), where it
        // starts in `buf`, its length.
        let mut run: Option<(Option<u64>, usize, usize)> = None;
        for p in pieces(offset, buf.len()) {
            let e = st.entry(root, p.idx);
            let mut pos = p.within;
            let end = p.within + p.len as u64;
            while pos < end {
                let b = pos / MASK_BLOCK_SIZE;
                let n = (((b + 1) * MASK_BLOCK_SIZE).min(end) - pos) as usize;
                let src = match e.source(b) {
                    Source::Zero => None,
                    Source::Chunk(c) => Some(c as u64 * CHUNK_SIZE + pos),
                };
                match &mut run {
                    Some((None, _, l)) if src.is_none() => *l += n,
                    Some((Some(o), _, l)) if src == Some(*o + *l as u64) => *l += n,
                    _ => {
                        let at = p.at + (pos - p.within) as usize;
                        if let Some(done) = run.replace((src, at, n))
                            && !self.read_run(done, buf, offset, now)?
                        {
                            return Ok(false);
                        }
                    }
                }
                pos += n as u64;
            }
        }
        match run {
            Some(r) => self.read_run(r, buf, offset, now),
            None => Ok(true),
        }
    }

    /// One run of [`Volume::gather`]: zeros, or the data file's bytes; false if `now` and
    /// they are not all at hand.
    fn read_run(
        &self,
        (src, at, len): (Option<u64>, usize, usize),
        buf: &mut [u8],
        offset: u64,
        now: bool,
    ) -> Result<bool> {
        let out = &mut buf[at..at + len];
        match src {
            None => {
                out.fill(0);
                Ok(true)
            }
            Some(o) if now => Ok(matches!(
                rustix::io::preadv2(
                    &self.inner.data,
                    &mut [std::io::IoSliceMut::new(out)],
                    o,
                    rustix::io::ReadWriteFlags::NOWAIT,
                ),
                Ok(n) if n == len
            )),
            Some(o) => self
                .inner
                .data
                .read_exact_at(out, o)
                .map(|()| true)
                .map_err(io_err_with(|| format!("read {} at {}", self.name, offset))),
        }
    }

    /// Whether the `len` bytes at `offset` can be read now without waiting for storage: the
    /// blocks they map to are in the page cache, or read as zeros. A hint for a transport
    /// that runs quick reads on its own thread; the answer may be stale by the time the read
    /// runs (which is then still correct, only slower). Probes the first and the last byte
    /// with a one-byte `preadv2(RWF_NOWAIT)`. False when the metadata is busy (a pool
    /// operation holds it) or the file system cannot answer without waiting.
    pub fn cached(&self, offset: u64, len: usize) -> bool {
        let Ok(st) = self.inner.state.try_read() else {
            return false;
        };
        let Ok(v) = self.meta(&st) else {
            return true; // fails at once
        };
        let root = v.root;
        let end = match offset.checked_add(len as u64) {
            Some(e) if len > 0 && e <= v.size => e,
            _ => return true, // out of range or empty: fails or ends at once
        };
        let place = |e: &Entry, pos: u64| match e.source((pos % CHUNK_SIZE) / MASK_BLOCK_SIZE) {
            Source::Zero => None,
            Source::Chunk(c) => Some(c as u64 * CHUNK_SIZE + pos % CHUNK_SIZE),
        };
        let (i0, i1) = (
            (offset / CHUNK_SIZE) as u32,
            ((end - 1) / CHUNK_SIZE) as u32,
        );
        let e0 = st.entry(root, i0);
        let e1 = if i1 == i0 { e0 } else { st.entry(root, i1) };
        let (first, last) = (place(&e0, offset), place(&e1, end - 1));
        drop(st);
        let same_page = |a: u64, b: u64| a / 4096 == b / 4096;
        match (first, last) {
            (Some(a), Some(b)) if same_page(a, b) => self.inner.resident(a),
            (a, b) => {
                a.is_none_or(|a| self.inner.resident(a)) && b.is_none_or(|b| self.inner.resident(b))
            }
        }
    }

    /// Writes `data` at `offset`. With `fua`, the data is durable when this returns.
    pub fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.inner.check_failed()?;
        if !self.write_in_place(offset, data)? {
            match self.write_slow(offset, data) {
                Err(Error::NoSpace) => {
                    // Chunks freed since the last commit become usable once it is durable.
                    self.inner.flush()?;
                    self.write_slow(offset, data)?;
                }
                r => r?,
            }
        }
        if fua { self.inner.flush() } else { Ok(()) }
    }

    /// The fast path: every chunk touched is mapped, exclusive, and already holds the touched
    /// blocks, so only data moves and a shared lock suffices.
    fn write_in_place(&self, offset: u64, data: &[u8]) -> Result<bool> {
        let st = self.inner.read()?;
        self.check_range(&st, offset, data.len() as u64)?;
        let v = self.meta(&st)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(Error::ReadOnly {
                name: self.name.clone(),
            });
        }
        let mut targets: Vec<(u64, usize, usize)> = Vec::new();
        for p in pieces(offset, data.len()) {
            let (e, excl) = st.lookup(v.root, p.idx);
            let m = touched_mask(p.within, p.len);
            if !excl || e.mask & m != m {
                return Ok(false);
            }
            let fo = e.phys as u64 * CHUNK_SIZE + p.within;
            match targets.last_mut() {
                Some((o, _, l)) if *o + *l as u64 == fo => *l += p.len,
                _ => targets.push((fo, p.at, p.len)),
            }
        }
        for (fo, at, len) in targets {
            self.inner
                .write_data(&data[at..at + len], fo)
                .map_err(io_err_with(|| format!("write {} at {}", self.name, offset)))?;
        }
        Ok(true)
    }

    fn write_slow(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.inner.write()?;
        self.check_range(&st, offset, data.len() as u64)?;
        if self.meta(&st)?.kind == VolumeKind::Snapshot {
            return Err(Error::ReadOnly {
                name: self.name.clone(),
            });
        }
        let mut out = Pending::default();
        let mut r = Ok(());
        for p in pieces(offset, data.len()) {
            if let Err(e) = self.write_piece(&mut st, &p, &data[p.at..p.at + p.len], &mut out) {
                r = Err(e);
                break;
            }
        }
        // Chunks mapped before a failure (e.g. the pool filling up midway) get their data.
        self.write_pending(out)?;
        let backlog = st.log.buf.len();
        drop(st);
        if r.is_ok() && backlog > AUTO_COMMIT_BYTES {
            // Bound the uncommitted metadata of hosts that rarely flush.
            self.inner.flush()?;
        }
        r
    }

    /// Issues the data writes planned under the state lock, merged where contiguous (so
    /// sequential writes reach the file as large writes). They happen before the lock is
    /// released, hence before any commit can make their mapping records durable. A failure
    /// here leaves mappings to unwritten chunks in memory, so the pool stops accepting changes
    /// (reopening recovers the last commit).
    fn write_pending(&self, out: Pending) -> Result<()> {
        for (at, buf) in out.0 {
            if let Err(e) = self.inner.write_data(&buf, at) {
                return self
                    .inner
                    .fail(io_err(format!("write {} (file offset {at})", self.name))(e));
            }
        }
        Ok(())
    }

    fn read_block(&self, e: &Entry, b: u64, out: &mut [u8]) -> Result<()> {
        match e.source(b) {
            Source::Zero => {
                out.fill(0);
                Ok(())
            }
            Source::Chunk(c) => self
                .inner
                .data
                .read_exact_at(out, c as u64 * CHUNK_SIZE + b * MASK_BLOCK_SIZE)
                .map_err(io_err_with(|| format!("read chunk {c}"))),
        }
    }

    fn pwrite(&self, buf: &[u8], at: u64) -> Result<()> {
        self.inner.write_data(buf, at).map_err(io_err_with(|| {
            format!("write {} (chunk offset {at})", self.name)
        }))
    }

    /// Writes one chunk's share of a request under the exclusive lock.
    fn write_piece(&self, st: &mut State, p: &Piece, data: &[u8], out: &mut Pending) -> Result<()> {
        let root = self.meta(st)?.root;
        let (cur, excl) = st.lookup(root, p.idx);
        let touched = touched_mask(p.within, p.len);
        let b0 = p.within / MASK_BLOCK_SIZE;
        let b1 = (p.within + p.len as u64 - 1) / MASK_BLOCK_SIZE;
        let head_partial = p.within % MASK_BLOCK_SIZE != 0;
        let tail_partial = (p.within + p.len as u64) % MASK_BLOCK_SIZE != 0;
        let span_off = b0 * MASK_BLOCK_SIZE;
        let span_len = ((b1 - b0 + 1) * MASK_BLOCK_SIZE) as usize;
        // The touched blocks with edges completed from `fill` (None: zeros).
        let span = |this: &Self, fill: Option<&Entry>| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; span_len];
            if let Some(e) = fill {
                if head_partial {
                    this.read_block(e, b0, &mut buf[..MASK_BLOCK_SIZE as usize])?;
                }
                if tail_partial {
                    this.read_block(e, b1, &mut buf[span_len - MASK_BLOCK_SIZE as usize..])?;
                }
            }
            let s = (p.within - span_off) as usize;
            buf[s..s + p.len].copy_from_slice(data);
            Ok(buf)
        };

        let new = if excl {
            let base = cur.phys as u64 * CHUNK_SIZE;
            let fill_head = head_partial && cur.mask & (1 << b0) == 0;
            let fill_tail = tail_partial && cur.mask & (1 << b1) == 0;
            if fill_head || fill_tail {
                out.push_vec(base + span_off, span(self, Some(&cur))?);
            } else {
                out.push(base + p.within, data);
            }
            let mut n = Entry {
                mask: cur.mask | touched,
                ..cur
            };
            if n.mask == FULL_MASK {
                n.under = 0;
            }
            n
        } else {
            let q = st.alloc_chunk().ok_or(Error::NoSpace)?;
            let base = q as u64 * CHUNK_SIZE;
            let r = if cur.is_empty() {
                span(self, None)
                    .map(|b| out.push_vec(base + span_off, b))
                    .map(|_| Entry {
                        phys: q,
                        under: 0,
                        mask: touched,
                    })
            } else if cur.under == 0 && cur.mask == FULL_MASK {
                span(self, Some(&cur))
                    .map(|b| out.push_vec(base + span_off, b))
                    .map(|_| {
                        if touched == FULL_MASK {
                            Entry {
                                phys: q,
                                under: 0,
                                mask: FULL_MASK,
                            }
                        } else {
                            Entry {
                                phys: q,
                                under: cur.phys,
                                mask: touched,
                            }
                        }
                    })
            } else {
                // Shared and already layered (or partly written): the new chunk takes the
                // blocks `phys` holds plus the touched ones and keeps the same `under`, so
                // only those blocks are copied (one read, one write of the span they cover).
                let mask = cur.mask | touched;
                let first = |m: u16| u64::from(m.trailing_zeros());
                let last = |m: u16| u64::from(15 - m.leading_zeros());
                let lo = first(mask);
                let lo_off = lo * MASK_BLOCK_SIZE;
                let mut buf = vec![0u8; ((last(mask) - lo + 1) * MASK_BLOCK_SIZE) as usize];
                // The blocks `phys` holds, in one read (only up to its last block in use: the
                // file may end there).
                let (c0, c1) = (first(cur.mask), last(cur.mask));
                let cs = ((c0 - lo) * MASK_BLOCK_SIZE) as usize;
                let ce = ((c1 - lo + 1) * MASK_BLOCK_SIZE) as usize;
                let r = self
                    .inner
                    .data
                    .read_exact_at(
                        &mut buf[cs..ce],
                        cur.phys as u64 * CHUNK_SIZE + c0 * MASK_BLOCK_SIZE,
                    )
                    .map_err(io_err_with(|| format!("read chunk {}", cur.phys)))
                    .and_then(|_| {
                        // Partial edge blocks not in `phys` come from `under` (or zeros).
                        for (b, partial) in [(b0, head_partial), (b1, tail_partial)] {
                            if partial && cur.mask & (1 << b) == 0 {
                                let s = ((b - lo) * MASK_BLOCK_SIZE) as usize;
                                self.read_block(
                                    &cur,
                                    b,
                                    &mut buf[s..s + MASK_BLOCK_SIZE as usize],
                                )?;
                            }
                        }
                        let s = (p.within - lo_off) as usize;
                        buf[s..s + p.len].copy_from_slice(data);
                        out.push_vec(base + lo_off, buf);
                        Ok(())
                    });
                // Blocks of the span in neither mask were written as zeros and are not in
                // the new mask: they still read from `under` (or as zeros).
                r.map(|_| Entry {
                    phys: q,
                    under: if mask == FULL_MASK { 0 } else { cur.under },
                    mask,
                })
            };
            match r {
                Ok(n) => n,
                Err(e) => {
                    st.unreserve_chunk(q);
                    return Err(e);
                }
            }
        };
        if new != cur {
            apply(
                st,
                Record::SetEntry {
                    vol: self.id,
                    idx: p.idx,
                    entry: new,
                },
            )?;
        }
        if new.phys != cur.phys {
            st.unreserve_chunk(new.phys);
        }
        Ok(())
    }

    /// Makes every acknowledged write durable (all volumes of the pool).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Deallocates a range: it reads as zeros afterwards and whole chunks return to the pool
    /// (after the next commit). Parts of chunks are zeroed.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.check_failed()?;
        let mut st = self.inner.write()?;
        self.check_range(&st, offset, len)?;
        if self.meta(&st)?.kind == VolumeKind::Snapshot {
            return Err(Error::ReadOnly {
                name: self.name.clone(),
            });
        }
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = (pos / CHUNK_SIZE) as u32;
            let within = pos % CHUNK_SIZE;
            let n = (CHUNK_SIZE - within).min(end - pos);
            let root = self.meta(&st)?.root;
            let (cur, excl) = st.lookup(root, idx);
            if !cur.is_empty() {
                if n == CHUNK_SIZE {
                    apply(
                        &mut st,
                        Record::SetEntry {
                            vol: self.id,
                            idx,
                            entry: Entry::EMPTY,
                        },
                    )?;
                } else if excl && cur.under == 0 {
                    // Clear whole blocks from the mask, zero the partial ones that hold data.
                    let mut mask = cur.mask;
                    let mut p = within;
                    while p < within + n {
                        let b = p / MASK_BLOCK_SIZE;
                        let bend = ((b + 1) * MASK_BLOCK_SIZE).min(within + n);
                        if p == b * MASK_BLOCK_SIZE && bend == (b + 1) * MASK_BLOCK_SIZE {
                            mask &= !(1 << b);
                        } else if mask & (1 << b) != 0 {
                            let z = vec![0u8; (bend - p) as usize];
                            self.pwrite(&z, cur.phys as u64 * CHUNK_SIZE + p)?;
                        }
                        p = bend;
                    }
                    let entry = if mask == 0 {
                        Entry::EMPTY
                    } else {
                        Entry { mask, ..cur }
                    };
                    if entry != cur {
                        apply(
                            &mut st,
                            Record::SetEntry {
                                vol: self.id,
                                idx,
                                entry,
                            },
                        )?;
                    }
                } else {
                    let zeros = vec![0u8; n as usize];
                    let p = Piece {
                        idx,
                        within,
                        len: n as usize,
                        at: 0,
                    };
                    let mut out = Pending::default();
                    self.write_piece(&mut st, &p, &zeros, &mut out)?;
                    self.write_pending(out)?;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// For GET LBA STATUS: whether the byte at `offset` is mapped (has storage) and for how
    /// many bytes from there that stays so (the answer may stop early, after 4 GiB).
    pub fn mapping_status(&self, offset: u64) -> Result<(bool, u64)> {
        let st = self.inner.read()?;
        let size = self.meta(&st)?.size;
        if offset >= size {
            return Err(Error::OutOfRange {
                offset,
                len: 0,
                size,
            });
        }
        let root = self.meta(&st)?.root;
        let limit = (offset + (4u64 << 30)).min(size);
        let mut pos = offset;
        let mut state: Option<bool> = None;
        while pos < limit {
            let idx = (pos / CHUNK_SIZE) as u32;
            let (e, _) = st.lookup(root, idx);
            let chunk_end = (idx as u64 + 1) * CHUNK_SIZE;
            while pos < chunk_end.min(limit) {
                let b = (pos % CHUNK_SIZE) / MASK_BLOCK_SIZE;
                let m = e.block_mapped(b);
                match state {
                    None => state = Some(m),
                    Some(s) if s != m => return Ok((s, pos - offset)),
                    _ => {}
                }
                pos = (pos / MASK_BLOCK_SIZE + 1) * MASK_BLOCK_SIZE;
            }
        }
        Ok((state.unwrap_or(false), limit - offset))
    }
}
