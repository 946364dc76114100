//! Sequences of arbitrary commands from three I_T nexuses against the SCSI device model
//! (two LUNs over memory, one of them mapped to one initiator only). Nothing may panic;
//! CHECK CONDITION carries fixed-format sense and no data; GOOD data-in never exceeds the
//! allocation length of the commands that have one.
#![no_main]

// The device-model tests' helpers, including their allocation-length oracle.
#[path = "../../crates/scsi/tests/common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use common::{HOST1, HOST2, TARGET, alloc_of, mem_lu, nexus};
use libfuzzer_sys::fuzz_target;
use scsi::{Command, Target, TaskAttribute, encode_lun, status};

#[derive(Debug, Arbitrary)]
struct Cmd {
    who: u8,
    lun: u8,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
    expected_length: u16,
    attribute: u8,
}

fuzz_target!(|cmds: Vec<Cmd>| {
    let t = Target::new(TARGET);
    let (_, lu0) = mem_lu(0, 512, 256);
    t.map(HOST1, 0, lu0.clone());
    t.map(HOST2, 0, lu0);
    t.map(HOST1, 1, mem_lu(1, 4096, 32).1);
    for c in cmds.iter().take(32) {
        let n = match c.who % 3 {
            0 => nexus(HOST1, 1, 1),
            1 => nexus(HOST2, 2, 1),
            _ => nexus(HOST1, 3, 2),
        };
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
