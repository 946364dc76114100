//! The rbd backend's group commit, what CommitSnapshots waits for on an array on Ceph:
//! `Backend::snapshot_group` (the array's commit verb calls it, then appends one journal
//! record), parallel `rbd_snap_create2` on every source's serving handle. Sets of 1, 8 and
//! 64 LUNs, each an array of its own holding only that set's LUNs; idle, then under a
//! bounded writer on the set's LUNs; the set sizes and both modes take turns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rbd::Pool;
use storage::{Backend, RbdBackend};

use super::{RbdBenchError, num};
use crate::report::{Goal, Row};
use crate::target_bench::Rng;

/// The set sizes measured; the first is the baseline of the others.
const SET_SIZES: [usize; 3] = [1, 8, 64];
/// Size of every LUN of the sets (a snapshot copies no data: its cost does not grow with it).
const LUN_BYTES: u64 = 64 << 20;
/// Threads of the writer under load, each with one 4 KiB write in flight, and the LUNs
/// they write: other LUNs of the cluster than the set's. A set's own LUNs take no writes
/// while it commits: VSS holds them (FlushAndHoldWrites) and an admin set fences them.
const WRITERS: usize = 8;
/// The load's offered rate, 4 KiB writes per second, all threads together. Fixed, so the
/// rows measure the commit under the same load whatever the cache does: unpaced writers
/// run ten times faster on a write-back cache than on a write-through one, and the commit
/// then has ten times as much to flush.
const LOAD_WRITES_PER_SEC: u64 = 400;
/// How long the writer runs before the commit starts.
const WRITER_LEAD: Duration = Duration::from_millis(200);
/// The writer's bound, whatever happens to the commit.
const WRITER_LIMIT: Duration = Duration::from_secs(60);
/// Threads that prepare and clean up a set's LUNs.
const HELPERS: usize = 16;
/// p99 must stay under this for 64 LUNs.
const LIMIT_MS: f64 = 1000.0;

/// Rows and notes for the report.
pub(super) struct Measured {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// Runs `f` on every item, from up to [`HELPERS`] threads; the first error.
fn par<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> Result<(), RbdBenchError> + Sync,
) -> Result<(), RbdBenchError> {
    let chunk = items.len().div_ceil(HELPERS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().try_for_each(&f)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("helper thread"))
            .collect::<Result<Vec<()>, _>>()
            .map(drop)
    })
}

fn dev_err(e: scsi::DeviceError) -> RbdBenchError {
    RbdBenchError::Tool(format!("writing a LUN of the set: {e}"))
}

/// One set size: an array whose volumes are exactly the set's sources, each with its
/// device open (the handle a served LUN's I/O and the commit go through).
struct SetArray {
    pool: Arc<Pool>,
    backend: RbdBackend,
    luns: Vec<String>,
    devices: Vec<scsi::Device>,
}

impl SetArray {
    fn new(pool: &Arc<Pool>, array_id: u32, n: usize) -> Result<SetArray, RbdBenchError> {
        let backend = RbdBackend::new(pool.clone(), array_id)?;
        let luns: Vec<String> = (1..=n).map(|i| format!("lun-{i}")).collect();
        let mut a = SetArray {
            pool: pool.clone(),
            backend,
            luns,
            devices: Vec::new(),
        };
        par(&a.luns, |l| Ok(a.backend.create_volume(l, LUN_BYTES)?))?;
        a.devices = a
            .luns
            .iter()
            .map(|l| a.backend.device(l))
            .collect::<Result<_, _>>()?;
        Ok(a)
    }

    /// One 4 KiB write through every LUN's device, in parallel: its handle then holds the
    /// image's exclusive lock, as the handle of a LUN a host writes does when a commit comes
    /// (only the first commit of a set would find it otherwise).
    fn touch(&self) -> Result<(), RbdBenchError> {
        par(&self.devices, |d| {
            d.write_at(0, &[0x11; 4096], false).map_err(dev_err)
        })
    }

    /// Removes the snapshots the commits took, then deletes the volumes (the devices
    /// closed first).
    fn remove(mut self, taken: &[(String, String)]) {
        self.devices.clear();
        let _ = par(taken, |(src, clone)| {
            let removed = self
                .pool
                .open(&self.backend.image_name(src))
                .and_then(|img| img.snap_remove(&RbdBackend::snap_name(clone)));
            if let Err(e) = removed {
                tracing::warn!(volume = %src, snapshot = %clone, error = %e,
                    "benchmark snapshot not removed");
            }
            Ok(())
        });
        let _ = par(&self.luns, |l| {
            if let Err(e) = self.backend.delete_volume(l) {
                tracing::warn!(volume = %l, error = %e, "benchmark volume not deleted");
            }
            Ok(())
        });
    }

    /// Commits the set once (idle, or with the writer running on `load`'s LUNs): the
    /// commit's duration and, under load, the writer's rate in writes per second while it
    /// ran. The snapshots stay (as a set's do while its backup runs); `taken` gets them.
    fn sample(
        &self,
        tag: &str,
        load: Option<&SetArray>,
        taken: &mut Vec<(String, String)>,
    ) -> Result<(Duration, Option<f64>), RbdBenchError> {
        let pairs: Vec<(String, String)> = self
            .luns
            .iter()
            .map(|l| (l.clone(), format!("{l}-{tag}")))
            .collect();
        self.touch()?;
        if let Some(load) = load {
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                let started = Instant::now();
                let writers: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let stop = &stop;
                        s.spawn(move || load.write_until(w as u64, stop))
                    })
                    .collect();
                std::thread::sleep(WRITER_LEAD);
                let t0 = Instant::now();
                let committed = self.backend.snapshot_group(&pairs);
                let took = t0.elapsed();
                stop.store(true, Ordering::Relaxed);
                let mut writes = 0u64;
                let mut failed = None;
                for w in writers {
                    match w.join().expect("writer thread") {
                        Ok(n) => writes += n,
                        Err(e) => failed = failed.or(Some(e)),
                    }
                }
                committed?;
                taken.extend(pairs);
                if let Some(e) = failed {
                    return Err(e);
                }
                Ok((took, Some(writes as f64 / started.elapsed().as_secs_f64())))
            })
        } else {
            let t0 = Instant::now();
            self.backend.snapshot_group(&pairs)?;
            let took = t0.elapsed();
            taken.extend(pairs);
            Ok((took, None))
        }
    }

    /// 4 KiB writes at random places of random LUNs of this array until `stop` (bounded by
    /// [`WRITER_LIMIT`]), this thread's share of [`LOAD_WRITES_PER_SEC`]: how many.
    fn write_until(&self, seed: u64, stop: &AtomicBool) -> Result<u64, RbdBenchError> {
        let every = Duration::from_secs(1) * WRITERS as u32 / LOAD_WRITES_PER_SEC as u32;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let payload = [0x5au8; 4096];
        let slots = LUN_BYTES / 4096;
        let start = Instant::now();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < WRITER_LIMIT {
            // Paced: a write that falls behind is sent at once, never skipped.
            let due = start + every * n as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                continue;
            }
            let dev = &self.devices[(rng.next() % self.devices.len() as u64) as usize];
            dev.write_at(rng.next() % slots * 4096, &payload, false)
                .map_err(dev_err)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Nearest-rank percentile of durations in milliseconds.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Measures `commits` commits of every set size, idle and under load, in arrays numbered
/// from `first_id`; deletes their volumes at the end.
pub(super) fn measure(
    pool: &Arc<Pool>,
    first_id: u32,
    commits: usize,
) -> Result<Measured, RbdBenchError> {
    let mut arrays = Vec::new();
    let mut made = Ok(());
    // The last array is the load's.
    let sizes = SET_SIZES.iter().chain(std::iter::once(&WRITERS));
    for (k, n) in sizes.enumerate() {
        match SetArray::new(pool, first_id.wrapping_add(k as u32), *n) {
            Ok(a) => arrays.push(a),
            Err(e) => {
                made = Err(e);
                break;
            }
        }
    }
    // samples[mode][k]: milliseconds; rates[k]: the writer's writes per second.
    let mut samples = vec![vec![Vec::new(); SET_SIZES.len()]; 2];
    let mut rates = vec![Vec::new(); SET_SIZES.len()];
    let mut taken = vec![Vec::new(); SET_SIZES.len() + 1];
    let run = made.and_then(|()| {
        for round in 0..commits {
            for (mode, loaded) in [false, true].into_iter().enumerate() {
                let mut order: Vec<usize> = (0..SET_SIZES.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for k in order {
                    let tag = format!("c{round}{}", if loaded { "w" } else { "i" });
                    let load = loaded.then(|| &arrays[SET_SIZES.len()]);
                    let (took, rate) = arrays[k].sample(&tag, load, &mut taken[k])?;
                    samples[mode][k].push(took.as_secs_f64() * 1e3);
                    rates[k].extend(rate);
                }
            }
        }
        Ok(())
    });
    for (a, taken) in arrays.into_iter().zip(&taken) {
        a.remove(taken);
    }
    run?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (mode, label) in ["idle", "under writes"].into_iter().enumerate() {
        let s = &samples[mode];
        let name = |n: usize, what: &str| {
            let luns = if n == 1 { "LUN" } else { "LUNs" };
            format!("CommitSnapshots {n} {luns}, {label}, {what}")
        };
        let (p50_1, p99_1) = (percentile(&s[0], 50.0), percentile(&s[0], 99.0));
        for (k, n) in SET_SIZES.iter().enumerate() {
            let p50 = percentile(&s[k], 50.0);
            let (base, base_name) = if k == 0 {
                (None, "-".to_string())
            } else {
                (Some(p50_1), "1 LUN, p50".to_string())
            };
            rows.push(Row::new(name(*n, "p50"), "ms", p50, base_name, base, None));
        }
        for (k, n) in SET_SIZES.iter().enumerate() {
            let p99 = percentile(&s[k], 99.0);
            let (base, base_name, goal) = match k {
                0 => (None, "-", None),
                k if k + 1 == SET_SIZES.len() => {
                    (Some(p99_1), "1 LUN, p99", Some(Goal::AtMost(3.0)))
                }
                _ => (Some(p99_1), "1 LUN, p99", None),
            };
            rows.push(Row::new(name(*n, "p99"), "ms", p99, base_name, base, goal));
        }
        let n = SET_SIZES[SET_SIZES.len() - 1];
        rows.push(Row::new(
            name(n, "p99 vs 1 s"),
            "ms",
            percentile(&s[SET_SIZES.len() - 1], 99.0),
            "the 1 s bound",
            Some(LIMIT_MS),
            Some(Goal::AtMost(1.0)),
        ));
        let spread: Vec<String> = SET_SIZES
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let min = s[k].iter().copied().fold(f64::INFINITY, f64::min);
                let max = s[k].iter().copied().fold(0.0, f64::max);
                format!("{n}: {}–{}", num(min), num(max))
            })
            .collect();
        notes.push(format!(
            "CommitSnapshots {label}, min–max ms per set size: {}",
            spread.join(", ")
        ));
    }
    let writer: Vec<String> = SET_SIZES
        .iter()
        .enumerate()
        .map(|(k, n)| format!("{n}: {:.0}", crate::target_bench::median(rates[k].clone())))
        .collect();
    notes.push(format!(
        "CommitSnapshots: Backend::snapshot_group of the rbd backend (the array's commit adds \
         one journal append), {commits} commits per set size and mode, p99 by nearest rank \
         (with fewer than 100 commits, the slowest); every set an array of its own with only \
         its {} MiB LUNs; before each commit every LUN gets one 4 KiB write (its serving \
         handle then holds the image's lock, as a written LUN's does); the snapshots stay until \
         the end, as a set's do while its backup runs (the last commit finds {} per LUN); \
         under writes: {WRITERS} threads of 4 KiB writes at \
         random places of {WRITERS} other LUNs (the set's own are held while it commits), \
         {LOAD_WRITES_PER_SEC}/s offered in all, from {} ms before the commit to its end, \
         median writes/s done per set size: {}",
        LUN_BYTES >> 20,
        2 * commits - 1,
        WRITER_LEAD.as_millis(),
        writer.join(", ")
    ));
    Ok(Measured { rows, notes })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 99.0), 20.0);
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
