//! Crash-consistency harness: a deterministic workload, a child that runs it against a real
//! pool, and a checker that verifies a pool recovered after the child was killed at an
//! arbitrary point (`kill -9`). Used by the `blockstore-crashtest` binary and the tests.
//!
//! The workload writes blocks whose bytes name the operation that wrote them, so the checker
//! can tell for every 4 KiB block which write it holds. After recovery:
//! - every volume created (and not deleted) by an acknowledged operation exists, and nothing
//!   else does, except what the single in-flight operation may or may not have done;
//! - a block holds the value it had at the last commit (flush, FUA, or any pool operation)
//!   or the value of a write that came later — never anything else;
//! - a snapshot holds exactly what its source held when the snapshot was acknowledged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use blockstore::{DeletePolicy, Pool, PoolOptions, VolumeKind};

/// Size of every volume of the workload.
pub const VOLUME_SIZE: u64 = 64 * blockstore::CHUNK_SIZE;
const BLOCK: u64 = 4096;
const BLOCKS: u64 = VOLUME_SIZE / BLOCK;
const MAX_LIVE: usize = 6;

/// One step of the workload. Volumes are named `v<slot>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create {
        slot: usize,
    },
    Write {
        slot: usize,
        block: u64,
        blocks: u64,
        fua: bool,
    },
    Discard {
        slot: usize,
        block: u64,
        blocks: u64,
    },
    Flush,
    Snapshot {
        src: usize,
        slot: usize,
    },
    Clone {
        src: usize,
        slot: usize,
    },
    Delete {
        slot: usize,
    },
    Resync {
        src: usize,
        dst: usize,
    },
    Reopen,
}

fn name(slot: usize) -> String {
    format!("v{slot}")
}

/// The workload of a seed: `len` operations, valid in sequence.
pub fn plan(seed: u64, len: usize) -> Vec<Op> {
    let mut r = StdRng::seed_from_u64(seed);
    let mut live: BTreeMap<usize, VolumeKind> = BTreeMap::new();
    let mut next = 0usize;
    let mut ops = vec![Op::Create { slot: 0 }];
    live.insert(0, VolumeKind::Volume);
    next += 1;
    while ops.len() < len {
        let slots: Vec<usize> = live.keys().copied().collect();
        let writable: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|s| live[s] != VolumeKind::Snapshot)
            .collect();
        let snaps: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|s| live[s] == VolumeKind::Snapshot)
            .collect();
        let pick = |r: &mut StdRng, v: &[usize]| v[r.random_range(0..v.len())];
        let op = match r.random_range(0..100) {
            0..=49 if !writable.is_empty() => {
                let blocks = *[1u64, 1, 2, 4, 16, 17, 40]
                    .get(r.random_range(0..7))
                    .unwrap();
                let block = r.random_range(0..BLOCKS - blocks);
                Op::Write {
                    slot: pick(&mut r, &writable),
                    block,
                    blocks,
                    fua: r.random_bool(0.05),
                }
            }
            50..=57 if !writable.is_empty() => {
                let blocks = r.random_range(1..40);
                let block = r.random_range(0..BLOCKS - blocks);
                Op::Discard {
                    slot: pick(&mut r, &writable),
                    block,
                    blocks,
                }
            }
            58..=67 => Op::Flush,
            68..=75 if live.len() < MAX_LIVE => {
                let src = pick(&mut r, &slots);
                next += 1;
                live.insert(next - 1, VolumeKind::Snapshot);
                Op::Snapshot {
                    src,
                    slot: next - 1,
                }
            }
            76..=81 if live.len() < MAX_LIVE => {
                let src = pick(&mut r, &slots);
                next += 1;
                live.insert(next - 1, VolumeKind::Clone);
                Op::Clone {
                    src,
                    slot: next - 1,
                }
            }
            82..=87 if live.len() > 2 => {
                let slot = pick(&mut r, &slots);
                live.remove(&slot);
                Op::Delete { slot }
            }
            88..=91 if !snaps.is_empty() && !writable.is_empty() => Op::Resync {
                src: pick(&mut r, &snaps),
                dst: pick(&mut r, &writable),
            },
            92..=93 => Op::Reopen,
            94..=99 if live.is_empty() || (live.len() < MAX_LIVE && r.random_bool(0.3)) => {
                next += 1;
                live.insert(next - 1, VolumeKind::Volume);
                Op::Create { slot: next - 1 }
            }
            _ => continue,
        };
        ops.push(op);
    }
    ops
}

/// The bytes of `block` written by operation `op` (numbered from 1).
pub fn block_bytes(op: u64, block: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[..8].copy_from_slice(&op.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    let mut x = op.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ block.wrapping_add(1);
    for w in b[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// Which write a block holds: 0 for zeros, or the operation number; `None` for bytes no write
/// of the workload produced.
fn identify(b: &[u8], block: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let op = u64::from_le_bytes(b[..8].try_into().ok()?);
    (block_bytes(op, block) == b).then_some(op)
}

/// Runs the workload against the pool in `dir`, printing the index of each operation to
/// `ack` once it has returned. Exits on the first error.
pub fn run_child(dir: &Path, seed: u64, len: usize, ack: &mut dyn Write) -> blockstore::Result<()> {
    let ops = plan(seed, len);
    let mut pool = Some(Pool::create(dir, PoolOptions::default())?);
    pool.as_ref().unwrap().set_checkpoint_threshold(8 * 1024);
    for (i, op) in ops.iter().enumerate() {
        let p = pool.as_ref().unwrap();
        let id = i as u64 + 1;
        match op {
            Op::Create { slot } => {
                p.create_volume(&name(*slot), VOLUME_SIZE)?;
            }
            Op::Write {
                slot,
                block,
                blocks,
                fua,
            } => {
                let mut data = Vec::with_capacity((*blocks * BLOCK) as usize);
                for b in *block..block + blocks {
                    data.extend_from_slice(&block_bytes(id, b));
                }
                p.open_volume(&name(*slot))?
                    .write_at(block * BLOCK, &data, *fua)?;
            }
            Op::Discard {
                slot,
                block,
                blocks,
            } => {
                p.open_volume(&name(*slot))?
                    .discard(block * BLOCK, blocks * BLOCK)?;
            }
            Op::Flush => p.flush()?,
            Op::Snapshot { src, slot } => {
                p.snapshot(&name(*src), &name(*slot))?;
            }
            Op::Clone { src, slot } => {
                p.clone_volume(&name(*src), &name(*slot))?;
            }
            Op::Delete { slot } => p.delete(&name(*slot), DeletePolicy::Promote)?,
            Op::Resync { src, dst } => {
                p.resync(&name(*src), &name(*dst))?.wait()?;
            }
            Op::Reopen => {
                drop(pool.take());
                pool = Some(Pool::open(dir)?);
                pool.as_ref().unwrap().set_checkpoint_threshold(8 * 1024);
            }
        }
        let _ = writeln!(ack, "{i}");
        let _ = ack.flush();
    }
    Ok(())
}

/// Allowed values of one block: the value at the last commit, then later writes.
#[derive(Clone, Debug)]
struct Cell {
    durable: u64,
    later: Vec<u64>,
}

impl Cell {
    fn last(&self) -> u64 {
        *self.later.last().unwrap_or(&self.durable)
    }
    fn allows(&self, v: u64) -> bool {
        self.durable == v || self.later.contains(&v)
    }
}

type Model = BTreeMap<usize, (VolumeKind, Vec<Cell>)>;

fn commit_all(m: &mut Model) {
    for (_, cells) in m.values_mut() {
        for c in cells.iter_mut() {
            c.durable = c.last();
            c.later.clear();
        }
    }
}

fn exact(cells: &[Cell]) -> Vec<Cell> {
    cells
        .iter()
        .map(|c| Cell {
            durable: c.last(),
            later: Vec::new(),
        })
        .collect()
}

fn apply(m: &mut Model, i: usize, op: &Op) {
    let id = i as u64 + 1;
    match op {
        Op::Create { slot } => {
            commit_all(m);
            m.insert(
                *slot,
                (
                    VolumeKind::Volume,
                    vec![
                        Cell {
                            durable: 0,
                            later: vec![]
                        };
                        BLOCKS as usize
                    ],
                ),
            );
        }
        Op::Write {
            slot,
            block,
            blocks,
            fua,
        } => {
            let cells = &mut m.get_mut(slot).expect("planned").1;
            for b in *block..block + blocks {
                let c = &mut cells[b as usize];
                if *fua {
                    c.durable = id;
                    c.later.clear();
                } else {
                    c.later.push(id);
                }
            }
        }
        Op::Discard {
            slot,
            block,
            blocks,
        } => {
            let cells = &mut m.get_mut(slot).expect("planned").1;
            for b in *block..block + blocks {
                cells[b as usize].later.push(0);
            }
        }
        Op::Flush | Op::Reopen => commit_all(m),
        Op::Snapshot { src, slot } | Op::Clone { src, slot } => {
            commit_all(m);
            let kind = if matches!(op, Op::Snapshot { .. }) {
                VolumeKind::Snapshot
            } else {
                VolumeKind::Clone
            };
            let cells = exact(&m[src].1);
            m.insert(*slot, (kind, cells));
        }
        Op::Delete { slot } => {
            commit_all(m);
            m.remove(slot);
        }
        Op::Resync { src, dst } => {
            commit_all(m);
            let cells = exact(&m[src].1);
            m.get_mut(dst).expect("planned").1 = cells;
        }
    }
}

/// Checks a recovered pool against the workload of `seed` of which operations `0..acked`
/// returned (the next one, if any, was in flight). Returns a description of the first
/// violation.
pub fn verify(dir: &Path, seed: u64, len: usize, acked: usize) -> Result<(), String> {
    let ops = plan(seed, len);
    let pool = Pool::open(dir).map_err(|e| format!("open after crash: {e}"))?;
    let mut m: Model = BTreeMap::new();
    for (i, op) in ops.iter().enumerate().take(acked) {
        apply(&mut m, i, op);
    }
    let present: BTreeMap<String, VolumeKind> = pool
        .list()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|v| (v.name, v.kind))
        .collect();
    // Settle the in-flight operation by what is visible.
    if let Some(op) = ops.get(acked) {
        let done = match op {
            Op::Create { slot } | Op::Snapshot { slot, .. } | Op::Clone { slot, .. } => {
                present.contains_key(&name(*slot))
            }
            Op::Delete { slot } => !present.contains_key(&name(*slot)),
            _ => false,
        };
        match op {
            Op::Write {
                slot,
                block,
                blocks,
                ..
            } => {
                let cells = &mut m.get_mut(slot).expect("planned").1;
                for b in *block..block + blocks {
                    cells[b as usize].later.push(acked as u64 + 1);
                }
            }
            Op::Discard {
                slot,
                block,
                blocks,
            } => {
                let cells = &mut m.get_mut(slot).expect("planned").1;
                for b in *block..block + blocks {
                    cells[b as usize].later.push(0);
                }
            }
            Op::Resync { src, dst } => {
                let src_cells = exact(&m[src].1);
                let cells = &mut m.get_mut(dst).expect("planned").1;
                for (c, s) in cells.iter_mut().zip(src_cells) {
                    c.later.push(s.durable);
                }
            }
            _ if done => apply(&mut m, acked, op),
            _ => {}
        }
    }
    let expected: BTreeMap<String, VolumeKind> =
        m.iter().map(|(s, (k, _))| (name(*s), *k)).collect();
    if present != expected {
        return Err(format!("volumes {present:?}, expected {expected:?}"));
    }
    let mut buf = vec![0u8; VOLUME_SIZE as usize];
    for (slot, (_, cells)) in &m {
        let v = pool.open_volume(&name(*slot)).map_err(|e| e.to_string())?;
        v.read_at(0, &mut buf)
            .map_err(|e| format!("read {}: {e}", name(*slot)))?;
        for (b, c) in cells.iter().enumerate() {
            let bytes = &buf[b * BLOCK as usize..(b + 1) * BLOCK as usize];
            match identify(bytes, b as u64) {
                Some(v) if c.allows(v) => {}
                got => {
                    return Err(format!(
                        "{} block {b}: holds {got:?}, allowed {} or {:?}",
                        name(*slot),
                        c.durable,
                        c.later
                    ));
                }
            }
        }
    }
    // The recovered pool keeps working.
    let probe = pool.list().map_err(|e| e.to_string())?;
    if let Some(v) = probe.iter().find(|v| v.kind != VolumeKind::Snapshot) {
        let h = pool.open_volume(&v.name).map_err(|e| e.to_string())?;
        h.write_at(0, &[0xA5; 4096], true)
            .map_err(|e| format!("write after recovery: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_varied() {
        let a = plan(7, 300);
        assert_eq!(a, plan(7, 300));
        assert_ne!(a, plan(8, 300));
        for kind in [
            "Snapshot", "Clone", "Delete", "Resync", "Reopen", "Discard", "Flush",
        ] {
            assert!(
                a.iter().any(|o| format!("{o:?}").starts_with(kind)),
                "no {kind}"
            );
        }
    }

    #[test]
    fn a_full_run_without_a_crash_verifies() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("p");
        run_child(&dir, 3, 150, &mut std::io::sink()).unwrap();
        verify(&dir, 3, 150, 150).unwrap();
    }

    #[test]
    fn the_checker_notices_a_lost_flushed_write() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("p");
        run_child(&dir, 4, 120, &mut std::io::sink()).unwrap();
        // Zero every volume behind the engine's back: the flushed writes are gone.
        {
            let p = Pool::open(&dir).unwrap();
            for v in p
                .list()
                .unwrap()
                .into_iter()
                .filter(|v| v.kind != VolumeKind::Snapshot)
            {
                p.open_volume(&v.name)
                    .unwrap()
                    .discard(0, VOLUME_SIZE)
                    .unwrap();
            }
        }
        assert!(verify(&dir, 4, 120, 120).is_err());
    }
}
