//! Runs the array daemon from a TOML file until SIGINT or SIGTERM, the way
//! `shadowlun array serve --config FILE` does.
//!
//! ```text
//! cargo run -p array --example serve -- /etc/shadowlun/array.toml
//! ```

fn main() {
    array::private_files();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match std::env::args().nth(1) {
        Some(path) => match array::Config::load(std::path::Path::new(&path)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("serve: {e}");
                std::process::exit(2);
            }
        },
        None => array::Config::default(),
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        // Handlers first: a signal while the array starts stops it once started.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        array::serve(config, async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
        .await
    });
    if let Err(e) = result {
        eprintln!("serve: {e}");
        std::process::exit(1);
    }
}
