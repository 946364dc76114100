//! Engine benchmarks: ratios measured in one run on this machine, each against a baseline
//! measured in the same run (`shadowlun bench engine [--json]` prints the [`Report`]).
//!
//! | Measure | Target |
//! |---|---|
//! | Snapshot of a 1 TiB thin volume vs a 1 GiB one | ≤ 1.2× time |
//! | Consistency-group snapshot of 64 volumes vs 1 | ≤ 2× time |
//! | Sequential write / read vs the raw backing file | ≥ 0.8× throughput |
//! | Random 4 KiB writes right after a snapshot vs with none | ≥ 0.5× throughput |
//! | Reads with 256 snapshots of the volume vs none | ≥ 0.9× throughput |
//! | Resync with 1% of chunks changed vs 100% | ≤ 0.05× time |
//!
//! Method: times of metadata operations are medians of many rounds; throughputs are the best
//! of several rounds (other work on the machine only ever lowers them). Random writes are timed
//! into the page cache with the following flush untimed, since with it both sides measure the
//! disk's writeback. Resync shares chunks instead of copying them, so a 1% resync costs little
//! more than its one metadata commit (one `fdatasync` of the log): on a disk where that takes
//! milliseconds, the ratio is bounded by that commit rather than by the chunks copied. Both
//! resync destinations hold data of their own, as a volume being reverted does: the 1% one
//! a clone with one chunk in a hundred rewritten, the 100% one a volume with every chunk
//! written; each chunk a resync replaces is freed and its blocks given back to the file
//! system (a hole punched), which is most of a resync's cost. A resync onto a volume never
//! written frees nothing and costs a few milliseconds whatever its size: no baseline.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};

use blockstore::{CHUNK_SIZE, Error, Pool, PoolOptions, Result};

use crate::report::{Goal, Report, Row, machine};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Where to put the scratch pool (a temporary directory inside it, removed afterwards).
    /// Default: the system temporary directory.
    pub dir: Option<PathBuf>,
    /// Tiny sizes, for a smoke test of the harness (the ratios mean little).
    pub quick: bool,
}

fn measure(name: &str, label: &str, baseline: f64, value: f64, unit: &str, goal: Goal) -> Row {
    Row::new(name, unit, value, label, Some(baseline), Some(goal))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Best throughput of several rounds: interference from other work on the machine only
/// ever lowers a round's throughput.
fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(0.0, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random()).collect()
}

/// Runs every measure and returns the report.
pub fn run(opts: &BenchOptions) -> Result<Report> {
    let start = Instant::now();
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("blockstore-bench")
        .tempdir_in(&base)
        .map_err(io_err(format!("create a directory in {}", base.display())))?;
    let pool = Pool::create(tmp.path().join("pool"), PoolOptions::default())?;
    let q = opts.quick;
    let mut measures = Vec::new();
    measures.push(snapshot_size(&pool, q)?);
    measures.push(group(&pool, q)?);
    measures.extend(sequential(&pool, tmp.path(), q)?);
    measures.push(random_after_snapshot(&pool, q)?);
    measures.push(reads_with_snapshots(&pool, q)?);
    measures.push(resync(&pool, q)?);
    drop(pool);
    Ok(Report {
        title: "Embedded engine benchmark".into(),
        machine: machine(),
        rows: measures,
        notes: vec![format!(
            "{:.1} s{}",
            start.elapsed().as_secs_f64(),
            if q {
                ", quick mode (sizes too small for the ratios to mean much)"
            } else {
                ""
            }
        )],
    })
}

/// Context for an I/O error of the benchmark's own files.
fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn write_spread(pool: &Pool, name: &str, size: u64, chunks: u64) -> Result<()> {
    let v = pool.open_volume(name)?;
    let step = size / chunks;
    let data = fill(1, CHUNK_SIZE as usize);
    for i in 0..chunks {
        v.write_at(i * step, &data, false)?;
    }
    pool.flush()
}

fn snapshot_size(pool: &Pool, q: bool) -> Result<Row> {
    pool.create_volume("snap-1g", GIB)?;
    pool.create_volume("snap-1t", 1 << 40)?;
    let chunks = if q { 16 } else { 256 };
    write_spread(pool, "snap-1g", GIB, chunks)?;
    write_spread(pool, "snap-1t", 1 << 40, chunks)?;
    let rounds = if q { 3 } else { 41 };
    let (mut small, mut big) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let mut order = [("snap-1g", &mut small), ("snap-1t", &mut big)];
        if i % 2 == 1 {
            order.reverse();
        }
        for (vol, out) in order {
            // A write between snapshots so each one freezes a fresh tree root.
            pool.open_volume(vol)?
                .write_at(0, &[i as u8; 4096], false)?;
            let snap = format!("{vol}-s{i}");
            let t = Instant::now();
            pool.snapshot_group(&[(vol, snap.as_str())])?;
            out.push(ms(t));
        }
    }
    Ok(measure(
        "snapshot: 1 TiB thin volume vs 1 GiB (time)",
        "1 GiB",
        median(small),
        median(big),
        "ms",
        Goal::AtMost(1.2),
    ))
}

fn group(pool: &Pool, q: bool) -> Result<Row> {
    let n = 64;
    let names: Vec<String> = (0..n).map(|i| format!("cg-{i}")).collect();
    for name in &names {
        pool.create_volume(name, GIB)?;
        pool.open_volume(name)?.write_at(0, &[1; 65536], false)?;
    }
    pool.flush()?;
    let rounds = if q { 3 } else { 15 };
    let (mut one, mut all) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let single = format!("cg1-{r}");
        let t = Instant::now();
        pool.snapshot_group(&[(names[0].as_str(), single.as_str())])?;
        one.push(ms(t));
        let snaps: Vec<String> = names.iter().map(|n| format!("{n}-g{r}")).collect();
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .zip(&snaps)
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let t = Instant::now();
        pool.snapshot_group(&pairs)?;
        all.push(ms(t));
    }
    Ok(measure(
        "consistency group: 64 volumes vs 1 (time)",
        "1 volume",
        median(one),
        median(all),
        "ms",
        Goal::AtMost(2.0),
    ))
}

fn sequential(pool: &Pool, dir: &std::path::Path, q: bool) -> Result<Vec<Row>> {
    let size = if q { 8 * MIB } else { 256 * MIB };
    let io = MIB as usize;
    let data = fill(2, io);
    let raw_path = dir.join("raw");
    let raw = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&raw_path)
        .map_err(io_err("create the raw file"))?;
    pool.create_volume("seq", size)?;
    let v = pool.open_volume("seq")?;
    let mut buf = vec![0u8; io];
    let rounds = if q { 1 } else { 5 };
    let (mut rw, mut vw, mut rr, mut vr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mbps = |t: f64| size as f64 / MIB as f64 / (t / 1e3);
    for _ in 0..rounds {
        // Durable writes: both end with a sync.
        let t = Instant::now();
        for off in (0..size).step_by(io) {
            raw.write_all_at(&data, off)
                .map_err(io_err("write the raw file"))?;
        }
        raw.sync_data().map_err(io_err("sync the raw file"))?;
        rw.push(mbps(ms(t)));
        let t = Instant::now();
        for off in (0..size).step_by(io) {
            v.write_at(off, &data, false)?;
        }
        v.flush()?;
        vw.push(mbps(ms(t)));
        let t = Instant::now();
        for off in (0..size).step_by(io) {
            raw.read_exact_at(&mut buf, off)
                .map_err(io_err("read the raw file"))?;
        }
        rr.push(mbps(ms(t)));
        let t = Instant::now();
        for off in (0..size).step_by(io) {
            v.read_at(off, &mut buf)?;
        }
        vr.push(mbps(ms(t)));
    }
    // Nothing is deleted before the end: freeing file space makes later syncs slower on
    // file systems that discard, which would skew the other measures.
    drop(raw);
    Ok(vec![
        measure(
            "sequential write 1 MiB + flush vs raw file",
            "raw",
            best(rw),
            best(vw),
            "MB/s",
            Goal::AtLeast(0.8),
        ),
        measure(
            "sequential read 1 MiB vs raw file",
            "raw",
            best(rr),
            best(vr),
            "MB/s",
            Goal::AtLeast(0.8),
        ),
    ])
}

/// Random 4 KiB writes per second into the page cache; the flush that follows is not timed
/// (with it both sides measure the disk's writeback, not the engine).
fn random_writes(v: &blockstore::Volume, size: u64, n: usize, seed: u64) -> Result<f64> {
    let mut r = StdRng::seed_from_u64(seed);
    let blk = [0x5Au8; 4096];
    let offs: Vec<u64> = (0..n)
        .map(|_| r.random_range(0..size / 4096) * 4096)
        .collect();
    let t = Instant::now();
    for o in offs {
        v.write_at(o, &blk, false)?;
    }
    let rate = n as f64 / (ms(t) / 1e3);
    v.flush()?;
    Ok(rate)
}

fn random_after_snapshot(pool: &Pool, q: bool) -> Result<Row> {
    let size = if q { 16 * MIB } else { 256 * MIB };
    let n = if q { 2000 } else { 20000 };
    pool.create_volume("rnd", size)?;
    let v = pool.open_volume("rnd")?;
    let data = fill(3, MIB as usize);
    for off in (0..size).step_by(MIB as usize) {
        v.write_at(off, &data, false)?;
    }
    pool.flush()?;
    random_writes(&v, size, n / 4, 9)?; // warm-up
    let (mut base, mut after) = (Vec::new(), Vec::new());
    for round in 0..if q { 1 } else { 3 } {
        base.push(random_writes(&v, size, n, 10 + round)?);
        pool.snapshot("rnd", &format!("rnd-snap{round}"))?;
        after.push(random_writes(&v, size, n, 20 + round)?);
    }
    Ok(measure(
        "random 4 KiB writes after a snapshot vs none (flush not timed)",
        "no snapshot",
        best(base),
        best(after),
        "IOPS",
        Goal::AtLeast(0.5),
    ))
}

fn random_reads(v: &blockstore::Volume, size: u64, n: usize, seed: u64) -> Result<f64> {
    let mut r = StdRng::seed_from_u64(seed);
    let mut blk = [0u8; 4096];
    let offs: Vec<u64> = (0..n)
        .map(|_| r.random_range(0..size / 4096) * 4096)
        .collect();
    let t = Instant::now();
    for o in offs {
        v.read_at(o, &mut blk)?;
    }
    Ok(n as f64 / (ms(t) / 1e3))
}

fn reads_with_snapshots(pool: &Pool, q: bool) -> Result<Row> {
    let size = if q { 8 * MIB } else { 64 * MIB };
    let n = if q { 5000 } else { 100_000 };
    pool.create_volume("rd", size)?;
    let v = pool.open_volume("rd")?;
    let data = fill(4, MIB as usize);
    for off in (0..size).step_by(MIB as usize) {
        v.write_at(off, &data, false)?;
    }
    pool.flush()?;
    random_reads(&v, size, n / 4, 1)?; // warm-up
    let base = (0..3)
        .map(|i| random_reads(&v, size, n, 20 + i))
        .collect::<Result<Vec<_>>>()?;
    let mut r = StdRng::seed_from_u64(5);
    let snaps = if q { 16 } else { 256 };
    for i in 0..snaps {
        pool.snapshot("rd", &format!("rd-{i}"))?;
        for _ in 0..4 {
            v.write_at(
                r.random_range(0..size / 4096) * 4096,
                &[i as u8; 4096],
                false,
            )?;
        }
    }
    pool.flush()?;
    let with = (0..3)
        .map(|i| random_reads(&v, size, n, 20 + i))
        .collect::<Result<Vec<_>>>()?;
    Ok(measure(
        "random 4 KiB reads with 256 snapshots vs none",
        "no snapshot",
        best(base),
        best(with),
        "IOPS",
        Goal::AtLeast(0.9),
    ))
}

/// Resync shares chunks instead of copying them, so its work is one mapping change per
/// differing chunk plus one metadata commit per batch. The volume is 16 GiB (262,144 chunks)
/// so that the per-chunk work, not the ~1 ms of the first commit, is what the ratio compares;
/// every chunk holds one 4 KiB block (the bytes in a chunk do not change the work).
fn resync(pool: &Pool, q: bool) -> Result<Row> {
    let chunks: u64 = if q { 512 } else { 262_144 };
    let size = chunks * CHUNK_SIZE;
    pool.create_volume("rs", size)?;
    let v = pool.open_volume("rs")?;
    let data = fill(6, 4096);
    for c in 0..chunks {
        v.write_at(c * CHUNK_SIZE, &data, false)?;
    }
    pool.snapshot("rs", "rs-snap")?;
    let mut r = StdRng::seed_from_u64(7);
    let (mut few, mut all) = (Vec::new(), Vec::new());
    for round in 0..if q { 1 } else { 3 } {
        // 1%: a clone of the snapshot with one chunk in a hundred rewritten.
        let one = format!("rs-1-{round}");
        pool.clone_volume("rs-snap", &one)?;
        let c = pool.open_volume(&one)?;
        for _ in 0..chunks / 100 {
            c.write_at(r.random_range(0..chunks) * CHUNK_SIZE, &[1; 4096], false)?;
        }
        // 100%: a volume where every chunk differs from the snapshot, written as the 1%
        // one was (a never-written volume would free nothing: not the case being measured).
        let hundred = format!("rs-100-{round}");
        pool.create_volume(&hundred, size)?;
        let h = pool.open_volume(&hundred)?;
        for c in 0..chunks {
            h.write_at(c * CHUNK_SIZE, &[2; 4096], false)?;
        }
        pool.flush()?;
        let t = Instant::now();
        let rep_few = pool.resync("rs-snap", &one)?.wait()?;
        few.push(ms(t));
        let t = Instant::now();
        let rep_all = pool.resync("rs-snap", &hundred)?.wait()?;
        all.push(ms(t));
        if rep_all.changed_chunks != chunks || rep_few.changed_chunks == 0 {
            return Err(Error::Invalid(format!(
                "resync benchmark changed {} and {} chunks",
                rep_few.changed_chunks, rep_all.changed_chunks
            )));
        }
    }
    let (t_few, t_all) = (median(few), median(all));
    Ok(measure(
        "resync: 1% of chunks differ vs 100% (time)",
        "100%",
        t_all,
        t_few,
        "ms",
        Goal::AtMost(0.05),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_run_produces_every_measure_as_text_and_json() {
        let r = run(&BenchOptions {
            dir: None,
            quick: true,
        })
        .unwrap();
        assert_eq!(r.rows.len(), 7);
        assert!(
            r.rows
                .iter()
                .all(|m| m.baseline.is_some_and(|b| b > 0.0) && m.value > 0.0 && m.met.is_some())
        );
        let text = r.to_string();
        assert!(text.contains("consistency group") && text.contains("goal"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 7);
        assert!(json["rows"][0]["goal"]["at_most"].is_number());
    }
}
