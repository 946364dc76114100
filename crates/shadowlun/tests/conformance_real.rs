//! The emulator's conformance catalogue against the real thing: the array daemon with its
//! embedded engine and iSCSI target, hosts reading LUNs over iSCSI, and shadowlun's provider
//! reaching the array over HTTPS with each host's token.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");

#[test]
fn every_conformance_scenario_passes_against_the_real_array() {
    conformance_passes("1");
}

#[test]
fn every_conformance_scenario_passes_with_hosts_on_two_paths() {
    conformance_passes("2");
}

/// The whole catalogue against the array daemon, each host reaching it through `paths`
/// portals (MPIO for more than one).
fn conformance_passes(paths: &str) {
    let out = Command::new(BIN)
        .args([
            "vss",
            "conformance",
            "--lab",
            "array",
            "--json",
            "--paths",
            paths,
        ])
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
        scenarios.len() >= 40,
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
    // Once with one portal, once with hosts reaching two portals through MPIO.
    for paths in ["1", "2"] {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/vss/");
        let dir =
            std::env::temp_dir().join(format!("shadowlun-scripts-{}-{paths}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(BIN)
            .args(["--log-level", "info", "vss", "run", "--lab", "array"])
            .args(["--paths", paths, "--dir"])
            .arg(&dir)
            .arg(format!("{root}transportable-backup.dsh"))
            .arg(format!("b={root}import-and-break.dsh"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}\n{log}");
        // Host a does not store its transportable set; host b lists it after the import.
        let a_part = text.split("--- ").nth(1).unwrap_or_default();
        assert!(
            a_part.contains("Number of shadow copies listed: 0"),
            "{text}"
        );
        assert!(text.contains("Number of shadow copies listed: 2"), "{text}");
        assert!(dir.join("backup.json").exists(), "the BCD was not written");
        assert_eq!(
            log.contains("MPIO path chosen"),
            paths == "2",
            "MPIO only with two portals:\n{log}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_failing_script_stops_after_printing_what_ran_and_a_syntax_error_runs_nothing() {
    let dir = std::env::temp_dir().join(format!("shadowlun-script-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fails = dir.join("fails.dsh");
    std::fs::write(
        &fails,
        "set context persistent nowriters\nadd volume e:\\\ncreate\nrevert %VSS_SHADOW_1%\nlist shadows all\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["vss", "run", "--lab", "memory", "--dir"])
        .arg(&dir)
        .arg(&fails)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("Shadow copy set ID {"), "{stdout}");
    assert!(
        !stdout.contains("Number of shadow copies listed"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 4:") && stderr.contains("E_NOTIMPL"),
        "{stderr}"
    );

    let bad = dir.join("bad.dsh");
    std::fs::write(&bad, "list shadows all\nfrobnicate\n").unwrap();
    let out = Command::new(BIN)
        .args(["vss", "run", "--lab", "memory", "--dir"])
        .arg(&dir)
        .arg(&fails)
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("Shadow copy set ID"),
        "the first script ran: {stdout}"
    );
    assert!(
        stderr.contains("bad.dsh: line 2: expected a command"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_a_has_a_database_writer_that_vetoes_when_asked_and_nowriters_leaves_it_out() {
    let dir = std::env::temp_dir().join(format!("shadowlun-writers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let with = dir.join("with.dsh");
    std::fs::write(
        &with,
        "set context persistent\nwriter verify SqlServerWriter\nbegin backup\nadd volume E:\ncreate\nend backup\nlist writers metadata\n",
    )
    .unwrap();
    let copy = dir.join("copy.dsh");
    std::fs::write(
        &copy,
        "set context persistent\nset type copy\nbegin backup\nadd volume F:\ncreate\nend backup\nlist writers status\nset\n",
    )
    .unwrap();
    let without = dir.join("without.dsh");
    std::fs::write(
        &without,
        "set context persistent nowriters\nbegin backup\nadd volume E:\ncreate\nend backup\n",
    )
    .unwrap();
    let run = |fault: Option<&str>, script: &std::path::Path| {
        let mut c = Command::new(BIN);
        c.args(["vss", "run", "--lab", "memory", "--dir"]).arg(&dir);
        if let Some(f) = fault {
            c.args(["--writer-fault", f]);
        }
        let o = c.arg(script).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, err) = run(None, &with);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("BackupComplete sent to 1 writers (full backup)."),
        "{out}"
    );
    assert!(
        out.contains("\t\t- Last backup complete: log truncated"),
        "{out}"
    );
    assert!(out.contains("\t* WRITER \"SqlServerWriter\""), "{out}");
    assert!(
        out.contains("\t\t\t- Volumes affected by this component: F:"),
        "{out}"
    );
    // A copy backup: the database writer keeps its log.
    let (code, out, err) = run(None, &copy);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("BackupComplete sent to 1 writers (copy backup)."),
        "{out}"
    );
    assert!(
        out.contains("\t\t- Last backup complete: log kept (copy backup)"),
        "{out}"
    );
    assert!(out.contains("-> type: copy"), "{out}");
    let (code, out, err) = run(Some("veto"), &with);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("line 5:") && err.contains("VSS_E_WRITERERROR_NONRETRYABLE"),
        "{err}"
    );
    let (code, _, err) = run(Some("timeout"), &with);
    assert_eq!(code, Some(1));
    assert!(err.contains("VSS_E_WRITERERROR_TIMEOUT"), "{err}");
    // nowriters: the vetoing writer is not asked; no BackupComplete either.
    let (code, out, err) = run(Some("veto"), &without);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("Shadow copy set ID {"), "{out}");
    assert!(!out.contains("BackupComplete"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
