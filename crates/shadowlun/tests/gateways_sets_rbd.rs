//! A VSS snapshot set while the gateway serving the array dies: two gateways of one array
//! on a lab Ceph cluster, the provider's HTTPS client given both gateways' URLs, as it is
//! installed on a Windows host. A set prepared through one gateway is committed and
//! completed through the other after a SIGKILL, its snapshot holding exactly the writes
//! acknowledged before the commit; a set whose gateway dies between end-prepare and commit
//! completes, or fails and is aborted through the next gateway with nothing of it left. The
//! `rbd` CLI is the witness. Skipped, saying why, only where Ceph is not installed.

mod common;

use std::time::{Duration, Instant};

use api::{PlannedSnapshot, PrepareRequest, SetState, SetSummary, routes as r};
use common::gateways::{start_gateway, two_gateways};
use common::{Daemon, share_identity};
use iscsi::initiator::{InitiatorConfig, Session};
use provider::https::{Client, ClientConfig, ClientError};
use rbd::lab::Lab;

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";

/// The images of namespace `ns`.
fn images(lab: &Lab, ns: &str) -> Vec<String> {
    lab.rbd(&["ls", &format!("rbd/{ns}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The snapshots of image `image` of namespace `ns`, by name.
fn snapshots(lab: &Lab, ns: &str, image: &str) -> Vec<String> {
    let spec = format!("rbd/{ns}/{image}");
    let out = lab.rbd(&["snap", "ls", "--format", "json", &spec]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// The first byte of `spec` (an image or `image@snapshot`), read by the `rbd` CLI (the
/// test writes bytes below 0x80, which its text keeps as they are).
fn first_byte(lab: &Lab, spec: &str) -> u8 {
    lab.rbd(&["export", "--no-progress", spec, "-"]).as_bytes()[0]
}

fn set_path(route: &str, set: uuid::Uuid) -> String {
    r::fill(route, &[("set", &set.to_string())])
}

/// The provider's client: every gateway's URL, the host's token.
fn provider(urls: &[&str], token: &str, fingerprint: &str) -> Client {
    Client::new(ClientConfig::with_urls(urls, token, fingerprint)).unwrap()
}

fn step(c: &Client, route: &str, set: uuid::Uuid) -> Result<(), ClientError> {
    c.post_empty::<()>(&set_path(route, set), None, Duration::from_secs(30))
}

fn prepare(c: &Client, set: uuid::Uuid, lun: &str) {
    let plan = PrepareRequest {
        context: vss::SnapshotContext(0),
        snapshots: vec![PlannedSnapshot {
            snapshot_id: uuid::Uuid::new_v4(),
            source: lun.to_string(),
        }],
    };
    c.post_empty(
        &set_path(r::PREPARE, set),
        Some(&plan),
        Duration::from_secs(30),
    )
    .unwrap();
    step(c, r::END_PREPARE, set).unwrap();
}

fn state_of(c: &Client, set: uuid::Uuid) -> Option<SetState> {
    let sets: Vec<SetSummary> = c.get(r::SETS).unwrap();
    sets.iter().find(|s| s.set_id == set).map(|s| s.state)
}

fn write_byte(d: &Daemon, target: &str, lun: u64, byte: u8) {
    let mut cfg = InitiatorConfig::new(SQL01);
    cfg.timeout = Duration::from_secs(30);
    let mut s = Session::login(d.portal.parse().unwrap(), target, &cfg).unwrap();
    s.write16(lun, 0, &[byte; 4096], 512, false).unwrap();
    s.synchronize_cache(lun).unwrap();
}

#[test]
fn a_snapshot_set_survives_the_death_of_the_gateway_serving_it() {
    let Some(lab) = Lab::get() else { return };
    let place = two_gateways(&lab, "gws");
    let (ns, [pa, pb], [ca, cb]) = (&place.ns, &place.pools, &place.configs);
    let a = start_gateway(&pa.0, ca)
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the first gateway serves");
    let lun = a.json(&["lun", "create", "data", "16MiB"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let host = a.json(&["host", "add", "sql01", "--initiator", SQL01]);
    let token = host["token"].as_str().unwrap().to_string();
    let number = a.json(&["host", "map", "sql01", &lun])[0]["luns"][0]["lun_number"]
        .as_u64()
        .unwrap();
    let target = a.json(&["status"])["target"].as_str().unwrap().to_string();
    let image = images(&lab, ns)
        .into_iter()
        .find(|i| i.ends_with(&format!("-{lun}")))
        .expect("the LUN's image");
    share_identity(&pa.0, &pb.0);
    let b_start = start_gateway(&pb.0, cb);
    let b_api = b_start
        .standby_api
        .recv_timeout(Duration::from_secs(60))
        .expect("the standby says where its API is");
    let fp = a.fingerprint.clone();

    // Set 1: prepared through gw-a; gw-a dies before the commit; committed and completed
    // through gw-b, which took office meanwhile.
    write_byte(&a, &target, number, 0x11);
    let c = provider(&[&a.api, &b_api], &token, &fp);
    let s1 = uuid::Uuid::new_v4();
    prepare(&c, s1, &lun);
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let b = b_start
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the standby took over");
    eprintln!("gw-b in office {:.1?} after the kill", killed.elapsed());
    assert_eq!(state_of(&c, s1), Some(SetState::Prepared), "through gw-b");
    step(&c, r::COMMIT, s1).expect("the commit through the next gateway");
    write_byte(&b, &target, number, 0x22);
    step(&c, r::COMPLETE, s1).unwrap();
    assert_eq!(state_of(&c, s1), Some(SetState::Completed));
    let snaps = snapshots(&lab, ns, &image);
    assert_eq!(snaps.len(), 1, "one snapshot of the source: {snaps:?}");
    assert_eq!(
        first_byte(&lab, &format!("rbd/{ns}/{image}@{}", snaps[0])),
        0x11,
        "the snapshot holds what was acknowledged before the commit"
    );
    assert_eq!(first_byte(&lab, &format!("rbd/{ns}/{image}")), 0x22);

    // Set 2: gw-a back as a standby; prepared through gw-b, which dies between
    // end-prepare and the commit. The provider's commit (its deadline is short, as VSS
    // holds the applications' writes meanwhile) either lands once gw-a takes office or
    // fails; a failed set is aborted through gw-a, as VSS aborts it, and leaves nothing.
    let a_start = start_gateway(&pa.0, ca);
    let a_api = a_start
        .standby_api
        .recv_timeout(Duration::from_secs(60))
        .expect("the restarted gateway stands by");
    let c = provider(&[&b.api, &a_api], &token, &fp);
    let s2 = uuid::Uuid::new_v4();
    prepare(&c, s2, &lun);
    let mut b = b;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let committed = step(&c, r::COMMIT, s2);
    let a = a_start
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("gw-a took over");
    match committed {
        Ok(()) => {
            eprintln!("set 2 committed through the takeover");
            step(&c, r::COMPLETE, s2).unwrap();
            assert_eq!(state_of(&c, s2), Some(SetState::Completed));
            assert_eq!(snapshots(&lab, ns, &image).len(), 2);
        }
        Err(e) => {
            eprintln!("set 2's commit failed ({e}): aborted");
            step(&c, r::ABORT, s2).expect("the abort through the next gateway");
            assert_eq!(state_of(&c, s2), Some(SetState::Aborted));
            assert_eq!(
                snapshots(&lab, ns, &image),
                snaps,
                "nothing of the aborted set is left on the source"
            );
        }
    }
    // Every image in the namespace is a LUN the array knows.
    let ids: Vec<String> = a
        .json(&["lun", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    for i in images(&lab, ns) {
        assert!(
            ids.iter().any(|id| i.ends_with(&format!("-{id}"))),
            "image {i} is no LUN of the array ({ids:?})"
        );
    }
    assert_eq!(first_byte(&lab, &format!("rbd/{ns}/{image}")), 0x22);
}
