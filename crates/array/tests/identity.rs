//! Every array has an identity of its own: one host attached to two arrays sees two sets of
//! distinct disks, a pool made before arrays had ids keeps its LUNs' identities and its
//! target name across the upgrade, and a second daemon is kept off a pool in use.

mod common;

use std::net::SocketAddr;

use common::*;
use iscsi::initiator::{InitiatorConfig, Session};
use vss::{BusType, LunInfo};

const IQN: &str = "iqn.1991-05.com.microsoft:sql01";

fn with_iscsi(c: &mut array::Config) {
    c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
}

fn login(t: &TestArray) -> Session {
    let cfg = InitiatorConfig::new(IQN);
    Session::login(
        t.running().iscsi_addrs[0],
        t.running().array.target_name(),
        &cfg,
    )
    .unwrap()
}

/// The identity of LUN 0 as the host reads it over iSCSI: VSS's view, the VPD 0x80 serial.
fn read_identity(s: &mut Session) -> (LunInfo, Vec<u8>) {
    let inq = s.inquiry(0, None).unwrap();
    let serial = s.inquiry(0, Some(0x80)).unwrap();
    let vpd83 = s.inquiry(0, Some(0x83)).unwrap();
    let info = LunInfo::from_scsi(&inq, Some(&serial), &vpd83, BusType::ISCSI).unwrap();
    (info, serial)
}

#[test]
fn one_host_attached_to_two_arrays_sees_distinct_disks() {
    let a = TestArray::start_with(with_iscsi);
    let b = TestArray::start_with(with_iscsi);
    let (ida, idb) = (
        a.running().array.array_id().unwrap(),
        b.running().array.array_id().unwrap(),
    );
    assert_ne!(ida, idb, "each pool gets an array id of its own");
    assert_ne!(
        a.running().array.target_name(),
        b.running().array.target_name(),
        "and a target name of its own"
    );
    // The same LUN number on both arrays, mapped to the same host.
    let (lun_a, _) = lun_for_host(&mut a.admin(), "data", "sql01", IQN);
    let (lun_b, _) = lun_for_host(&mut b.admin(), "data", "sql01", IQN);
    assert_eq!(lun_a, lun_b);
    let (mut sa, mut sb) = (login(&a), login(&b));
    let (info_a, serial_a) = read_identity(&mut sa);
    let (info_b, serial_b) = read_identity(&mut sb);
    assert_ne!(serial_a, serial_b);
    assert!(
        !info_a.matches_for_import(&info_b),
        "two arrays' disks must never look like one disk to Windows"
    );
    for (x, y) in info_a.identifiers.iter().zip(&info_b.identifiers) {
        assert_ne!(
            x.identifier, y.identifier,
            "{:?} designator shared",
            x.id_type
        );
    }
    // What the host reads is what the array promises for the LUN.
    let promised = a.running().array.lun_identity_pages(&lun_a).unwrap();
    assert_eq!(
        sa.inquiry(0, Some(0x83)).unwrap(),
        promised.device_identification
    );
    let _ = (sa.logout(), sb.logout());
}

#[test]
fn a_pool_made_before_array_ids_keeps_its_identities_and_target_name() {
    // Make the pool as an older release left it: journal rows without an array id, and no
    // array.json.
    let t = TestArray::start_with(with_iscsi);
    let (old_lun, _) = lun_for_host(&mut t.admin(), "old", "sql01", IQN);
    let dir = t.stop();
    let pool = dir.path().to_path_buf();
    let journal = pool.join("journal.log");
    let text = std::fs::read_to_string(&journal).unwrap();
    let old_text: String = text
        .lines()
        .map(|l| {
            // `<crc32c as 8 hex digits> <JSON>`, as docs/array.md describes the journal.
            let (_, json) = l.split_once(' ').unwrap();
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            strip_array_id(&mut v);
            let json = v.to_string();
            format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
        })
        .collect();
    assert_ne!(old_text, text, "the journal named the array id");
    std::fs::write(&journal, old_text).unwrap();
    std::fs::remove_file(pool.join("array.json")).unwrap();

    let t = TestArray::start_in(dir, with_iscsi);
    assert_eq!(
        t.running().array.target_name(),
        "iqn.2026-01.org.shadowlun:array",
        "hosts of an upgraded pool keep finding its target"
    );
    let id = t
        .running()
        .array
        .array_id()
        .expect("the upgraded pool gets an id");
    let mut s = login(&t);
    let (info, _) = read_identity(&mut s);
    let n: u64 = old_lun.trim_start_matches("lun-").parse().unwrap();
    let old_identity = vss::identity::LunIdentity::for_number(n);
    let old_info =
        LunInfo::from_identity(&old_identity.scsi_identity(&[]), BusType::ISCSI).unwrap();
    assert!(
        info.matches_for_import(&old_info),
        "a LUN keeps the identity it was created with"
    );
    // LUNs made after the upgrade carry the array id.
    let (new_lun, _) = lun_for_host(
        &mut t.admin(),
        "new",
        "sql02",
        "iqn.1991-05.com.microsoft:sql02",
    );
    let promised = t.running().array.lun_identity_pages(&new_lun).unwrap();
    let want = vss::identity::LunIdentity::new(Some(id), n + 1).scsi_identity(&[]);
    let new_info = LunInfo::from_identity(&promised, BusType::ISCSI).unwrap();
    assert!(new_info.matches_for_import(&LunInfo::from_identity(&want, BusType::ISCSI).unwrap()));
    assert!(!new_info.matches_for_import(&old_info));
    let _ = s.logout();
}

fn strip_array_id(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("array_id");
            m.values_mut().for_each(strip_array_id);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_array_id),
        _ => {}
    }
}

#[test]
fn a_second_daemon_on_a_pool_in_use_is_refused_with_the_pool_and_pid() {
    let t = TestArray::start();
    let cfg = config(t.dir.path());
    let err =
        t.rt.block_on(array::start(cfg))
            .expect_err("a second daemon on the same pool");
    let msg = err.to_string();
    assert!(
        msg.contains(&t.dir.path().display().to_string())
            && msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    // The first daemon is untouched.
    expect_status(&t.admin().get(api::routes::ADMIN_LUNS).unwrap(), 200);
}
