//! `shadowlun soak` end to end, briefly: the real daemon as its child, killed and started
//! again, every invariant checked, and the report's figures (the CI stage 58-soak runs it for
//! minutes; the long run is by hand).

mod common;

use std::process::Command;

use common::BIN;

#[test]
fn a_short_soak_kills_the_daemon_and_passes_every_check() {
    let pool = common::Pool::new("soak");
    let out = Command::new(BIN)
        .args([
            "soak",
            "--minutes",
            "0.4",
            "--seed",
            "7",
            "--json",
            "--pool",
        ])
        .arg(&pool.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["violation"], serde_json::Value::Null, "{r:#}");
    assert_eq!(r["seed"], 7);
    let kills = &r["kills"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert!(
        n(&kills["between_operations"])
            + n(&kills["during_operations"])
            + n(&kills["after_operations"])
            >= 1,
        "no SIGKILL in the run: {r:#}"
    );
    assert!(n(&r["restarts"]) >= 2, "{r:#}");
    let t = &r["tally"];
    assert!(n(&t["snapshots_verified"]) >= 1, "{r:#}");
    assert!(n(&t["durability_checks"]) >= 2, "{r:#}");
    assert!(n(&t["records_verified"]) > 0, "{r:#}");
    let s = &r["space"];
    assert_eq!(s["used_end"], s["used_start"], "{r:#}");
    assert_eq!(s["engine_recount"], s["used_start"], "{r:#}");
    assert_eq!(s["volumes_left"], serde_json::json!([]));
    let res = &r["resources"];
    // (The watched phase's warm-up needs four operations, which a loaded machine may not fit
    // in a run this short.)
    for k in ["start", "end"] {
        assert!(
            n(&res[k]["fds"]) > 0 && n(&res[k]["rss_bytes"]) > 0,
            "{k}: {r:#}"
        );
    }
}

#[test]
fn a_soak_refuses_a_pool_that_is_not_empty_and_a_bad_duration() {
    let pool = common::Pool::new("soak-busy");
    std::fs::create_dir_all(&pool.0).unwrap();
    std::fs::write(pool.0.join("something"), b"x").unwrap();
    let out = Command::new(BIN)
        .args(["soak", "--minutes", "1", "--pool"])
        .arg(&pool.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not empty: the soak needs a fresh pool"),
        "{err}"
    );
    assert!(pool.0.join("something").exists());
    let out = Command::new(BIN)
        .args(["soak", "--minutes", "-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
