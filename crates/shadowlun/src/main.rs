//! `shadowlun`: the one command of the project.
#![forbid(unsafe_code)]

mod admin;
mod demo;
mod demo_ceph;
mod demo_gateways;
mod logging;
mod ops;
mod output;
mod serve;
mod vsscmd;

use clap::{Parser, Subcommand};

/// shadowlun: an open-source VSS hardware provider, the array behind it, and a VSS emulator.
///
/// Administration commands (lun, host, snapshot, set) talk to a running array over its
/// control API; pass --array, --token-file and --fingerprint, or set SHADOWLUN_ARRAY,
/// SHADOWLUN_TOKEN_FILE and SHADOWLUN_FINGERPRINT. An array served by several gateways takes
/// one URL per gateway (repeat --array or separate the URLs with commas); a command moves on
/// to the next gateway when one cannot be reached.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Exit codes: 0 done; 1 failed (see the message); 2 a wrong command line or \
value; 3 not found; 4 refused because something is in the way (a guard rail, a name \
taken; the message says how to go on); 5 refused (authentication, a limit, no space); 6 the \
array cannot be reached; 7 the array's certificate does not match the pinned \
fingerprint. With --json, administration errors are a JSON object on stderr: \
{\"error\": {\"kind\", \"exit_code\", \"message\"}}."
)]
struct Cli {
    /// What to log on stderr: error, warn, info, debug or trace, or a filter such as
    /// `info,iscsi=debug`. Default: info for `array serve` (admin changes, iSCSI logins and
    /// logouts, refused logins), warn for every other command.
    #[arg(long, env = "SHADOWLUN_LOG", global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// How log lines are written on stderr: text (coloured only when stderr is a terminal)
    /// or json (one JSON object a line).
    #[arg(
        long,
        env = "SHADOWLUN_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t = logging::Format::Text
    )]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the array daemon.
    Array {
        #[command(subcommand)]
        cmd: ArrayCmd,
    },
    /// Manage LUNs on a running array.
    Lun {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        cmd: admin::LunCmd,
    },
    /// Manage hosts (initiators, CHAP, API tokens) and their LUN mappings.
    Host {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        cmd: admin::HostCmd,
    },
    /// List or delete snapshot LUNs.
    Snapshot {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        cmd: admin::SnapshotCmd,
    },
    /// List snapshot sets, reap abandoned ones.
    Set {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        cmd: admin::SetCmd,
    },
    /// The array's status: backend, array id, target and portals, pool space and
    /// overcommitment, sessions, sets in flight, health with reasons.
    Status {
        #[command(flatten)]
        conn: admin::Connection,
    },
    /// Open iSCSI sessions: who is connected, from where, seeing which LUNs.
    Session {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        cmd: admin::SessionCmd,
    },
    /// The array's gateways on Ceph: list them, drain one before maintenance or removal.
    Gateway {
        #[command(flatten)]
        conn: admin::Connection,
        #[command(subcommand)]
        cmd: admin::GatewayCmd,
    },
    /// The audit trail: every change asked of the array (who, what, when, from where).
    Audit {
        #[command(flatten)]
        conn: admin::Connection,
        /// Only changes since a duration ago (`2h`, `30min`, `7days`) or a time
        /// (`2026-12-06T14:00:00Z`, `2026-12-06 14:00:00`, UTC).
        #[arg(long)]
        since: Option<String>,
    },
    /// The VSS emulator: diskshadow-style scripts and the conformance catalogue.
    Vss {
        #[command(subcommand)]
        cmd: vsscmd::VssCmd,
    },
    /// Run a benchmark and print a table of ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Run the whole product once on this machine: an array, two emulated Windows hosts over
    /// iSCSI, a transportable hardware snapshot through the provider, import, consistency
    /// check from the data, resync, delete. Leaves nothing behind.
    Demo {
        /// Keep the array's pool directory (its path is printed).
        #[arg(long)]
        keep: bool,
        /// Where the array keeps its LUNs: `engine`, the embedded engine in the temporary
        /// directory; `rbd`, RBD images in a Ceph pool: of the cluster `--ceph-conf` (or
        /// CEPH_CONF) names, or else of a throwaway single-node cluster the demo starts and
        /// stops (needs Ceph installed: `scripts/setup --ceph`).
        #[arg(long, value_enum, default_value_t = DemoBackend::Engine)]
        backend: DemoBackend,
        /// With `--backend rbd`: the cluster's configuration file (default: none, a
        /// throwaway cluster).
        #[arg(long, env = "CEPH_CONF", value_name = "FILE")]
        ceph_conf: Option<std::path::PathBuf>,
        /// With `--backend rbd`: the pool (it must exist on a cluster named by
        /// `--ceph-conf`; a throwaway cluster makes it).
        #[arg(long, default_value = "rbd", value_name = "POOL")]
        ceph_pool: String,
        /// `2`: instead, two gateways of one array on Ceph (the cluster `--ceph-conf` names,
        /// or a throwaway one), a host writing through both with MPIO, and the serving
        /// gateway killed with SIGKILL mid-run: the failover, and the ledger intact.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        gateways: u8,
    },
    /// Run the array daemon for a while under a random schedule of everything it does
    /// (shadow copy sets of every kind, import, break, resync, delete; LUNs created, mapped,
    /// grown, deleted; a ledger writer all along), kill it with SIGKILL at random moments and
    /// start it again, and check that no acknowledged write is lost, every snapshot is one
    /// point in time, nothing is orphaned, its file descriptors, threads and memory stay
    /// bounded, and the pool's used space returns to its start. Exits 1 on the first
    /// violation, with the pool kept for inspection.
    Soak {
        /// How long to run (fractions allowed: 2.5).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seed of the schedule (default: from the clock; printed in the report).
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for the pool and the daemon's log (created, must be empty; kept).
        /// Default: a temporary directory, removed when the soak passes.
        #[arg(long)]
        pool: Option<std::path::PathBuf>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the VSS status code table, or look one code up by name or value.
    Hresult {
        /// A name (VSS_E_PROVIDER_VETO) or a value (0x80042306).
        code: Option<String>,
    },
}

/// `demo --backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoBackend {
    Engine,
    Rbd,
}

#[derive(Subcommand)]
enum ArrayCmd {
    /// Serve LUNs over iSCSI and the control API over HTTPS until SIGTERM or Ctrl-C.
    Serve(serve::ServeArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The embedded engine: snapshot time vs volume size and group size, I/O vs the raw file,
    /// writes after a snapshot, reads under 256 snapshots, resync proportional to changes.
    Engine,
    /// The iSCSI target against tgt and against raw reads of the same backing file.
    Target {
        /// Seconds per turn of each workload (three turns per target, alternating).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Size of the backing file in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Leave tgt out (its rows then have no baseline).
        #[arg(long)]
        no_tgt: bool,
        /// Backing file to create and measure (default: in the temporary directory).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Count every read and write of shadowlun's LUNs as the daemon does for its
        /// Prometheus endpoint (to measure what the metrics cost).
        #[arg(long)]
        metrics: bool,
    },
    /// The iSCSI target on the rbd backend against tgt's rbd backing store and `rbd bench`
    /// on one Ceph cluster, and the backend's CommitSnapshots latency for 1, 8 and 64 LUNs,
    /// idle and under writes. Needs a cluster: `eval "$(scripts/ceph-lab start DIR)"`.
    Rbd {
        /// Seconds per turn of each workload and contender.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Turns of each workload (the rows are their medians; at least 3).
        #[arg(long, default_value_t = 5)]
        turns: usize,
        /// Size of each image of the I/O workloads in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Commits measured per set size, idle and again under writes (0: the commit part
        /// is left out).
        #[arg(long, default_value_t = 15)]
        commits: usize,
        /// The cluster's configuration file (default: $CEPH_CONF, then /etc/ceph/ceph.conf).
        #[arg(long)]
        ceph_conf: Option<std::path::PathBuf>,
        /// The pool to make the images in (they are removed at the end).
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// Leave tgt out.
        #[arg(long)]
        no_tgt: bool,
        /// A librados/librbd setting for shadowlun's own contender, applied after its
        /// defaults, as `[backend.settings]` would (repeatable; for example
        /// `--rbd-setting rbd_cache_writethrough_until_flush=true` for librbd's own default)
        #[arg(long = "rbd-setting", value_name = "KEY=VALUE", value_parser = key_value)]
        rbd_settings: Vec<(String, String)>,
    },
    /// A LUN of the array daemon on its default backend, the embedded engine, through its own
    /// iSCSI target: sequential and random reads and writes with no snapshot, right after a
    /// snapshot and with 64 snapshots, against a file LUN on the same target and against tgt,
    /// with the target's CPU time per GiB and per million I/Os.
    Array {
        /// Seconds per run (each contender runs every workload `--runs` times, alternating).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Runs per contender, workload and phase; the table shows the median and min-max.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Size of the LUN (and of the file the other contenders serve) in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Snapshots of the LUN in the last phase.
        #[arg(long, default_value_t = 64)]
        snapshots: usize,
        /// Leave tgt out (its rows are then missing).
        #[arg(long)]
        no_tgt: bool,
        /// Directory for the daemon's pool and the file (default: the temporary directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Only the workloads whose name contains this ("random read"), e.g. to profile one.
        #[arg(long)]
        only: Option<String>,
    },
    /// The provider against a real array: commit latency over HTTPS (64 vs 1 LUN) and a full
    /// creation cycle with surfacing over iSCSI.
    Vss,
    /// The provider core against the array on the memory engine, in the process
    /// (AreLunsSupported, CommitSnapshots).
    Provider,
    /// What a gateway that cannot be reached costs the provider's calls when its URL is
    /// listed before a live gateway's (a refused one, one whose host is down), against the
    /// live gateway alone: warm calls and the first call of a new client.
    Failover {
        /// Calls of each warm client.
        #[arg(long, default_value_t = 200)]
        warm: usize,
        /// New clients of each kind (each costs one connect timeout with a host down).
        #[arg(long, default_value_t = 5)]
        cold: usize,
    },
    /// Two gateways of one array on a Ceph cluster (docs/gateways.md): the time from the end
    /// of the serving gateway (SIGKILL: a failover; SIGTERM: a planned handover) to the first
    /// write acknowledged through the next, every earlier write read back first. Needs a
    /// cluster: `eval "$(scripts/ceph-lab start DIR)"`.
    Gateways {
        /// Rounds ended with SIGKILL.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Rounds ended with SIGTERM.
        #[arg(long, default_value_t = 3)]
        handovers: usize,
        /// Mappings made (and removed) through the serving gateway, each timed until the
        /// standby's paths show it.
        #[arg(long, default_value_t = 10)]
        changes: usize,
        /// The gateways' lease in seconds (`[gateway] lease_secs`).
        #[arg(long, default_value_t = 5)]
        lease_secs: u64,
        /// The cluster's configuration file (default: $CEPH_CONF, then /etc/ceph/ceph.conf).
        #[arg(long)]
        ceph_conf: Option<std::path::PathBuf>,
        /// The pool (the benchmark works in a RADOS namespace of its own, removed at the end).
        #[arg(long, default_value = "rbd")]
        pool: String,
    },
    /// The emulated host's MPIO over two target ports against one iSCSI session (4 KiB READ
    /// and WRITE latency), and the first WRITE after the LU moves to the other port group.
    Mpio {
        /// READs and WRITEs of each contender.
        #[arg(long, default_value_t = 2000)]
        ops: usize,
        /// Moves of the LU between the two groups.
        #[arg(long, default_value_t = 50)]
        moves: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Array { .. } => "info",
        _ => "warn",
    };
    if let Err(e) = logging::init(cli.log_level.as_deref(), default_level, cli.log_format) {
        eprintln!("error: {e}");
        std::process::exit(admin::ErrorKind::Usage.exit_code());
    }
    let json = match &cli.command {
        Command::Lun { conn, .. }
        | Command::Host { conn, .. }
        | Command::Snapshot { conn, .. }
        | Command::Set { conn, .. }
        | Command::Status { conn }
        | Command::Session { conn, .. }
        | Command::Gateway { conn, .. }
        | Command::Audit { conn, .. } => {
            // Administration commands print and end: a closed pipe (`| head -1`) ends them
            // quietly, as it does any Unix tool. Commands that serve (array serve, demo, vss,
            // bench) keep ignoring SIGPIPE, so a peer that goes away is an error, not death.
            sigpipe::reset();
            conn.json
        }
        _ => false,
    };
    if let Err(e) = run(cli) {
        let (kind, message) = match e.downcast_ref::<admin::AdminError>() {
            Some(a) => (a.kind, a.message.clone()),
            None => (admin::ErrorKind::Failed, format!("{e:#}")),
        };
        if json {
            let doc = serde_json::json!({
                "error": { "kind": kind, "exit_code": kind.exit_code(), "message": message }
            });
            eprintln!("{doc}");
        } else {
            eprintln!("error: {message}");
        }
        std::process::exit(kind.exit_code());
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Array {
            cmd: ArrayCmd::Serve(args),
        } => serve::run(args),
        Command::Lun { conn, cmd } => admin::lun(&conn, cmd),
        Command::Host { conn, cmd } => admin::host(&conn, cmd),
        Command::Snapshot { conn, cmd } => admin::snapshot(&conn, cmd),
        Command::Set { conn, cmd } => admin::set(&conn, cmd),
        Command::Status { conn } => ops::status(&conn),
        Command::Session { conn, cmd } => ops::session(&conn, cmd),
        Command::Gateway { conn, cmd } => ops::gateway(&conn, cmd),
        Command::Audit { conn, since } => ops::audit(&conn, since.as_deref()),
        Command::Bench { what, json } => {
            let r = match what {
                BenchCmd::Engine => {
                    lab::engine_bench::run(&lab::engine_bench::BenchOptions::default())?
                }
                BenchCmd::Target {
                    seconds,
                    size_mib,
                    no_tgt,
                    file,
                    metrics,
                } => {
                    let defaults = lab::target_bench::BenchOptions::default();
                    lab::target_bench::run(&lab::target_bench::BenchOptions {
                        duration: std::time::Duration::from_secs_f64(seconds.max(0.1)),
                        size_mib: size_mib.max(16),
                        with_tgt: !no_tgt,
                        backing: file.unwrap_or(defaults.backing),
                        metered: metrics,
                    })?
                }
                BenchCmd::Rbd {
                    seconds,
                    turns,
                    size_mib,
                    commits,
                    ceph_conf,
                    pool,
                    no_tgt,
                    rbd_settings,
                } => lab::rbd_bench::run(&lab::rbd_bench::RbdBenchOptions {
                    ceph_conf,
                    pool,
                    settings: rbd_settings,
                    size_mib: size_mib.max(16),
                    duration: std::time::Duration::from_secs_f64(seconds.max(0.1)),
                    reps: turns.max(3),
                    commits,
                    with_tgt: !no_tgt,
                })?,
                BenchCmd::Array {
                    seconds,
                    runs,
                    size_mib,
                    snapshots,
                    no_tgt,
                    dir,
                    only,
                } => {
                    let defaults = lab::array_bench::BenchOptions::default();
                    lab::array_bench::run(&lab::array_bench::BenchOptions {
                        dir: dir.unwrap_or(defaults.dir),
                        size_mib: size_mib.max(16),
                        duration: std::time::Duration::from_secs_f64(seconds.max(0.05)),
                        runs: runs.max(1),
                        snapshots,
                        with_tgt: !no_tgt,
                        only,
                    })?
                }
                BenchCmd::Vss => lab::vss_bench::vss_end_to_end()?,
                BenchCmd::Provider => lab::vss_bench::provider_core(),
                BenchCmd::Failover { warm, cold } => {
                    lab::failover_bench::run(&lab::failover_bench::BenchOptions { warm, cold })?
                }
                BenchCmd::Gateways {
                    kills,
                    handovers,
                    changes,
                    lease_secs,
                    ceph_conf,
                    pool,
                } => lab::gateways_bench::run(&lab::gateways_bench::BenchOptions {
                    kills,
                    handovers,
                    changes,
                    lease_secs: lease_secs.clamp(2, 300),
                    ceph_conf,
                    pool,
                })?,
                BenchCmd::Mpio { ops, moves } => {
                    lab::mpio_bench::run(&lab::mpio_bench::BenchOptions { ops, moves })?
                }
            };
            if json {
                output::json(&r)
            } else {
                print!("{r}");
                Ok(())
            }
        }
        Command::Demo {
            keep,
            ceph_conf,
            ceph_pool,
            gateways: 2,
            ..
        } => demo_gateways::run(ceph_conf, ceph_pool, keep),
        Command::Demo {
            keep,
            backend,
            ceph_conf,
            ceph_pool,
            gateways: _,
        } => demo::run(
            keep,
            match backend {
                DemoBackend::Engine => demo::Storage::Engine,
                DemoBackend::Rbd => demo::Storage::Rbd {
                    ceph_conf,
                    pool: ceph_pool,
                },
            },
        ),
        Command::Soak {
            minutes,
            seed,
            pool,
            json,
        } => soak(minutes, seed, pool, json),
        Command::Vss { cmd } => vsscmd::run(cmd),
        Command::Hresult { code } => hresult(code),
    }
}

fn soak(
    minutes: f64,
    seed: Option<u64>,
    pool: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        minutes.is_finite() && minutes > 0.0,
        "--minutes must be a positive number of minutes"
    );
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let options = lab::soak::Options {
        minutes,
        seed,
        dir: pool,
        program: std::env::current_exe()?,
        bounds: lab::soak::check::Bounds::default(),
    };
    if !json {
        println!("shadowlun soak: {minutes} min, seed {seed}");
    }
    let report = lab::soak::run(&options)?;
    if json {
        output::json(&report)?;
    } else {
        print!("{report}");
    }
    if let Some(v) = &report.violation {
        anyhow::bail!("soak failed: {v} (pool kept in {})", report.dir);
    }
    Ok(())
}

fn hresult(code: Option<String>) -> anyhow::Result<()> {
    use vss::Hresult;
    let Some(code) = code else {
        for (_, h) in Hresult::ALL {
            println!("{h}");
        }
        return Ok(());
    };
    let parsed = Hresult::from_name(&code.to_ascii_uppercase()).or_else(|| {
        let hex = code.trim_start_matches("0x").trim_start_matches("0X");
        u32::from_str_radix(hex, 16).ok().map(Hresult)
    });
    match parsed {
        Some(h) => {
            println!("{h}");
            Ok(())
        }
        None => anyhow::bail!(
            "'{code}' is neither a known status name (like VSS_E_PROVIDER_VETO) nor a hex value (like 0x80042306)"
        ),
    }
}

/// `KEY=VALUE`, both non-empty.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}
