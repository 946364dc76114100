//! REPORT SUPPORTED OPERATION CODES and TASK MANAGEMENT FUNCTIONS.

mod common;
use common::*;
use scsi::sense::key;

fn rsoc(options: u8, rctd: bool, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, 0x0C, options | if rctd { 0x80 } else { 0 }, op];
    c.extend_from_slice(&sa.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn all_commands_list_matches_what_executes() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &rsoc(0, false, 0, 0, 65536), &[])).to_vec();
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    assert_eq!(len, d.len() - 4);
    assert_eq!(len % 8, 0);
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    // A memory LU is thin; the port is in no target port group.
    assert_eq!(descs.len(), scsi::cdb::opcode_table_len(true, false));
    for x in &descs {
        let op = x[0];
        let sa = u16::from_be_bytes([x[2], x[3]]);
        let servactv = x[5] & 1 != 0;
        let cdb_len = u16::from_be_bytes([x[6], x[7]]) as usize;
        assert_eq!(cdb_len, scsi::cdb::cdb_len(op), "op {op:02x}");
        // Every listed command parses (and is not an invalid opcode).
        let mut cdb = vec![0u8; cdb_len];
        cdb[0] = op;
        if servactv {
            cdb[1] = sa as u8;
        }
        if let Err(e) = scsi::cdb::parse(&cdb) {
            assert_ne!(
                e.asc,
                scsi::sense::Asc::INVALID_COMMAND_OPERATION_CODE,
                "op {op:02x}"
            );
            if servactv {
                assert_ne!(
                    e.field.map(|f| f.byte),
                    Some(1),
                    "service action of {op:02x}"
                );
            }
        }
    }
    // With RCTD every descriptor carries a 12-byte timeouts descriptor.
    let d = good(&exec(&t, &n, 0, &rsoc(0, true, 0, 0, 65536), &[])).to_vec();
    assert_eq!((d.len() - 4) % 20, 0);
    assert_eq!(d[4 + 5] & 0x02, 0x02, "CTDP");
}

#[test]
fn one_command_format_gives_usage_data() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &rsoc(1, false, 0x28, 0, 512), &[])).to_vec();
    assert_eq!(&d[..4], &[0, 0x03, 0, 10]);
    assert_eq!(
        &d[4..],
        &[0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07]
    );
    // With a service action: the usage data carries it in byte 1.
    let d = good(&exec(&t, &n, 0, &rsoc(2, false, 0x9E, 0x10, 512), &[])).to_vec();
    assert_eq!(&d[..4], &[0, 0x03, 0, 16]);
    assert_eq!(&d[4..6], &[0x9E, 0x10]);
    // Not supported.
    let d = good(&exec(&t, &n, 0, &rsoc(1, false, 0xC1, 0, 512), &[])).to_vec();
    assert_eq!(d, vec![0, 0x01, 0, 0]);
    // Options that do not fit the opcode.
    let o = exec(&t, &n, 0, &rsoc(1, false, 0x9E, 0, 512), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = exec(&t, &n, 0, &rsoc(2, false, 0x28, 0, 512), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn task_management_functions_are_reported() {
    let (t, n, _, _) = single();
    let c = [0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0];
    assert_eq!(good(&exec(&t, &n, 0, &c, &[])), &[0xDA, 0, 0, 0]);
    let c = [0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0];
    let d = good(&exec(&t, &n, 0, &c, &[])).to_vec();
    assert_eq!(d.len(), 16);
    assert_eq!(d[3], 0x0C);
}
