//! Crash test for the blockstore engine: runs a workload in a child process, kills it with
//! SIGKILL at a random moment (after a random number of acknowledged operations, plus up to
//! `--max-delay-us` microseconds), reopens the pool and checks that every flushed write and
//! every snapshot is exactly as expected. Repeats for `--runs` runs (default 200; set
//! `BLOCKSTORE_CRASH_RUNS=1000` or `--runs 1000` for the long mode).
//!
//! ```text
//! blockstore-crashtest [--runs N] [--seed S] [--ops N] [--max-delay-us N] [--keep DIR]
//! ```
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lab::crashtest;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn arg<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let dir: PathBuf = arg(&args, "--dir").expect("--dir");
        let seed: u64 = arg(&args, "--seed").expect("--seed");
        let ops: usize = arg(&args, "--ops").expect("--ops");
        let mut out = std::io::stdout().lock();
        return match crashtest::run_child(&dir, seed, ops, &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("child error: {e}");
                ExitCode::from(3)
            }
        };
    }
    let runs: usize = arg(&args, "--runs")
        .or_else(|| {
            std::env::var("BLOCKSTORE_CRASH_RUNS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(200);
    let seed: u64 = arg(&args, "--seed").unwrap_or_else(|| rand::rng().random());
    let ops: usize = arg(&args, "--ops").unwrap_or(400);
    let max_delay_us: u64 = arg(&args, "--max-delay-us").unwrap_or(3000);
    let keep: Option<PathBuf> = arg(&args, "--keep");
    let exe = std::env::current_exe().expect("own path");
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let (mut killed, mut completed, mut acked_total) = (0usize, 0usize, 0usize);
    println!("crash test: {runs} runs, base seed {seed}, {ops} operations per run");
    for run in 0..runs {
        let run_seed = seed.wrapping_add(run as u64);
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("pool");
        let mut child = Command::new(&exe)
            .args(["child", "--dir"])
            .arg(&dir)
            .args(["--seed", &run_seed.to_string(), "--ops", &ops.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        // The kill point: after a random number of acknowledged operations (0 = during
        // pool creation) plus a random delay of up to `max_delay_us`, so that kills land
        // everywhere in the workload whatever the speed of the machine.
        let kill_after = rng.random_range(0..ops);
        let jitter = Duration::from_micros(rng.random_range(0..=max_delay_us));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut out = String::new();
        let mut seen = 0usize;
        if kill_after > 0 {
            let mut line = String::new();
            while seen < kill_after {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        out.push_str(&line);
                        seen += 1;
                    }
                }
            }
        }
        std::thread::sleep(jitter);
        let _ = child.kill();
        let status = child.wait().expect("wait child");
        stdout.read_to_string(&mut out).expect("read acks");
        let acked = out.lines().filter(|l| l.parse::<usize>().is_ok()).count();
        if status.success() {
            completed += 1;
        } else if status.code() == Some(3) {
            eprintln!("run {run} (seed {run_seed}): the workload failed before the crash");
            return ExitCode::FAILURE;
        } else {
            killed += 1;
        }
        acked_total += acked;
        if acked == 0 && !dir.join("checkpoint").exists() {
            continue; // killed while creating the pool: nothing was acknowledged
        }
        if let Err(e) = crashtest::verify(&dir, run_seed, ops, acked) {
            eprintln!("run {run} (seed {run_seed}, {acked} operations acknowledged): {e}");
            if let Some(k) = keep {
                let _ = std::fs::create_dir_all(&k);
                let _ = Command::new("cp").arg("-a").arg(&dir).arg(&k).status();
                eprintln!("pool kept in {}", k.display());
            }
            return ExitCode::FAILURE;
        }
    }
    // A run whose child finished before the kill proves nothing about recovery from a crash;
    // the kill point is drawn inside the workload, so nearly every run must be a real crash.
    if completed > (runs / 10).max(1) {
        eprintln!(
            "only {killed} of {runs} runs were killed mid-run: the harness is not crashing the \
             engine (lower --max-delay-us)"
        );
        return ExitCode::FAILURE;
    }
    println!(
        "crash test passed: {runs} runs ({killed} killed mid-run, {completed} ran to the end), \
         {acked_total} acknowledged operations verified, {:.1}s",
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
