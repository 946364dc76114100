//! A short run of the crash harness (the CI stage runs 200, the long mode 1000+).

use std::process::Command;

#[test]
fn pools_killed_at_random_points_recover_every_flushed_write_and_snapshot() {
    let out = Command::new(env!("CARGO_BIN_EXE_blockstore-crashtest"))
        .args([
            "--runs",
            "6",
            "--seed",
            "4242",
            "--ops",
            "120",
            "--max-delay-us",
            "2000",
        ])
        .output()
        .expect("run the crash test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("crash test passed: 6 runs"), "{stdout}");
}
