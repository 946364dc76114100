//! Asymmetric logical unit access over real loopback sockets: a host reads the target port
//! group through INQUIRY and REPORT TARGET PORT GROUPS, and sees a LUN put in standby.

use std::net::SocketAddr;
use std::sync::Arc;

use iscsi::initiator::{DataDir, InitiatorConfig, Session};
use iscsi::{AuthPolicy, TargetConfig, TargetServer};
use scsi::{AccessState, PortGroup};

const TARGET: &str = "iqn.2026-01.org.shadowlun:alua";
const HOST: &str = "iqn.1991-05.com.microsoft:host-a";
const PORT: u16 = 5;
const GROUP: u16 = 3;

/// A target whose one port (relative port 5) is the one port of group 3, serving a memory
/// LUN 0 to HOST.
fn serve() -> (TargetServer, SocketAddr, Arc<scsi::Target>) {
    let t = Arc::new(scsi::Target::new(TARGET));
    t.set_port_groups(vec![PortGroup {
        id: GROUP,
        ports: vec![PORT],
    }])
    .unwrap();
    let identity = scsi::LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "alua".into(),
        revision: "0001".into(),
        serial: "ALUA0001".into(),
        designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xa1a)],
    };
    let dev = Arc::new(scsi::MemDevice::new(512, 256));
    t.map(HOST, 0, Arc::new(scsi::LogicalUnit::new(dev, identity)));
    let server = TargetServer::spawn(TargetConfig {
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        relative_port: PORT,
        portal_group_tag: 2,
        ..TargetConfig::default()
    })
    .unwrap();
    server
        .add_target(TARGET, None, t.clone(), AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    (server, addr, t)
}

fn rtpg(extended: bool, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = if extended { 0x20 } else { 0 } | 0x0A;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn a_host_reads_its_port_group_and_state_over_iscsi() {
    let (server, addr, _) = serve();
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST)).unwrap();
    let inq = s.inquiry(0, None).unwrap();
    assert_eq!(inq[5] & 0x30, 0x10, "TPGS 01b: implicit asymmetric access");
    let page = s.inquiry(0, Some(0x83)).unwrap();
    let (_, ds) = vss::inquiry::decode_device_identification(&page).unwrap();
    let group = ds
        .iter()
        .find(|d| d.designator_type == vss::IdentifierType::TARGET_PORT_GROUP)
        .expect("a target port group designator");
    assert_eq!(group.association, vss::inquiry::Association::TARGET_PORT);
    assert_eq!(group.value, vec![0, 0, 0, GROUP as u8]);
    let r = s.command(0, &rtpg(false, 256), DataDir::Read(256)).unwrap();
    assert_eq!(
        r.data,
        vec![
            0,
            0,
            0,
            12, // one descriptor with one port
            0x00,
            0x8F,
            0,
            GROUP as u8,
            0,
            0,
            0,
            1, // Active/Optimized
            0,
            0,
            0,
            PORT as u8,
        ]
    );
    let r = s.command(0, &rtpg(true, 10), DataDir::Read(10)).unwrap();
    assert_eq!(r.data, vec![0, 0, 0, 12, 0x10, 0, 0, 0, 0x00, 0x8F]);
    s.logout().unwrap();
    server.shutdown();
}

#[test]
fn a_lun_put_in_standby_refuses_reads_after_one_unit_attention() {
    let (server, addr, t) = serve();
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST)).unwrap();
    s.test_unit_ready(0).unwrap();
    s.take_unit_attentions();
    let read = iscsi::initiator::rw16(0x88, 0, 1, false);
    assert_eq!(s.execute(0, &read, DataDir::Read(512)).unwrap().status, 0);
    t.set_access_state(GROUP, AccessState::Standby);
    let sense = |s: &mut Session, cdb: &[u8], dir| {
        let r = s.execute(0, cdb, dir).unwrap();
        assert_eq!(r.status, scsi::status::CHECK_CONDITION);
        let x = r.sense.expect("sense data");
        (x.key, x.asc, x.ascq)
    };
    assert_eq!(sense(&mut s, &read, DataDir::Read(512)), (0x6, 0x2A, 0x06));
    assert_eq!(sense(&mut s, &read, DataDir::Read(512)), (0x2, 0x04, 0x0B));
    assert_eq!(sense(&mut s, &[0; 6], DataDir::None), (0x2, 0x04, 0x0B));
    // What reports on the device still answers, and tells the new state.
    let r = s.execute(0, &rtpg(false, 256), DataDir::Read(256)).unwrap();
    assert_eq!((r.status, r.data[4], r.data[9]), (0, 0x02, 0x02));
    assert_eq!(s.read_capacity16(0).unwrap().blocks, 256);
    t.set_access_state(GROUP, AccessState::ActiveOptimized);
    assert_eq!(sense(&mut s, &read, DataDir::Read(512)), (0x6, 0x2A, 0x06));
    assert_eq!(s.execute(0, &read, DataDir::Read(512)).unwrap().status, 0);
    server.shutdown();
}
