//! Unit attentions per I_T nexus and LUN masking.

mod common;
use common::*;
use scsi::sense::key;
use scsi::{TaskManagement, TaskManagementResponse, status};

const TUR: [u8; 6] = [0; 6];

#[test]
fn first_contact_reports_power_on_reset_once() {
    let t = scsi::Target::new(TARGET);
    let (_, lu) = mem_lu(1, 512, 64);
    t.map(HOST1, 0, lu);
    let n = nexus(HOST1, 1, 1);
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x29, 0x00)
    );
    assert_eq!(exec(&t, &n, 0, &TUR, &[]).status, status::GOOD);
    // A second nexus of the same initiator has its own condition.
    let n2 = nexus(HOST1, 2, 1);
    assert_eq!(
        sense_of(&exec(&t, &n2, 0, &read10(0, 1), &[])),
        (key::UNIT_ATTENTION, 0x29, 0)
    );
}

#[test]
fn inquiry_neither_reports_nor_clears_a_unit_attention() {
    let t = scsi::Target::new(TARGET);
    let (_, lu) = mem_lu(1, 512, 64);
    t.map(HOST1, 0, lu);
    let n = nexus(HOST1, 1, 1);
    good(&exec(&t, &n, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x29, 0)
    );
}

#[test]
fn request_sense_returns_and_clears_the_unit_attention() {
    let t = scsi::Target::new(TARGET);
    let (_, lu) = mem_lu(1, 512, 64);
    t.map(HOST1, 0, lu);
    let n = nexus(HOST1, 1, 1);
    let d = good(&exec(&t, &n, 0, &[0x03, 0, 0, 0, 252, 0], &[])).to_vec();
    assert_eq!(d.len(), 18);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0x06, 0x29, 0x00));
    let d = good(&exec(&t, &n, 0, &[0x03, 0, 0, 0, 252, 0], &[])).to_vec();
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    assert_eq!(exec(&t, &n, 0, &TUR, &[]).status, status::GOOD);
    // Descriptor format is refused.
    let o = exec(&t, &n, 0, &[0x03, 1, 0, 0, 252, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn mapping_a_lun_tells_only_that_initiator_reported_luns_changed() {
    let t = scsi::Target::new(TARGET);
    let (_, lu1) = mem_lu(1, 512, 64);
    let (_, lu2) = mem_lu(2, 512, 64);
    t.map(HOST1, 0, lu1.clone());
    t.map(HOST2, 0, lu2);
    let h1 = nexus(HOST1, 1, 1);
    let h2 = nexus(HOST2, 1, 1);
    clear_ua(&t, &h1, 0);
    clear_ua(&t, &h2, 0);
    let (_, snap) = mem_lu(3, 512, 64);
    t.map(HOST1, 7, snap);
    assert_eq!(
        sense_of(&exec(&t, &h1, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x3F, 0x0E)
    );
    assert_eq!(exec(&t, &h1, 0, &TUR, &[]).status, status::GOOD);
    assert_eq!(exec(&t, &h2, 0, &TUR, &[]).status, status::GOOD);
    // REPORT LUNS clears it and lists the new LUN.
    t.unmap(HOST1, 7);
    let d = good(&exec(
        &t,
        &h1,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ))
    .to_vec();
    assert_eq!(d, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(exec(&t, &h1, 0, &TUR, &[]).status, status::GOOD);
}

#[test]
fn mapping_the_same_unit_again_is_no_change() {
    let t = scsi::Target::new(TARGET);
    let (_, lu1) = mem_lu(1, 512, 64);
    t.map(HOST1, 0, lu1.clone());
    let h1 = nexus(HOST1, 1, 1);
    clear_ua(&t, &h1, 0);
    t.map(HOST1, 0, lu1);
    assert_eq!(exec(&t, &h1, 0, &TUR, &[]).status, status::GOOD);
    // Another unit at the same number is a change.
    let (_, lu2) = mem_lu(2, 512, 64);
    t.map(HOST1, 0, lu2);
    assert_eq!(
        sense_of(&exec(&t, &h1, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x29, 0x00)
    );
}

#[test]
fn report_luns_lists_exactly_the_initiators_luns() {
    let t = scsi::Target::new(TARGET);
    let (_, a) = mem_lu(1, 512, 64);
    let (_, b) = mem_lu(2, 512, 64);
    let (_, c) = mem_lu(3, 512, 64);
    t.map(HOST1, 0, a);
    t.map(HOST1, 300, b);
    t.map(HOST2, 1, c);
    assert_eq!(t.luns_for(HOST1), vec![0, 300]);
    let h1 = nexus(HOST1, 1, 1);
    let d = good(&exec(
        &t,
        &h1,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ))
    .to_vec();
    assert_eq!(&d[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
    assert_eq!(&d[8..16], &[0; 8]);
    assert_eq!(
        &d[16..24],
        &[0x41, 0x2C, 0, 0, 0, 0, 0, 0],
        "flat addressing for 300"
    );
    // Allocation length 16 cuts the list but keeps the full LUN LIST LENGTH.
    let d = good(&exec(
        &t,
        &h1,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        &[],
    ))
    .to_vec();
    assert_eq!(d.len(), 16);
    assert_eq!(&d[..4], &[0, 0, 0, 16]);
    // LUN 300 is reachable through the flat address, host2's LUN 1 is not.
    clear_ua(&t, &h1, 300);
    let o = exec(&t, &h1, 1, &TUR, &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x25, 0));
    // An initiator with nothing mapped still gets an (empty) REPORT LUNS on LUN 0.
    let stranger = nexus("iqn.2000-01.com.example:x", 1, 1);
    let d = good(&exec(
        &t,
        &stranger,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        &[],
    ))
    .to_vec();
    assert_eq!(d, vec![0; 8]);
    let d = good(&exec(&t, &stranger, 0, &[0x03, 0, 0, 0, 18, 0], &[])).to_vec();
    assert_eq!((d[2], d[12]), (key::ILLEGAL_REQUEST, 0x25));
}

#[test]
fn lun_field_decoding_follows_sam() {
    assert_eq!(scsi::decode_lun(0x0005_0000_0000_0000), Some(5));
    assert_eq!(scsi::decode_lun(0x412C_0000_0000_0000), Some(300));
    assert_eq!(scsi::decode_lun(0x0000_0000_0000_0005), None);
    assert_eq!(scsi::decode_lun(0x8001_0000_0000_0000), None);
    for l in [0, 1, 255, 256, 0x3FFF] {
        assert_eq!(scsi::decode_lun(scsi::encode_lun(l)), Some(l));
    }
}

#[test]
fn resize_reports_capacity_data_has_changed() {
    let (t, n, dev, lu) = single();
    dev.resize(4096);
    lu.capacity_changed();
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x2A, 0x09)
    );
    let d = good(&exec(&t, &n, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])).to_vec();
    assert_eq!(&d[..4], &4095u32.to_be_bytes());
}

#[test]
fn logical_unit_reset_reports_to_every_nexus_the_one_that_asked_included() {
    let (t, n, _, _) = single();
    let other = nexus(HOST1, 9, 1);
    clear_ua(&t, &other, 0);
    assert_eq!(
        t.task_management(&n, scsi::encode_lun(0), TaskManagement::LogicalUnitReset),
        TaskManagementResponse::Complete
    );
    for x in [&n, &other] {
        assert_eq!(
            sense_of(&exec(&t, x, 0, &TUR, &[])),
            (key::UNIT_ATTENTION, 0x29, 0x03)
        );
        assert_eq!(exec(&t, x, 0, &TUR, &[]).status, status::GOOD);
    }
    assert_eq!(
        t.task_management(&n, scsi::encode_lun(4), TaskManagement::LogicalUnitReset),
        TaskManagementResponse::LunDoesNotExist
    );
}

#[test]
fn unit_attention_comes_before_an_invalid_opcode() {
    let t = scsi::Target::new(TARGET);
    let (_, lu) = mem_lu(1, 512, 64);
    t.map(HOST1, 0, lu);
    let n = nexus(HOST1, 1, 1);
    assert_eq!(
        sense_of(&exec(
            &t,
            &n,
            0,
            &[0xC5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[]
        ))
        .0,
        key::UNIT_ATTENTION
    );
    assert_eq!(
        sense_of(&exec(
            &t,
            &n,
            0,
            &[0xC5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[]
        )),
        (key::ILLEGAL_REQUEST, 0x20, 0)
    );
}

#[test]
fn lost_nexus_starts_afresh_with_power_on() {
    let (t, n, _, _) = single();
    t.nexus_lost(&n);
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x29, 0x00)
    );
}

#[test]
fn report_luns_clears_the_change_on_every_lun_of_the_nexus() {
    let t = scsi::Target::new(TARGET);
    let (_, a) = mem_lu(1, 512, 64);
    let (_, b) = mem_lu(2, 512, 64);
    t.map(HOST1, 0, a);
    t.map(HOST1, 1, b);
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    clear_ua(&t, &n, 1);
    let (_, c) = mem_lu(3, 512, 64);
    t.map(HOST1, 2, c);
    good(&exec(
        &t,
        &n,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ));
    assert_eq!(exec(&t, &n, 0, &TUR, &[]).status, status::GOOD);
    assert_eq!(exec(&t, &n, 1, &TUR, &[]).status, status::GOOD);
    // The new LUN itself starts with its power-on condition.
    assert_eq!(
        sense_of(&exec(&t, &n, 2, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x29, 0)
    );
}

#[test]
fn identity_validation_names_the_bad_field() {
    let mut id = identity(1);
    assert_eq!(id.validate(), Ok(()));
    id.product = "a product name that is too long".into();
    assert!(matches!(
        id.validate(),
        Err(scsi::IdentityError::TooLong {
            field: "product",
            ..
        })
    ));
    let mut id = identity(1);
    id.designators
        .push(vss::inquiry::Designator::iscsi_target_device(TARGET));
    assert!(matches!(
        id.validate(),
        Err(scsi::IdentityError::NotLogicalUnit { index: 2, .. })
    ));
}

#[test]
fn host_without_lun_zero_hears_of_its_first_lun_on_lun_zero() {
    let t = scsi::Target::new(TARGET);
    let n = nexus(HOST1, 1, 1);
    // Logged in with nothing mapped: LUN 0 answers REPORT LUNS (empty) and 25/00.
    let d = good(&exec(
        &t,
        &n,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        &[],
    ))
    .to_vec();
    assert_eq!(d, vec![0; 8]);
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::ILLEGAL_REQUEST, 0x25, 0)
    );
    let (_, snap) = mem_lu(5, 512, 64);
    t.map(HOST1, 3, snap);
    // The next TEST UNIT READY on LUN 0 tells it, once.
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x3F, 0x0E)
    );
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::ILLEGAL_REQUEST, 0x25, 0)
    );
    // REPORT LUNS clears it too; another initiator is not told.
    let other = nexus(HOST2, 1, 1);
    exec(&t, &other, 0, &TUR, &[]);
    t.map(HOST1, 4, mem_lu(6, 512, 64).1);
    good(&exec(
        &t,
        &n,
        0,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    ));
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::ILLEGAL_REQUEST, 0x25, 0)
    );
    assert_eq!(
        sense_of(&exec(&t, &other, 0, &TUR, &[])),
        (key::ILLEGAL_REQUEST, 0x25, 0)
    );
}
