//! Detach: make a volume or clone independent of every other, as a background job.
//!
//! A snapshot or clone shares its source's chunks by reference. Detaching copies every chunk
//! the volume does not hold alone (shared with its source, a snapshot, another clone, or
//! read through a shared `under` chunk) into a chunk of its own, and maps that. Afterwards no
//! other volume's writes, deletion or damage to a shared chunk can reach it: it is a full,
//! independent copy (a VSS "plex"). The data never changes as seen through the volume, so it
//! stays in use meanwhile; a write to a chunk not yet copied makes it the volume's own the
//! usual way. The job commits in batches (I/O stalls for one batch at a time) and may be
//! cancelled between batches; a later detach carries on where it stopped.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result, io_err};
use crate::format::Record;
use crate::pool::{Inner, Pool, VolumeKind, apply};
use crate::resync::{ResyncJob, ResyncReport, Shared, spawn_job};
use crate::state::{CHUNK_SIZE, Entry, FULL_MASK, MASK_BLOCK_SIZE, Source, State};

/// Chunks copied per commit (4 MiB in production).
const BATCH: usize = if cfg!(test) { 8 } else { 64 };

impl Pool {
    /// Starts making `name` (a volume or clone) hold every one of its chunks alone; see the
    /// module notes. Progress counts chunks copied out of those shared when it started. A
    /// read-only snapshot cannot be detached (its chunks cannot be remapped): clone it first.
    pub fn detach(&self, name: &str) -> Result<ResyncJob> {
        let id = {
            let st = self.inner.read()?;
            let id = *st
                .names
                .get(name)
                .ok_or_else(|| Error::NotFound { name: name.into() })?;
            if st.vols[&id].kind == VolumeKind::Snapshot {
                return Err(Error::ReadOnly { name: name.into() });
            }
            id
        };
        let name = name.to_string();
        spawn_job(self, "blockstore-detach", move |inner, sh| {
            let r = run(inner, sh, id, &name);
            match &r {
                Ok(rep) => {
                    tracing::info!(volume = %name, copied = rep.changed_chunks, "detach finished")
                }
                Err(e) => tracing::warn!(volume = %name, error = %e, "detach ended"),
            }
            r
        })
    }
}

fn root_of(st: &State, id: u64, name: &str) -> Result<u32> {
    st.vols
        .get(&id)
        .map(|v| v.root)
        .ok_or_else(|| Error::NotFound { name: name.into() })
}

/// Chunks at or after `from` the volume does not hold alone, counted in bounded batches.
fn count_shared(inner: &Inner, id: u64, name: &str) -> Result<u64> {
    let st = inner.read()?;
    let root = root_of(&st, id, name)?;
    let (mut n, mut from, mut out) = (0u64, 0u32, Vec::new());
    loop {
        out.clear();
        st.shared_entries(root, from, 4096, &mut out);
        n += out.len() as u64;
        match out.last() {
            Some((i, _)) if out.len() == 4096 && *i < u32::MAX => from = i + 1,
            _ => return Ok(n),
        }
    }
}

/// The chunk's 64 KiB as the volume reads them.
fn read_entry(inner: &Inner, e: &Entry, buf: &mut [u8]) -> Result<()> {
    for b in 0..(CHUNK_SIZE / MASK_BLOCK_SIZE) {
        let out = &mut buf[(b * MASK_BLOCK_SIZE) as usize..((b + 1) * MASK_BLOCK_SIZE) as usize];
        match e.source(b) {
            Source::Zero => out.fill(0),
            Source::Chunk(c) => inner
                .data
                .read_exact_at(out, c as u64 * CHUNK_SIZE + b * MASK_BLOCK_SIZE)
                .map_err(io_err(format!("read chunk {c}")))?,
        }
    }
    Ok(())
}

fn run(inner: &Inner, sh: &Shared, id: u64, name: &str) -> Result<ResyncReport> {
    let total = count_shared(inner, id, name)?;
    sh.total.store(total, Ordering::Release);
    let (mut done, mut commits, mut cursor) = (0u64, 0u64, 0u32);
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        if sh.cancel.load(Ordering::Acquire) {
            return Err(Error::Cancelled { done, total });
        }
        let (n, last) = inner.run_op(|st| {
            let root = root_of(st, id, name)?;
            let mut out = Vec::new();
            st.shared_entries(root, cursor, BATCH, &mut out);
            let mut copied = 0usize;
            for (idx, e) in &out {
                read_entry(inner, e, &mut buf)?;
                let c = st.alloc_chunk().ok_or(Error::NoSpace)?;
                if let Err(err) = inner.write_data(&buf, c as u64 * CHUNK_SIZE) {
                    st.unreserve_chunk(c);
                    return Err(io_err(format!("write chunk {c}"))(err));
                }
                // Every block that read anything now reads it from the new chunk.
                let mask = if e.under != 0 { FULL_MASK } else { e.mask };
                let entry = Entry {
                    phys: c,
                    under: 0,
                    mask,
                };
                let r = apply(
                    st,
                    Record::SetEntry {
                        vol: id,
                        idx: *idx,
                        entry,
                    },
                );
                st.unreserve_chunk(c);
                r?;
                copied += 1;
            }
            Ok((copied, out.last().map(|(i, _)| *i)))
        })?;
        commits += 1;
        done += n as u64;
        sh.done.store(done, Ordering::Release);
        match last {
            Some(i) if n == BATCH && i < u32::MAX => cursor = i + 1,
            _ => break,
        }
    }
    Ok(ResyncReport {
        changed_chunks: done,
        commits,
    })
}

#[cfg(test)]
mod tests {
    use crate::{CHUNK_SIZE, DeletePolicy, Pool, PoolOptions};

    #[test]
    fn a_detached_clone_shares_nothing_and_outlives_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pool::create(dir.path().join("p"), PoolOptions::default()).unwrap();
        let chunks = 20u64;
        p.create_volume("v", (chunks + 4) * CHUNK_SIZE).unwrap();
        let v = p.open_volume("v").unwrap();
        let image: Vec<u8> = (0..chunks * CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
        v.write_at(0, &image, false).unwrap();
        p.snapshot("v", "s").unwrap();
        p.clone_volume("s", "c").unwrap();
        // A small write to the clone: its chunk now reads through a shared `under` chunk.
        let c = p.open_volume("c").unwrap();
        c.write_at(4096, &[7u8; 4096], false).unwrap();
        let mut want = image.clone();
        want[4096..8192].fill(7);
        assert_eq!(p.info("c").unwrap().unique_bytes, CHUNK_SIZE);

        let rep = p.detach("c").unwrap().wait().unwrap();
        assert_eq!(rep.changed_chunks, chunks);
        assert!(rep.commits >= 3, "{rep:?}");
        let info = p.info("c").unwrap();
        assert_eq!(
            (info.unique_bytes, info.shared_bytes),
            (chunks * CHUNK_SIZE, 0)
        );
        // Nothing is left to copy.
        assert_eq!(p.detach("c").unwrap().wait().unwrap().changed_chunks, 0);

        // The source overwritten, then deleted with its snapshot: the clone keeps its bytes,
        // also after the pool is reopened.
        v.write_at(0, &vec![0xEE; (chunks * CHUNK_SIZE) as usize], true)
            .unwrap();
        p.delete("s", DeletePolicy::Promote).unwrap();
        p.delete("v", DeletePolicy::Promote).unwrap();
        drop((v, c));
        drop(p);
        let p = Pool::open(dir.path().join("p")).unwrap();
        let mut got = vec![0u8; want.len()];
        p.open_volume("c").unwrap().read_at(0, &mut got).unwrap();
        assert!(got == want, "the detached clone changed");
        let stats = p.stats().unwrap();
        assert_eq!(stats.used_bytes, chunks * CHUNK_SIZE);
    }

    #[test]
    fn a_snapshot_is_not_detached_and_a_cancelled_detach_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pool::create(dir.path().join("p"), PoolOptions::default()).unwrap();
        p.create_volume("v", 40 * CHUNK_SIZE).unwrap();
        p.open_volume("v")
            .unwrap()
            .write_at(0, &vec![3u8; 40 * CHUNK_SIZE as usize], false)
            .unwrap();
        p.snapshot("v", "s").unwrap();
        assert!(matches!(
            p.detach("s").map(|_| ()),
            Err(crate::Error::ReadOnly { .. })
        ));
        p.clone_volume("s", "c").unwrap();
        let held = p.inner.commit.lock().unwrap();
        let job = p.detach("c").unwrap();
        job.cancel();
        drop(held);
        let first = match job.wait() {
            Err(crate::Error::Cancelled { done, total }) => {
                assert_eq!(total, 40);
                done
            }
            other => panic!("{other:?}"),
        };
        let rest = p.detach("c").unwrap().wait().unwrap().changed_chunks;
        assert_eq!(first + rest, 40);
        assert_eq!(p.info("c").unwrap().shared_bytes, 0);
    }
}
