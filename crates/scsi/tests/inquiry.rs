//! INQUIRY: standard data and VPD pages, as Windows and libiscsi read them.

mod common;
use common::*;
use scsi::sense::key;
use vss::inquiry::{Association, Designator, decode_device_identification};

#[test]
fn standard_inquiry_carries_the_lu_identity() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 0, 0, 0, 96, 0], &[])).to_vec();
    assert_eq!(d.len(), 74);
    assert_eq!(d[0], 0x00);
    assert_eq!(d[2], 6);
    assert_eq!(&d[8..16], b"SHADOWLN");
    assert_eq!(&d[16..32], b"shadowlun volume");
    assert_eq!(&d[32..36], b"0100");
}

#[test]
fn inquiry_data_is_cut_at_the_allocation_length() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 0, 0, 0, 5, 0], &[])).to_vec();
    assert_eq!(d, vec![0x00, 0x00, 6, 0x12, 69]);
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0x83, 0, 4, 0], &[])).to_vec();
    assert_eq!(d.len(), 4);
}

#[test]
fn supported_vpd_pages_are_listed_in_order() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0x00, 0, 255, 0], &[])).to_vec();
    assert_eq!(d, vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
}

#[test]
fn unit_serial_page_is_the_identity_serial() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0x80, 0, 255, 0], &[])).to_vec();
    assert_eq!(&d[..4], &[0, 0x80, 0, 12]);
    assert_eq!(&d[4..], b"SL0000000001");
}

#[test]
fn device_identification_has_lu_and_target_port_designators() {
    let (t, n, _, lu) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0x83, 1, 0, 0], &[])).to_vec();
    let (p, ds) = decode_device_identification(&d).unwrap();
    assert_eq!(p, 0);
    assert_eq!(&ds[..2], &lu.identity().designators[..]);
    let [rel, port] = Designator::iscsi_target_port(TARGET, 1, 1);
    assert_eq!(ds[2], rel);
    assert_eq!(ds[2].value, vec![0, 0, 0, 1]);
    assert_eq!(ds[3], port);
    assert_eq!(ds[4].association, Association::TARGET_DEVICE);
    assert_eq!(ds[4].name_string(), Some(TARGET));
    // The relative port follows the nexus.
    let n2 = nexus(HOST1, 0x400001370001, 2);
    clear_ua(&t, &n2, 0);
    let d = good(&exec(&t, &n2, 0, &[0x12, 1, 0x83, 1, 0, 0], &[])).to_vec();
    let (_, ds) = decode_device_identification(&d).unwrap();
    assert_eq!(ds[2].value, vec![0, 0, 0, 2]);
}

#[test]
fn block_limits_page_advertises_the_enforced_limits() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0xB0, 0, 255, 0], &[])).to_vec();
    assert_eq!(&d[..4], &[0, 0xB0, 0, 0x3C]);
    assert_eq!(d.len(), 64);
    assert_eq!(d[4], 0x01, "WSNZ");
    assert_eq!(d[5], 255, "MAXIMUM COMPARE AND WRITE LENGTH");
    let max_xfer = u32::from_be_bytes(d[8..12].try_into().unwrap());
    assert_eq!(max_xfer, (32 << 20) / 512);
    let max_unmap = u32::from_be_bytes(d[20..24].try_into().unwrap());
    assert_eq!(max_unmap, 1 << 20);
    assert_eq!(u32::from_be_bytes(d[24..28].try_into().unwrap()), 256);
    assert_eq!(u32::from_be_bytes(d[28..32].try_into().unwrap()), 8);
    // One block beyond the maximum transfer length is refused, pointing at TRANSFER LENGTH.
    let o = exec(&t, &n, 0, &cdb16(0x88, 0, 0, max_xfer + 1), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    assert_eq!(&o.sense.unwrap()[15..18], &[0xC0, 0, 10]);
}

#[test]
fn characteristics_and_provisioning_pages_describe_a_thin_ssd() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0xB1, 0, 255, 0], &[])).to_vec();
    assert_eq!(&d[..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0xB2, 0, 255, 0], &[])).to_vec();
    assert_eq!(d, vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
}

#[test]
fn unsupported_vpd_page_is_invalid_field_at_byte_two() {
    let (t, n, _, _) = single();
    let o = exec(&t, &n, 0, &[0x12, 1, 0x89, 0, 255, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    assert_eq!(&o.sense.unwrap()[15..18], &[0xC0, 0, 2]);
}

#[test]
fn inquiry_to_an_unmapped_lun_reports_qualifier_three() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 5, &[0x12, 0, 0, 0, 36, 0], &[])).to_vec();
    assert_eq!(d.len(), 36);
    assert_eq!(d[0], 0x7F);
    let o = exec(&t, &n, 5, &[0x12, 1, 0x80, 0, 255, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x25, 0));
}
