//! A host over shadowlun's iSCSI initiator and target on 127.0.0.1: rescans find the LUNs
//! mapped to its initiator with the identity Windows would build, VSS's GPT flags are written
//! over the wire, and LUN hot-add and removal show up on the next rescan.

use std::net::SocketAddr;
use std::sync::Arc;

use iscsi::{AuthPolicy, TargetConfig, TargetServer};
use scsi::MemDevice;
use scsi::{LogicalUnit, LuIdentity};
use vss::identity::LunIdentity;
use vss::{BusType, LunInfo};
use vss_emulator::gpt_flags;
use vss_emulator::host::Host;
use vss_emulator::iscsi_storage::IscsiStorage;

const TARGET: &str = "iqn.2026-01.org.shadowlun:test-array";
const HOST_A: &str = "iqn.1991-05.com.microsoft:host-a";

fn unit(number: u64) -> (Arc<LogicalUnit>, LunIdentity) {
    let id = LunIdentity::for_number(number);
    let lu = LogicalUnit::new(
        Arc::new(MemDevice::new(512, 8 * 2048)),
        LuIdentity {
            vendor: id.vendor.clone(),
            product: id.product.clone(),
            revision: id.revision.clone(),
            serial: id.serial.clone(),
            designators: id.designators.clone(),
        },
    );
    (Arc::new(lu), id)
}

fn serve() -> (TargetServer, Arc<scsi::Target>, SocketAddr) {
    let server = TargetServer::spawn(TargetConfig {
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        ..TargetConfig::default()
    })
    .unwrap();
    let target = Arc::new(scsi::Target::new(TARGET));
    server
        .add_target(TARGET, None, target.clone(), AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    (server, target, addr)
}

#[test]
fn host_over_iscsi_builds_windows_lun_info_and_keeps_vss_flags_on_the_lun() {
    let (server, target, addr) = serve();
    let (lu0, id0) = unit(0x101);
    let (lu1, _) = unit(0x102);
    target.map(HOST_A, 0, lu0.clone());
    target.map(HOST_A, 1, lu1);
    target.map("iqn.other", 0, unit(0x103).0);

    let host = Host::new("host-a", IscsiStorage::new(addr, TARGET, HOST_A));
    let r = host.rescan().unwrap();
    assert_eq!(r.arrived.len(), 2, "only the LUNs mapped to this initiator");
    let d0 = host.disk(&r.arrived[0]).unwrap();
    let expected = LunInfo::from_identity(&id0.scsi_identity(&[]), BusType::ISCSI).unwrap();
    assert!(
        d0.lun_info.matches_for_import(&expected),
        "{:#?}",
        d0.lun_info
    );
    assert_eq!(
        d0.lun_info.serial_number.as_deref(),
        Some(id0.serial.as_str())
    );
    assert_eq!(d0.capacity.blocks, 8 * 2048);

    host.partition_disk(&d0.device, &[1 << 20, 1 << 20])
        .unwrap();
    host.mount("E:", &[(d0.device.clone(), 1)]).unwrap();
    host.write_volume("E:", 4096, &[0x5A; 1024]).unwrap();
    assert_eq!(
        host.read_volume("E:", 4096, 1024).unwrap(),
        vec![0x5A; 1024]
    );
    host.update_gpt(&d0.device, gpt_flags::VSS_FLAGS, 0, None)
        .unwrap();
    // The flags are on the LU's medium, where a snapshot of it would capture them.
    let mut raw = vec![0u8; 512];
    lu0.device().read_at(2 * 512, &mut raw).unwrap();
    let attrs = u64::from_le_bytes(raw[48..56].try_into().unwrap());
    assert_eq!(attrs, gpt_flags::VSS_FLAGS);

    // Hot-add and removal (REPORTED LUNS DATA HAS CHANGED is handled by the initiator).
    target.map(HOST_A, 2, unit(0x104).0);
    assert_eq!(host.rescan().unwrap().arrived.len(), 1);
    target.unmap(HOST_A, 1);
    assert_eq!(host.rescan().unwrap().removed.len(), 1);
    server.shutdown();
}

#[test]
fn initiator_without_luns_sees_no_disks_until_one_is_mapped() {
    let (server, target, addr) = serve();
    let host = Host::new(
        "host-b",
        IscsiStorage::new(addr, TARGET, "iqn.1991-05.com.microsoft:host-b"),
    );
    assert!(host.rescan().unwrap().arrived.is_empty());
    target.map("iqn.1991-05.com.microsoft:host-b", 0, unit(0x201).0);
    assert_eq!(host.rescan().unwrap().arrived.len(), 1);
    server.shutdown();
}
