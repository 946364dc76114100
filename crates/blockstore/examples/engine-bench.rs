//! Runs the engine benchmark: `cargo run --release -p blockstore --example engine-bench
//! [-- --json] [--quick] [--dir DIR]` (the same as `shadowlun bench engine`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(Into::into);
    let opts = blockstore::bench::BenchOptions {
        dir,
        quick: args.iter().any(|a| a == "--quick"),
    };
    match blockstore::bench::run(&opts) {
        Ok(r) if args.iter().any(|a| a == "--json") => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("serializable")
            );
            std::process::ExitCode::SUCCESS
        }
        Ok(r) => {
            println!("{r}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
