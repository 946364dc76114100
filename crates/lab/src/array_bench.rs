//! Array benchmark (`shadowlun bench array`): what a host gets from a LUN of the array daemon
//! with its default backend, the embedded engine, served by the daemon's own iSCSI target.
//!
//! The LUN is written full through the target first. Then every workload (sequential 64 KiB
//! reads and writes at QD8, random 4 KiB reads and writes at QD32) runs on three contenders
//! in turns, so that a slow spell of the machine falls on all of them:
//!
//! - the engine LUN of the daemon ([`crate::real_lab::RealLab`]);
//! - a file LUN on shadowlun's own target (`scsi::FileDevice`, as in
//!   [`crate::target_bench`]): the same target without the engine, the ceiling of what the
//!   engine can reach;
//! - tgt serving a file that holds the same data ([`crate::tgt::Tgt`]).
//!
//! Three phases: the LUN with no snapshot; right after a snapshot (a fresh one taken before
//! every run of the engine LUN, the previous one deleted); with `snapshots` snapshots of the
//! LUN. Each row is the median of `runs` runs with its lowest and highest. Beside the
//! throughput, the CPU time the target spent per GiB moved (sequential) or per million I/Os
//! (random), against tgt's: tgtd's from `/proc/PID/stat`; the daemon and the file target run
//! in this process, so theirs is the process's (`/proc/self/stat`) less the initiator's, the
//! one thread that drives the load (`/proc/thread-self/stat`).
//!
//! Entry point: [`run`].

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::initiator::{DataDir, InitiatorConfig, InitiatorError, Session, rw16};
use iscsi::{AuthPolicy, TargetConfig, TargetError, TargetServer};
use provider::{HardwareProvider, ShadowlunProvider};
use vss::{BusType, LunInfo, SnapshotContext, VssId};

use crate::real_lab::RealLab;
use crate::report::{Goal, Report, Row, machine};
use crate::tgt::{Tgt, TgtError};

const INITIATOR: &str = "iqn.2026-01.org.shadowlun:array-bench";
const FILE_TARGET: &str = "iqn.2026-01.org.shadowlun:array-bench-file";
const TGT_TARGET: &str = "iqn.2026-01.org.shadowlun:array-bench-tgt";
const BLOCK: u32 = 512;
/// The engine's chunk: the unit a write after a snapshot copies or replaces.
const CHUNK: u64 = blockstore::CHUNK_SIZE;
/// What the LUN and the file hold before the workloads (what writes write is [`PAYLOAD`]).
const FILL: u8 = 0xa5;
const PAYLOAD: u8 = 0x5a;
/// Bound of any timed run, whatever the machine's speed.
const MAX_OPS: u64 = 50_000_000;
const GIB: f64 = (1u64 << 30) as f64;
/// Clock ticks per second of the CPU times in `/proc/*/stat` (Linux's `USER_HZ`, which the
/// kernel keeps at 100 for that interface whatever its own tick rate).
const USER_HZ: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the array: {0}")]
    Array(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("initiator: {0}")]
    Initiator(#[from] InitiatorError),
    #[error(transparent)]
    Tgt(#[from] TgtError),
    #[error("CPU time: {0}")]
    Cpu(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the daemon's pool and the file go (a directory made inside, removed afterwards).
    pub dir: PathBuf,
    /// Size of the LUN and of the file, MiB.
    pub size_mib: u64,
    /// Length of each run.
    pub duration: Duration,
    /// Runs per contender of each workload in each phase (at least 1; 5 by default).
    pub runs: usize,
    /// Snapshots of the LUN in the last phase.
    pub snapshots: usize,
    /// Compare with tgt (needs `tgtd` and `tgtadm` on PATH).
    pub with_tgt: bool,
    /// Only the workloads whose name contains this ("random read"), e.g. to profile one.
    pub only: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            dir: std::env::temp_dir(),
            size_mib: 256,
            duration: Duration::from_secs(1),
            runs: 5,
            snapshots: 64,
            with_tgt: true,
            only: None,
        }
    }
}

/// Workload shape.
#[derive(Debug, Clone, Copy)]
struct Load {
    name: &'static str,
    block_bytes: u32,
    depth: usize,
    random: bool,
    write: bool,
}

const LOADS: [Load; 4] = [
    Load {
        name: "seq read 64 KiB QD8",
        block_bytes: 65536,
        depth: 8,
        random: false,
        write: false,
    },
    Load {
        name: "seq write 64 KiB QD8",
        block_bytes: 65536,
        depth: 8,
        random: false,
        write: true,
    },
    Load {
        name: "random read 4 KiB QD32",
        block_bytes: 4096,
        depth: 32,
        random: true,
        write: false,
    },
    Load {
        name: "random write 4 KiB QD32",
        block_bytes: 4096,
        depth: 32,
        random: true,
        write: true,
    },
];

/// The workloads `opts` asks for.
fn loads(opts: &BenchOptions) -> Vec<Load> {
    LOADS
        .into_iter()
        .filter(|l| {
            opts.only
                .as_ref()
                .is_none_or(|o| l.name.contains(o.as_str()))
        })
        .collect()
}

impl Load {
    fn unit(&self) -> &'static str {
        if self.random { "IOPS" } else { "MB/s" }
    }

    /// The throughput in this load's unit from bytes and operations per second.
    fn rate(&self, m: &Run) -> f64 {
        if self.random {
            m.ops / m.secs
        } else {
            m.ops * f64::from(self.block_bytes) / m.secs / 1e6
        }
    }

    /// CPU seconds per GiB moved (sequential) or per million I/Os (random).
    fn cpu(&self, m: &Run) -> f64 {
        if m.ops == 0.0 {
            return 0.0;
        }
        if self.random {
            m.cpu_secs / m.ops * 1e6
        } else {
            m.cpu_secs / (m.ops * f64::from(self.block_bytes) / GIB)
        }
    }

    fn cpu_unit(&self) -> &'static str {
        if self.random {
            "CPU s per M I/Os"
        } else {
            "CPU s per GiB"
        }
    }
}

/// The phases of the LUN's life the workloads run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Plain,
    AfterSnapshot,
    Snapshots,
}

impl Phase {
    fn label(self, snapshots: usize) -> String {
        match self {
            Phase::Plain => String::new(),
            Phase::AfterSnapshot => ", right after a snapshot".into(),
            Phase::Snapshots => format!(", {snapshots} snapshots"),
        }
    }
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

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    ops: f64,
    secs: f64,
    /// CPU seconds the target spent.
    cpu_secs: f64,
}

/// Where a contender's CPU time is read.
#[derive(Debug, Clone, Copy)]
enum CpuOf {
    /// A target in this process: the process's time less the calling thread's.
    ThisProcess,
    /// A target process.
    Pid(u32),
}

/// utime + stime of a `/proc/.../stat` file, in clock ticks.
fn stat_ticks(path: &str) -> Result<u64, BenchError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| BenchError::Cpu(format!("{path}: {e}")))?;
    // The fields after the command name (which may hold spaces) start with the state,
    // field 3; utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Cpu(format!("{path}: no command name")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, BenchError> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BenchError::Cpu(format!("{path}: field {n}")))
    };
    Ok(field(14)? + field(15)?)
}

impl CpuOf {
    /// The target's CPU time so far, in clock ticks.
    fn ticks(self) -> Result<i64, BenchError> {
        Ok(match self {
            CpuOf::ThisProcess => {
                stat_ticks("/proc/self/stat")? as i64 - stat_ticks("/proc/thread-self/stat")? as i64
            }
            CpuOf::Pid(pid) => stat_ticks(&format!("/proc/{pid}/stat"))? as i64,
        })
    }
}

/// One contender: a session to its target and the LUN it drives.
struct Side {
    name: &'static str,
    session: Session,
    lun: u64,
    cpu: CpuOf,
}

/// Runs `load` on `side` for `dur` or `max_ops` operations, whichever comes first.
fn drive(
    side: &mut Side,
    size: u64,
    load: Load,
    dur: Duration,
    max_ops: u64,
) -> Result<Run, BenchError> {
    let blocks = load.block_bytes / BLOCK;
    let slots = size / u64::from(load.block_bytes);
    let payload = vec![PAYLOAD; load.block_bytes as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size);
    let mut next_seq = 0u64;
    let (mut issued, mut done) = (0u64, 0u64);
    let lun = side.lun;
    let s = &mut side.session;
    let mut issue = |s: &mut Session| -> Result<(), BenchError> {
        let slot = if load.random {
            rng.next() % slots
        } else {
            next_seq += 1;
            (next_seq - 1) % slots
        };
        let lba = slot * u64::from(blocks);
        let (cdb, dir) = if load.write {
            (
                rw16(0x8a, lba, blocks, false),
                DataDir::Write(payload.clone()),
            )
        } else {
            (
                rw16(0x88, lba, blocks, false),
                DataDir::Read(load.block_bytes),
            )
        };
        s.submit(lun, &cdb, dir)?;
        Ok(())
    };
    let cpu0 = side.cpu.ticks()?;
    let start = Instant::now();
    while issued < max_ops.min(load.depth as u64) {
        issue(s)?;
        issued += 1;
    }
    while s.in_flight() > 0 {
        let (_, r) = s.wait_any()?;
        let r = r?;
        if r.status != 0 {
            return Err(InitiatorError::Status(r.status).into());
        }
        done += 1;
        if start.elapsed() < dur && issued < max_ops {
            issue(s)?;
            issued += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ticks = side.cpu.ticks()? - cpu0;
    Ok(Run {
        ops: done as f64,
        secs,
        cpu_secs: ticks.max(0) as f64 / USER_HZ,
    })
}

/// Writes the whole LUN with [`FILL`] through its target (256 KiB writes at QD8), then
/// synchronizes its cache.
fn fill_lun(side: &mut Side, size: u64) -> Result<(), BenchError> {
    const IO: u32 = 256 * 1024;
    let data = vec![FILL; IO as usize];
    let s = &mut side.session;
    let mut off = 0u64;
    while off < size || s.in_flight() > 0 {
        while off < size && s.in_flight() < 8 {
            let len = (size - off).min(u64::from(IO)) as u32;
            let cdb = rw16(0x8a, off / u64::from(BLOCK), len / BLOCK, false);
            s.submit(
                side.lun,
                &cdb,
                DataDir::Write(data[..len as usize].to_vec()),
            )?;
            off += u64::from(len);
        }
        let (_, r) = s.wait_any()?;
        let r = r?;
        if r.status != 0 {
            return Err(InitiatorError::Status(r.status).into());
        }
    }
    s.synchronize_cache(side.lun)?;
    Ok(())
}

/// Creates `path` with `size` bytes of [`FILL`], synced.
fn fill_file(path: &Path, size: u64) -> Result<(), BenchError> {
    let err = |source| BenchError::File {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let chunk = vec![FILL; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], off).map_err(err)?;
        off += n as u64;
    }
    f.sync_all().map_err(err)
}

/// shadowlun's target serving `path` as LUN 0 to the bench's initiator.
fn file_target(path: &Path) -> Result<TargetServer, BenchError> {
    let dev = scsi::FileDevice::open(path, BLOCK, false).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let target = Arc::new(scsi::Target::new(FILE_TARGET));
    let identity = scsi::LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "array-bench".into(),
        revision: "0001".into(),
        serial: "ARRAYBENCH1".into(),
        designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xab0c)],
    };
    target.map(
        INITIATOR,
        0,
        Arc::new(scsi::LogicalUnit::new(Arc::new(dev), identity)),
    );
    let server = TargetServer::spawn(TargetConfig {
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        ..TargetConfig::default()
    })?;
    server.add_target(FILE_TARGET, None, target, AuthPolicy::None)?;
    Ok(server)
}

/// Takes snapshots of one LUN through the provider, as a host's VSS would (one set each).
struct Snapshotter<'a> {
    lab: &'a RealLab,
    provider: ShadowlunProvider<provider::https::HttpsArray>,
    info: LunInfo,
    source_id: String,
}

impl Snapshotter<'_> {
    /// Creates one snapshot of the LUN; returns its LUN id.
    fn take(&self) -> Result<String, BenchError> {
        let e = |h: vss::Hresult| BenchError::Snapshot(h.to_string());
        let before = self.snapshot_ids()?;
        let p = &self.provider;
        let set = VssId::new_v4();
        let devices = vec!["disk0".to_string()];
        let mut v = vec![self.info.clone()];
        p.begin_prepare_snapshot(
            set,
            VssId::new_v4(),
            SnapshotContext::BACKUP,
            &devices,
            &mut v,
        )
        .map_err(e)?;
        p.end_prepare_snapshots(set).map_err(e)?;
        p.pre_commit_snapshots(set).map_err(e)?;
        p.commit_snapshots(set).map_err(e)?;
        p.post_commit_snapshots(set, 1).map_err(e)?;
        p.pre_final_commit_snapshots(set).map_err(e)?;
        p.post_final_commit_snapshots(set).map_err(e)?;
        self.snapshot_ids()?
            .into_iter()
            .find(|id| !before.contains(id))
            .ok_or_else(|| BenchError::Snapshot("the set made no snapshot LUN".into()))
    }

    /// The ids of the LUN's snapshot LUNs.
    fn snapshot_ids(&self) -> Result<Vec<String>, BenchError> {
        Ok(self
            .lab
            .luns()
            .map_err(BenchError::Array)?
            .into_iter()
            .filter(|l| {
                l.snapshot_of
                    .as_ref()
                    .is_some_and(|o| o.source == self.source_id)
            })
            .map(|l| l.id)
            .collect())
    }

    fn delete(&self, id: &str) -> Result<(), BenchError> {
        let path = api::routes::fill(api::routes::ADMIN_SNAPSHOT, &[("lun", id)]);
        self.lab
            .admin()
            .delete(&path)
            .map_err(|e| BenchError::Snapshot(e.to_string()))
    }
}

/// Median, lowest and highest of `v` (not empty).
fn stats(mut v: Vec<f64>) -> (f64, (f64, f64)) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, (v[0], v[n - 1]))
}

/// Per side, the runs of one workload in one phase.
type Samples = Vec<Vec<Run>>;

/// Runs every workload of `phase` on every side in turns; `before_engine` is called before
/// each run of the engine LUN (side 0).
fn run_phase(
    sides: &mut [Side],
    size: u64,
    opts: &BenchOptions,
    phase: Phase,
    mut before_engine: impl FnMut(&mut Side) -> Result<(), BenchError>,
) -> Result<Vec<Samples>, BenchError> {
    let mut out = Vec::new();
    for load in loads(opts) {
        // Right after a snapshot, writes stop after as many operations as the LUN has
        // chunks, so that most of them fall on chunks the snapshot still shares.
        let max_ops = if phase == Phase::AfterSnapshot && load.write {
            size / CHUNK
        } else {
            MAX_OPS
        };
        let mut samples: Samples = vec![Vec::new(); sides.len()];
        for _ in 0..opts.runs.max(1) {
            for (i, side) in sides.iter_mut().enumerate() {
                if i == 0 {
                    before_engine(side)?;
                }
                samples[i].push(drive(side, size, load, opts.duration, max_ops)?);
            }
        }
        out.push(samples);
    }
    Ok(out)
}

/// The rows of one phase: throughput against the file LUN and against tgt, CPU against tgt.
fn phase_rows(
    rows: &mut Vec<Row>,
    sides: &[Side],
    loads: &[Load],
    phase: Phase,
    label: &str,
    m: &[Samples],
) {
    for (load, samples) in loads.iter().zip(m) {
        let rate = |i: usize| stats(samples[i].iter().map(|r| load.rate(r)).collect());
        let cpu = |i: usize| stats(samples[i].iter().map(|r| load.cpu(r)).collect());
        let (engine, engine_range) = rate(0);
        for (i, side) in sides.iter().enumerate().skip(1) {
            let (base, base_range) = rate(i);
            let goal = if side.name == "tgt" { 1.5 } else { 0.8 };
            rows.push(
                Row::new(
                    format!("{}{label}: engine LUN", load.name),
                    load.unit(),
                    engine,
                    side.name,
                    Some(base),
                    Some(Goal::AtLeast(goal)),
                )
                .with_ranges(Some(engine_range), Some(base_range)),
            );
        }
        if let Some(t) = sides.iter().position(|s| s.name == "tgt") {
            let (base, base_range) = cpu(t);
            for (i, side) in sides.iter().enumerate() {
                if side.name == "tgt" || (phase != Phase::Plain && i != 0) {
                    continue;
                }
                let (v, r) = cpu(i);
                let who = if i == 0 { "engine LUN" } else { side.name };
                rows.push(
                    Row::new(
                        format!("{}{label}: target CPU, {who}", load.name),
                        load.cpu_unit(),
                        v,
                        "tgtd",
                        Some(base),
                        (i == 0).then_some(Goal::AtMost(0.5)),
                    )
                    .with_ranges(Some(r), Some(base_range)),
                );
            }
        }
    }
}

/// Runs the benchmark; see the module's documentation.
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    let size = opts.size_mib.max(1) * 1024 * 1024;
    let size = (size / CHUNK).max(1) * CHUNK;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = opts
        .dir
        .join(format!("shadowlun-array-bench-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::File {
        path: dir.clone(),
        source,
    })?;
    let result = run_in(opts, &dir, size);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(opts: &BenchOptions, dir: &Path, size: u64) -> Result<Report, BenchError> {
    let started = Instant::now();
    let lab =
        RealLab::start(dir.join("array"), true).map_err(|e| BenchError::Array(format!("{e:#}")))?;
    let record = lab
        .create_mapped_lun("bench", size, INITIATOR)
        .map_err(BenchError::Array)?;
    let lun = lab
        .luns()
        .map_err(BenchError::Array)?
        .into_iter()
        .find(|l| l.id == record.id)
        .and_then(|l| l.mapped_to.first().map(|m| m.lun_number))
        .ok_or_else(|| BenchError::Array("the LUN is mapped to no host".into()))?;
    let mut cfg = InitiatorConfig::new(INITIATOR);
    cfg.max_recv_data_segment = 262_144;
    let mut engine = Side {
        name: "engine",
        session: Session::login(lab.portal, &lab.target, &cfg)?,
        lun,
        cpu: CpuOf::ThisProcess,
    };
    engine.session.test_unit_ready(lun)?;
    let t = Instant::now();
    fill_lun(&mut engine, size)?;
    let fill_secs = t.elapsed().as_secs_f64();

    let file = dir.join("lun.img");
    fill_file(&file, size)?;
    let server = file_target(&file)?;
    let mut sides = vec![engine];
    let mut file_side = Side {
        name: "file LUN",
        session: Session::login(server.local_addrs()[0], FILE_TARGET, &cfg)?,
        lun: 0,
        cpu: CpuOf::ThisProcess,
    };
    file_side.session.test_unit_ready(0)?;
    sides.push(file_side);
    let tgt = if opts.with_tgt {
        let t = Tgt::start(&file, TGT_TARGET, "ARRAYBENCHTGT")?;
        let mut side = Side {
            name: "tgt",
            session: Session::login(t.addr, &t.target, &cfg)?,
            lun: 1,
            cpu: CpuOf::Pid(t.pid()),
        };
        side.session.test_unit_ready(1)?;
        sides.push(side);
        Some(t)
    } else {
        None
    };

    let n = u64::from_str_radix(&record.naa, 16)
        .map_err(|e| BenchError::Array(format!("NAA {}: {e}", record.naa)))?
        & 0x0FFF_FFFF_FFFF_FFFF;
    let info = LunInfo::from_identity(
        &vss::identity::LunIdentity::for_number(n).scsi_identity(&[]),
        BusType::ISCSI,
    )
    .map_err(|e| BenchError::Snapshot(e.to_string()))?;
    let snaps = Snapshotter {
        lab: &lab,
        provider: lab
            .shadowlun_provider(INITIATOR)
            .map_err(BenchError::Snapshot)?,
        info,
        source_id: record.id.clone(),
    };

    let plain = run_phase(&mut sides, size, opts, Phase::Plain, |_| Ok(()))?;
    let mut last: Option<String> = None;
    let mut snapshot_ms = Vec::new();
    let after = run_phase(&mut sides, size, opts, Phase::AfterSnapshot, |side| {
        if let Some(id) = last.take() {
            snaps.delete(&id)?;
        }
        let t = Instant::now();
        last = Some(snaps.take()?);
        snapshot_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // Whatever the new LUN announced is consumed before the run.
        side.session.test_unit_ready(side.lun)?;
        Ok(())
    })?;
    if let Some(id) = last.take() {
        snaps.delete(&id)?;
    }
    for _ in 0..opts.snapshots {
        snaps.take()?;
    }
    sides[0].session.test_unit_ready(lun)?;
    let many = run_phase(&mut sides, size, opts, Phase::Snapshots, |_| Ok(()))?;

    for s in &mut sides {
        let _ = s.session.logout();
    }
    server.shutdown();
    drop(tgt);
    lab.shutdown()
        .map_err(|e| BenchError::Array(format!("{e:#}")))?;

    let mut rows = Vec::new();
    for (phase, m) in [
        (Phase::Plain, &plain),
        (Phase::AfterSnapshot, &after),
        (Phase::Snapshots, &many),
    ] {
        phase_rows(
            &mut rows,
            &sides,
            &loads(opts),
            phase,
            &phase.label(opts.snapshots),
            m,
        );
    }
    // The first writes after a snapshot against the same writes with none.
    if let Some(w) = loads(opts).iter().position(|l| l.random && l.write) {
        let load = loads(opts)[w];
        let (a, ar) = stats(after[w][0].iter().map(|r| load.rate(r)).collect());
        let (p, pr) = stats(plain[w][0].iter().map(|r| load.rate(r)).collect());
        rows.push(
            Row::new(
                "random write 4 KiB QD32 right after a snapshot: engine LUN",
                "IOPS",
                a,
                "engine LUN, no snapshot",
                Some(p),
                Some(Goal::AtLeast(0.5)),
            )
            .with_ranges(Some(ar), Some(pr)),
        );
    }
    let (snap_ms, snap_range) = if snapshot_ms.is_empty() {
        (0.0, (0.0, 0.0))
    } else {
        stats(snapshot_ms)
    };
    Ok(Report {
        title: "array benchmark: an engine LUN of the daemon through its iSCSI target".into(),
        machine: machine(),
        rows,
        notes: vec![
            format!(
                "{} MiB LUN, written full through the target first ({:.1} s); the file LUN and tgt \
                 serve one file with the same data; {} run(s) of {:.1} s per contender and \
                 workload in each phase, alternating; medians with min-max",
                size >> 20,
                fill_secs,
                opts.runs.max(1),
                opts.duration.as_secs_f64()
            ),
            format!(
                "right after a snapshot: a fresh snapshot (median {snap_ms:.1} ms, {:.1}-{:.1}) \
                 before every engine run, writes bounded to {} operations (one per chunk of the \
                 LUN) on every contender",
                snap_range.0,
                snap_range.1,
                size / CHUNK
            ),
            "target CPU: tgtd's from /proc/PID/stat; the daemon and the file target run in \
             this process: its time less the initiator thread's"
                .into(),
            format!("took {:.0} s", started.elapsed().as_secs_f64()),
        ],
    })
}
