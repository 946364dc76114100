//! Operations on the real path: the daemon as a process (JSON logs on stderr), the CLI as a
//! process, the project's iSCSI initiator logging in, out, and being refused; status, session
//! list, and an audit trail that survives kill -9 and holds no secret.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");
const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";
const BACKUP01: &str = "iqn.1991-05.com.microsoft:backup01";
const STRANGER: &str = "iqn.2026-01.org.example:stranger";
const CHAP_SECRET: &str = "Zq7chapSecret9";

struct Daemon {
    child: Child,
    api: String,
    portal: SocketAddr,
    fingerprint: String,
    token_file: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(pool: &Path, log: &Path, extra: &[&str]) -> Daemon {
    let mut child = Command::new(BIN)
        .args(extra)
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
        .env_remove("SHADOWLUN_LOG")
        .env_remove("SHADOWLUN_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting shadowlun array serve");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut portal, mut fingerprint, mut token_file) = (None, None, None, None);
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("shadowlun array: API ") {
            api = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: iSCSI portal ") {
            portal = Some(v.trim().parse().unwrap());
        } else if let Some(v) =
            line.strip_prefix("shadowlun array: certificate SHA-256 fingerprint ")
        {
            fingerprint = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: admin token in ") {
            token_file = Some(PathBuf::from(v.trim()));
            break;
        }
    }
    Daemon {
        child,
        api: api.expect("API address"),
        portal: portal.expect("iSCSI portal"),
        fingerprint: fingerprint.expect("fingerprint"),
        token_file: token_file.expect("admin token path"),
    }
}

fn run_cli(d: &Daemon, args: &[&str]) -> std::process::Output {
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
        .arg("--json")
        .env_remove("SHADOWLUN_LOG")
        .output()
        .unwrap()
}

fn cli(d: &Daemon, args: &[&str]) -> Value {
    let out = run_cli(d, args);
    assert!(
        out.status.success(),
        "shadowlun {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn login(d: &Daemon, target: &str, initiator: &str) -> Result<iscsi::initiator::Session, String> {
    let mut cfg = iscsi::initiator::InitiatorConfig::new(initiator);
    cfg.timeout = Duration::from_secs(10);
    iscsi::initiator::Session::login(d.portal, target, &cfg).map_err(|e| e.to_string())
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json_lines(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find<'a>(lines: &'a [Value], message: &str, field: &str, value: &str) -> Option<&'a Value> {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == message && l["fields"][field].as_str() == Some(value))
}

#[test]
fn logs_status_sessions_and_an_audit_trail_that_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("shadowlun-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = dir.join("pool");
    let log = dir.join("daemon.json.log");
    let mut d = start(&pool, &log, &["--log-format", "json"]);

    // Admin changes, one of them carrying a CHAP secret.
    let lun = cli(&d, &["lun", "create", "sql-data", "64MiB"]);
    let lun_id = lun[0]["id"].as_str().unwrap().to_string();
    let sql01 = cli(&d, &["host", "add", "sql01", "--initiator", SQL01]);
    let host_token = sql01["token"].as_str().unwrap().to_string();
    let secret_file = dir.join("chap.secret");
    std::fs::write(&secret_file, CHAP_SECRET).unwrap();
    cli(
        &d,
        &[
            "host",
            "add",
            "backup01",
            "--initiator",
            BACKUP01,
            "--chap-secret-file",
            secret_file.to_str().unwrap(),
        ],
    );
    cli(&d, &["host", "map", "sql01", &lun_id]);

    let st = cli(&d, &["status"]);
    assert_eq!(st["backend"], "engine");
    assert_eq!(st["array_id"].as_str().unwrap().len(), 8);
    let target = st["target"].as_str().unwrap().to_string();
    assert!(target.starts_with("iqn."), "{target}");
    assert_eq!(st["portals"][0], d.portal.to_string());
    assert_eq!(st["sessions"], 0);
    assert_eq!(st["sets_in_flight"], 0);
    assert!(st["pool"]["provisioned_bytes"].as_u64().unwrap() >= 64 << 20);
    // An engine pool without a size limit is bounded by its file system: a fresh one is
    // nearly empty, not "100% full" of an engine limit no disk has.
    let capacity = st["pool"]["capacity_bytes"].as_u64().unwrap();
    let fs = rustix::fs::statvfs(&pool).unwrap();
    assert!(capacity > 0, "{st}");
    assert!(capacity <= fs.f_blocks * fs.f_frsize, "{st}");
    let free = st["pool"]["free_bytes"].as_u64().unwrap();
    assert!(free <= fs.f_bavail * fs.f_frsize + (1 << 30), "{st}");
    assert_eq!(st["health"]["state"], "ok", "{st}");
    assert!(
        st["health"]["reasons"].as_array().unwrap().is_empty(),
        "{st}"
    );

    // A real login shows in `session list` and `status`, and leaves after logout.
    let mut s = login(&d, &target, SQL01).expect("sql01 logs in");
    let sessions = cli(&d, &["session", "list"]);
    let list = sessions.as_array().unwrap();
    assert_eq!(list.len(), 1, "{sessions}");
    assert_eq!(list[0]["initiator"], SQL01);
    assert_eq!(list[0]["host"], "sql01");
    assert!(list[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(list[0]["portal"], d.portal.to_string());
    assert_eq!(list[0]["luns"][0]["lun"], lun_id.as_str());
    assert_eq!(list[0]["chap"], false);
    assert!(list[0]["connected_since"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(cli(&d, &["status"])["sessions"], 1);
    s.logout().unwrap();
    eventually("the session leaves the list after logout", || {
        cli(&d, &["session", "list"]).as_array().unwrap().is_empty()
    });

    // A refused login: an initiator no host has.
    assert!(login(&d, &target, STRANGER).is_err());

    // The default level logged all of it, as JSON, with the peer's address.
    let mut lines = Vec::new();
    eventually("the refused login is logged", || {
        lines = json_lines(&log);
        find(&lines, "iSCSI login refused", "initiator", STRANGER).is_some()
    });
    let refused = find(&lines, "iSCSI login refused", "initiator", STRANGER).unwrap();
    assert!(
        refused["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(refused["level"], "WARN");
    let change = find(&lines, "admin change", "action", "lun create").expect("lun create logged");
    assert_eq!(change["fields"]["who"], "admin");
    assert!(
        change["fields"]["from"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        change["spans"][0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let login_line = find(&lines, "iSCSI login", "initiator", SQL01).expect("login logged");
    assert!(
        login_line["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        find(
            &lines,
            "iSCSI logout or connection closed",
            "initiator",
            SQL01
        )
        .is_some()
    );

    // kill -9, then a restart on the same pool (text logs this time): the trail is whole.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let text_log = dir.join("daemon.text.log");
    let d = start(&pool, &text_log, &[]);
    let audit = cli(&d, &["audit", "--since", "1h"]);
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["who"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("lun create", "admin"),
            ("host add", "admin"),
            ("host add", "admin"),
            ("host map", "admin")
        ]
    );
    let r = &audit[2];
    assert_eq!(r["details"]["name"], "backup01");
    assert_eq!(r["details"]["chap_secret"], "set");
    assert_eq!(r["status"], 201);
    assert!(r["from"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(audit[3]["details"]["host"], "sql01");
    // Creating requests carry the CLI's idempotency key: a retry would show with the same one.
    assert!(
        audit[0]["details"]["idempotency_key"].is_string(),
        "{audit}"
    );
    // A time in the future lists nothing.
    assert!(
        cli(&d, &["audit", "--since", "2100-01-01T00:00:00Z"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let bad = run_cli(&d, &["audit", "--since", "last tuesday"]);
    assert_eq!(bad.status.code(), Some(2));

    // No token and no secret in the trail or in either log.
    let admin_token = std::fs::read_to_string(&d.token_file).unwrap();
    let trail = std::fs::read_to_string(pool.join("audit.log")).unwrap();
    let text = std::fs::read_to_string(&text_log).unwrap();
    let json = std::fs::read_to_string(&log).unwrap();
    for (name, content) in [
        ("audit.log", &trail),
        ("JSON log", &json),
        ("text log", &text),
    ] {
        for secret in [admin_token.trim(), host_token.as_str(), CHAP_SECRET] {
            assert!(!content.contains(secret), "a secret is in the {name}");
        }
    }
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a text log that is not a terminal"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pool.join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_log_level_that_is_not_one_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["--log-level", "loud", "hresult", "0x80042306"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'loud' is not a log level"));
    let out = Command::new(BIN)
        .args(["hresult", "0x80042306"])
        .env("SHADOWLUN_LOG", "debug")
        .env("SHADOWLUN_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--log-level") && help.contains("SHADOWLUN_LOG"));
    assert!(help.contains("--log-format"));
}

#[test]
fn a_wrong_fingerprint_is_named_not_called_unreachable() {
    let dir = std::env::temp_dir().join(format!("shadowlun-pin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = start(&dir.join("pool"), &dir.join("daemon.log"), &[]);
    let wrong = provider::https::fingerprint_of(b"some other certificate");
    for json in [false, true] {
        let out = Command::new(BIN)
            .args(["lun", "list", "--array", &d.api, "--fingerprint", &wrong])
            .arg("--token-file")
            .arg(&d.token_file)
            .args(json.then_some("--json"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "exit code 7 for a certificate mismatch"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not match the pinned fingerprint"),
            "{err}"
        );
        assert!(
            err.contains(&wrong) && err.contains(&d.fingerprint),
            "{err}"
        );
        assert!(!err.contains("cannot be reached"), "{err}");
        if json {
            let v: Value = serde_json::from_str(err.trim()).unwrap();
            assert_eq!(v["error"]["kind"], "certificate_mismatch");
            assert_eq!(v["error"]["exit_code"], 7);
        }
    }
    // The provider's client shares the code: it says the same.
    let client =
        provider::https::Client::new(provider::https::ClientConfig::new(&d.api, "token", &wrong))
            .unwrap();
    match client.health() {
        Err(provider::https::ClientError::CertificateMismatch { pinned, presented }) => {
            assert_eq!(pinned, wrong);
            assert_eq!(presented, d.fingerprint);
        }
        other => panic!("expected a certificate mismatch, got {other:?}"),
    }
    // The right pin still works.
    let ok = provider::https::Client::new(provider::https::ClientConfig::new(
        &d.api,
        "token",
        &d.fingerprint,
    ))
    .unwrap();
    assert!(ok.health().is_ok());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_says_why_a_nearly_full_pool_is_critical() {
    let dir = std::env::temp_dir().join(format!("shadowlun-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("array.toml");
    std::fs::write(
        &config,
        "[backend]\nkind = \"memory\"\ncapacity_bytes = 8388608\n",
    )
    .unwrap();
    let d = start_with_config(&dir.join("pool"), &dir.join("daemon.log"), &config);
    let lun = cli(&d, &["lun", "create", "data", "8MiB"]);
    let lun_id = lun[0]["id"].as_str().unwrap().to_string();
    cli(&d, &["host", "add", "sql01", "--initiator", SQL01]);
    let host = cli(&d, &["host", "map", "sql01", &lun_id]);
    let number = host[0]["luns"][0]["lun_number"].as_u64().unwrap();
    let st = cli(&d, &["status"]);
    assert_eq!(st["backend"], "memory");
    assert_eq!(st["pool"]["capacity_bytes"], 8 << 20);
    assert_eq!(st["health"]["state"], "ok", "{st}");
    let target = st["target"].as_str().unwrap().to_string();
    let mut s = login(&d, &target, SQL01).unwrap();
    let chunk = vec![0xA5u8; 1 << 20];
    for i in 0..8u64 {
        s.write16(number, i * 2048, &chunk, 512, false).unwrap();
    }
    s.logout().unwrap();
    let st = cli(&d, &["status"]);
    assert_eq!(st["health"]["state"], "critical", "{st}");
    let reasons = st["health"]["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().contains("% full (critical at 90%)")),
        "{st}"
    );
    assert!(st["pool"]["used_bytes"].as_u64().unwrap() >= 8 << 20);
    assert!(st["pool"]["provisioned_ratio"].as_f64().unwrap() >= 1.0);
    drop(s);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

fn start_with_config(pool: &Path, log: &Path, config: &Path) -> Daemon {
    let mut child = Command::new(BIN)
        .args(["array", "serve", "--config"])
        .arg(config)
        .args(["--api", "127.0.0.1:0", "--portal", "127.0.0.1:0", "--pool"])
        .arg(pool)
        .env_remove("SHADOWLUN_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut portal, mut fingerprint, mut token_file) = (None, None, None, None);
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("shadowlun array: API ") {
            api = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: iSCSI portal ") {
            portal = Some(v.trim().parse().unwrap());
        } else if let Some(v) =
            line.strip_prefix("shadowlun array: certificate SHA-256 fingerprint ")
        {
            fingerprint = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: admin token in ") {
            token_file = Some(PathBuf::from(v.trim()));
            break;
        }
    }
    Daemon {
        child,
        api: api.unwrap(),
        portal: portal.unwrap(),
        fingerprint: fingerprint.unwrap(),
        token_file: token_file.unwrap(),
    }
}
