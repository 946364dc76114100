//! The emulator's conformance catalogue against the real thing: the array daemon with its
//! embedded engine and iSCSI target, hosts reading LUNs over iSCSI, and shadowlun's provider
//! reaching the array over HTTPS with each host's token.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");

#[test]
fn every_conformance_scenario_passes_against_the_real_array() {
    let out = Command::new(BIN)
        .args(["vss", "conformance", "--lab", "array", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let scenarios = report["results"].as_array().expect("results");
    assert!(
        scenarios.len() >= 25,
        "only {} scenarios ran",
        scenarios.len()
    );
    let failed: Vec<String> = scenarios
        .iter()
        .filter(|s| s["passed"] != true)
        .map(|s| format!("{}: {}", s["name"], s["detail"]))
        .collect();
    assert!(
        failed.is_empty(),
        "failed against the real array:\n{}",
        failed.join("\n")
    );
    assert!(out.status.success());
}

#[test]
fn example_scripts_run_on_two_hosts_against_the_real_array() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/vss/");
    let dir = std::env::temp_dir().join(format!("shadowlun-scripts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(BIN)
        .args(["vss", "run", "--lab", "array", "--dir"])
        .arg(&dir)
        .arg(format!("{root}transportable-backup.dsh"))
        .arg(format!("b={root}import-and-break.dsh"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Number of shadow copies listed: 2"), "{text}");
    assert!(dir.join("backup.json").exists(), "the BCD was not written");
    let _ = std::fs::remove_dir_all(&dir);
}
