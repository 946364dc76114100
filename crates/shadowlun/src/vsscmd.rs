//! `shadowlun vss run|conformance`: the VSS emulator from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use lab::real_lab::{RealLab, RealLabFactory, SharedLab};
use lab::shadowlun_lab::ShadowlunLabFactory;
use lab::wine_lab::{WineLabFactory, WineSetup};
use vss_emulator::conformance::{self, Ctx, Lab, LabFactory};
use vss_emulator::coordinator::Config;
use vss_emulator::script::{Environment, parse, run_commands};
use vss_emulator::writer::{DatabaseWriter, WriterFault};

/// Which array the emulated hosts and the provider talk to.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LabKind {
    /// The array on the memory engine, called in-process (fast; no network).
    Memory,
    /// A real array daemon on loopback: HTTPS control API, iSCSI hosts, embedded engine.
    Array,
    /// As `array`, with the Windows provider (`shadowlun-provider.exe`) installed in Wine
    /// prefixes and called through COM from another Windows process (see `--wine-prefix`).
    Wine,
}

/// Where the Windows side is, for `--lab wine`.
#[derive(Args, Debug)]
pub struct WineArgs {
    /// A prepared Wine prefix (wineboot done, VSS proxy/stub registered); one per host with
    /// a live provider: give two for the conformance catalogue. Their Wine processes are
    /// stopped before use and afterwards.
    #[arg(long = "wine-prefix", value_name = "DIR")]
    prefixes: Vec<PathBuf>,
    /// The provider exe to install in each prefix.
    #[arg(
        long,
        value_name = "EXE",
        default_value = "target/x86_64-pc-windows-gnu/debug/shadowlun-provider.exe"
    )]
    provider_exe: PathBuf,
    /// The relay that activates the installed provider through COM and carries calls to it.
    #[arg(
        long,
        value_name = "EXE",
        default_value = "target/x86_64-pc-windows-gnu/debug/examples/relay.exe"
    )]
    relay_exe: PathBuf,
    /// Wine's loader for 64-bit programs (Debian's wine64 package puts it here).
    #[arg(long, value_name = "PATH", default_value = "/usr/lib/wine/wine64")]
    wine: PathBuf,
    /// `wineserver`, used to stop each prefix's Wine processes (`-k`).
    #[arg(long, value_name = "PATH", default_value = "wineserver")]
    wineserver: PathBuf,
}

impl WineArgs {
    fn factory(self) -> anyhow::Result<WineLabFactory> {
        WineLabFactory::new(WineSetup {
            prefixes: self.prefixes,
            provider_exe: self.provider_exe,
            relay_exe: self.relay_exe,
            wine: self.wine,
            wineserver: self.wineserver,
        })
    }
}

/// `--writer-fault`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FaultArg {
    Veto,
    Timeout,
}

#[derive(Subcommand, Debug)]
pub enum VssCmd {
    /// Run diskshadow-style scripts, in order, on two emulated hosts sharing one array.
    ///
    /// Host `a` (iqn.1991-05.com.microsoft:host-a) has volumes E: and F: on one LUN and G:
    /// spanning two; host `b` (iqn.1991-05.com.microsoft:host-b) starts with no LUNs and may
    /// import host a's transportable sets. Prefix a script with `b=` to run it on host b.
    /// Example: `shadowlun vss run examples/vss/transportable-backup.dsh b=examples/vss/import-and-break.dsh`
    Run {
        /// `[a=|b=]FILE`, run in the order given.
        #[arg(required = true)]
        scripts: Vec<String>,
        #[arg(long, value_enum, default_value = "array")]
        lab: LabKind,
        /// Directory for metadata files the scripts name (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Make host a's database writer (SqlServerWriter: database on E:, log on F:) veto
        /// its freeze or time out.
        #[arg(long, value_enum)]
        writer_fault: Option<FaultArg>,
        /// With `--lab array`: the array listens on this many iSCSI portals and each host
        /// reaches its LUNs through all of them with MPIO (one path per portal).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
        paths: u16,
        #[command(flatten)]
        wine: WineArgs,
    },
    /// Run the conformance catalogue (docs/vss-contract.md §10) and print a verdict per scenario.
    ///
    /// With `--lab wine`, each emulated host's provider is the real `shadowlun-provider.exe`
    /// installed in a Wine prefix and called through COM; scripts/ci.d/40-windows.sh prepares
    /// the prefixes and runs it.
    Conformance {
        #[arg(long, value_enum, default_value = "memory")]
        lab: LabKind,
        /// With `--lab array`: the storage backend each array keeps its LUNs in, with its
        /// default settings (`rbd`: pool `rbd` of the cluster `$CEPH_CONF` names).
        #[arg(long, default_value = "engine")]
        backend: String,
        /// Only scenarios whose name contains this text.
        #[arg(long, default_value = "")]
        filter: String,
        /// Only part K of N of the (filtered) catalogue, `K/N`: scenarios K, K+N, K+2N, ...
        /// in catalogue order; the N parts together are the whole catalogue (for a run that
        /// samples it, as CI does where a lab is slow).
        #[arg(long, value_name = "K/N")]
        part: Option<conformance::Part>,
        /// Print the full report, with every call trace, as JSON.
        #[arg(long)]
        json: bool,
        /// With `--lab array`: each array listens on this many iSCSI portals and each host
        /// reaches its LUNs through all of them with MPIO.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
        paths: u16,
        #[command(flatten)]
        wine: WineArgs,
    },
}

const HOST_A: &str = "iqn.1991-05.com.microsoft:host-a";
const HOST_B: &str = "iqn.1991-05.com.microsoft:host-b";

pub fn run(cmd: VssCmd) -> anyhow::Result<()> {
    match cmd {
        VssCmd::Conformance {
            lab,
            backend,
            filter,
            part,
            json,
            paths,
            wine,
        } => {
            if paths > 1 && !matches!(lab, LabKind::Array) {
                bail!("--paths needs --lab array: the other labs serve one portal");
            }
            let factory: Box<dyn LabFactory> = match lab {
                LabKind::Memory => Box::new(ShadowlunLabFactory),
                LabKind::Array => Box::new(
                    RealLabFactory::on(array::BackendConfig::with_defaults(&backend).ok_or_else(
                        || {
                            anyhow::anyhow!(
                                "--backend {backend:?} is not a storage backend; use one of {}",
                                array::BackendConfig::KINDS.join(", ")
                            )
                        },
                    )?)
                    .with_portals(paths.into()),
                ),
                LabKind::Wine => Box::new(wine.factory()?),
            };
            let report = conformance::run_part(factory.as_ref(), &filter, part);
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.summary());
                if let Some(p) = part {
                    println!(
                        "sample: part {} of {} ({} of the {} scenarios selected); the other parts run the rest",
                        p.index,
                        p.of,
                        report.results.len(),
                        conformance::selected(&filter)
                    );
                }
            }
            if !report.passed() {
                bail!("conformance failures (see above)");
            }
            Ok(())
        }
        VssCmd::Run {
            scripts,
            lab,
            dir,
            writer_fault,
            paths,
            wine,
        } => run_scripts(&scripts, lab, dir, writer_fault, paths, wine),
    }
}

fn run_scripts(
    scripts: &[String],
    lab: LabKind,
    dir: Option<PathBuf>,
    writer_fault: Option<FaultArg>,
    paths: u16,
    wine: WineArgs,
) -> anyhow::Result<()> {
    if paths > 1 && !matches!(lab, LabKind::Array) {
        bail!("--paths needs --lab array: the other labs serve one portal");
    }
    let mut parsed = Vec::new();
    for s in scripts {
        let (host, file) = match s.split_once('=') {
            Some(("a", f)) => ('a', f),
            Some(("b", f)) => ('b', f),
            Some((h, _)) => bail!("unknown host '{h}' in '{s}': use a=FILE or b=FILE"),
            None => ('a', s.as_str()),
        };
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading script {file}"))?;
        // Every script is parsed before any runs: a syntax error runs nothing.
        let commands = parse(&text).map_err(|e| crate::admin::AdminError {
            kind: crate::admin::ErrorKind::Usage,
            message: format!("{file}: {e}"),
        })?;
        parsed.push((host, file.to_string(), commands));
    }
    let base = match dir {
        Some(d) => d,
        None => {
            let d = std::env::temp_dir().join(format!("shadowlun-vss-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    // Declared before the lab: its prefixes are stopped after the lab is gone.
    let wine_factory;
    let boxed: Box<dyn Lab> = match lab {
        LabKind::Memory => ShadowlunLabFactory.build().map_err(anyhow::Error::msg)?,
        LabKind::Wine => {
            wine_factory = wine.factory()?;
            wine_factory.build().map_err(anyhow::Error::msg)?
        }
        LabKind::Array => {
            let pool = base.join("array-pool");
            Box::new(SharedLab(Arc::new(RealLab::start_with_portals(
                pool,
                false,
                array::BackendConfig::default(),
                paths.into(),
            )?)))
        }
    };
    let ctx = Ctx::new(boxed);
    let a = ctx
        .rig(HOST_A, Config::default(), vec![])
        .map_err(anyhow::Error::msg)?;
    let b = ctx
        .bare_rig(HOST_B, Config::default(), vec![])
        .map_err(anyhow::Error::msg)?;
    // Host a runs a database-like writer, so `nowriters`, `writer exclude|verify` and
    // `end backup` make a difference.
    let fault = writer_fault.map(|f| match f {
        FaultArg::Veto => WriterFault::Veto,
        FaultArg::Timeout => WriterFault::Timeout,
    });
    a.coord
        .add_writer(DatabaseWriter::new("SqlServerWriter", "E:", "F:", fault));
    println!("metadata directory: {}", base.display());
    for (host, file, text) in parsed {
        let coord = if host == 'a' {
            a.coord.clone()
        } else {
            b.coord.clone()
        };
        println!("--- {file} on host {host}");
        let mut env = Environment::new(coord, &base);
        // Lines are printed as each command runs; the first failing command stops the run
        // (exit code 1) after what it printed.
        let mut stdout = std::io::stdout();
        run_commands(&text, &mut env, &mut |l| {
            use std::io::Write;
            let _ = writeln!(stdout, "{l}");
            let _ = stdout.flush();
        })
        .map_err(|e| match e.hresult() {
            Some(code) => anyhow::anyhow!("{file}: {e} [{code}]"),
            None => anyhow::anyhow!("{file}: {e}"),
        })?;
    }
    Ok(())
}
