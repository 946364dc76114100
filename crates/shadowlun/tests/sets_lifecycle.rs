//! Who removes what, on the real path (the daemon as a process, the CLI as a process, the
//! provider's HTTPS client as each host): transportable sets nobody imports go after the
//! configured retention, logged and audited, while imported and ordinary sets stay; an
//! administrator deletes a set with guard rails; a plex copy becomes independent so its
//! original LUN can be deleted.

mod common;

use std::time::{Duration, Instant};

use api::{PlannedSnapshot, SetState};
use provider::ArrayControl;
use provider::https::{ClientConfig, HttpsArray};
use serde_json::Value;
use vss::{SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};

const IQN_A: &str = "iqn.1991-05.com.microsoft:sql01";
const IQN_B: &str = "iqn.1991-05.com.microsoft:backup01";

/// Adds a host and returns the provider's client for it.
fn host(d: &common::Daemon, name: &str, iqn: &str, extra: &[&str]) -> HttpsArray {
    let mut args = vec!["host", "add", name, "--initiator", iqn];
    args.extend_from_slice(extra);
    let created = d.json(&args);
    let token = created["token"].as_str().expect("token").to_string();
    HttpsArray::new(ClientConfig::new(&d.api, &token, &d.fingerprint)).unwrap()
}

/// Takes a complete set of `source` in `context` as the provider does.
fn take_set(h: &HttpsArray, context: SnapshotContext, source: &str) -> VssId {
    let set = uuid::Uuid::new_v4();
    h.prepare(
        set,
        context,
        &[PlannedSnapshot {
            snapshot_id: uuid::Uuid::new_v4(),
            source: source.into(),
        }],
    )
    .unwrap();
    h.end_prepare(set).unwrap();
    h.commit(set).unwrap();
    h.complete(set).unwrap();
    set
}

fn snapshot_lun(h: &HttpsArray, set: VssId, source: &str) -> String {
    h.describe(set, &[source.to_string()]).unwrap()[0]
        .lun
        .clone()
}

fn sets(d: &common::Daemon) -> Vec<Value> {
    d.json(&["set", "list"]).as_array().unwrap().clone()
}

fn has_set(d: &common::Daemon, set: VssId) -> bool {
    sets(d).iter().any(|s| s["set_id"] == set.to_string())
}

#[test]
fn unimported_transportable_sets_expire_and_an_admin_deletes_sets_with_guard_rails() {
    let pool = common::Pool::new("retention");
    std::fs::create_dir_all(&pool.0).unwrap();
    let conf = pool.0.join("array.toml");
    std::fs::write(
        &conf,
        "transportable_retention_secs = 3\nreaper_interval_secs = 1\n",
    )
    .unwrap();
    let d = common::start_with(&pool.0.join("pool"), &["--config", conf.to_str().unwrap()]);
    d.json(&["lun", "create", "data", "8MiB"]);
    let a = host(&d, "sql01", IQN_A, &[]);
    let b = host(&d, "backup01", IQN_B, &["--import-from", "sql01"]);
    d.json(&["host", "map", "sql01", "data"]);
    let transportable = SnapshotContext::APP_ROLLBACK.with(Attr::TRANSPORTABLE);

    let orphan = take_set(&a, transportable, "lun-1");
    let orphan_lun = snapshot_lun(&a, orphan, "lun-1");
    let imported = take_set(&a, transportable, "lun-1");
    let imported_lun = snapshot_lun(&a, imported, "lun-1");
    b.expose(std::slice::from_ref(&imported_lun)).unwrap();
    let local = take_set(&a, SnapshotContext::APP_ROLLBACK, "lun-1");

    // Listed as transportable, one imported, one not.
    let listed = d.json(&["set", "list", "--transportable"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let by_id = |id: VssId| {
        listed
            .iter()
            .find(|s| s["set_id"] == id.to_string())
            .unwrap()
    };
    assert!(by_id(orphan).get("imported_at").is_none());
    assert!(by_id(imported)["imported_at"].is_u64());
    let table = d.text(&["set", "list", "--transportable"]);
    assert!(table.contains("IMPORTED"), "{table}");

    // The reaper deletes the set nobody imported once it is older than the retention.
    let t0 = Instant::now();
    while has_set(&d, orphan) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the unimported transportable set outlived its retention"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let luns = d.json(&["snapshot", "list"]);
    let ids: Vec<&str> = luns
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&orphan_lun.as_str()), "{ids:?}");
    assert!(ids.contains(&imported_lun.as_str()), "{ids:?}");
    assert!(has_set(&d, imported) && has_set(&d, local));
    // Audited as the array's own change.
    let trail = d.json(&["audit"]);
    let expiry = trail
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "set expire")
        .unwrap_or_else(|| panic!("no expiry in the audit trail: {trail}"));
    assert_eq!(expiry["who"], "array");
    assert_eq!(expiry["details"]["set"], orphan.to_string());

    // The imported set is in use on backup01: refused without --force, named in the refusal.
    let (code, err) = d.fails(&["set", "delete", &imported.to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("backup01") && err.contains("--force"), "{err}");
    assert!(has_set(&d, imported));
    d.text(&["set", "delete", &imported.to_string(), "--force"]);
    assert!(!has_set(&d, imported));
    // An ordinary complete set is deleted plainly; its snapshot LUN with it.
    d.text(&["set", "delete", &local.to_string()]);
    let left = d.json(&["snapshot", "list"]);
    assert!(left.as_array().unwrap().is_empty(), "{left}");
    assert!(a.list_sets().unwrap().iter().all(|s| s.set_id != local));
    // A set in flight is aborted, not deleted.
    let pending = uuid::Uuid::new_v4();
    a.prepare(
        pending,
        transportable,
        &[PlannedSnapshot {
            snapshot_id: uuid::Uuid::new_v4(),
            source: "lun-1".into(),
        }],
    )
    .unwrap();
    let (_, err) = d.fails(&["set", "delete", &pending.to_string()]);
    assert!(err.contains("abort"), "{err}");
    assert!(
        a.list_sets()
            .unwrap()
            .iter()
            .any(|s| s.set_id == pending && s.state == SetState::Prepared)
    );
}

#[test]
fn a_plex_copy_becomes_independent_and_its_original_can_then_be_deleted() {
    let pool = common::Pool::new("plex");
    let d = common::start(&pool.0);
    d.json(&["lun", "create", "data", "64MiB"]);
    let a = host(&d, "sql01", IQN_A, &[]);
    d.json(&["host", "map", "sql01", "data"]);
    let set = take_set(&a, SnapshotContext::BACKUP.with(Attr::PLEX), "lun-1");
    let lun = snapshot_lun(&a, set, "lun-1");
    // A differential snapshot LUN holds its source; the plex one lets go once independent.
    let t0 = Instant::now();
    let record = loop {
        let luns = d.json(&["snapshot", "list"]);
        let r = luns
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == lun.as_str())
            .cloned()
            .expect("the plex LUN is listed");
        if r["plex"]["independent"] == true {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never independent: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["plex"]["progress"], 100);
    let table = d.text(&["snapshot", "list"]);
    assert!(table.contains("COPY") && table.contains("plex"), "{table}");
    d.text(&["host", "unmap", "sql01", "data"]);
    d.text(&["lun", "delete", "data"]);
    let luns = d.json(&["lun", "list"]);
    let ids: Vec<&str> = luns
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [lun.as_str()], "only the plex copy is left");
}

#[test]
fn an_administrator_takes_a_set_with_the_cli() {
    let pool = common::Pool::new("admin-set");
    let d = common::start(&pool.0);
    d.json(&["lun", "create", "data", "8MiB"]);
    d.json(&["lun", "create", "log", "8MiB"]);
    // Refusals in the admin's words, with the CLI's exit codes: not found 3, usage 2.
    let (code, err) = d.fails(&["set", "create", "data", "nosuch"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nosuch"), "{err}");
    let (code, err) = d.fails(&["set", "create", "data", "lun-1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("twice"), "{err}");
    let (code, _) = d.fails(&["set", "create"]);
    assert_eq!(code, 2);
    assert!(sets(&d).is_empty(), "a refusal left a set");

    let set = d.json(&["set", "create", "data", "log"]);
    assert_eq!(set["host"], "*admin*");
    assert_eq!(set["state"], "completed");
    let members = set["snapshots"].as_array().unwrap();
    let sources: Vec<&str> = members
        .iter()
        .map(|m| m["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["lun-1", "lun-2"]);
    let table = d.text(&["set", "list"]);
    assert!(table.contains(" admin "), "{table}");
    // Its snapshot LUNs are the array's like any other: listed, then deleted with the set.
    let snaps = d.json(&["snapshot", "list"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    d.text(&["set", "delete", set["set_id"].as_str().unwrap()]);
    assert!(sets(&d).is_empty());
    let snaps = d.json(&["snapshot", "list"]);
    assert!(snaps.as_array().unwrap().is_empty(), "{snaps}");
}
