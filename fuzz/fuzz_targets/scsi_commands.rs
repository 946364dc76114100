//! Sequences of arbitrary commands from three I_T nexuses against the SCSI device model
//! (two LUNs over memory, one of them mapped to one initiator only). Nothing may panic;
//! CHECK CONDITION carries fixed-format sense and no data; GOOD data-in never exceeds the
//! allocation length of the commands that have one.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scsi::{
    Command, LogicalUnit, LuIdentity, MemDevice, Nexus, Target, TaskAttribute, encode_lun, status,
};
use vss::scsi::Designator;

const HOSTS: [&str; 2] = [
    "iqn.1991-05.com.microsoft:host1",
    "iqn.1991-05.com.microsoft:host2",
];

#[derive(Debug, Arbitrary)]
struct Cmd {
    who: u8,
    lun: u8,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
    expected_length: u16,
    attribute: u8,
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |a, &x| (a << 8) | u64::from(x))
}

/// The allocation length a CDB asks for, for commands that have one.
fn alloc_of(c: &[u8]) -> Option<u64> {
    let get = |a: usize, b: usize| c.get(a..b).map(be);
    match c.first()? {
        0x12 => get(3, 5),
        0x03 | 0x1A => get(4, 5),
        0x5A | 0x5E => get(7, 9),
        0xA0 | 0xA3 => get(6, 10),
        0x9E => get(10, 14),
        _ => None,
    }
}

fn lu(n: u64, block_size: u32, blocks: u64) -> Arc<LogicalUnit> {
    let identity = LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "shadowlun volume".into(),
        revision: "0100".into(),
        serial: format!("SL{n:010}"),
        designators: vec![
            Designator::naa_locally_assigned(0x1000 + n),
            Designator::t10_vendor_id("SHADOWLN", format!("lun-{n}").as_bytes()),
        ],
    };
    Arc::new(LogicalUnit::new(
        Arc::new(MemDevice::new(block_size, blocks)),
        identity,
    ))
}

fuzz_target!(|cmds: Vec<Cmd>| {
    let t = Target::new("iqn.2026-01.org.shadowlun:array");
    let lu0 = lu(0, 512, 256);
    t.map(HOSTS[0], 0, lu0.clone());
    t.map(HOSTS[1], 0, lu0);
    t.map(HOSTS[0], 1, lu(1, 4096, 32));
    let nexus = |who: u8| {
        let host = HOSTS[usize::from(who % 2)];
        let isid = u64::from(who % 3);
        Nexus {
            initiator_port: format!("{host},i,0x{isid:012x}"),
            initiator: host.to_string(),
            target_port: 1,
        }
    };
    for c in cmds.iter().take(32) {
        let n = nexus(c.who);
        let attribute = match c.attribute % 4 {
            0 => TaskAttribute::Simple,
            1 => TaskAttribute::Ordered,
            2 => TaskAttribute::HeadOfQueue,
            _ => TaskAttribute::Aca,
        };
        let o = t.execute(&Command {
            nexus: &n,
            lun: encode_lun(u64::from(c.lun % 3)),
            cdb: &c.cdb,
            data_out: &c.data_out,
            expected_length: u32::from(c.expected_length),
            task_tag: 1,
            attribute,
        });
        match o.status {
            status::CHECK_CONDITION => {
                let s = o.sense.as_ref().expect("CHECK CONDITION without sense");
                assert_eq!(s.len(), 18);
                assert_eq!(s[0] & 0x7F, 0x70);
                assert!(o.data_in.is_empty());
            }
            status::GOOD => {
                if let Some(a) = alloc_of(&c.cdb) {
                    assert!(
                        o.data_in.len() as u64 <= a,
                        "{:02x?} gave {} bytes",
                        c.cdb,
                        o.data_in.len()
                    );
                }
            }
            status::RESERVATION_CONFLICT | status::BUSY | status::TASK_SET_FULL => {
                assert!(o.sense.is_none())
            }
            s => panic!("unexpected status {s:#x} for {:02x?}", c.cdb),
        }
    }
});
