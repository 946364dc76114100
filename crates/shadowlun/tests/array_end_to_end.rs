//! The real daemon as a child process, administered with the real CLI, driven by the real
//! provider over HTTPS: one full VSS creation cycle, deletion, and a clean SIGTERM stop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provider::https::{ClientConfig, HttpsArray};
use provider::{HardwareProvider, ShadowlunProvider};
use vss::identity::LunIdentity;
use vss::{BusType, LunInfo, SnapshotContext, VolumeSnapshotAttributes, VssId};

const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");
const HOST_A: &str = "iqn.1991-05.com.microsoft:sql01";

struct Daemon {
    child: Child,
    api: String,
    fingerprint: String,
    token_file: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(pool: &Path) -> Daemon {
    let mut child = Command::new(BIN)
        .args([
            "array",
            "serve",
            "--api",
            "127.0.0.1:0",
            "--portal",
            "127.0.0.1:0",
            "--pool",
        ])
        .arg(pool)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting shadowlun array serve");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut fingerprint, mut token_file) = (None, None, None);
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("shadowlun array: API ") {
            api = Some(v.trim().to_string());
        } else if let Some(v) =
            line.strip_prefix("shadowlun array: certificate SHA-256 fingerprint ")
        {
            fingerprint = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: admin token in ") {
            token_file = Some(PathBuf::from(v.trim()));
        }
        if api.is_some() && fingerprint.is_some() && token_file.is_some() {
            break;
        }
    }
    Daemon {
        child,
        api: api.expect("the daemon printed its API address"),
        fingerprint: fingerprint.expect("the daemon printed its fingerprint"),
        token_file: token_file.expect("the daemon printed the admin token path"),
    }
}

/// Runs the CLI against the daemon, with `--json` when asked.
fn run_cli(d: &Daemon, args: &[&str], json: bool) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args([
            "--array",
            &d.api,
            "--fingerprint",
            &d.fingerprint,
            "--token-file",
        ])
        .arg(&d.token_file)
        .args(json.then_some("--json"))
        .output()
        .unwrap()
}

fn cli(d: &Daemon, args: &[&str]) -> String {
    let out = run_cli(d, args, true);
    assert!(
        out.status.success(),
        "shadowlun {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI expecting it to fail; returns what it said on stderr.
fn cli_fails(d: &Daemon, args: &[&str]) -> String {
    let out = run_cli(d, args, false);
    assert!(!out.status.success(), "shadowlun {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// What a Windows host builds for the LUN (from the pages the array serves for it).
fn host_view(naa_hex: &str) -> LunInfo {
    let n = u64::from_str_radix(naa_hex, 16).unwrap() & 0x0FFF_FFFF_FFFF_FFFF;
    LunInfo::from_identity(
        &LunIdentity::for_number(n).scsi_identity(&[]),
        BusType::ISCSI,
    )
    .unwrap()
}

#[test]
fn provider_runs_a_full_cycle_against_the_real_daemon() {
    let dir = std::env::temp_dir().join(format!("shadowlun-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut d = start(&dir);

    // Administration through the CLI.
    let lun: serde_json::Value =
        serde_json::from_str(&cli(&d, &["lun", "create", "sql-data", "64MiB"])).unwrap();
    let lun = &lun[0];
    let lun_id = lun["id"].as_str().unwrap().to_string();
    let host: serde_json::Value =
        serde_json::from_str(&cli(&d, &["host", "add", "sql01", "--initiator", HOST_A])).unwrap();
    let token = host["token"].as_str().unwrap().to_string();
    cli(&d, &["host", "map", "sql01", &lun_id]);

    // The provider, with the host's token and the pinned certificate.
    let array = HttpsArray::new(ClientConfig::new(
        &format!("https://{}", d.api.trim_start_matches("https://")),
        &token,
        &d.fingerprint,
    ))
    .unwrap();
    let p = ShadowlunProvider::new(array);
    let ctx = SnapshotContext::BACKUP.with(VolumeSnapshotAttributes::TRANSPORTABLE);
    let devices = vec!["disk1".to_string()];
    let mut luns = vec![host_view(lun["naa"].as_str().unwrap())];
    assert_eq!(p.are_luns_supported(ctx, &devices, &mut luns), Ok(true));
    let set = VssId::new_v4();
    p.begin_prepare_snapshot(set, VssId::new_v4(), ctx, &devices, &mut luns)
        .unwrap();
    p.end_prepare_snapshots(set).unwrap();
    p.pre_commit_snapshots(set).unwrap();
    p.commit_snapshots(set).unwrap();
    p.post_commit_snapshots(set, 1).unwrap();
    let mut dest = vec![LunInfo::default()];
    p.get_target_luns(&devices, &luns, &mut dest).unwrap();
    p.locate_luns(&dest).unwrap();
    p.pre_final_commit_snapshots(set).unwrap();
    p.post_final_commit_snapshots(set).unwrap();
    let commit = p.last_commit_time().unwrap();
    assert!(
        commit < Duration::from_secs(1),
        "commit over HTTPS took {commit:?}"
    );

    // The array shows the snapshot LUN, derived from our LUN, in set `set`, mapped to sql01.
    let snaps: serde_json::Value = serde_json::from_str(&cli(&d, &["snapshot", "list"])).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["snapshot_of"]["source"], lun_id.as_str());
    assert_eq!(snaps[0]["snapshot_of"]["set_id"], set.to_string());
    assert_eq!(snaps[0]["mapped_to"][0]["host"], "sql01");
    // GetTargetLuns predicted the identity the array serves for it.
    let mut arrived = host_view(snaps[0]["naa"].as_str().unwrap());
    assert_eq!(p.fill_in_lun_info("disk2", &mut arrived), Ok(true));
    assert!(dest[0].matches_for_import(&arrived));
    let sets: serde_json::Value = serde_json::from_str(&cli(&d, &["set", "list"])).unwrap();
    assert_eq!(sets[0]["state"], "completed");

    // Another host sees the snapshot LUN only once an admin lets it import from sql01.
    let other: serde_json::Value = serde_json::from_str(&cli(
        &d,
        &[
            "host",
            "add",
            "backup01",
            "--initiator",
            "iqn.1991-05.com.microsoft:backup01",
        ],
    ))
    .unwrap();
    let outsider = ShadowlunProvider::new(
        HttpsArray::new(ClientConfig::new(
            &d.api,
            other["token"].as_str().unwrap(),
            &d.fingerprint,
        ))
        .unwrap(),
    );
    assert_eq!(
        outsider.locate_luns(&dest),
        Err(vss::Hresult::VSS_E_PROVIDER_VETO)
    );
    let trusted: serde_json::Value = serde_json::from_str(&cli(
        &d,
        &[
            "host",
            "add",
            "backup02",
            "--initiator",
            "iqn.1991-05.com.microsoft:backup02",
            "--import-from",
            "sql01",
        ],
    ))
    .unwrap();
    assert_eq!(trusted["host"]["import_from"][0], "sql01");
    let importer = ShadowlunProvider::new(
        HttpsArray::new(ClientConfig::new(
            &d.api,
            trusted["token"].as_str().unwrap(),
            &d.fingerprint,
        ))
        .unwrap(),
    );
    assert_eq!(importer.locate_luns(&dest), Ok(()));
    // The grant covers snapshot LUNs only, never the originals.
    let mut original = vec![host_view(lun["naa"].as_str().unwrap())];
    assert_eq!(
        importer.are_luns_supported(ctx, &devices, &mut original),
        Ok(false)
    );

    // An administrator's resync onto the original, still mapped to sql01, needs --force;
    // then it runs to completion.
    let snap_id = snaps[0]["id"].as_str().unwrap().to_string();
    let refused = cli_fails(&d, &["snapshot", "resync", &snap_id, &lun_id]);
    assert!(
        refused.contains("sql01") && refused.contains("--force"),
        "{refused}"
    );
    let done: serde_json::Value = serde_json::from_str(&cli(
        &d,
        &["snapshot", "resync", &snap_id, &lun_id, "--force"],
    ))
    .unwrap();
    assert_eq!(done["state"], "finished");
    assert_eq!(done["progress"], 100);

    // Deletion: OnLunEmpty releases the snapshot LUN; the original stays.
    assert_eq!(p.on_lun_empty("disk2", &dest[0]), Ok(()));
    let snaps: serde_json::Value = serde_json::from_str(&cli(&d, &["snapshot", "list"])).unwrap();
    assert!(snaps.as_array().unwrap().is_empty());
    let luns_now: serde_json::Value = serde_json::from_str(&cli(&d, &["lun", "list"])).unwrap();
    assert_eq!(luns_now.as_array().unwrap().len(), 1);

    // SIGTERM stops the daemon cleanly.
    let pid = d.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            assert!(status.success(), "daemon exited with {status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_errors_say_what_to_do() {
    let out = Command::new(BIN)
        .args(["lun", "list"])
        .env_remove("SHADOWLUN_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token-file"), "{err}");
    let out = Command::new(BIN)
        .args(["hresult", "VSS_E_PROVIDER_VETO"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "VSS_E_PROVIDER_VETO (0x80042306)"
    );
    let out = Command::new(BIN)
        .args(["hresult", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Exit codes say what kind of failure it was (`shadowlun --help` documents them), `--json`
/// errors are JSON, and a closed output pipe ends a listing quietly.
#[test]
fn exit_codes_json_errors_and_a_closed_pipe() {
    let dir = std::env::temp_dir().join(format!("shadowlun-exit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = start(&dir);
    cli(&d, &["lun", "create", "data", "8MiB"]);
    cli(&d, &["host", "add", "sql01", "--initiator", HOST_A]);
    cli(&d, &["host", "map", "sql01", "lun-1"]);
    let code = |args: &[&str], json: bool| run_cli(&d, args, json);
    // Not found: 3, and as JSON on stderr.
    let out = code(&["lun", "show", "lun-99"], true);
    assert_eq!(out.status.code(), Some(3));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["kind"], "not_found");
    assert_eq!(err["error"]["exit_code"], 3);
    assert!(err["error"]["message"].as_str().unwrap().contains("lun-99"));
    // In the way: 4.
    let out = code(&["host", "remove", "sql01"], false);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    // A wrong value: 2.
    assert_eq!(
        code(&["lun", "create", "x", "ten"], false).status.code(),
        Some(2)
    );
    // Nobody there: 6.
    let out = Command::new(BIN)
        .args([
            "lun",
            "list",
            "--array",
            "https://127.0.0.1:1",
            "--fingerprint",
        ])
        .arg(&d.fingerprint)
        .arg("--token-file")
        .arg(&d.token_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // `shadowlun lun list | head -0`: the reader is gone before the listing is written.
    let mut child = Command::new(BIN)
        .args([
            "lun",
            "list",
            "--array",
            &d.api,
            "--fingerprint",
            &d.fingerprint,
            "--token-file",
        ])
        .arg(&d.token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
