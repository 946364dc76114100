//! VSS's partition flags and the disk GUID, written to and read from a LUN of the in-process
//! SAN.

use std::sync::Arc;

use lab::san::{MemorySan, TARGET};
use vss_emulator::gpt_flags::{
    GptError, HIDDEN, NO_DRIVE_LETTER, READ_ONLY, SHADOW_COPY, VSS_FLAGS, create, read, update,
};
use vss_emulator::storage::{DiskAddress, HostStorage};

#[test]
fn flags_and_disk_guid_are_written_to_the_lun() {
    let san = MemorySan::new();
    let n = san.create_lun(4 << 20, &["i"]).unwrap();
    let s: Arc<dyn HostStorage> = san.host_storage("i");
    let d = DiskAddress {
        target: TARGET.into(),
        lun: n,
    };
    assert!(matches!(read(&s, &d), Err(GptError::NoTable { .. })));
    let g = uuid::Uuid::from_u128(0x1111);
    let l = create(&s, &d, g, &[("a".into(), 1 << 20), ("b".into(), 1 << 20)]).unwrap();
    assert_eq!(l.partitions.len(), 2);
    assert_eq!(l.partitions[0].first_lba, 2048);
    assert_eq!(l.partitions[0].blocks(), 2048);
    // Protective MBR signature and GPT header signature are on the LUN.
    let lba0 = s.read(&d, 0, 2).unwrap();
    assert_eq!(&lba0[510..512], &[0x55, 0xAA]);
    assert_eq!(&lba0[512..520], b"EFI PART");

    update(&s, &d, VSS_FLAGS, 0, None).unwrap();
    let r = read(&s, &d).unwrap();
    assert!(r.partitions.iter().all(|p| p.flags == VSS_FLAGS));
    assert_eq!(r.disk_guid, g);

    // A snapshot of the LUN carries the flags.
    let snap = san.snapshot_luns(&[n]).unwrap()[0];
    san.unmask(snap, "i").unwrap();
    let sd = DiskAddress {
        target: TARGET.into(),
        lun: snap,
    };
    assert!(
        read(&s, &sd)
            .unwrap()
            .partitions
            .iter()
            .all(|p| p.flags == VSS_FLAGS)
    );

    let g2 = uuid::Uuid::from_u128(0x2222);
    update(&s, &d, 0, HIDDEN | SHADOW_COPY, Some(g2)).unwrap();
    let r = read(&s, &d).unwrap();
    assert_eq!(r.disk_guid, g2);
    assert!(
        r.partitions
            .iter()
            .all(|p| p.flags == READ_ONLY | NO_DRIVE_LETTER)
    );
}
