#![allow(dead_code)]
//! Helpers shared by the integration tests (and the `scsi_commands` fuzz target, which
//! includes this file): a target with logical units over `MemDevice`s, shorthand for issuing
//! CDBs, and an oracle for allocation lengths written apart from the device model.

use std::sync::Arc;

use scsi::{
    Command, LogicalUnit, LuIdentity, MemDevice, Nexus, Outcome, Target, TaskAttribute, encode_lun,
    status,
};
use vss::inquiry::Designator;

pub const TARGET: &str = "iqn.2026-01.org.shadowlun:array";
pub const HOST1: &str = "iqn.1991-05.com.microsoft:host1";
pub const HOST2: &str = "iqn.1991-05.com.microsoft:host2";

pub fn nexus(initiator: &str, isid: u64, port: u16) -> Nexus {
    Nexus {
        initiator_port: format!("{initiator},i,0x{isid:012x}"),
        initiator: initiator.to_string(),
        target_port: port,
        portal_group_tag: port,
    }
}

pub fn identity(n: u64) -> LuIdentity {
    LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "shadowlun volume".into(),
        revision: "0100".into(),
        serial: format!("SL{n:010}"),
        designators: vec![
            Designator::naa_locally_assigned(0x1000 + n),
            Designator::t10_vendor_id("SHADOWLN", format!("lun-{n}").as_bytes()),
        ],
    }
}

pub fn mem_lu(n: u64, block_size: u32, blocks: u64) -> (Arc<MemDevice>, Arc<LogicalUnit>) {
    let dev = Arc::new(MemDevice::new(block_size, blocks));
    let lu = Arc::new(LogicalUnit::new(dev.clone(), identity(n)));
    (dev, lu)
}

pub fn exec(t: &Target, n: &Nexus, lun: u64, cdb: &[u8], data_out: &[u8]) -> Outcome {
    t.execute(&Command {
        nexus: n,
        lun: encode_lun(lun),
        cdb,
        data_out,
        expected_length: 0,
        task_tag: 1,
        attribute: TaskAttribute::Simple,
    })
}

/// Issues TEST UNIT READY until no unit attention is pending (bounded).
/// Whether the target would run `cdb` for LUN `lun` on the transport's own thread.
pub fn is_quick(t: &Target, n: &Nexus, lun: u64, cdb: &[u8]) -> bool {
    t.is_quick(&Command {
        nexus: n,
        lun: encode_lun(lun),
        cdb,
        data_out: &[],
        expected_length: 0,
        task_tag: 1,
        attribute: TaskAttribute::Simple,
    })
}

pub fn clear_ua(t: &Target, n: &Nexus, lun: u64) {
    for _ in 0..16 {
        if exec(t, n, lun, &[0; 6], &[]).status == status::GOOD {
            return;
        }
    }
    panic!("unit attentions did not clear");
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION.
pub fn sense_of(o: &Outcome) -> (u8, u8, u8) {
    assert_eq!(o.status, status::CHECK_CONDITION, "outcome {o:?}");
    let s = o.sense.as_ref().expect("sense with CHECK CONDITION");
    assert_eq!(s[0] & 0x7F, 0x70, "fixed format");
    (s[2] & 0xF, s[12], s[13])
}

pub fn good(o: &Outcome) -> &[u8] {
    assert_eq!(o.status, status::GOOD, "outcome {o:?}");
    &o.data_in
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

pub fn write10(lba: u32, blocks: u16, fua: bool) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2A;
    c[1] = if fua { 0x08 } else { 0 };
    c
}

pub fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![op, b1];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&len.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// A target with one 512-byte-block MemDevice LU mapped at LUN 0 for HOST1, UAs cleared.
pub fn single() -> (Target, Nexus, Arc<MemDevice>, Arc<LogicalUnit>) {
    let t = Target::new(TARGET);
    let (dev, lu) = mem_lu(1, 512, 2048);
    t.map(HOST1, 0, lu.clone());
    let n = nexus(HOST1, 0x400001370000, 1);
    clear_ua(&t, &n, 0);
    (t, n, dev, lu)
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |a, &x| (a << 8) | u64::from(x))
}

/// The allocation length a CDB asks for, for commands that have one.
pub fn alloc_of(c: &[u8]) -> Option<u64> {
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
