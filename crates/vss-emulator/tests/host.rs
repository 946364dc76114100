//! A host over the in-process SAN: disks and their `LunInfo` from SCSI pages, volumes spanning
//! disks, writes held and released.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lab::san::MemorySan;
use vss::{BusType, LunInfo};
use vss_emulator::host::{Host, HostError};

fn host_with_disks(n: usize) -> (Arc<MemorySan>, Arc<Host>) {
    let san = MemorySan::new();
    for _ in 0..n {
        san.create_lun(4 << 20, &["iqn.h"]).unwrap();
    }
    let h = Host::new("h", san.host_storage("iqn.h"));
    h.rescan().unwrap();
    (san, h)
}

#[test]
fn rescan_builds_lun_info_from_scsi_pages_and_numbers_disks() {
    let (san, h) = host_with_disks(2);
    let disks = h.disks();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].device, "\\\\.\\PHYSICALDRIVE0");
    let id = san.identity(disks[0].address.lun).unwrap();
    let expected = LunInfo::from_identity(&id.scsi_identity(&[]), BusType::ISCSI).unwrap();
    assert!(disks[0].lun_info.matches_for_import(&expected));
    assert_eq!(
        disks[0].lun_info.serial_number.as_deref(),
        Some(id.serial.as_str())
    );
    assert_eq!(disks[0].lun_info.identifiers.len(), 3);

    let n = san.create_lun(1 << 20, &["iqn.h"]).unwrap();
    let r = h.rescan().unwrap();
    assert_eq!(r.arrived, vec!["\\\\.\\PHYSICALDRIVE2".to_string()]);
    san.mask(n, "iqn.h").unwrap();
    let r = h.rescan().unwrap();
    assert_eq!(r.removed, vec!["\\\\.\\PHYSICALDRIVE2".to_string()]);
}

#[test]
fn spanned_volume_maps_offsets_across_disks() {
    let (_san, h) = host_with_disks(2);
    let d0 = "\\\\.\\PHYSICALDRIVE0".to_string();
    let d1 = "\\\\.\\PHYSICALDRIVE1".to_string();
    h.partition_disk(&d0, &[1 << 20]).unwrap();
    h.partition_disk(&d1, &[1 << 20]).unwrap();
    let v = h.mount("E:", &[(d0.clone(), 1), (d1.clone(), 1)]).unwrap();
    assert_eq!(v.bytes(), 2 << 20);
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    // Straddles the boundary between the two disks.
    h.write_volume("E:", (1 << 20) - 512, &data).unwrap();
    assert_eq!(h.read_volume("E:", (1 << 20) - 512, 1024).unwrap(), data);
    let a0 = h.disk(&d0).unwrap().address;
    let a1 = h.disk(&d1).unwrap().address;
    assert_eq!(h.storage().read(&a0, 2048 + 2047, 1).unwrap(), data[..512]);
    assert_eq!(h.storage().read(&a1, 2048, 1).unwrap(), data[512..]);
    assert!(matches!(
        h.write_volume("E:", 2 << 20, &data),
        Err(HostError::VolumeRange { .. })
    ));
}

#[test]
fn held_writes_wait_for_release_and_lapse_after_the_window() {
    let (_san, h) = host_with_disks(1);
    let d0 = "\\\\.\\PHYSICALDRIVE0".to_string();
    h.partition_disk(&d0, &[1 << 20]).unwrap();
    h.mount("E:", &[(d0.clone(), 1)]).unwrap();
    h.hold_writes(std::slice::from_ref(&d0), Duration::from_secs(5));
    let h2 = Arc::clone(&h);
    let t = std::thread::spawn(move || {
        let s = Instant::now();
        h2.write_volume("E:", 0, &[1; 512]).unwrap();
        s.elapsed()
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.read_volume("E:", 0, 512).unwrap(), vec![0; 512]);
    assert!(h.release_writes());
    assert!(t.join().unwrap() >= Duration::from_millis(90));
    assert_eq!(h.read_volume("E:", 0, 512).unwrap(), vec![1; 512]);

    h.hold_writes(std::slice::from_ref(&d0), Duration::from_millis(50));
    h.write_volume("E:", 0, &[2; 512]).unwrap();
    assert!(
        !h.release_writes(),
        "a hold past its window reports the lapse"
    );
}
