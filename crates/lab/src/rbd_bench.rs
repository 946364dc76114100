//! RBD benchmark: shadowlun's iSCSI target serving a LUN of the rbd backend (the same
//! `storage::RbdBackend` device, metered and wrapped in the same logical unit as the array
//! daemon serves) against `tgt` serving an image of the same size through its rbd backing
//! store, both driven by the same initiator; and against `rbd bench` on a third image
//! (librbd with no iSCSI in between: the ceiling). Then the backend's group commit, what
//! CommitSnapshots waits for, for sets of 1, 8 and 64 LUNs, idle and under writes
//! ([`commit`]).
//!
//! One cluster, one run: every workload runs in turns, the contenders one after the other
//! within each turn (the order reversed every other turn), and each row shows the median of
//! the turns, with the spread in the notes. Every run is bounded by time and by an operation
//! count. Everything the run made in the pool is removed at the end.
//!
//! Entry point: [`run`]; `shadowlun bench rbd` prints its report.

mod commit;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};
use iscsi::{AuthPolicy, TargetConfig, TargetError, TargetServer};
use rbd::{Cluster, ClusterConfig, Pool};
use storage::{Backend, RbdBackend};

use crate::report::{Goal, Report, Row, machine};
use crate::target_bench::{
    BENCH_INITIATOR, BenchError, LOADS, Load, MAX_OPS, drive, iscsi_perf, median, perf_available,
};
use crate::tgt::Tgt;

const OUR_TARGET: &str = "iqn.2026-01.org.shadowlun:bench-rbd";
const TGT_TARGET: &str = "iqn.2026-01.org.shadowlun:bench-tgt-rbd";
/// The volume of the benchmark's array that the target serves.
const VOLUME: &str = "lun-1";

#[derive(Debug, thiserror::Error)]
pub enum RbdBenchError {
    #[error(
        "no Ceph cluster to measure: {0}. Start a throwaway one with \
         `eval \"$(scripts/ceph-lab start /tmp/ceph-lab)\"` (it sets CEPH_CONF), \
         or name a cluster's configuration with --ceph-conf"
    )]
    NoCluster(String),
    #[error("ceph: {0}")]
    Rbd(#[from] rbd::Error),
    #[error("rbd backend: {0}")]
    Backend(#[from] storage::BackendError),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("initiator: {0}")]
    Initiator(#[from] InitiatorError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The `rbd` command failed or said something unexpected.
    #[error("{0}")]
    Tool(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RbdBenchOptions {
    /// The cluster's configuration file. Default: `CEPH_CONF`, then `/etc/ceph/ceph.conf`.
    pub ceph_conf: Option<PathBuf>,
    /// The pool the images are made in (and removed from at the end).
    pub pool: String,
    /// Size of each of the three images of the I/O workloads.
    pub size_mib: u64,
    /// Length of each contender's turn of each workload.
    pub duration: Duration,
    /// Turns of each workload (at least 3).
    pub reps: usize,
    /// Commits measured per set size, idle and again under writes (0: none, the commit
    /// part is left out).
    pub commits: usize,
    /// Compare with tgt's rbd backing store (needs `tgtd`, `tgtadm` and `tgt-rbd`).
    pub with_tgt: bool,
    /// librados/librbd settings for shadowlun's contender, after its own defaults.
    pub settings: Vec<(String, String)>,
}

impl Default for RbdBenchOptions {
    fn default() -> Self {
        RbdBenchOptions {
            ceph_conf: None,
            pool: "rbd".into(),
            size_mib: 256,
            duration: Duration::from_secs(3),
            reps: 5,
            commits: 15,
            with_tgt: true,
            settings: Vec::new(),
        }
    }
}

/// The configuration file of the cluster to measure, or why there is none.
fn conf_path(opts: &RbdBenchOptions) -> Result<PathBuf, RbdBenchError> {
    cluster_conf(opts.ceph_conf.as_deref())
}

/// The cluster's configuration file: `explicit`, else `CEPH_CONF`, else
/// `/etc/ceph/ceph.conf`; or why there is none.
pub(crate) fn cluster_conf(explicit: Option<&Path>) -> Result<PathBuf, RbdBenchError> {
    let conf = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from));
    let conf = match conf {
        Some(c) => c,
        None if Path::new("/etc/ceph/ceph.conf").is_file() => "/etc/ceph/ceph.conf".into(),
        None => {
            return Err(RbdBenchError::NoCluster(
                "CEPH_CONF is not set and /etc/ceph/ceph.conf does not exist".into(),
            ));
        }
    };
    if !conf.is_file() {
        return Err(RbdBenchError::NoCluster(format!(
            "{} does not exist",
            conf.display()
        )));
    }
    Ok(conf)
}

/// Runs the `rbd` command against the cluster of `conf`, bounded in time: its stdout.
pub(crate) fn rbd_cli(
    conf: &Path,
    args: &[&str],
    limit: Duration,
) -> Result<String, RbdBenchError> {
    let out = Command::new("timeout")
        .args(["--foreground", &limit.as_secs().max(1).to_string(), "rbd"])
        .args(args)
        .env("CEPH_CONF", conf)
        .output()
        .map_err(|e| RbdBenchError::Tool(format!("cannot run rbd: {e}")))?;
    if !out.status.success() {
        return Err(RbdBenchError::Tool(format!(
            "rbd {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes every byte of image `spec` (`pool/image`) once, so reads hit data rather than
/// objects that were never written (which the OSD answers without reading anything).
fn fill(conf: &Path, spec: &str, size: u64) -> Result<(), RbdBenchError> {
    rbd_cli(
        conf,
        &[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4M",
            "--io-threads",
            "4",
            "--io-pattern",
            "seq",
            "--io-total",
            &size.to_string(),
            spec,
        ],
        Duration::from_secs(600),
    )
    .map(drop)
}

/// `rbd bench` of `load` on image `spec` for `total` bytes: operations per second, as it
/// reports them (its own connection and image opening are not counted).
fn rbd_bench(conf: &Path, spec: &str, load: Load, total: u64) -> Result<f64, RbdBenchError> {
    let block = u64::from(load.block_bytes);
    let total = total.max(block * load.depth as u64 * 32) / block * block;
    let out = rbd_cli(
        conf,
        &[
            "bench",
            "--io-type",
            if load.write { "write" } else { "read" },
            "--io-size",
            &block.to_string(),
            "--io-threads",
            &load.depth.to_string(),
            "--io-pattern",
            if load.random { "rand" } else { "seq" },
            "--io-total",
            &total.to_string(),
            spec,
        ],
        Duration::from_secs(300),
    )?;
    parse_rbd_bench(&out)
        .ok_or_else(|| RbdBenchError::Tool(format!("rbd bench gave no result: {out}")))
}

/// The `ops/sec` of `rbd bench`'s summary line
/// (`elapsed: 3  ops: 16384  ops/sec: 5230.1  bytes/sec: 327 MiB/s`).
fn parse_rbd_bench(out: &str) -> Option<f64> {
    let line = out.lines().rfind(|l| l.starts_with("elapsed:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "ops/sec:")?;
    words.next()?.parse().ok()
}

/// Medians and spread of one contender's turns.
#[derive(Debug, Clone, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn median(&self) -> f64 {
        median(self.0.clone())
    }
    fn spread(&self) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(0.0, f64::max);
        format!("{}–{}", num(min), num(max))
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// What the I/O part measured: per workload of [`LOADS`], each contender's turns.
struct IoMeasured {
    ours: Vec<Samples>,
    tgt: Option<Vec<Samples>>,
    rbd: Vec<Samples>,
    /// Reads driven by `iscsi-perf` ([`PERF_LOADS`]): ours, tgt's.
    perf: Vec<(Samples, Option<Samples>)>,
}

/// Read workloads run with libiscsi's `iscsi-perf` as a second, neutral initiator: name,
/// 512-byte blocks per read, queue depth, random.
const PERF_LOADS: [(&str, u32, u32, bool); 2] = [
    ("seq read 64 KiB QD8 (iscsi-perf)", 128, 8, false),
    ("random read 4 KiB QD32 (iscsi-perf)", 8, 32, true),
];

/// An iSCSI contender: where it listens and the LUN serving its image.
struct Side {
    addr: SocketAddr,
    target: String,
    lun: u64,
}

/// Runs every workload: on each turn our target, tgt (when it serves) and `rbd bench`, the
/// order reversed every other turn; `rbd bench` moves as many bytes as our target moved in
/// its last turn, so both run for about as long.
fn run_io(
    conf: &Path,
    ours: &Side,
    tgt: Option<&Side>,
    rbd_spec: &str,
    size: u64,
    opts: &RbdBenchOptions,
) -> Result<IoMeasured, RbdBenchError> {
    let turn = opts.duration;
    let mut cfg = InitiatorConfig::new(BENCH_INITIATOR);
    cfg.max_recv_data_segment = 262_144;
    let login = |side: &Side| -> Result<Session, RbdBenchError> {
        let mut s = Session::login(side.addr, &side.target, &cfg)?;
        s.test_unit_ready(side.lun)?; // clears the power-on unit attention
        Ok(s)
    };
    let mut our_s = login(ours)?;
    let mut tgt_s = tgt.map(login).transpose()?;
    // Each image's exclusive lock goes to the client serving it, and its first writes set up
    // the object map: once, before anything is measured.
    let warm = Duration::from_millis(300);
    drive(&mut our_s, ours.lun, size, LOADS[3].1, warm, MAX_OPS)?;
    if let (Some(s), Some(side)) = (tgt_s.as_mut(), tgt) {
        drive(s, side.lun, size, LOADS[3].1, warm, MAX_OPS)?;
    }
    let mut m = IoMeasured {
        ours: Vec::new(),
        tgt: tgt.map(|_| Vec::new()),
        rbd: Vec::new(),
        perf: Vec::new(),
    };
    for (_, load, unit, _) in LOADS.iter() {
        let value = |(bps, iops): (f64, f64)| if *unit == "MB/s" { bps / 1e6 } else { iops };
        let (mut o, mut t, mut r) = (Samples::default(), Samples::default(), Samples::default());
        let mut our_bytes = 0u64;
        for rep in 0..opts.reps.max(1) {
            let mut steps = [0, 1, 2];
            if rep % 2 == 1 {
                steps.reverse();
            }
            for step in steps {
                match step {
                    0 => {
                        let (bps, iops) = drive(&mut our_s, ours.lun, size, *load, turn, MAX_OPS)?;
                        our_bytes = (bps * turn.as_secs_f64()) as u64;
                        o.0.push(value((bps, iops)));
                    }
                    1 => {
                        if let (Some(s), Some(side)) = (tgt_s.as_mut(), tgt) {
                            t.0.push(value(drive(s, side.lun, size, *load, turn, MAX_OPS)?));
                        }
                    }
                    _ => {
                        let ops = rbd_bench(conf, rbd_spec, *load, our_bytes)?;
                        let bps = ops * f64::from(load.block_bytes);
                        r.0.push(value((bps, ops)));
                    }
                }
            }
        }
        m.ours.push(o);
        if let Some(v) = m.tgt.as_mut() {
            v.push(t);
        }
        m.rbd.push(r);
    }
    let _ = our_s.logout();
    if let Some(mut s) = tgt_s {
        let _ = s.logout();
    }
    if perf_available() {
        for (_, blocks, depth, random) in PERF_LOADS {
            let (mut o, mut t) = (Samples::default(), Samples::default());
            for rep in 0..opts.reps.max(1) {
                let mut sides = vec![(ours, &mut o)];
                if let Some(side) = tgt {
                    sides.push((side, &mut t));
                }
                if rep % 2 == 1 {
                    sides.reverse();
                }
                for (side, out) in sides {
                    let url = format!("iscsi://{}/{}/{}", side.addr, side.target, side.lun);
                    out.0.push(iscsi_perf(&url, blocks, depth, random, turn)?);
                }
            }
            m.perf.push((o, tgt.map(|_| t)));
        }
    }
    Ok(m)
}

/// Our target: the volume's device from the rbd backend, counted as the daemon counts it
/// (`array::metrics::MeteredDevice`), in a logical unit of a target on loopback.
fn serve_ours(backend: &RbdBackend) -> Result<TargetServer, RbdBenchError> {
    let dev = backend.device(VOLUME)?;
    let io = array::metrics::IoStats::default();
    let dev: scsi::Device = Arc::new(array::metrics::MeteredDevice::new(dev, io.lun(VOLUME)));
    let target = Arc::new(scsi::Target::new(OUR_TARGET));
    let identity = scsi::LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "bench-rbd".into(),
        revision: "0001".into(),
        serial: "BENCHRBD1".into(),
        designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xbe0e)],
    };
    target.map(
        BENCH_INITIATOR,
        0,
        Arc::new(scsi::LogicalUnit::new(dev, identity)),
    );
    let server = TargetServer::spawn(TargetConfig {
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        ..TargetConfig::default()
    })?;
    server.add_target(OUR_TARGET, None, target, AuthPolicy::None)?;
    Ok(server)
}

/// A number no other run's array uses at the same time (pid and clock).
fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (std::process::id() << 12) ^ nanos ^ 0x5b00_0000
}

/// Runs the benchmark on the cluster `opts` names; removes what it made in the pool.
pub fn run(opts: &RbdBenchOptions) -> Result<Report, RbdBenchError> {
    let conf = conf_path(opts)?;
    let cluster = Cluster::connect(&ClusterConfig {
        conf_path: Some(conf.clone()),
        timeout: Duration::from_secs(20),
        settings: opts.settings.clone(),
        ..ClusterConfig::default()
    })
    .map_err(|e| {
        RbdBenchError::NoCluster(format!(
            "cannot reach the cluster of {}: {e}",
            conf.display()
        ))
    })?;
    let pool = cluster.pool(&opts.pool, "").map_err(|e| {
        RbdBenchError::NoCluster(format!("pool {} of {}: {e}", opts.pool, conf.display()))
    })?;
    let id = run_id();
    let size = opts.size_mib.max(16) * 1024 * 1024;
    let started = Instant::now();
    let backend = RbdBackend::new(pool.clone(), id)?;
    let tgt_image = format!("slbench-{id:08x}-tgt");
    let rbd_image = format!("slbench-{id:08x}-rbd");
    let made = || -> Result<(), RbdBenchError> {
        backend.create_volume(VOLUME, size)?;
        pool.create(&tgt_image, size, None)?;
        pool.create(&rbd_image, size, None)?;
        Ok(())
    };
    let measured = made().and_then(|()| {
        let io = measure_io(&conf, &pool, &backend, &tgt_image, &rbd_image, size, opts)?;
        let commits = if opts.commits == 0 {
            commit::Measured {
                rows: Vec::new(),
                notes: vec!["CommitSnapshots left out: --commits 0".into()],
            }
        } else {
            commit::measure(&pool, id.wrapping_add(1), opts.commits)?
        };
        Ok((io, commits))
    });
    // Whatever happened, what this run made goes.
    if let Err(e) = backend.delete_volume(VOLUME) {
        tracing::warn!(volume = VOLUME, error = %e, "benchmark volume not deleted");
    }
    for image in [&tgt_image, &rbd_image] {
        if let Err(e) = pool.remove(image) {
            tracing::warn!(%image, error = %e, "benchmark image not removed");
        }
    }
    let ((io, mut notes), commits) = measured?;
    let mut rows = io_rows(&io);
    rows.extend(commits.rows);
    notes.extend(commits.notes);
    notes.push(format!(
        "pool {} of {}: three {} MiB images (ours, tgt's, rbd bench's, each written whole \
         first), {} turns of {:.1} s per workload and contender; {:.0} s in all",
        opts.pool,
        conf.display(),
        size >> 20,
        opts.reps.max(1),
        opts.duration.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    let mut librbd =
        vec!["rbd_cache_writethrough_until_flush=false (shadowlun's default)".to_string()];
    librbd.extend(opts.settings.iter().map(|(k, v)| format!("{k}={v}")));
    notes.push(format!(
        "shadowlun's librbd: {}; tgt's and rbd bench's: the cluster's configuration",
        librbd.join(", ")
    ));
    Ok(Report {
        title: "RBD benchmark".into(),
        machine: machine(),
        rows,
        notes,
    })
}

/// Fills the images, starts both targets and runs the workloads: the measures and the
/// notes about them.
fn measure_io(
    conf: &Path,
    pool: &Arc<Pool>,
    backend: &RbdBackend,
    tgt_image: &str,
    rbd_image: &str,
    size: u64,
    opts: &RbdBenchOptions,
) -> Result<(IoMeasured, Vec<String>), RbdBenchError> {
    let mut notes = Vec::new();
    let our_spec = pool.spec(&backend.image_name(VOLUME));
    let tgt_spec = pool.spec(tgt_image);
    let rbd_spec = pool.spec(rbd_image);
    for spec in [&our_spec, &tgt_spec, &rbd_spec] {
        fill(conf, spec, size)?;
    }
    let ours = serve_ours(backend)?;
    let tgt = if opts.with_tgt {
        match Tgt::start_rbd(&tgt_spec, conf, TGT_TARGET, "TGTRBD1") {
            Ok(t) => Some(t),
            Err(e) => {
                notes.push(format!("rows against tgt skipped: {e}"));
                None
            }
        }
    } else {
        notes.push("rows against tgt skipped: --no-tgt".into());
        None
    };
    let our_side = Side {
        addr: ours.local_addrs()[0],
        target: OUR_TARGET.into(),
        lun: 0,
    };
    let tgt_side = tgt.as_ref().map(|t| Side {
        addr: t.addr,
        target: t.target.clone(),
        lun: 1,
    });
    let measured = run_io(conf, &our_side, tgt_side.as_ref(), &rbd_spec, size, opts);
    ours.shutdown();
    drop(tgt);
    let m = measured?;
    for (i, (name, _, unit, _)) in LOADS.iter().enumerate() {
        let mut line = format!("{name}, min–max {unit}: ours {}", m.ours[i].spread());
        if let Some(t) = &m.tgt {
            line += &format!(", tgt-rbd {}", t[i].spread());
        }
        line += &format!(", rbd bench {}", m.rbd[i].spread());
        notes.push(line);
    }
    for (i, (name, _, _, _)) in PERF_LOADS.iter().enumerate() {
        if let Some((o, t)) = m.perf.get(i) {
            let mut line = format!("{name}, min–max: ours {}", o.spread());
            if let Some(t) = t {
                line += &format!(", tgt-rbd {}", t.spread());
            }
            notes.push(line);
        }
    }
    if !perf_available() {
        notes.push("iscsi-perf is not installed (libiscsi-bin): its rows are left out".into());
    }
    Ok((m, notes))
}

/// Our target against tgt-rbd (goal 1.5x) and against `rbd bench` (goal 0.7x).
fn io_rows(m: &IoMeasured) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(t) = &m.tgt {
        for (i, (name, _, unit, _)) in LOADS.iter().enumerate() {
            rows.push(Row::new(
                *name,
                *unit,
                m.ours[i].median(),
                "tgt, rbd backing store",
                Some(t[i].median()),
                Some(Goal::AtLeast(1.5)),
            ));
        }
        for (i, (name, _, _, _)) in PERF_LOADS.iter().enumerate() {
            if let Some((o, Some(t))) = m.perf.get(i) {
                let unit = if PERF_LOADS[i].1 >= 128 {
                    "MB/s"
                } else {
                    "IOPS"
                };
                rows.push(Row::new(
                    *name,
                    unit,
                    o.median(),
                    "tgt, rbd backing store",
                    Some(t.median()),
                    Some(Goal::AtLeast(1.5)),
                ));
            }
        }
    }
    for (i, (name, load, unit, _)) in LOADS.iter().enumerate() {
        rows.push(Row::new(
            format!("{name} vs rbd bench"),
            *unit,
            m.ours[i].median(),
            format!(
                "rbd bench, {} KiB {}, {} threads",
                load.block_bytes / 1024,
                if load.random { "rand" } else { "seq" },
                load.depth
            ),
            Some(m.rbd[i].median()),
            Some(Goal::AtLeast(0.7)),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rbd_bench_summary_line_gives_operations_per_second() {
        let out = "bench  type write io_size 4096 io_threads 32 bytes 20971520 pattern random\n  \
                   SEC       OPS   OPS/SEC   BYTES/SEC\n    1      3776   3070.97    12 MiB/s\n\
                   elapsed: 2   ops: 5120   ops/sec: 2524.65   bytes/sec: 9.9 MiB/s\n";
        assert_eq!(parse_rbd_bench(out), Some(2524.65));
        assert_eq!(
            parse_rbd_bench("    1      3776   3070.97    12 MiB/s\n"),
            None
        );
    }

    #[test]
    fn no_configuration_is_no_cluster_and_says_how_to_start_one() {
        let opts = RbdBenchOptions {
            ceph_conf: Some("/nonexistent/ceph.conf".into()),
            ..RbdBenchOptions::default()
        };
        let e = run(&opts).unwrap_err();
        assert!(matches!(e, RbdBenchError::NoCluster(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("/nonexistent/ceph.conf does not exist"),
            "{text}"
        );
        assert!(text.contains("scripts/ceph-lab start"), "{text}");
    }
}
