//! Runs the target benchmark: `cargo run --release -p iscsi --example bench -- [--json]
//! [--seconds N] [--size-mib N] [--no-tgt] [--file PATH]`.

use std::time::Duration;

fn main() {
    let mut opts = iscsi::bench::BenchOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--no-tgt" => opts.with_tgt = false,
            "--seconds" => {
                opts.duration =
                    Duration::from_secs_f64(args.next().and_then(|v| v.parse().ok()).unwrap_or(3.0))
            }
            "--size-mib" => opts.size_mib = args.next().and_then(|v| v.parse().ok()).unwrap_or(256),
            "--file" => opts.backing = args.next().map(Into::into).unwrap_or(opts.backing),
            other => {
                eprintln!("bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    match iscsi::bench::run(&opts) {
        Ok(r) if json => println!("{}", serde_json::to_string_pretty(&r).expect("json")),
        Ok(r) => print!("{r}"),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}
