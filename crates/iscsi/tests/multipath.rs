//! One target served through two target ports over real loopback sockets: each port is its
//! own iSCSI target portal group (its tag at login and in SendTargets) and its own SCSI
//! target port (relative target port identifier, target port group). A host sees the same
//! logical unit on both paths, tells the paths apart by VPD 0x83, reads every group's state
//! with REPORT TARGET PORT GROUPS through either, and is refused the medium on a Standby
//! path only.

use std::net::SocketAddr;
use std::sync::Arc;

use iscsi::initiator::{DataDir, InitiatorConfig, Session, discover, rw16};
use iscsi::{AuthPolicy, TargetConfig, TargetPort, TargetServer};
use scsi::{AccessState, PortGroup};
use vss::IdentifierType;
use vss::inquiry::{Association, Designator, decode_device_identification};

const TARGET: &str = "iqn.2026-01.org.shadowlun:mpath";
const HOST: &str = "iqn.1991-05.com.microsoft:host-a";
const HOST_B: &str = "iqn.1991-05.com.microsoft:host-b";

/// The two ports served here: (relative target port, portal group tag, target port group).
/// Three different numbers per port, so that a mix-up of one for another shows.
const PORT_A: (u16, u16, u16) = (3, 7, 11);
const PORT_B: (u16, u16, u16) = (4, 8, 12);
/// A group whose one port another process serves.
const REMOTE_GROUP: u16 = 13;
const REMOTE_PORT: u16 = 9;

struct Paths {
    server: TargetServer,
    target: Arc<scsi::Target>,
    /// LUN 0 and LUN 1.
    lus: [Arc<scsi::LogicalUnit>; 2],
    a: SocketAddr,
    b: SocketAddr,
}

/// A target on two ports in two groups (and a third group served elsewhere), memory LUNs 0
/// and 1 mapped to HOST and HOST_B, both in `b_state` in group B when given.
fn serve(b_state: Option<AccessState>) -> Paths {
    let t = Arc::new(scsi::Target::new(TARGET));
    t.set_port_groups(vec![
        PortGroup {
            id: PORT_A.2,
            ports: vec![PORT_A.0],
        },
        PortGroup {
            id: PORT_B.2,
            ports: vec![PORT_B.0],
        },
        PortGroup {
            id: REMOTE_GROUP,
            ports: vec![REMOTE_PORT],
        },
    ])
    .unwrap();
    let lus = [0u64, 1].map(|n| {
        let identity = scsi::LuIdentity {
            vendor: "SHADOWLN".into(),
            product: "mpath".into(),
            revision: "0001".into(),
            serial: format!("MPATH00{n}"),
            designators: vec![Designator::naa_locally_assigned(0x3a7 + n)],
        };
        let lu = Arc::new(scsi::LogicalUnit::new(
            Arc::new(scsi::MemDevice::new(512, 256)),
            identity,
        ));
        t.map(HOST, n, lu.clone());
        t.map(HOST_B, n, lu.clone());
        lu
    });
    if let Some(s) = b_state {
        t.set_access_state(PORT_B.2, s);
    }
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = TargetServer::spawn(TargetConfig {
        target_ports: vec![
            TargetPort {
                relative_port: PORT_A.0,
                portal_group_tag: PORT_A.1,
                portals: vec![any],
            },
            TargetPort {
                relative_port: PORT_B.0,
                portal_group_tag: PORT_B.1,
                portals: vec![any],
            },
        ],
        ..TargetConfig::default()
    })
    .unwrap();
    server
        .add_target(TARGET, None, t.clone(), AuthPolicy::None)
        .unwrap();
    let ports = server.ports();
    assert_eq!(ports.len(), 2);
    let (a, b) = (ports[0].portals[0], ports[1].portals[0]);
    assert_ne!(a, b);
    Paths {
        server,
        target: t,
        lus,
        a,
        b,
    }
}

fn login(addr: SocketAddr, host: &str) -> Session {
    Session::login(addr, TARGET, &InitiatorConfig::new(host)).unwrap()
}

/// (status, sense key, ASC, ASCQ) of a command to `lun`.
fn answer(s: &mut Session, lun: u64, cdb: &[u8], dir: DataDir) -> (u8, u8, u8, u8) {
    let r = s.execute(lun, cdb, dir).unwrap();
    let x = r.sense.map(|x| (x.key, x.asc, x.ascq)).unwrap_or_default();
    (r.status, x.0, x.1, x.2)
}

fn rtpg() -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0A;
    c[6..10].copy_from_slice(&256u32.to_be_bytes());
    c
}

/// (key, ASC, ASCQ) of a command that must end in CHECK CONDITION.
fn sense(s: &mut Session, cdb: &[u8], dir: DataDir) -> (u8, u8, u8) {
    let r = s.execute(0, cdb, dir).unwrap();
    assert_eq!(r.status, scsi::status::CHECK_CONDITION, "{cdb:02x?}");
    let x = r.sense.expect("sense data");
    (x.key, x.asc, x.ascq)
}

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

/// The REPORT TARGET PORT GROUPS data for the three groups, group B in `b` (code, status).
fn expected_rtpg(b: (u8, u8)) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 3 * 12];
    for (id, port, (state, status)) in [
        (PORT_A.2, PORT_A.0, (0x00, 0x00)),
        (PORT_B.2, PORT_B.0, b),
        (REMOTE_GROUP, REMOTE_PORT, (0x00, 0x00)),
    ] {
        d.extend_from_slice(&[state, 0x8F]);
        d.extend_from_slice(&be16(id));
        d.extend_from_slice(&[0, status, 0, 1, 0, 0]);
        d.extend_from_slice(&be16(port));
    }
    d
}

#[test]
fn each_portal_is_its_own_port_the_logical_unit_is_the_same() {
    let p = serve(None);
    let cfg = InitiatorConfig {
        isid: 0x0023_0000_0001,
        ..InitiatorConfig::new(HOST)
    };
    let mut a = Session::login(p.a, TARGET, &cfg).unwrap();
    let mut b = Session::login(p.b, TARGET, &cfg).unwrap();
    assert_eq!(a.portal_group_tag(), Some(PORT_A.1));
    assert_eq!(b.portal_group_tag(), Some(PORT_B.1));
    for s in [&mut a, &mut b] {
        let inq = s.inquiry(0, None).unwrap();
        assert_eq!(inq[5] & 0x30, 0x10, "TPGS 01b on both paths");
    }
    // Both sessions answered a command, so both are registered. The same ISID through both
    // portals makes two sessions (the portal group is part of a session's name), neither
    // replacing the other.
    let sessions = p.server.sessions();
    assert_eq!(
        sessions
            .iter()
            .map(|s| (s.relative_port, s.portal_group_tag, s.portal))
            .collect::<Vec<_>>(),
        vec![
            (PORT_A.0, PORT_A.1, Some(p.a)),
            (PORT_B.0, PORT_B.1, Some(p.b))
        ]
    );
    let (_, da) = decode_device_identification(&a.inquiry(0, Some(0x83)).unwrap()).unwrap();
    let (_, db) = decode_device_identification(&b.inquiry(0, Some(0x83)).unwrap()).unwrap();
    assert_eq!(da.len(), db.len());
    let port_value =
        |d: &Designator| (d.association == Association::TARGET_PORT).then_some(d.designator_type);
    let mut differing = Vec::new();
    for (x, y) in da.iter().zip(&db) {
        assert_eq!(
            (x.association, x.designator_type),
            (y.association, y.designator_type)
        );
        if x != y {
            differing.push(x.designator_type);
            let expect = |(rel, tag, group): (u16, u16, u16)| match port_value(x) {
                Some(IdentifierType::PORT_RELATIVE) => vec![0, 0, be16(rel)[0], be16(rel)[1]],
                Some(IdentifierType::TARGET_PORT_GROUP) => {
                    vec![0, 0, be16(group)[0], be16(group)[1]]
                }
                Some(IdentifierType::SCSI_NAME_STRING) => {
                    // Null-terminated, padded with nulls to a multiple of 4 (SPC-4 7.8.6.11).
                    let mut v = format!("{TARGET},t,0x{tag:04x}").into_bytes();
                    v.resize((v.len() + 1).next_multiple_of(4), 0);
                    v
                }
                other => panic!("designator {other:?} differs between the paths"),
            };
            assert_eq!(x.value, expect(PORT_A));
            assert_eq!(y.value, expect(PORT_B));
        }
    }
    assert_eq!(
        differing,
        vec![
            IdentifierType::PORT_RELATIVE,
            IdentifierType::TARGET_PORT_GROUP,
            IdentifierType::SCSI_NAME_STRING
        ],
        "exactly the port designators differ"
    );
    // The logical unit's own name is the same through both.
    assert!(da.contains(&Designator::naa_locally_assigned(0x3a7)));
    for s in [&mut a, &mut b] {
        let r = s.command(0, &rtpg(), DataDir::Read(256)).unwrap();
        assert_eq!(r.data, expected_rtpg((0x00, 0x00)));
    }
    a.logout().unwrap();
    b.logout().unwrap();
    p.server.shutdown();
}

#[test]
fn a_standby_path_refuses_the_medium_and_still_reports() {
    let p = serve(Some(AccessState::Standby));
    let mut a = login(p.a, HOST);
    let mut b = login(p.b, HOST);
    for s in [&mut a, &mut b] {
        let _ = s.execute(0, &[0; 6], DataDir::None).unwrap();
        s.take_unit_attentions();
    }
    let read = rw16(0x88, 0, 1, false);
    let write = rw16(0x8A, 0, 1, false);
    assert_eq!(sense(&mut b, &read, DataDir::Read(512)), (0x2, 0x04, 0x0B));
    assert_eq!(
        sense(&mut b, &write, DataDir::Write(vec![0x5a; 512])),
        (0x2, 0x04, 0x0B)
    );
    assert_eq!(sense(&mut b, &[0; 6], DataDir::None), (0x2, 0x04, 0x0B));
    // The active path reads and writes.
    let w = a
        .execute(0, &write, DataDir::Write(vec![0x5a; 512]))
        .unwrap();
    assert_eq!(w.status, scsi::status::GOOD);
    let r = a.execute(0, &read, DataDir::Read(512)).unwrap();
    assert_eq!((r.status, r.data), (scsi::status::GOOD, vec![0x5a; 512]));
    // The standby path serves INQUIRY and REPORT TARGET PORT GROUPS, naming its state.
    let inq = b.inquiry(0, None).unwrap();
    assert_eq!(&inq[8..16], b"SHADOWLN");
    let (_, d) = decode_device_identification(&b.inquiry(0, Some(0x83)).unwrap()).unwrap();
    assert!(d.contains(&Designator::iscsi_target_port_group(PORT_B.2)));
    let expect = expected_rtpg((0x02, 0x02));
    for s in [&mut a, &mut b] {
        let r = s.execute(0, &rtpg(), DataDir::Read(256)).unwrap();
        assert_eq!((r.status, r.data), (scsi::status::GOOD, expect.clone()));
    }
    p.server.shutdown();
}

#[test]
fn a_state_change_is_a_unit_attention_on_every_nexus_through_both_ports() {
    let p = serve(None);
    let mut paths = [
        login(p.a, HOST),
        login(p.b, HOST),
        login(p.a, HOST_B),
        login(p.b, HOST_B),
    ];
    for s in paths.iter_mut() {
        let _ = s.execute(0, &[0; 6], DataDir::None).unwrap();
        let _ = s.execute(0, &[0; 6], DataDir::None).unwrap();
        assert_eq!(
            s.execute(0, &[0; 6], DataDir::None).unwrap().status,
            scsi::status::GOOD
        );
    }
    p.target
        .set_access_state(PORT_A.2, AccessState::ActiveNonOptimized);
    let read = rw16(0x88, 0, 1, false);
    for s in paths.iter_mut() {
        assert_eq!(sense(s, &read, DataDir::Read(512)), (0x6, 0x2A, 0x06));
        // Once: both groups are still active, the next READ runs.
        let r = s.execute(0, &read, DataDir::Read(512)).unwrap();
        assert_eq!(r.status, scsi::status::GOOD);
        let r = s.execute(0, &rtpg(), DataDir::Read(256)).unwrap();
        assert_eq!(
            (r.data[4], r.data[9]),
            (0x01, 0x02),
            "group A: A/N, altered"
        );
    }
    p.server.shutdown();
}

#[test]
fn send_targets_lists_every_portal_with_its_tag() {
    let p = serve(None);
    let want = vec![
        format!("{},{}", p.a, PORT_A.1),
        format!("{},{}", p.b, PORT_B.1),
    ];
    for portal in [p.a, p.b] {
        let found = discover(portal, &InitiatorConfig::new(HOST)).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, TARGET);
        assert_eq!(found[0].addresses, want);
    }
    p.server.shutdown();
}

#[test]
fn access_states_are_per_logical_unit_and_group() {
    let p = serve(None);
    let mut a = login(p.a, HOST);
    let mut b = login(p.b, HOST);
    for s in [&mut a, &mut b] {
        for lun in [0, 1] {
            let _ = s.execute(lun, &[0; 6], DataDir::None).unwrap();
        }
        s.take_unit_attentions();
    }
    p.lus[1].set_access_state(PORT_A.2, AccessState::Standby);
    let read = rw16(0x88, 0, 1, false);
    let good = (scsi::status::GOOD, 0, 0, 0);
    let check = scsi::status::CHECK_CONDITION;
    // LUN 1 changed: one 2A/06 on each path; LUN 0 did not.
    for s in [&mut a, &mut b] {
        assert_eq!(answer(s, 0, &read, DataDir::Read(512)), good);
        assert_eq!(
            answer(s, 1, &read, DataDir::Read(512)),
            (check, 0x6, 0x2A, 0x06)
        );
    }
    // Through port A, LUN 1 is Standby and LUN 0 active; through port B both are active.
    assert_eq!(
        answer(&mut a, 1, &read, DataDir::Read(512)),
        (check, 0x2, 0x04, 0x0B)
    );
    assert_eq!(answer(&mut a, 0, &read, DataDir::Read(512)), good);
    assert_eq!(answer(&mut b, 1, &read, DataDir::Read(512)), good);
    // REPORT TARGET PORT GROUPS tells each LU's own states, the same through either port.
    let mut lun1 = expected_rtpg((0x00, 0x00));
    lun1[4] = 0x02;
    lun1[9] = 0x02;
    for s in [&mut a, &mut b] {
        let r = s.execute(0, &rtpg(), DataDir::Read(256)).unwrap();
        assert_eq!(r.data, expected_rtpg((0x00, 0x00)));
        let r = s.execute(1, &rtpg(), DataDir::Read(256)).unwrap();
        assert_eq!(r.data, lun1);
    }
    p.server.shutdown();
}
