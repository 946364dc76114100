//! Administration with the real CLI against the real daemon, both as processes: LUNs named
//! by id or by name in every command, renamed without an outage, listed by number.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use iscsi::initiator::{ChapCredentials, InitiatorConfig, InitiatorError, Session};

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";

#[test]
fn luns_by_name_or_id_renamed_and_listed_by_number() {
    let pool = Pool::new("admin-names");
    let d = start(&pool.0);
    for i in 1..=10 {
        d.json(&["lun", "create", &format!("vol{i}"), "4MiB"]);
    }
    d.json(&["lun", "create", "sql-data", "8MiB"]);
    d.json(&["host", "add", "sql01", "--initiator", SQL01]);
    // By name wherever a LUN is named.
    let h = d.json(&["host", "map", "sql01", "sql-data"]);
    assert_eq!(h[0]["luns"][0]["lun"], "lun-11");
    let l = d.json(&["lun", "show", "sql-data"]);
    assert_eq!(l[0]["id"], "lun-11");
    assert_eq!(l[0]["mapped_to"][0]["host"], "sql01");

    // Renamed while mapped: same id, same identity, still mapped.
    let r = d.json(&["lun", "rename", "sql-data", "sql-data-2025"]);
    assert_eq!(r[0]["id"], "lun-11");
    assert_eq!(r[0]["serial"], l[0]["serial"]);
    assert_eq!(r[0]["mapped_to"], l[0]["mapped_to"]);
    let (code, err) = d.fails(&["lun", "show", "sql-data"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("sql-data") && err.contains("lun list"),
        "{err}"
    );
    let (code, err) = d.fails(&["lun", "rename", "vol1", "vol2"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("lun-2") && err.contains("unique"), "{err}");
    // A name with a slash is a name the array does not know, not another route.
    let (code, _) = d.fails(&["lun", "show", "../hosts"]);
    assert_eq!(code, 3);
    d.text(&["host", "unmap", "sql01", "sql-data-2025"]);
    d.text(&["lun", "delete", "sql-data-2025"]);

    // lun-2 before lun-10, in the table as in JSON.
    let table = d.text(&["lun", "list"]);
    let ids: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let want: Vec<String> = (1..=10).map(|i| format!("lun-{i}")).collect();
    assert_eq!(ids, want, "{table}");
    let json = d.json(&["lun", "list"]);
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want);
}

const SQL01_NEW: &str = "iqn.1991-05.com.microsoft:sql01-new-hba";

fn login(d: &Daemon, iqn: &str, secret: &str) -> Result<Session, InitiatorError> {
    let mut cfg = InitiatorConfig::new(iqn);
    cfg.timeout = Duration::from_secs(10);
    cfg.chap = Some(ChapCredentials {
        user: iqn.into(),
        secret: secret.as_bytes().to_vec(),
        mutual: None,
    });
    let target = provider_client(d, "unused").health().unwrap().target;
    Session::login(d.portal.parse().unwrap(), &target, &cfg)
}

fn provider_client(d: &Daemon, token: &str) -> provider::https::Client {
    provider::https::Client::new(provider::https::ClientConfig::new(
        &d.api,
        token,
        &d.fingerprint,
    ))
    .unwrap()
}

/// A host token works when the array answers a host verb with it.
fn token_works(d: &Daemon, token: &str) -> bool {
    match provider_client(d, token).get::<serde_json::Value>(api::routes::SETS) {
        Ok(_) => true,
        Err(provider::https::ClientError::Problem(p)) => {
            assert_eq!(p.code, api::ProblemCode::Unauthorized, "{}", p.detail);
            false
        }
        Err(e) => panic!("{e}"),
    }
}

#[track_caller]
fn ended(s: &mut Session) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if s.report_luns().is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the removed initiator's session is still answered");
}

/// Token, initiators and CHAP changed with the CLI while the host is logged in; nothing is
/// unmapped, and every change is there after the daemon is killed with SIGKILL and started
/// again on its pool.
#[test]
fn a_host_changes_without_an_outage_and_the_changes_survive_kill_9() {
    let pool = Pool::new("admin-host");
    let d = start(&pool.0);
    let secret_file = pool.0.with_extension("chap");
    std::fs::write(&secret_file, "first-secret1\n").unwrap();
    d.json(&["lun", "create", "data", "8MiB"]);
    // The secret comes from a file (or stdin), never from the command line.
    let (code, err) = d.fails(&[
        "host",
        "add",
        "sql01",
        "--initiator",
        SQL01,
        "--chap-secret",
        "first-secret1",
    ]);
    assert_eq!(code, 2, "{err}");
    let added = d.json(&[
        "host",
        "add",
        "sql01",
        "--initiator",
        SQL01,
        "--chap-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert_eq!(added["host"]["chap"], true);
    let first_token = added["token"].as_str().unwrap().to_string();
    d.json(&["host", "map", "sql01", "data"]);
    let mut a = login(&d, SQL01, "first-secret1").unwrap();
    a.write16(0, 0, &[0x5Au8; 512], 512, false).unwrap();
    a.synchronize_cache(0).unwrap();

    // A new HBA: added, it logs in and sees the LUN; the old one is removed and cut off.
    let h = d.json(&["host", "initiators", "sql01", "--add", SQL01_NEW]);
    assert_eq!(h[0]["initiators"], serde_json::json!([SQL01, SQL01_NEW]));
    let mut b = login(&d, SQL01_NEW, "first-secret1").unwrap();
    assert_eq!(b.read16(0, 0, 1, 512).unwrap(), vec![0x5Au8; 512]);
    d.json(&["host", "initiators", "sql01", "--remove", SQL01]);
    ended(&mut a);
    assert!(login(&d, SQL01, "first-secret1").is_err());
    let (code, err) = d.fails(&["host", "initiators", "sql01", "--remove", SQL01_NEW]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--add NEW"), "{err}");

    // A new CHAP secret from standard input: the open session stays, the next login uses it.
    let mut chap = d
        .command(&["host", "chap", "sql01", "--secret-file", "-"], true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    chap.stdin
        .take()
        .unwrap()
        .write_all(b"second-secret2\n")
        .unwrap();
    assert!(chap.wait_with_output().unwrap().status.success());
    assert_eq!(b.report_luns().unwrap(), vec![0]);
    assert!(login(&d, SQL01_NEW, "first-secret1").is_err());
    login(&d, SQL01_NEW, "second-secret2").unwrap();
    std::fs::write(&secret_file, "short\n").unwrap();
    let (code, err) = d.fails(&[
        "host",
        "chap",
        "sql01",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("12 to 16"), "{err}");

    // A new token, printed once; the old one is refused at once.
    assert!(token_works(&d, &first_token));
    let rotated = d.json(&["host", "rotate-token", "sql01"]);
    let token = rotated["token"].as_str().unwrap().to_string();
    assert_eq!(rotated["host"]["luns"][0]["lun"], "lun-1");
    assert!(!token_works(&d, &first_token));
    assert!(token_works(&d, &token));
    let table = d.text(&["host", "show", "sql01"]);
    assert!(
        table.contains(SQL01_NEW) && !table.contains(&format!("{SQL01},")),
        "{table}"
    );

    // SIGKILL, then a new daemon on the same pool serves exactly what was acknowledged.
    drop(b);
    drop(d);
    let d = start(&pool.0);
    let h = d.json(&["host", "show", "sql01"]);
    assert_eq!(h[0]["initiators"], serde_json::json!([SQL01_NEW]));
    assert_eq!(h[0]["chap"], true);
    assert_eq!(h[0]["luns"][0]["lun"], "lun-1");
    assert!(!token_works(&d, &first_token));
    assert!(token_works(&d, &token));
    assert!(login(&d, SQL01, "second-secret2").is_err());
    assert!(login(&d, SQL01_NEW, "first-secret1").is_err());
    let mut b = login(&d, SQL01_NEW, "second-secret2").unwrap();
    assert_eq!(b.read16(0, 0, 1, 512).unwrap(), vec![0x5Au8; 512]);
    let mut cfg = InitiatorConfig::new(SQL01_NEW);
    cfg.timeout = Duration::from_secs(10);
    let target = provider_client(&d, &token).health().unwrap().target;
    let portal = d.portal.parse().unwrap();
    assert!(
        Session::login(portal, &target, &cfg).is_err(),
        "CHAP is set"
    );
    d.json(&["host", "chap", "sql01", "--clear"]);
    let open = Session::login(portal, &target, &cfg);
    assert!(open.is_ok(), "CHAP cleared: the next login goes without it");
    let _ = b.logout();
    let _ = std::fs::remove_file(&secret_file);
}

/// Every refusal says what is wrong and what to do, in sizes and commands an administrator
/// reads: no HTTP verbs, routes, headers or raw byte counts.
#[test]
fn refusals_are_in_the_admins_words() {
    let pool = Pool::new("admin-words");
    let d = start(&pool.0);
    d.json(&["lun", "create", "data", "8MiB"]);
    let added = d.json(&["host", "add", "sql01", "--initiator", SQL01]);
    let host_token = pool.0.with_extension("host-token");
    std::fs::write(&host_token, added["token"].as_str().unwrap()).unwrap();
    let bad_token = pool.0.with_extension("bad-token");
    std::fs::write(&bad_token, "0123456789abcdef").unwrap();
    let with_token = |file: &std::path::Path| {
        let out = std::process::Command::new(BIN)
            .args([
                "lun",
                "list",
                "--array",
                &d.api,
                "--fingerprint",
                &d.fingerprint,
            ])
            .arg("--token-file")
            .arg(file)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let mut said = Vec::new();
    let (code, err) = with_token(&bad_token);
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("--token-file") && err.contains("admin.token"),
        "{err}"
    );
    said.push(err);
    let (code, err) = with_token(&host_token);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("host's API token"), "{err}");
    said.push(err);
    for (args, code, words) in [
        (
            &["lun", "create", "big", "100PiB"][..],
            2,
            &["100 PiB", "64 TiB"][..],
        ),
        (
            &["lun", "create", "odd", "1000"],
            2,
            &["1000 B", "multiple of"],
        ),
        (&["lun", "create", "empty", "0"], 2, &["empty"]),
        (
            &["lun", "resize", "data", "4MiB"],
            2,
            &["8 MiB", "only grow"],
        ),
        (&["lun", "delete", "nothing"], 3, &["nothing", "lun list"]),
        (
            &["host", "map", "sql01", "data", "--lun-number", "20000"],
            2,
            &["0 to 16383"],
        ),
        (
            &[
                "host",
                "add",
                "bk",
                "--initiator",
                "iqn.1991-05.com.x:bk",
                "--import-from",
                "nobody",
            ],
            3,
            &["nobody", "host add"],
        ),
    ] {
        let (c, err) = d.fails(args);
        assert_eq!(c, code, "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err} lacks {w:?}");
        }
        said.push(err);
    }
    for err in &said {
        for jargon in [
            "/v1/",
            "HTTP",
            "Bearer",
            "DELETE",
            "PATCH",
            "size_bytes",
            "lun_number",
        ] {
            assert!(!err.contains(jargon), "{err:?} says {jargon:?}");
        }
    }
    let _ = std::fs::remove_file(&host_token);
    let _ = std::fs::remove_file(&bad_token);
}
