//! Target benchmark: shadowlun's iSCSI target against `tgt` (Debian's userspace target) on the
//! same backing file, with shadowlun's initiator (and libiscsi's `iscsi-perf`, when
//! installed) as the load generator, plus raw reads and writes of the backing file (what the
//! file itself allows, without any target). Both targets run
//! at once; every workload runs in three turns per target, alternating, and the table shows
//! the medians, so that a slow spell of the machine falls on both. Every run is bounded by
//! time and by a maximum operation count.
//!
//! Entry point: [`run`]; `shadowlun bench target` prints its report.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{Goal, Report, Row, machine};
use crate::tgt::{Tgt, TgtError};

use iscsi::initiator::{DataDir, InitiatorConfig, InitiatorError, Session, rw16};
use iscsi::{AuthPolicy, TargetConfig, TargetError, TargetServer};

pub(crate) const BENCH_INITIATOR: &str = "iqn.2026-01.org.shadowlun:bench-initiator";
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
    #[error(transparent)]
    Tgt(#[from] TgtError),
    #[error("{0}")]
    Perf(String),
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
    /// Count every read and write of shadowlun's LUNs the way the array daemon does for its
    /// Prometheus endpoint (`array::metrics::MeteredDevice`).
    pub metered: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            backing: std::env::temp_dir().join("shadowlun-iscsi-bench.img"),
            size_mib: 256,
            duration: Duration::from_secs(3),
            with_tgt: true,
            metered: false,
        }
    }
}

/// Workload shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) block_bytes: u32,
    pub(crate) depth: usize,
    pub(crate) random: bool,
    pub(crate) write: bool,
}

pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs one workload for `dur`, or until `max_ops` operations were issued; returns (bytes
/// per second, operations per second).
pub(crate) fn drive(
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
pub(crate) const MAX_OPS: u64 = 50_000_000;

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

pub(crate) const LOADS: [(&str, Load, &str, f64); 4] = [
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

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

pub(crate) fn perf_available() -> bool {
    Command::new("iscsi-perf")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs iscsi-perf for `dur` and returns its average (MB/s for 64 KiB reads, IOPS otherwise).
pub(crate) fn iscsi_perf(
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
        .map_err(|e| BenchError::Perf(format!("iscsi-perf: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    // "iops average 17289 (1080 MB/s)"
    let line = text
        .lines()
        .rfind(|l| l.contains("iops average"))
        .ok_or_else(|| BenchError::Perf(format!("iscsi-perf gave no result for {url}")))?;
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
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
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
            designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xbe0c)],
        };
        let direct = scsi::FileDevice::open_direct(&opts.backing, BLOCK, false)
            .map_err(backing_err(&opts.backing))?;
        let direct_identity = scsi::LuIdentity {
            product: "bench-direct".into(),
            serial: "BENCH0002".into(),
            designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xbe0d)],
            ..identity.clone()
        };
        let io = array::metrics::IoStats::default();
        let meter = |dev: scsi::Device, lun: &str| -> scsi::Device {
            if opts.metered {
                Arc::new(array::metrics::MeteredDevice::new(dev, io.lun(lun)))
            } else {
                dev
            }
        };
        target.map(
            BENCH_INITIATOR,
            0,
            Arc::new(scsi::LogicalUnit::new(
                meter(Arc::new(dev), "lun-1"),
                identity,
            )),
        );
        target.map(
            BENCH_INITIATOR,
            1,
            Arc::new(scsi::LogicalUnit::new(
                meter(Arc::new(direct), "lun-2"),
                direct_identity,
            )),
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
        rows.push(Row::new(
            name.to_string(),
            unit,
            ours[i],
            "tgt",
            base,
            Some(Goal::AtLeast(goal)),
        ));
    }
    // Against the storage under the file: the direct LUN and O_DIRECT reads of the file at
    // the same block size and queue depth; tgt's direct LUN for context.
    if let Some(d) = direct.first().copied().flatten() {
        let tgt_direct = direct.get(1).copied().flatten();
        rows.push(Row::new(
            "seq read 64 KiB QD8 (own) vs raw file, direct I/O",
            "MB/s",
            d.own,
            "raw O_DIRECT pread 64 KiB, 8 threads",
            Some(raw.direct_read),
            Some(Goal::AtLeast(0.7)),
        ));
        if let Some(perf) = d.perf {
            rows.push(Row::new(
                "seq read 64 KiB QD8 (iscsi-perf) vs raw file, direct I/O",
                "MB/s",
                perf,
                "raw O_DIRECT pread 64 KiB, 8 threads",
                Some(raw.direct_read),
                None,
            ));
        }
        // The direct LUN reads ahead: what the storage gives requests of that size.
        let (chunk, depth) = scsi::READAHEAD_REQUEST;
        rows.push(Row::new(
            "seq read 64 KiB QD8 (own) vs raw file, direct I/O, readahead size",
            "MB/s",
            d.own,
            format!("raw O_DIRECT pread {} KiB, {depth} threads", chunk / 1024),
            Some(raw.direct_ahead_read),
            None,
        ));
        if let Some(t) = tgt_direct {
            rows.push(Row::new(
                "seq read 64 KiB QD8 direct I/O (own initiator)",
                "MB/s",
                d.own,
                "tgt, O_DIRECT",
                Some(t.own),
                None,
            ));
            if let (Some(p), Some(tp)) = (d.perf, t.perf) {
                rows.push(Row::new(
                    "seq read 64 KiB QD8 direct I/O (iscsi-perf)",
                    "MB/s",
                    p,
                    "tgt, O_DIRECT",
                    Some(tp),
                    None,
                ));
            }
        }
    }
    // Reads that wait for the storage under the page cache, against plain reads of the
    // file from a cold cache; tgt for context.
    rows.push(Row::new(
        "seq read 64 KiB QD8 (own) vs raw file, cold page cache",
        "MB/s",
        cold[0],
        "raw pread 64 KiB, one thread, cold page cache",
        Some(raw.cold_read),
        Some(Goal::AtLeast(0.7)),
    ));
    if let Some(&t) = cold.get(1) {
        rows.push(Row::new(
            "seq read 64 KiB QD8 cold page cache (own initiator)",
            "MB/s",
            cold[0],
            "tgt, cold page cache",
            Some(t),
            None,
        ));
    }
    // Reads served from the page cache against a copy out of it (loopback TCP alone, with
    // no protocol, reaches about half of that on small machines: scripts/loopback-ceiling).
    rows.push(Row::new(
        "seq read 64 KiB QD8 (own) vs raw file, page cache",
        "MB/s",
        ours[0],
        "raw pread 64 KiB",
        Some(raw.read),
        Some(Goal::AtLeast(0.7)),
    ));
    // For context: the same reads driven by iscsi-perf, and the random writes against what
    // one thread writing the file directly reaches.
    if let Some(&perf_seq) = ours.get(LOADS.len()) {
        rows.push(Row::new(
            "seq read 64 KiB QD8 (iscsi-perf) vs raw file, page cache",
            "MB/s",
            perf_seq,
            "raw pread 64 KiB",
            Some(raw.read),
            None,
        ));
    }
    if let Some(w) = LOADS.iter().position(|(_, l, _, _)| l.random && l.write) {
        rows.push(Row::new(
            "random write 4 KiB QD32 (own) vs raw file",
            "IOPS",
            ours[w],
            "raw pwrite 4 KiB, one thread",
            Some(raw.random_write),
            None,
        ));
    }
    Ok(Report {
        title: "iSCSI target benchmark".into(),
        machine: machine(),
        rows,
        notes: vec![format!(
            "{} MiB backing file {}, {:.1} s per run",
            opts.size_mib,
            opts.backing.display(),
            opts.duration.as_secs_f64()
        )],
    })
}
