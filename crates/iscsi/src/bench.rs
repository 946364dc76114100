//! Target benchmark: this crate's target against `tgt` (Debian's userspace target) on the
//! same backing file, with this crate's initiator (and libiscsi's `iscsi-perf`, when
//! installed) as the load generator, plus raw reads and writes of the backing file (what the
//! file itself allows, without any target). Both targets run
//! at once; every workload runs in three turns per target, alternating, and the table shows
//! the medians, so that a slow spell of the machine falls on both. Every run is bounded by
//! time and by a maximum operation count.
//!
//! Entry point: [`run`]. Also home of [`Tgt`], a `tgtd` process started for tests and
//! benchmarks (killed with SIGKILL on drop, since tgtd ignores SIGTERM).

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::initiator::{DataDir, InitiatorConfig, InitiatorError, Session, rw16};
use crate::{AuthPolicy, TargetConfig, TargetError, TargetServer};

const BENCH_INITIATOR: &str = "iqn.2026-01.org.shadowlun:bench-initiator";
const OUR_TARGET: &str = "iqn.2026-01.org.shadowlun:bench";
const TGT_TARGET: &str = "iqn.2026-01.org.shadowlun:bench-tgt";
const BLOCK: u32 = 512;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("backing file {path}: {source}")]
    Backing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("initiator: {0}")]
    Initiator(#[from] InitiatorError),
    #[error("tgt: {0}")]
    Tgt(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Backing file; created (sparse, then filled) when missing or too small.
    pub backing: PathBuf,
    pub size_mib: u64,
    /// Length of each measured run.
    pub duration: Duration,
    /// Compare with tgt (needs `tgtd` and `tgtadm` on PATH).
    pub with_tgt: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            backing: std::env::temp_dir().join("shadowlun-iscsi-bench.img"),
            size_mib: 256,
            duration: Duration::from_secs(3),
            with_tgt: true,
        }
    }
}

/// One measured workload.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub measure: String,
    pub unit: &'static str,
    pub ours: f64,
    /// tgt for the protocol rows, the raw file access for the last rows.
    pub baseline: Option<f64>,
    pub baseline_name: String,
    pub ratio: Option<f64>,
    /// None for rows shown for context (what the file itself allows).
    pub goal: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub backing: String,
    pub size_mib: u64,
    pub seconds_per_run: f64,
    pub rows: Vec<BenchRow>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "iSCSI target benchmark on {} ({} MiB backing file, {:.1} s per run)",
            self.machine, self.size_mib, self.seconds_per_run
        )?;
        let w = self
            .rows
            .iter()
            .map(|r| r.measure.len())
            .max()
            .unwrap_or(0)
            .max("measure".len());
        writeln!(
            f,
            "{:<w$} {:>12} {:>12} {:>10} {:>7} {:>6}  unit",
            "measure", "shadowlun", "baseline", "ratio", "goal", "met"
        )?;
        for r in &self.rows {
            let opt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
            let ratio = r
                .ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into());
            let goal = r
                .goal
                .map(|g| format!("{g:.1}x"))
                .unwrap_or_else(|| "-".into());
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            writeln!(
                f,
                "{:<w$} {:>12.1} {:>12} {:>10} {:>7} {:>6}  {} (vs {})",
                r.measure,
                r.ours,
                opt(r.baseline),
                ratio,
                goal,
                met,
                r.unit,
                r.baseline_name
            )?;
        }
        Ok(())
    }
}

/// A `tgtd` process serving one file to any initiator: LUN 1 through the page cache, LUN 2
/// with direct I/O.
#[derive(Debug)]
pub struct Tgt {
    child: Child,
    control: u32,
    pub addr: SocketAddr,
    pub target: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Tgt {
    /// Starts tgtd on a free loopback port and exports `backing` as LUNs 1 (page cache) and
    /// 2 (direct I/O) of `target`.
    pub fn start(backing: &Path, target: &str, serial: &str) -> Result<Tgt, BenchError> {
        let port = free_port().map_err(|e| BenchError::Tgt(e.to_string()))?;
        let control = 1000 + std::process::id() % 20000 + u32::from(port % 1000);
        let child = Command::new("tgtd")
            .args([
                "-f",
                "-C",
                &control.to_string(),
                "--iscsi",
                &format!("portal=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Tgt(format!("cannot start tgtd: {e}")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut t = Tgt {
            child,
            control,
            addr,
            target: target.to_string(),
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::Tgt("tgtd did not start listening".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let path = backing.to_string_lossy().to_string();
        t.adm(&[
            "--op", "new", "--mode", "target", "--tid", "1", "-T", target,
        ])?;
        // LUN 1: the file through the page cache (tgt's rdwr backing store); LUN 2: the same
        // file with O_DIRECT.
        for (lun, flags) in [("1", None), ("2", Some("direct"))] {
            let mut args = vec![
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                lun,
                "-b",
                &path,
            ];
            if let Some(f) = flags {
                args.extend(["--bsoflags", f]);
            }
            t.adm(&args)?;
        }
        t.adm(&[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            &format!("vendor_id=TGTBENCH,product_id=tgt-lun,scsi_sn={serial},scsi_id=60000000000000000000000000000001"),
        ])?;
        t.adm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        Ok(t)
    }

    fn adm(&mut self, args: &[&str]) -> Result<(), BenchError> {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .map_err(|e| BenchError::Tgt(format!("tgtadm: {e}")))?;
        if !out.status.success() {
            return Err(BenchError::Tgt(format!(
                "tgtadm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM; this is the process we started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Workload shape.
#[derive(Debug, Clone, Copy)]
struct Load {
    block_bytes: u32,
    depth: usize,
    random: bool,
    write: bool,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs one workload for `dur`, or until `max_ops` operations were issued; returns (bytes
/// per second, operations per second).
fn drive(
    s: &mut Session,
    lun: u64,
    size: u64,
    load: Load,
    dur: Duration,
    max_ops: u64,
) -> Result<(f64, f64), BenchError> {
    let blocks_per_io = load.block_bytes / BLOCK;
    let slots = size / u64::from(load.block_bytes);
    let payload = vec![0x5au8; load.block_bytes as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut next_seq = 0u64;
    let mut done = 0u64;
    let mut issued = 0u64;
    let start = Instant::now();
    let mut issue = |s: &mut Session| -> Result<(), BenchError> {
        let slot = if load.random {
            rng.next() % slots
        } else {
            let v = next_seq % slots;
            next_seq += 1;
            v
        };
        let lba = slot * u64::from(blocks_per_io);
        if load.write {
            s.submit(
                lun,
                &rw16(0x8a, lba, blocks_per_io, false),
                DataDir::Write(payload.clone()),
            )?;
        } else {
            s.submit(
                lun,
                &rw16(0x88, lba, blocks_per_io, false),
                DataDir::Read(load.block_bytes),
            )?;
        }
        Ok(())
    };
    while issued < max_ops.min(load.depth as u64) {
        issue(s)?;
        issued += 1;
    }
    while s.in_flight() > 0 {
        let (_, r) = s.wait_any()?;
        let r = r?;
        if r.status != 0 {
            return Err(BenchError::Initiator(InitiatorError::Status(r.status)));
        }
        done += 1;
        if start.elapsed() < dur && issued < max_ops {
            issue(s)?;
            issued += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((
        done as f64 * f64::from(load.block_bytes) / secs,
        done as f64 / secs,
    ))
}

/// Maps an I/O error on the backing file at `path`.
fn backing_err(path: &Path) -> impl Fn(std::io::Error) -> BenchError + Copy + '_ {
    move |source| BenchError::Backing {
        path: path.to_path_buf(),
        source,
    }
}

/// Bound of any timed run, whatever the machine's speed.
const MAX_OPS: u64 = 50_000_000;

/// Drops the backing file's pages from the page cache (it must be clean: synced).
fn drop_cache(path: &Path) -> Result<(), BenchError> {
    std::fs::File::open(path)
        .and_then(|f| {
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).map_err(Into::into)
        })
        .map_err(backing_err(path))
}

/// Sequential passes over the whole LUN at [`SEQ_READ`], each from a cold page cache, for
/// `dur` (at least one pass); returns bytes per second of the passes' reading time.
fn drive_cold(
    s: &mut Session,
    lun: u64,
    size: u64,
    backing: &Path,
    dur: Duration,
) -> Result<f64, BenchError> {
    let start = Instant::now();
    let (mut bytes, mut secs) = (0.0, 0.0);
    let pass_ops = size / u64::from(SEQ_READ.block_bytes);
    while secs == 0.0 || start.elapsed() < dur {
        drop_cache(backing)?;
        let t = Instant::now();
        drive(s, lun, size, SEQ_READ, Duration::MAX, pass_ops)?;
        secs += t.elapsed().as_secs_f64();
        bytes += (pass_ops * u64::from(SEQ_READ.block_bytes)) as f64;
    }
    Ok(bytes / secs)
}

/// As [`drive_cold`] for the raw file: sequential 64 KiB `pread`s from one thread, each
/// pass from a cold page cache (the kernel's readahead is what makes them fast).
fn raw_cold_read(path: &Path, size: u64, dur: Duration) -> Result<f64, BenchError> {
    let err = backing_err(path);
    let f = std::fs::File::open(path).map_err(err)?;
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let (mut bytes, mut secs) = (0u64, 0.0);
    while secs == 0.0 || start.elapsed() < dur {
        drop_cache(path)?;
        let t = Instant::now();
        let mut off = 0;
        while off + buf.len() as u64 <= size {
            f.read_exact_at(&mut buf, off).map_err(err)?;
            off += buf.len() as u64;
        }
        bytes += off;
        secs += t.elapsed().as_secs_f64();
    }
    Ok(bytes as f64 / secs)
}

fn prepare_backing(path: &Path, size: u64) -> Result<(), BenchError> {
    let err = backing_err(path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    if f.metadata().map_err(err)?.len() < size {
        f.set_len(size).map_err(err)?;
        // Fill it so reads hit real pages, not holes.
        let chunk = vec![0xa5u8; 1 << 20];
        let mut off = 0;
        while off < size {
            f.write_all_at(&chunk, off).map_err(err)?;
            off += chunk.len() as u64;
        }
        f.sync_all().map_err(err)?;
    }
    Ok(())
}

/// Sequential 64 KiB reads of the backing file with pread, for `dur` (page cache warm).
fn raw_read(path: &Path, size: u64, dur: Duration) -> Result<f64, BenchError> {
    let err = backing_err(path);
    let f = std::fs::File::open(path).map_err(err)?;
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut off = 0u64;
    while start.elapsed() < dur {
        f.read_exact_at(&mut buf, off).map_err(err)?;
        bytes += buf.len() as u64;
        off = (off + buf.len() as u64) % size;
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// Sequential reads of `chunk` bytes of the backing file with `O_DIRECT` from `depth`
/// threads, for `dur`, in bytes per second: what the storage under the file delivers,
/// without the page cache, to requests of that size and number.
fn raw_direct_read(
    path: &Path,
    size: u64,
    chunk: usize,
    depth: usize,
    dur: Duration,
) -> Result<f64, BenchError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let err = backing_err(path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .map_err(err)?;
    let next = AtomicU64::new(0);
    let slots = (size / chunk as u64).max(1);
    let start = Instant::now();
    let bytes = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..depth)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<u64> {
                    let mut v = vec![0u8; chunk + 4096];
                    let pad = v.as_ptr().align_offset(4096);
                    let buf = &mut v[pad..pad + chunk];
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        let slot = next.fetch_add(1, Ordering::Relaxed) % slots;
                        f.read_exact_at(buf, slot * chunk as u64)?;
                        n += chunk as u64;
                    }
                    Ok(n)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("reader thread"))
            .sum::<std::io::Result<u64>>()
    })
    .map_err(err)?;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// Random 4 KiB `pwrite`s of the backing file from one thread for `dur`, in operations per
/// second: what the file system itself allows (ext4 serializes buffered writes to one file).
fn raw_random_write(path: &Path, size: u64, dur: Duration) -> Result<f64, BenchError> {
    let err = backing_err(path);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    let buf = vec![0x5au8; 4096];
    let slots = size / 4096;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < dur {
        f.write_all_at(&buf, rng.next() % slots * 4096)
            .map_err(err)?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}, loopback TCP")
}

const LOADS: [(&str, Load, &str, f64); 4] = [
    (
        "seq read 64 KiB QD8 (own initiator)",
        Load {
            block_bytes: 65536,
            depth: 8,
            random: false,
            write: false,
        },
        "MB/s",
        1.5,
    ),
    (
        "seq write 64 KiB QD8 (own initiator)",
        Load {
            block_bytes: 65536,
            depth: 8,
            random: false,
            write: true,
        },
        "MB/s",
        1.5,
    ),
    (
        "random read 4 KiB QD32 (own initiator)",
        Load {
            block_bytes: 4096,
            depth: 32,
            random: true,
            write: false,
        },
        "IOPS",
        1.5,
    ),
    (
        "random write 4 KiB QD32 (own initiator)",
        Load {
            block_bytes: 4096,
            depth: 32,
            random: true,
            write: true,
        },
        "IOPS",
        1.5,
    ),
];

/// One target under test: where it listens and which LUN serves the backing file.
struct Side {
    addr: SocketAddr,
    target: String,
    lun: u64,
    /// A LUN serving the same file with direct I/O (`O_DIRECT`), if this side has one.
    direct_lun: Option<u64>,
}

/// Repetitions of every workload; the sides take turns within each, so that a slow spell
/// of the machine falls on both rather than on one.
const REPS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// What the backing file allows without any target, measured in the same turns as the
/// workload it is compared with (medians).
struct RawFile {
    /// Sequential 64 KiB `pread`s, MB/s.
    read: f64,
    /// Random 4 KiB `pwrite`s from one thread, IOPS.
    random_write: f64,
    /// Sequential 64 KiB `O_DIRECT` reads at the workload's queue depth, MB/s.
    direct_read: f64,
    /// Sequential `O_DIRECT` reads of the size and number a direct LUN reads ahead with
    /// ([`scsi::READAHEAD_REQUEST`]), MB/s.
    direct_ahead_read: f64,
    /// Sequential 64 KiB `pread`s from one thread, cold page cache, MB/s.
    cold_read: f64,
}

/// The workload of the comparisons with reads of the file from storage, direct I/O and
/// cold page cache: the first of [`LOADS`], sequential 64 KiB reads at QD8.
const SEQ_READ: Load = LOADS[0].1;

/// Medians of the direct I/O workload on a side's direct LUN: own initiator, then
/// `iscsi-perf` when installed.
#[derive(Debug, Default, Clone, Copy)]
struct DirectResults {
    own: f64,
    perf: Option<f64>,
}

/// What [`run_sides`] measured.
struct Measured {
    /// Per side, the median of each workload of [`LOADS`] then [`PERF_LOADS`].
    per_side: Vec<Vec<f64>>,
    raw: RawFile,
    /// Per side, its direct LUN's results.
    direct: Vec<Option<DirectResults>>,
    /// Per side, sequential reads of its page cache LUN from a cold cache, MB/s.
    cold: Vec<f64>,
}

/// Runs every workload on every side, in turns of `dur / REPS`; returns per side the
/// median of each workload, the raw file figures (the sequential read measured in the
/// same turns as the sequential reads, the random write in those of the random writes,
/// the direct read in those of the direct LUNs) and per side its direct LUN's results.
fn run_sides(
    sides: &[Side],
    backing: &Path,
    size: u64,
    dur: Duration,
) -> Result<Measured, BenchError> {
    let turn = dur / REPS as u32;
    let mut cfg = InitiatorConfig::new(BENCH_INITIATOR);
    cfg.max_recv_data_segment = 262_144;
    let mut sessions = Vec::new();
    for side in sides {
        let mut s = Session::login(side.addr, &side.target, &cfg)?;
        // Clear any unit attention before measuring.
        s.test_unit_ready(side.lun)?;
        if let Some(lun) = side.direct_lun {
            s.test_unit_ready(lun)?;
        }
        sessions.push(s);
    }
    let mut out = vec![Vec::new(); sides.len()];
    let mut raw = Vec::new();
    let mut raw_writes = Vec::new();
    for (k, (_, load, unit, _)) in LOADS.iter().enumerate() {
        let mut samples = vec![Vec::new(); sides.len()];
        for _ in 0..REPS {
            for (i, side) in sides.iter().enumerate() {
                let (bps, iops) = drive(&mut sessions[i], side.lun, size, *load, turn, MAX_OPS)?;
                samples[i].push(if *unit == "MB/s" { bps / 1e6 } else { iops });
            }
            if k == 0 {
                raw.push(raw_read(backing, size, turn)? / 1e6);
            }
            if load.random && load.write {
                raw_writes.push(raw_random_write(backing, size, turn)?);
            }
        }
        for (i, v) in samples.into_iter().enumerate() {
            out[i].push(median(v));
        }
    }
    // Direct I/O: each side's direct LUN and O_DIRECT reads of the file, in turns. The
    // writes above may have left dirty pages that direct reads would wait for.
    std::fs::File::open(backing)
        .and_then(|f| f.sync_all())
        .map_err(backing_err(backing))?;
    let mut direct = vec![None; sides.len()];
    let mut own = vec![Vec::new(); sides.len()];
    let mut perf = vec![Vec::new(); sides.len()];
    let mut raw_direct = Vec::new();
    let mut raw_ahead = Vec::new();
    if sides.iter().any(|s| s.direct_lun.is_some()) {
        for _ in 0..REPS {
            for (i, side) in sides.iter().enumerate() {
                let Some(lun) = side.direct_lun else { continue };
                own[i].push(drive(&mut sessions[i], lun, size, SEQ_READ, turn, MAX_OPS)?.0 / 1e6);
                if perf_available() {
                    let url = format!("iscsi://{}/{}/{}", side.addr, side.target, lun);
                    perf[i].push(iscsi_perf(&url, 128, 8, false, turn)?);
                }
            }
            let block = SEQ_READ.block_bytes as usize;
            raw_direct.push(raw_direct_read(backing, size, block, SEQ_READ.depth, turn)? / 1e6);
            let (chunk, depth) = scsi::READAHEAD_REQUEST;
            raw_ahead.push(raw_direct_read(backing, size, chunk, depth, turn)? / 1e6);
        }
    }
    for (i, side) in sides.iter().enumerate() {
        if side.direct_lun.is_some() {
            direct[i] = Some(DirectResults {
                own: median(std::mem::take(&mut own[i])),
                perf: (!perf[i].is_empty()).then(|| median(std::mem::take(&mut perf[i]))),
            });
        }
    }
    // Cold page cache: whole passes over each side's page cache LUN, every pass after the
    // file's pages were dropped, and the same passes of plain `pread`s, in turns. The
    // file is clean (synced above), so its pages can be dropped.
    let mut cold = vec![Vec::new(); sides.len()];
    let mut raw_cold = Vec::new();
    for _ in 0..REPS {
        for (i, side) in sides.iter().enumerate() {
            cold[i].push(drive_cold(&mut sessions[i], side.lun, size, backing, turn)? / 1e6);
        }
        raw_cold.push(raw_cold_read(backing, size, turn)? / 1e6);
    }
    let cold: Vec<f64> = cold.into_iter().map(median).collect();
    // Warm again for the rest.
    raw_read(backing, size, Duration::from_millis(300))?;
    for mut s in sessions {
        let _ = s.logout();
    }
    if perf_available() {
        for (_, blocks, depth, random) in PERF_LOADS {
            let mut samples = vec![Vec::new(); sides.len()];
            for _ in 0..REPS {
                for (i, side) in sides.iter().enumerate() {
                    let url = format!("iscsi://{}/{}/{}", side.addr, side.target, side.lun);
                    samples[i].push(iscsi_perf(&url, blocks, depth, random, turn)?);
                }
            }
            for (i, v) in samples.into_iter().enumerate() {
                out[i].push(median(v));
            }
        }
    }
    Ok(Measured {
        per_side: out,
        raw: RawFile {
            read: median(raw),
            random_write: median(raw_writes),
            direct_read: median(raw_direct),
            direct_ahead_read: median(raw_ahead),
            cold_read: median(raw_cold),
        },
        direct,
        cold,
    })
}

/// Read workloads run with libiscsi's `iscsi-perf` (a neutral load generator): name,
/// 512-byte blocks per read, queue depth, random.
const PERF_LOADS: [(&str, u32, u32, bool); 2] = [
    ("seq read 64 KiB QD8 (iscsi-perf)", 128, 8, false),
    ("random read 4 KiB QD32 (iscsi-perf)", 8, 32, true),
];

fn perf_available() -> bool {
    Command::new("iscsi-perf")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs iscsi-perf for `dur` and returns its average (MB/s for 64 KiB reads, IOPS otherwise).
fn iscsi_perf(
    url: &str,
    blocks: u32,
    depth: u32,
    random: bool,
    dur: Duration,
) -> Result<f64, BenchError> {
    let secs = dur.as_secs().max(1).to_string();
    let mut cmd = Command::new("timeout");
    cmd.args([
        "--foreground",
        &(dur.as_secs() + 10).to_string(),
        "iscsi-perf",
        "-i",
        BENCH_INITIATOR,
    ]);
    cmd.args([
        "-m",
        &depth.to_string(),
        "-b",
        &blocks.to_string(),
        "-t",
        &secs,
    ]);
    if random {
        cmd.arg("-r");
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| BenchError::Tgt(format!("iscsi-perf: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    // "iops average 17289 (1080 MB/s)"
    let line = text
        .lines()
        .rfind(|l| l.contains("iops average"))
        .ok_or_else(|| BenchError::Tgt(format!("iscsi-perf gave no result for {url}")))?;
    let after = line.split("iops average").nth(1).unwrap_or("").trim();
    let iops: f64 = after
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let mbs: f64 = after
        .split('(')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(if blocks >= 128 { mbs } else { iops })
}

/// Runs the benchmark: our target and (optionally) tgt serve the same file; the same
/// initiator drives both with the same workloads.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let size = opts.size_mib * 1024 * 1024;
    prepare_backing(&opts.backing, size)?;
    // Warm the page cache once so both targets see the same state.
    let _ = raw_read(&opts.backing, size, Duration::from_millis(300))?;

    let ours = {
        let dev = scsi::FileDevice::open(&opts.backing, BLOCK, false)
            .map_err(backing_err(&opts.backing))?;
        let target = Arc::new(scsi::Target::new(OUR_TARGET));
        let identity = scsi::LuIdentity {
            vendor: "SHADOWLN".into(),
            product: "bench".into(),
            revision: "0001".into(),
            serial: "BENCH0001".into(),
            designators: vec![vss::scsi::Designator::naa_locally_assigned(0xbe0c)],
        };
        let direct = scsi::FileDevice::open_direct(&opts.backing, BLOCK, false)
            .map_err(backing_err(&opts.backing))?;
        let direct_identity = scsi::LuIdentity {
            product: "bench-direct".into(),
            serial: "BENCH0002".into(),
            designators: vec![vss::scsi::Designator::naa_locally_assigned(0xbe0d)],
            ..identity.clone()
        };
        target.map(
            BENCH_INITIATOR,
            0,
            Arc::new(scsi::LogicalUnit::new(Arc::new(dev), identity)),
        );
        target.map(
            BENCH_INITIATOR,
            1,
            Arc::new(scsi::LogicalUnit::new(Arc::new(direct), direct_identity)),
        );
        let server = TargetServer::spawn(TargetConfig {
            portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..TargetConfig::default()
        })?;
        server.add_target(OUR_TARGET, None, target, AuthPolicy::None)?;
        server
    };
    let tgt = if opts.with_tgt {
        Some(Tgt::start(&opts.backing, TGT_TARGET, "TGTBENCH1")?)
    } else {
        None
    };
    let mut sides = vec![Side {
        addr: ours.local_addrs()[0],
        target: OUR_TARGET.into(),
        lun: 0,
        direct_lun: Some(1),
    }];
    if let Some(t) = &tgt {
        sides.push(Side {
            addr: t.addr,
            target: t.target.clone(),
            lun: 1,
            direct_lun: Some(2),
        });
    }
    let measured = run_sides(&sides, &opts.backing, size, opts.duration);
    ours.shutdown();
    drop(tgt);
    let Measured {
        per_side,
        raw,
        direct,
        cold,
    } = measured?;
    let ours = per_side[0].clone();
    let tgt = per_side.get(1).cloned();
    let mut rows = Vec::new();
    let names = LOADS
        .iter()
        .map(|(n, _, u, g)| (*n, *u, *g))
        .chain(
            PERF_LOADS
                .iter()
                .map(|(n, b, _, _)| (*n, if *b >= 128 { "MB/s" } else { "IOPS" }, 1.5)),
        )
        .take(ours.len());
    for (i, (name, unit, goal)) in names.enumerate() {
        let base = tgt.as_ref().and_then(|t| t.get(i).copied());
        let ratio = base.map(|b| ours[i] / b);
        rows.push(BenchRow {
            measure: name.to_string(),
            unit,
            ours: ours[i],
            baseline: base,
            baseline_name: "tgt".into(),
            ratio,
            goal: Some(goal),
            met: ratio.map(|r| r >= goal),
        });
    }
    // Against the storage under the file: the direct LUN and O_DIRECT reads of the file at
    // the same block size and queue depth; tgt's direct LUN for context.
    if let Some(d) = direct.first().copied().flatten() {
        let tgt_direct = direct.get(1).copied().flatten();
        let ratio = d.own / raw.direct_read;
        rows.push(BenchRow {
            measure: "seq read 64 KiB QD8 (own) vs raw file, direct I/O".into(),
            unit: "MB/s",
            ours: d.own,
            baseline: Some(raw.direct_read),
            baseline_name: "raw O_DIRECT pread 64 KiB, 8 threads".into(),
            ratio: Some(ratio),
            goal: Some(0.7),
            met: Some(ratio >= 0.7),
        });
        if let Some(perf) = d.perf {
            rows.push(BenchRow {
                measure: "seq read 64 KiB QD8 (iscsi-perf) vs raw file, direct I/O".into(),
                unit: "MB/s",
                ours: perf,
                baseline: Some(raw.direct_read),
                baseline_name: "raw O_DIRECT pread 64 KiB, 8 threads".into(),
                ratio: Some(perf / raw.direct_read),
                goal: None,
                met: None,
            });
        }
        // The direct LUN reads ahead: what the storage gives requests of that size.
        let (chunk, depth) = scsi::READAHEAD_REQUEST;
        rows.push(BenchRow {
            measure: "seq read 64 KiB QD8 (own) vs raw file, direct I/O, readahead size".into(),
            unit: "MB/s",
            ours: d.own,
            baseline: Some(raw.direct_ahead_read),
            baseline_name: format!("raw O_DIRECT pread {} KiB, {depth} threads", chunk / 1024),
            ratio: Some(d.own / raw.direct_ahead_read),
            goal: None,
            met: None,
        });
        if let Some(t) = tgt_direct {
            rows.push(BenchRow {
                measure: "seq read 64 KiB QD8 direct I/O (own initiator)".into(),
                unit: "MB/s",
                ours: d.own,
                baseline: Some(t.own),
                baseline_name: "tgt, O_DIRECT".into(),
                ratio: Some(d.own / t.own),
                goal: None,
                met: None,
            });
            if let (Some(p), Some(tp)) = (d.perf, t.perf) {
                rows.push(BenchRow {
                    measure: "seq read 64 KiB QD8 direct I/O (iscsi-perf)".into(),
                    unit: "MB/s",
                    ours: p,
                    baseline: Some(tp),
                    baseline_name: "tgt, O_DIRECT".into(),
                    ratio: Some(p / tp),
                    goal: None,
                    met: None,
                });
            }
        }
    }
    // Reads that wait for the storage under the page cache, against plain reads of the
    // file from a cold cache; tgt for context.
    let ratio = cold[0] / raw.cold_read;
    rows.push(BenchRow {
        measure: "seq read 64 KiB QD8 (own) vs raw file, cold page cache".into(),
        unit: "MB/s",
        ours: cold[0],
        baseline: Some(raw.cold_read),
        baseline_name: "raw pread 64 KiB, one thread, cold page cache".into(),
        ratio: Some(ratio),
        goal: Some(0.7),
        met: Some(ratio >= 0.7),
    });
    if let Some(&t) = cold.get(1) {
        rows.push(BenchRow {
            measure: "seq read 64 KiB QD8 cold page cache (own initiator)".into(),
            unit: "MB/s",
            ours: cold[0],
            baseline: Some(t),
            baseline_name: "tgt, cold page cache".into(),
            ratio: Some(cold[0] / t),
            goal: None,
            met: None,
        });
    }
    // Reads served from the page cache against a copy out of it (loopback TCP alone, with
    // no protocol, reaches about half of that on small machines: scripts/loopback-ceiling).
    let ratio = ours[0] / raw.read;
    rows.push(BenchRow {
        measure: "seq read 64 KiB QD8 (own) vs raw file, page cache".into(),
        unit: "MB/s",
        ours: ours[0],
        baseline: Some(raw.read),
        baseline_name: "raw pread 64 KiB".into(),
        ratio: Some(ratio),
        goal: Some(0.7),
        met: Some(ratio >= 0.7),
    });
    // For context: the same reads driven by iscsi-perf, and the random writes against what
    // one thread writing the file directly reaches.
    if let Some(&perf_seq) = ours.get(LOADS.len()) {
        rows.push(BenchRow {
            measure: "seq read 64 KiB QD8 (iscsi-perf) vs raw file, page cache".into(),
            unit: "MB/s",
            ours: perf_seq,
            baseline: Some(raw.read),
            baseline_name: "raw pread 64 KiB".into(),
            ratio: Some(perf_seq / raw.read),
            goal: None,
            met: None,
        });
    }
    if let Some(w) = LOADS.iter().position(|(_, l, _, _)| l.random && l.write) {
        rows.push(BenchRow {
            measure: "random write 4 KiB QD32 (own) vs raw file".into(),
            unit: "IOPS",
            ours: ours[w],
            baseline: Some(raw.random_write),
            baseline_name: "raw pwrite 4 KiB, one thread".into(),
            ratio: Some(ours[w] / raw.random_write),
            goal: None,
            met: None,
        });
    }
    Ok(BenchReport {
        machine: machine(),
        backing: opts.backing.display().to_string(),
        size_mib: opts.size_mib,
        seconds_per_run: opts.duration.as_secs_f64(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(measure: &str, ours: f64) -> BenchRow {
        BenchRow {
            measure: measure.into(),
            unit: "MB/s",
            ours,
            baseline: Some(ours / 2.0),
            baseline_name: "tgt".into(),
            ratio: Some(2.0),
            goal: Some(1.5),
            met: Some(true),
        }
    }

    #[test]
    fn the_table_keeps_its_columns_whatever_the_measure_names() {
        let report = BenchReport {
            machine: "test".into(),
            backing: "/dev/null".into(),
            size_mib: 1,
            seconds_per_run: 1.0,
            rows: vec![
                row("short", 10.0),
                row(
                    "a measure whose name is longer than the usual column width",
                    2000.0,
                ),
            ],
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 3);
        // Every line's "ratio" column ends at the same position.
        let ends: Vec<usize> = lines
            .iter()
            .map(|l| {
                let at = l.find(if l.starts_with("measure") {
                    "ratio"
                } else {
                    "2.00x"
                });
                at.unwrap() + 5
            })
            .collect();
        assert!(ends.iter().all(|&e| e == ends[0]), "{text}");
    }
}
