//! LUNs created through the API are served over iSCSI (real sockets on 127.0.0.1) to their
//! host's initiator only, with exactly the identity the API promised.

mod common;

use std::net::SocketAddr;

use api::routes as r;
use api::*;
use array::client::Client;
use common::*;
use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};

const IQN_A: &str = "iqn.1991-05.com.microsoft:host-a";
const IQN_B: &str = "iqn.1991-05.com.microsoft:host-b";

fn with_iscsi() -> TestArray {
    TestArray::start_with(|c| c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))])
}

fn portal(t: &TestArray) -> SocketAddr {
    t.running().iscsi_addrs[0]
}

fn login(t: &TestArray, iqn: &str) -> Result<Session, InitiatorError> {
    let mut cfg = InitiatorConfig::new(iqn);
    cfg.timeout = std::time::Duration::from_secs(10);
    Session::login(portal(t), t.running().array.target_name(), &cfg)
}

/// Adds a host with one initiator and, if given, a CHAP secret.
fn add_host(admin: &mut Client, name: &str, iqn: &str, chap_secret: Option<&str>) {
    let r = admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: name.into(),
                initiators: vec![iqn.into()],
                chap_secret: chap_secret.map(Into::into),
                import_from: vec![],
            },
        )
        .unwrap();
    expect_status(&r, 201);
}

/// Logs in with CHAP, the user name being the initiator name (the array's convention).
fn chap_login(t: &TestArray, iqn: &str, secret: &str) -> Result<Session, InitiatorError> {
    let mut cfg = InitiatorConfig::new(iqn);
    cfg.chap = Some(iscsi::initiator::ChapCredentials {
        user: iqn.into(),
        secret: secret.as_bytes().to_vec(),
        mutual: None,
    });
    Session::login(portal(t), t.running().array.target_name(), &cfg)
}

fn serial_of(vpd80: &[u8]) -> String {
    String::from_utf8_lossy(&vpd80[4..]).trim().to_string()
}

#[test]
fn a_lun_is_visible_only_to_its_hosts_initiator_with_the_promised_identity() {
    let t = with_iscsi();
    let page = visibility_and_promised_identity(&t);
    let target = t.running().array.target_name();
    assert_eq!(target_port(&page), (1, format!("{target},t,0x0001")));
}

/// The target port an array is configured with is the one its LUNs serve in VPD 0x83 and
/// the one `describe` (what the provider's GetTargetLuns reports) predicts.
#[test]
fn the_configured_target_port_is_served_and_predicted() {
    let t = TestArray::start_with(|c| {
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.iscsi_relative_port = 3;
        c.iscsi_portal_group_tag = 7;
    });
    let page = visibility_and_promised_identity(&t);
    let target = t.running().array.target_name();
    assert_eq!(target_port(&page), (3, format!("{target},t,0x0007")));
    // The port is the one port of target port group 1, every LUN Active/Optimized in it.
    let mut s = login(&t, IQN_A).unwrap();
    assert_eq!(s.inquiry(0, None).unwrap()[5] & 0x30, 0x10, "TPGS 01b");
    let mut rtpg = [0u8; 12];
    rtpg[0] = 0xA3;
    rtpg[1] = 0x0A;
    rtpg[9] = 64;
    let r = s
        .command(0, &rtpg, iscsi::initiator::DataDir::Read(64))
        .unwrap();
    assert_eq!(
        r.data,
        vec![0, 0, 0, 12, 0x00, 0x8F, 0, 1, 0, 0, 0, 1, 0, 0, 0, 3]
    );
}

/// The relative target port identifier and the target port's SCSI name in a VPD 0x83 page.
fn target_port(page: &[u8]) -> (u16, String) {
    use vss::IdentifierType;
    use vss::inquiry::{Association, decode_device_identification};
    let (_, ds) = decode_device_identification(page).unwrap();
    let port: Vec<_> = ds
        .iter()
        .filter(|d| d.association == Association::TARGET_PORT)
        .collect();
    let rel = port
        .iter()
        .find(|d| d.designator_type == IdentifierType::PORT_RELATIVE)
        .map(|d| u16::from_be_bytes([d.value[2], d.value[3]]))
        .expect("a relative target port designator");
    let name = port
        .iter()
        .find(|d| d.designator_type == IdentifierType::SCSI_NAME_STRING)
        .map(|d| {
            String::from_utf8_lossy(&d.value)
                .trim_end_matches('\0')
                .to_string()
        })
        .expect("a target port name");
    (rel, name)
}

/// Masking, the identity `describe` promises for a snapshot LUN (byte for byte, as the host
/// reads it over iSCSI), snapshot contents, and growth. Returns the snapshot LUN's VPD 0x83.
fn visibility_and_promised_identity(t: &TestArray) -> Vec<u8> {
    let mut admin = t.admin();
    let (lun_a, tok_a) = lun_for_host(&mut admin, "la", "a", IQN_A);
    let (lun_b, _) = lun_for_host(&mut admin, "lb", "b", IQN_B);
    let rec_a: LunRecord = admin
        .get(&r::fill(r::ADMIN_LUN, &[("lun", &lun_a)]))
        .unwrap()
        .json()
        .unwrap();
    let rec_b: LunRecord = admin
        .get(&r::fill(r::ADMIN_LUN, &[("lun", &lun_b)]))
        .unwrap()
        .json()
        .unwrap();

    let mut sa = login(t, IQN_A).unwrap();
    assert_eq!(sa.report_luns().unwrap(), vec![0]);
    assert_eq!(serial_of(&sa.inquiry(0, Some(0x80)).unwrap()), rec_a.serial);
    let mut sb = login(t, IQN_B).unwrap();
    assert_eq!(sb.report_luns().unwrap(), vec![0]);
    assert_eq!(serial_of(&sb.inquiry(0, Some(0x80)).unwrap()), rec_b.serial);
    assert!(
        login(t, "iqn.1991-05.com.microsoft:stranger").is_err(),
        "an initiator of no host may not log in"
    );

    // Data written over iSCSI is what the snapshot captures; the snapshot LUN, once exposed,
    // answers INQUIRY with the pages describe promised, byte for byte.
    let block = vec![0x5Au8; 512];
    sa.write16(0, 0, &block, 512, false).unwrap();
    sa.synchronize_cache(0).unwrap();
    let mut h = t.client(Some(&tok_a));
    let set = uuid::Uuid::new_v4();
    let req = PrepareRequest {
        context: vss::SnapshotContext(0),
        snapshots: vec![PlannedSnapshot {
            snapshot_id: uuid::Uuid::new_v4(),
            source: lun_a.clone(),
        }],
    };
    expect_status(&h.post(&set_path(r::PREPARE, set), &req).unwrap(), 204);
    expect_status(
        &h.request("POST", &set_path(r::COMMIT, set), None).unwrap(),
        204,
    );
    let d: DescribeResponse = h
        .post(
            &set_path(r::DESCRIBE, set),
            &DescribeRequest {
                sources: vec![lun_a.clone()],
            },
        )
        .unwrap()
        .json()
        .unwrap();
    let snap = &d.snapshots[0];
    sa.write16(0, 0, &[0x11u8; 512], 512, false).unwrap();
    expect_status(
        &h.post(
            r::EXPOSE,
            &LunsRequest {
                luns: vec![snap.lun.clone()],
            },
        )
        .unwrap(),
        204,
    );
    let luns = sa.report_luns().unwrap();
    assert_eq!(luns, vec![0, 1]);
    assert_eq!(
        sa.inquiry(1, None).unwrap()[..36],
        snap.identity.inquiry[..36]
    );
    assert_eq!(
        Some(sa.inquiry(1, Some(0x80)).unwrap()),
        snap.identity.unit_serial
    );
    let page = sa.inquiry(1, Some(0x83)).unwrap();
    assert_eq!(page, snap.identity.device_identification);
    let data = sa.read16(1, 0, 1, 512).unwrap();
    assert_eq!(data, block, "the snapshot holds the commit instant's data");
    sa.write16(1, 0, &[0x77u8; 512], 512, false)
        .expect("snapshot LUNs are writable");
    // Host b sees none of it.
    assert_eq!(sb.report_luns().unwrap(), vec![0]);
    // Masking removes it from host a again.
    expect_status(
        &h.post(
            r::MASK,
            &LunsRequest {
                luns: vec![snap.lun.clone()],
            },
        )
        .unwrap(),
        204,
    );
    assert_eq!(sa.report_luns().unwrap(), vec![0]);
    // Growing the LUN through the API raises CAPACITY DATA HAS CHANGED and the new size.
    sa.take_unit_attentions();
    let grown = admin
        .request(
            "PATCH",
            &r::fill(r::ADMIN_LUN, &[("lun", &lun_a)]),
            Some(br#"{"size_bytes": 2097152}"#),
        )
        .unwrap();
    expect_status(&grown, 200);
    let cap = sa.read_capacity16(0).unwrap();
    assert_eq!(cap.blocks * u64::from(cap.block_size), 2 << 20);
    let uas = sa.take_unit_attentions();
    assert!(
        uas.iter().any(|s| (s.asc, s.ascq) == (0x2A, 0x09)),
        "{uas:?}"
    );
    let _ = sa.logout();
    let _ = sb.logout();
    page
}

#[test]
fn a_host_with_a_chap_secret_must_use_it_even_when_the_array_does_not_require_chap() {
    let t = with_iscsi();
    let mut admin = t.admin();
    add_host(&mut admin, "a", IQN_A, Some("correct-horse1"));
    add_host(&mut admin, "b", IQN_B, None);
    match login(&t, IQN_A) {
        Err(InitiatorError::LoginRefused {
            class: 2,
            detail: 1,
        }) => {}
        other => panic!("host a's name without its secret must be refused, got {other:?}"),
    }
    let mut s = chap_login(&t, IQN_A, "correct-horse1").unwrap();
    assert_eq!(s.report_luns().unwrap(), Vec::<u64>::new());
    let _ = s.logout();
    let mut s = login(&t, IQN_B).expect("a host without a secret logs in without CHAP");
    let _ = s.logout();
}

#[test]
fn chap_is_required_when_configured_and_a_wrong_secret_is_refused() {
    let t = TestArray::start_with(|c| {
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.iscsi_require_chap = true;
    });
    let mut admin = t.admin();
    add_host(&mut admin, "a", IQN_A, Some("correct-horse1"));
    assert!(login(&t, IQN_A).is_err(), "no CHAP, no login");
    let chap = |secret: &str| chap_login(&t, IQN_A, secret);
    assert!(chap("wrong-secret12").is_err());
    let mut s = chap("correct-horse1").unwrap();
    assert_eq!(s.report_luns().unwrap(), Vec::<u64>::new());
    let _ = s.logout();
}
