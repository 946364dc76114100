//! The backup components document a host imports (`load metadata`, `import`, break, resync
//! and delete of a transportable set): any text is refused with a precise error or read
//! into a document that passed validation, and a document that was read writes out to text
//! that reads back as the same document. Seeds are documents as the emulator writes them:
//! `SHADOWLUN_FUZZ_SEEDS=<dir> cargo fuzz run bcd -- -runs=0`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowlun_fuzz::{seed_dir, write_seed};
use vss::identity::{ArrayId, LunIdentity};
use vss::{BusType, LunInfo, SnapshotContext, VssId};
use vss_emulator::bcd::{Bcd, BcdError, ExtentRecord, LunRecord, SetRecord, SnapshotRecord};

fn lun(n: u64) -> LunInfo {
    let id = LunIdentity::new(ArrayId::new(0x5eed), n);
    LunInfo::from_identity(&id.scsi_identity(&[]), BusType::ISCSI).expect("a LUN info")
}

fn write_seeds() {
    let Some(dir) = seed_dir() else { return };
    for volumes in [1usize, 3] {
        let luns: Vec<LunRecord> = (0..volumes as u64)
            .map(|i| LunRecord {
                provider_id: VssId::from_u128(0x9e0),
                source_device: format!("\\\\?\\PhysicalDrive{i}"),
                source: lun(2 * i + 1),
                target: lun(2 * i + 2),
                original_disk_guid: VssId::from_u128(0xd15c + u128::from(i)),
            })
            .collect();
        let snapshots = (0..volumes)
            .map(|i| SnapshotRecord {
                snapshot_id: VssId::from_u128(0x5a0 + i as u128),
                provider_id: VssId::from_u128(0x9e0),
                original_volume: format!(
                    "\\\\?\\Volume{{{:08x}-0000-0000-0000-000000000000}}\\",
                    i
                ),
                extents: vec![ExtentRecord {
                    lun: i,
                    first_lba: 2048,
                    blocks: 1 << 20,
                }],
                block_size: 512,
            })
            .collect();
        let mut doc = Bcd::new(SetRecord {
            snapshot_set_id: VssId::from_u128(0x5e7),
            context: SnapshotContext(0x1d),
            originating_host: "host-a".into(),
            created: 1_780_000_000,
            snapshots,
            luns,
        });
        if volumes > 1 {
            doc.aliases.insert("data".into(), VssId::from_u128(0x5a1));
        }
        doc.validate().expect("a seed is a valid document");
        write_seed(&dir, &format!("set-{volumes}"), doc.to_json().as_bytes());
    }
}

fuzz_target!(init: write_seeds(), |input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match Bcd::from_json(text) {
        Ok(doc) => {
            doc.validate().expect("a document that was read is valid");
            let again = Bcd::from_json(&doc.to_json()).expect("a written document reads back");
            assert_eq!(again, doc, "a document round-trips through its text");
        }
        Err(BcdError::Corrupt(m) | BcdError::Invalid(m)) => assert!(!m.is_empty()),
        Err(e @ BcdError::Io { .. }) => panic!("no file was read, yet: {e}"),
    }
});
