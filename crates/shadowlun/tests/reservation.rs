//! Space reservation at end-prepare, on the real path: a daemon process on a small engine
//! pool, LUNs filled over iSCSI by the project's initiator, snapshot sets driven by the real
//! provider over HTTPS. A set the pool cannot hold is refused before the hold window with
//! VSS_E_INSUFFICIENT_STORAGE and leaves nothing behind; a set that fits holds its
//! reservation until commit or abort, across a restart.

mod common;

use std::time::Duration;

use common::*;
use provider::https::{ClientConfig, HttpsArray};
use provider::{ArrayControl, HardwareProvider, ShadowlunProvider};
use vss::identity::LunIdentity;
use vss::{BusType, Hresult, LunInfo, SnapshotContext, VolumeSnapshotAttributes, VssId};

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";
const MIB: u64 = 1 << 20;

fn host_view(naa_hex: &str) -> LunInfo {
    let n = u64::from_str_radix(naa_hex, 16).unwrap() & 0x0FFF_FFFF_FFFF_FFFF;
    LunInfo::from_identity(
        &LunIdentity::for_number(n).scsi_identity(&[]),
        BusType::ISCSI,
    )
    .unwrap()
}

fn https(d: &Daemon, token: &str) -> HttpsArray {
    HttpsArray::new(ClientConfig::new(&d.api, token, &d.fingerprint)).unwrap()
}

/// Writes `mib` MiB of a pattern at `at_mib` through an iSCSI session of sql01.
fn fill(d: &Daemon, target: &str, lun_number: u64, at_mib: u64, mib: u64) {
    let mut cfg = iscsi::initiator::InitiatorConfig::new(SQL01);
    cfg.timeout = Duration::from_secs(10);
    let mut s = iscsi::initiator::Session::login(d.portal.parse().unwrap(), target, &cfg).unwrap();
    let chunk = vec![0xC3u8; MIB as usize];
    for i in 0..mib {
        s.write16(lun_number, (at_mib + i) * 2048, &chunk, 512, false)
            .unwrap();
    }
    s.logout().unwrap();
}

fn status(d: &Daemon) -> serde_json::Value {
    d.json(&["status"])
}

#[test]
fn a_set_the_pool_cannot_hold_is_refused_at_end_prepare_and_one_that_fits_commits() {
    let pool = Pool::new("reserve");
    std::fs::create_dir_all(&pool.0).unwrap();
    let config = pool.0.join("array.toml");
    std::fs::write(
        &config,
        "metrics_listen = \"127.0.0.1:0\"\n\
         [backend]\nkind = \"engine\"\ncapacity_bytes = 16777216\n",
    )
    .unwrap();
    let d = start_with(
        &pool.0.join("pool"),
        &["--config", config.to_str().unwrap()],
    );
    let data = d.json(&["lun", "create", "sql-data", "16MiB"])[0].clone();
    let scratch = d.json(&["lun", "create", "scratch", "8MiB"])[0].clone();
    let host = d.json(&["host", "add", "sql01", "--initiator", SQL01]);
    let token = host["token"].as_str().unwrap().to_string();
    let mut numbers = Vec::new();
    for l in [&data, &scratch] {
        let h = d.json(&["host", "map", "sql01", l["id"].as_str().unwrap()]);
        let id = l["id"].as_str().unwrap();
        let n = h[0]["luns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["lun"] == id)
            .unwrap()["lun_number"]
            .as_u64()
            .unwrap();
        numbers.push(n);
    }
    let st = status(&d);
    assert_eq!(st["backend"], "engine");
    assert_eq!(st["pool"]["capacity_bytes"], 16 * MIB, "{st}");
    assert_eq!(st["pool"]["reserved_bytes"], 0);
    let target = st["target"].as_str().unwrap().to_string();

    // 12 MiB of 16 (75 %): a set of sql-data fits, holds its reservation until commit.
    fill(&d, &target, numbers[0], 0, 12);
    let p = ShadowlunProvider::new(https(&d, &token));
    let ctx = SnapshotContext::BACKUP.with(VolumeSnapshotAttributes::TRANSPORTABLE);
    let devices = vec!["disk1".to_string()];
    let mut luns = vec![host_view(data["naa"].as_str().unwrap())];
    let set = VssId::new_v4();
    p.begin_prepare_snapshot(set, VssId::new_v4(), ctx, &devices, &mut luns)
        .unwrap();
    p.end_prepare_snapshots(set).unwrap();
    let held = status(&d)["pool"]["reserved_bytes"].as_u64().unwrap();
    assert!(
        held > 0 && held < 64 * 1024,
        "engine commits take metadata only: {held}"
    );
    let sets = d.json(&["set", "list"]);
    assert_eq!(sets[0]["reserved_bytes"], held);
    let table = d.text(&["set", "list"]);
    assert!(
        table.contains("RESERVED") && table.contains(&api::human_size(held)),
        "{table}"
    );
    assert!(d.text(&["status"]).contains("reserved"));
    let text = d.scrape();
    assert_eq!(
        Daemon::sample(&text, "shadowlun_pool_reserved_bytes"),
        Some(held as f64),
        "{text}"
    );
    p.pre_commit_snapshots(set).unwrap();
    p.commit_snapshots(set).unwrap();
    p.post_commit_snapshots(set, 1).unwrap();
    assert_eq!(
        status(&d)["pool"]["reserved_bytes"],
        0,
        "the commit released it"
    );
    p.pre_final_commit_snapshots(set).unwrap();
    p.post_final_commit_snapshots(set).unwrap();
    let snap = d.json(&["snapshot", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.text(&["snapshot", "delete", &snap]);

    // 15 MiB of 16 (94 %), past the 90 % critical threshold: the next set is refused at
    // EndPrepareSnapshots, the one call VSS lets a provider say there is no space.
    fill(&d, &target, numbers[1], 0, 3);
    let full = status(&d);
    assert_eq!(full["health"]["state"], "critical", "{full}");
    assert!(
        full["health"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("New snapshot sets are refused"),
        "{full}"
    );
    let used = full["pool"]["used_bytes"].as_u64().unwrap();
    let p = ShadowlunProvider::new(https(&d, &token));
    let refused = VssId::new_v4();
    p.begin_prepare_snapshot(refused, VssId::new_v4(), ctx, &devices, &mut luns)
        .unwrap();
    assert_eq!(
        p.end_prepare_snapshots(refused),
        Err(Hresult::VSS_E_INSUFFICIENT_STORAGE)
    );
    let _ = p.abort_snapshots(refused);
    // Nothing left: no set in flight, no snapshot LUN, no reservation, the pool as it was.
    let after = status(&d);
    assert_eq!(after["sets_in_flight"], 0, "{after}");
    assert_eq!(after["pool"]["reserved_bytes"], 0);
    assert_eq!(after["pool"]["used_bytes"], used);
    assert_eq!(d.json(&["snapshot", "list"]), serde_json::json!([]));
    let sets = d.json(&["set", "list"]);
    let rec = sets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["set_id"] == refused.to_string())
        .unwrap();
    assert_eq!(rec["state"], "aborted");
    assert_eq!(rec["snapshots"][0]["deleted"], true);
    let text = d.scrape();
    assert_eq!(
        Daemon::sample(&text, r#"shadowlun_snapshot_sets_total{outcome="refused"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        Daemon::sample(&text, "shadowlun_pool_reserved_bytes"),
        Some(0.0)
    );

    // The administrator frees space (the scratch LUN goes): the same backup now succeeds.
    d.text(&["host", "unmap", "sql01", scratch["id"].as_str().unwrap()]);
    d.text(&["lun", "delete", "scratch"]);
    let p = ShadowlunProvider::new(https(&d, &token));
    let again = VssId::new_v4();
    p.begin_prepare_snapshot(again, VssId::new_v4(), ctx, &devices, &mut luns)
        .unwrap();
    p.end_prepare_snapshots(again).unwrap();
    p.pre_commit_snapshots(again).unwrap();
    p.commit_snapshots(again).unwrap();
    p.post_commit_snapshots(again, 1).unwrap();
    p.pre_final_commit_snapshots(again).unwrap();
    p.post_final_commit_snapshots(again).unwrap();
    assert_eq!(d.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_reservation_survives_a_restart_and_goes_with_the_commit_or_the_abort() {
    let pool = Pool::new("reserve-restart");
    std::fs::create_dir_all(&pool.0).unwrap();
    let config = pool.0.join("array.toml");
    std::fs::write(
        &config,
        "[backend]\nkind = \"engine\"\ncapacity_bytes = 16777216\n",
    )
    .unwrap();
    let dir = pool.0.join("pool");
    let d = start_with(&dir, &["--config", config.to_str().unwrap()]);
    let data = d.json(&["lun", "create", "sql-data", "8MiB"])[0].clone();
    let host = d.json(&["host", "add", "sql01", "--initiator", SQL01]);
    let token = host["token"].as_str().unwrap().to_string();
    let source = data["id"].as_str().unwrap().to_string();
    d.json(&["host", "map", "sql01", &source]);
    let plan = |set: VssId| {
        let a = https(&d, &token);
        a.prepare(
            set,
            SnapshotContext::BACKUP,
            &[api::PlannedSnapshot {
                snapshot_id: VssId::new_v4(),
                source: source.clone(),
            }],
        )
        .unwrap();
        a.end_prepare(set).unwrap();
    };
    let (kept, dropped) = (VssId::new_v4(), VssId::new_v4());
    plan(kept);
    plan(dropped);
    let held = status(&d)["pool"]["reserved_bytes"].as_u64().unwrap();
    assert!(held > 0);

    // kill -9, then a new daemon on the same pool: the journal holds both reservations.
    drop(d);
    let d = start_with(&dir, &["--config", config.to_str().unwrap()]);
    assert_eq!(status(&d)["pool"]["reserved_bytes"], held);
    let a = https(&d, &token);
    a.abort(dropped).unwrap();
    let one = status(&d)["pool"]["reserved_bytes"].as_u64().unwrap();
    assert!(one > 0 && one < held, "{one} of {held}");
    a.commit(kept).unwrap();
    assert_eq!(status(&d)["pool"]["reserved_bytes"], 0);
    assert_eq!(d.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);
}
