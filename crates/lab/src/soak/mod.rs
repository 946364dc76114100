//! `shadowlun soak`: the array daemon as a child process driven for minutes or hours by a
//! seeded random schedule of everything it does (shadow copy sets of every kind, import on
//! another host, break, resync, delete; an administrator's LUN creations, mappings, growths
//! and deletions; a ledger writer on host A all along), killed with SIGKILL at random
//! moments (between operations and during them) and started again, with every invariant
//! checked as it goes and at the end:
//!
//! - no acknowledged write lost: after each kill the ledgers on A's originals hold every
//!   acknowledged transaction, and every block written to C's LUNs is there;
//! - every snapshot set holds one point in time across its LUNs (a consistency group);
//! - no orphan LUN or set (the control API), no orphan engine volume (the pool on disk,
//!   read while the daemon is stopped);
//! - the daemon's file descriptors, threads and resident memory stay within bounds of their
//!   value after warm-up, in each life between kills and over a last phase with no kill;
//! - once everything is deleted, the pool's used space is what it was before the soak, as
//!   the daemon reports it, as the engine recounts it from its metadata on disk, and as the
//!   file system allocates the engine's data file; at every SIGTERM restart the file system
//!   holds no more of that file than the engine counts as used.
//!
//! The first stop (a violation, or a daemon that does not start) ends the soak with a
//! precise message; the pool is kept for inspection.

pub mod check;
pub mod daemon;
pub mod world;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use api::{ArrayStatus, LunRecord, routes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::check::{Bounds, Violation};
use self::daemon::{Daemon, DaemonSpec, Resources};
use self::world::{OpError, Tally, World};
use crate::real_lab::RealLab;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub minutes: f64,
    pub seed: u64,
    /// The soak's directory (created; must be empty). Default: a new directory under the
    /// temporary directory, removed after a soak that passed.
    pub dir: Option<PathBuf>,
    /// The `shadowlun` executable that serves the array.
    pub program: PathBuf,
    pub bounds: Bounds,
}

/// Operations the daemon finished before its warm-up sample is taken.
const WARMUP_OPS: u64 = 4;
/// The share of the run with kills; the rest is one daemon life watched for leaks.
const KILL_SHARE: f64 = 2.0 / 3.0;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Kills {
    /// SIGKILL between two operations.
    pub between_operations: u64,
    /// SIGKILL at a random delay into an operation, landing while it ran.
    pub during_operations: u64,
    /// The same, landing after the operation had finished.
    pub after_operations: u64,
    /// SIGTERM, then the pool checked on disk, then a start.
    pub graceful_restarts: u64,
}

impl Kills {
    pub fn total(&self) -> u64 {
        self.between_operations + self.during_operations + self.after_operations
    }
}

/// The daemon's resources at the moments the bounds compare.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ResourceReport {
    pub bounds: Option<Bounds>,
    /// The first daemon, after its warm-up.
    pub start: Option<Resources>,
    /// The daemon of the last phase (no kill), after its warm-up.
    pub watch_start: Option<Resources>,
    /// That daemon after the last operation.
    pub watch_end: Option<Resources>,
    /// That daemon after everything was deleted.
    pub end: Option<Resources>,
    /// Highest values seen at any quiet moment.
    pub peak: Resources,
    /// Samples compared against a warm-up value.
    pub samples_checked: u64,
    /// The longest life of one daemon, in operations.
    pub longest_life_ops: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Space {
    /// The pool's used bytes before anything was created (`shadowlun status`).
    pub used_start: u64,
    /// After everything was deleted.
    pub used_end: u64,
    /// What the engine counts on disk with the daemon stopped.
    pub engine_recount: u64,
    /// Bytes of data the file system holds for the engine's data file (its data extents).
    pub data_file_allocated_start: u64,
    pub data_file_allocated_end: u64,
    /// Engine volumes on disk after the soak (names).
    pub volumes_left: Vec<String>,
}

/// What the soak did and found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub dir: String,
    pub minutes: f64,
    pub duration_secs: f64,
    pub kill_phase_secs: f64,
    pub operations: u64,
    pub tally: Tally,
    pub kills: Kills,
    /// Daemon starts after the first, and their time to "listening".
    pub restarts: u64,
    pub restart_ms_max: u64,
    pub restart_ms_mean: u64,
    pub resources: ResourceReport,
    pub space: Space,
    /// The first violated invariant, if any (the soak stopped there).
    pub violation: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn res(r: &Option<Resources>) -> String {
    r.map_or_else(
        || "-".into(),
        |r| {
            format!(
                "{} fds, {} threads, RSS {}",
                r.fds,
                r.threads,
                mib(r.rss_bytes)
            )
        },
    )
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "soak: seed {}, {:.1} min ({:.0} s with kills, then one daemon watched), pool {}",
            self.seed,
            self.duration_secs / 60.0,
            self.kill_phase_secs,
            self.dir
        )?;
        writeln!(f, "operations: {}", self.operations)?;
        for (k, n) in &self.tally.ops {
            writeln!(f, "  {k:<28} {n}")?;
        }
        writeln!(
            f,
            "  interrupted by a kill        {} ({} sets left behind removed, {} torn partition \
             tables of A's LUNs rebuilt)",
            self.tally.interrupted, self.tally.sets_cleaned, self.tally.gpt_repairs
        )?;
        writeln!(
            f,
            "kills (SIGKILL): {} = {} between operations, {} during, {} just after; {} graceful \
             restarts; {} starts after the first, to listening max {} ms, mean {} ms",
            self.kills.total(),
            self.kills.between_operations,
            self.kills.during_operations,
            self.kills.after_operations,
            self.kills.graceful_restarts,
            self.restarts,
            self.restart_ms_max,
            self.restart_ms_mean
        )?;
        writeln!(
            f,
            "ledgers: {} durability checks after kills, {} snapshot sets proven one point in \
             time, {} records verified; {} stamps on C's LUNs read back",
            self.tally.durability_checks,
            self.tally.snapshots_verified,
            self.tally.records_verified,
            self.tally.stamps_verified
        )?;
        let r = &self.resources;
        if let Some(b) = &r.bounds {
            writeln!(
                f,
                "daemon resources (bounds after warm-up: +{} fds, +{} threads, +{} RSS; {} samples checked, longest life {} operations):",
                b.fd_slack,
                b.thread_slack,
                mib(b.rss_growth_bytes),
                r.samples_checked,
                r.longest_life_ops
            )?;
        }
        writeln!(f, "  start (first daemon)         {}", res(&r.start))?;
        writeln!(f, "  watched daemon, warm         {}", res(&r.watch_start))?;
        writeln!(f, "  watched daemon, last op      {}", res(&r.watch_end))?;
        writeln!(f, "  end (everything deleted)     {}", res(&r.end))?;
        writeln!(f, "  peak                         {}", res(&Some(r.peak)))?;
        let s = &self.space;
        writeln!(
            f,
            "pool used: start {} bytes, end {} bytes, engine recount on disk {} bytes; engine \
             volumes left: {}",
            s.used_start,
            s.used_end,
            s.engine_recount,
            s.volumes_left.len()
        )?;
        writeln!(
            f,
            "engine data file, data held by the file system: start {} bytes, end {} bytes",
            s.data_file_allocated_start, s.data_file_allocated_end
        )?;
        match &self.violation {
            None => writeln!(f, "soak passed"),
            Some(v) => writeln!(f, "SOAK FAILED: {v}"),
        }
    }
}

/// Why the soak stopped early.
enum Stop {
    Violation(String),
}

impl From<Violation> for Stop {
    fn from(v: Violation) -> Self {
        Stop::Violation(v.0)
    }
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Violation(format!("{e:#}"))
    }
}

fn op_stop(what: &str, e: OpError) -> Stop {
    match e {
        OpError::Violation(v) => Stop::Violation(v.0),
        OpError::Failed(m) => Stop::Violation(format!("{what} failed with no kill: {m}")),
    }
}

/// Bytes of data the file system holds for a file: the sum of its data extents, found with
/// `SEEK_DATA` and `SEEK_HOLE` (the file system's own metadata, such as an extent tree, is
/// not the file's data and is not counted), in whole blocks of the file system. 0 if the
/// file does not exist.
fn allocated(path: &Path) -> u64 {
    use rustix::fs::{SeekFrom, seek};
    use std::os::unix::fs::MetadataExt;
    let Ok(f) = std::fs::File::open(path) else {
        return 0;
    };
    let block = f.metadata().map_or(4096, |m| m.blksize().max(1));
    let mut total = 0;
    let mut at = 0;
    // Past the last data extent, SEEK_DATA fails with ENXIO: the end.
    while let Ok(start) = seek(&f, SeekFrom::Data(at)) {
        let Ok(end) = seek(&f, SeekFrom::Hole(start)) else {
            break;
        };
        total += end.div_ceil(block) * block - start / block * block;
        at = end;
    }
    total
}

/// The engine volumes and used bytes of a stopped daemon's pool, read by the engine itself.
fn offline_engine(pool: &Path) -> anyhow::Result<(Vec<String>, u64)> {
    let identity: array::pool::PoolIdentity =
        serde_json::from_slice(&std::fs::read(pool.join("array.json"))?)?;
    let backend = array::BackendConfig::default().open(pool, identity.array_id.bits())?;
    let names = backend.volumes()?.into_iter().map(|v| v.name).collect();
    Ok((names, backend.usage()?.allocated_bytes))
}

/// One life of the daemon, for the resource bounds.
#[derive(Default)]
struct Life {
    ops: u64,
    warm: Option<Resources>,
}

struct Soak {
    spec: DaemonSpec,
    daemon: Option<Daemon>,
    world: World,
    rng: StdRng,
    report: Report,
    life: Life,
    restart_ms: Vec<u64>,
}

impl Soak {
    fn pid(&self) -> anyhow::Result<u32> {
        self.daemon
            .as_ref()
            .map(Daemon::pid)
            .context("no daemon is running")
    }

    fn start_daemon(&mut self) -> Result<(), Stop> {
        let d = self
            .spec
            .start()
            .map_err(|e| Stop::Violation(format!("the daemon did not start again: {e:#}")))?;
        self.restart_ms.push(d.ready.start_time.as_millis() as u64);
        self.report.restarts += 1;
        self.daemon = Some(d);
        self.life = Life::default();
        Ok(())
    }

    fn end_life(&mut self) {
        self.report.resources.longest_life_ops =
            self.report.resources.longest_life_ops.max(self.life.ops);
    }

    /// The daemon was killed: reap it, start it again, finish what the kill interrupted.
    fn after_kill(&mut self, interrupted: bool) -> Result<(), Stop> {
        self.end_life();
        if let Some(d) = self.daemon.take() {
            d.reap()?;
        }
        self.start_daemon()?;
        self.world
            .recover(interrupted)
            .map_err(|e| op_stop("recovery after a kill", e))
    }

    /// SIGTERM, the pool checked on disk (no engine volume without its LUN), a new start.
    fn graceful_restart(&mut self) -> Result<(), Stop> {
        let luns: Vec<LunRecord> = self
            .world
            .array_luns()
            .map_err(|e| op_stop("listing LUNs", e))?;
        self.end_life();
        if let Some(d) = self.daemon.take() {
            d.stop()?;
        }
        let file = allocated(&self.spec.pool().join("engine").join("data"));
        let (volumes, used) = offline_engine(&self.spec.pool())?;
        check::no_orphan_volumes(&volumes, &luns)?;
        check::file_system_agrees(used, file)?;
        self.report.kills.graceful_restarts += 1;
        self.start_daemon()?;
        self.world
            .recover(false)
            .map_err(|e| op_stop("recovery after a restart", e))
    }

    /// A quiet moment: the daemon's resources against its warm-up values.
    fn sample(&mut self, watching: bool) -> Result<(), Stop> {
        let Some(d) = &self.daemon else {
            return Ok(());
        };
        let now = d.resources()?;
        let bounds = self.report_bounds();
        let r = &mut self.report.resources;
        r.peak = Resources {
            fds: r.peak.fds.max(now.fds),
            sockets: r.peak.sockets.max(now.sockets),
            threads: r.peak.threads.max(now.threads),
            rss_bytes: r.peak.rss_bytes.max(now.rss_bytes),
        };
        self.life.ops += 1;
        match self.life.warm {
            None if self.life.ops >= WARMUP_OPS => {
                self.life.warm = Some(now);
                if r.start.is_none() {
                    r.start = Some(now);
                }
                if watching && r.watch_start.is_none() {
                    r.watch_start = Some(now);
                }
            }
            None => {}
            Some(warm) => {
                let what = if watching {
                    "the watched daemon".to_string()
                } else {
                    format!("daemon pid {}", d.pid())
                };
                check::bounded(&what, &warm, &now, &bounds)?;
                r.samples_checked += 1;
                if watching {
                    r.watch_end = Some(now);
                }
            }
        }
        Ok(())
    }

    fn report_bounds(&self) -> Bounds {
        self.report.resources.bounds.unwrap_or_default()
    }

    fn drive(&mut self, total: Duration) -> Result<(), Stop> {
        let started = Instant::now();
        let kill_until = total.mul_f64(KILL_SHARE);
        self.report.kill_phase_secs = kill_until.as_secs_f64();
        let mut watching = false;
        let mut since_orphan_check = 0u32;
        while started.elapsed() < total {
            if !watching && started.elapsed() >= kill_until {
                // The last phase: one fresh daemon, no kill, watched for leaks.
                self.graceful_restart()?;
                watching = true;
            }
            let op = self.world.pick(&mut self.rng);
            let dice: f64 = self.rng.random();
            let mut killer = None;
            if !watching {
                // The first operation always follows a SIGKILL: however short the run, the
                // daemon is killed and recovered at least once.
                if self.report.operations == 0 || dice < 0.05 {
                    daemon::kill9(self.pid()?)?;
                    self.report.kills.between_operations += 1;
                    self.after_kill(false)?;
                } else if dice < 0.07 {
                    self.graceful_restart()?;
                } else if dice < 0.15 {
                    let delay = Duration::from_millis(self.rng.random_range(0..700));
                    let pid = self.pid()?;
                    let done = Arc::new(AtomicBool::new(false));
                    let d2 = Arc::clone(&done);
                    killer = Some((
                        done,
                        std::thread::spawn(move || {
                            std::thread::sleep(delay);
                            let during = !d2.load(Ordering::SeqCst);
                            daemon::kill9(pid).map(|_| during)
                        }),
                    ));
                }
            }
            let r = self.world.run(op, &mut self.rng);
            self.report.operations += 1;
            if let Some((done, k)) = killer {
                done.store(true, Ordering::SeqCst);
                let during = k
                    .join()
                    .map_err(|_| Stop::Violation("the kill thread panicked".into()))??;
                if during {
                    self.report.kills.during_operations += 1;
                } else {
                    self.report.kills.after_operations += 1;
                }
                if let Err(OpError::Violation(v)) = r {
                    return Err(Stop::Violation(v.0));
                }
                self.after_kill(r.is_err())?;
                continue;
            }
            r.map_err(|e| op_stop(op.name(), e))?;
            if let Some(e) = self.world.writer_error() {
                return Err(Stop::Violation(format!(
                    "the ledger writer failed with no kill: {e}"
                )));
            }
            self.sample(watching)?;
            since_orphan_check += 1;
            if since_orphan_check >= 5 {
                self.world
                    .check_orphans()
                    .map_err(|e| op_stop("the orphan check", e))?;
                since_orphan_check = 0;
            }
        }
        self.report.duration_secs = started.elapsed().as_secs_f64();
        self.end_life();
        // The end: everything deleted, resources and space where they started.
        self.world
            .teardown()
            .map_err(|e| op_stop("deleting everything", e))?;
        let d = self.daemon.as_ref().context("no daemon at the end")?;
        let end = d.resources()?;
        self.report.resources.end = Some(end);
        if let Some(warm) = self.report.resources.watch_start {
            check::bounded(
                "the watched daemon after everything was deleted",
                &warm,
                &end,
                &self.report_bounds(),
            )?;
        }
        Ok(())
    }
}

/// Runs the soak. `Err` only when it could not begin (a directory, the first start); every
/// later failure is the report's `violation`.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let (dir, remove_after) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("shadowlun-soak-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty: the soak needs a fresh pool",
            dir.display()
        );
    }
    let (api, portal) = daemon::free_loopback_addrs()?;
    let spec = DaemonSpec {
        program: opts.program.clone(),
        dir: dir.clone(),
        api,
        portal,
    };
    spec.write_config()?;
    let first = spec.start()?;
    let token = std::fs::read_to_string(&first.ready.admin_token_path)?;
    let lab = Arc::new(RealLab::attach(
        spec.pool(),
        &format!("https://{api}"),
        &first.ready.fingerprint,
        token.trim(),
        portal,
    )?);
    let data_file = spec.pool().join("engine").join("data");
    let status: ArrayStatus = lab.admin().get(routes::ADMIN_STATUS)?;
    let mut report = Report {
        seed: opts.seed,
        dir: dir.display().to_string(),
        minutes: opts.minutes,
        ..Report::default()
    };
    report.resources.bounds = Some(opts.bounds);
    report.space.used_start = status.pool.used_bytes;
    report.space.data_file_allocated_start = allocated(&data_file);
    let world = World::setup(Arc::clone(&lab)).map_err(|e| anyhow::anyhow!("setting up: {e}"))?;
    let mut soak = Soak {
        spec,
        daemon: Some(first),
        world,
        rng: StdRng::seed_from_u64(opts.seed),
        report,
        life: Life::default(),
        restart_ms: Vec::new(),
    };
    let total = Duration::from_secs_f64((opts.minutes * 60.0).max(1.0));
    let outcome = soak.drive(total).and_then(|()| finish(&mut soak, &lab));
    let mut report = std::mem::take(&mut soak.report);
    report.tally = soak.world.tally.clone();
    if !soak.restart_ms.is_empty() {
        report.restart_ms_max = soak.restart_ms.iter().copied().max().unwrap_or(0);
        report.restart_ms_mean = soak.restart_ms.iter().sum::<u64>() / soak.restart_ms.len() as u64;
    }
    if let Err(Stop::Violation(v)) = outcome {
        report.violation = Some(v);
    }
    drop(soak);
    drop(lab);
    if report.passed() && remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// Stops the daemon and compares the pool with its start: the space the daemon reports,
/// the engine's recount on disk, the engine volumes left.
fn finish(soak: &mut Soak, lab: &RealLab) -> Result<(), Stop> {
    let status: ArrayStatus = lab
        .admin()
        .get(routes::ADMIN_STATUS)
        .map_err(|e| Stop::Violation(format!("status at the end: {e}")))?;
    soak.report.space.used_end = status.pool.used_bytes;
    if let Some(d) = soak.daemon.take() {
        d.stop()?;
    }
    let pool = soak.spec.pool();
    // What the daemon left, before the engine is opened again.
    soak.report.space.data_file_allocated_end = allocated(&pool.join("engine").join("data"));
    let (volumes, recount) = offline_engine(&pool)?;
    soak.report.space.engine_recount = recount;
    soak.report.space.volumes_left = volumes.clone();
    check::no_orphan_volumes(&volumes, &[])?;
    let s = &soak.report.space;
    check::space_returned(
        s.used_start,
        s.used_end,
        s.engine_recount,
        s.data_file_allocated_start,
        s.data_file_allocated_end,
    )?;
    Ok(())
}
