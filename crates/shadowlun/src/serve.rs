//! `shadowlun array serve`: runs the array daemon until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML). Every setting has a default; see array.example.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Pool directory (overrides the configuration file).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Control API listen address, e.g. 127.0.0.1:8443 (overrides the configuration file).
    #[arg(long)]
    pub api: Option<std::net::SocketAddr>,
    /// iSCSI portal, e.g. 127.0.0.1:3260; repeat for several (overrides the configuration file).
    #[arg(long = "portal")]
    pub portals: Vec<std::net::SocketAddr>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    array::private_files();
    let mut config = match &args.config {
        Some(p) => array::Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => array::Config::default(),
    };
    if let Some(p) = args.pool {
        config.pool_dir = p;
    }
    if let Some(a) = args.api {
        config.api_listen = a;
    }
    if !args.portals.is_empty() {
        config.iscsi_portals = args.portals;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        // The handlers are in place before the array starts: a SIGTERM that arrives while it
        // starts, or right after it told systemd it is ready, stops it cleanly once started.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("shadowlun array: stopping");
        };
        array::serve(config, shutdown).await?;
        anyhow::Ok(())
    });
    // A gateway out of office leaves calls to a cluster that may not answer behind: the
    // process ends without waiting for them.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
