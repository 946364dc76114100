//! MODE SENSE / MODE SELECT.

mod common;
use common::*;
use scsi::sense::key;

#[test]
fn mode_sense_6_all_pages_layout() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[])).to_vec();
    // header 4 + block descriptor 8 + caching 20 + control 12 + IE 12
    assert_eq!(d.len(), 56);
    assert_eq!(d[0], 55);
    assert_eq!(d[2], 0x10, "DPOFUA, not write protected");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
    assert_eq!(&d[12..15], &[0x08, 0x12, 0x04], "caching page, WCE");
    assert_eq!(&d[32..36], &[0x0A, 0x0A, 0x00, 0x10]);
    assert_eq!(&d[44..46], &[0x1C, 0x0A]);
}

#[test]
fn mode_sense_10_long_lba_descriptor_and_single_page() {
    let (t, n, _, lu) = single();
    lu.set_write_protected(true);
    let d = good(&exec(
        &t,
        &n,
        0,
        &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 1, 0, 0],
        &[],
    ))
    .to_vec();
    assert_eq!(d.len(), 8 + 16 + 20);
    assert_eq!(&d[..8], &[0, 42, 0, 0x90, 1, 0, 0, 16]);
    assert_eq!(&d[8..16], &2048u64.to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    assert_eq!(d[24], 0x08);
    // DBD drops the descriptor; allocation length cuts the data.
    let d = good(&exec(&t, &n, 0, &[0x1A, 0x08, 0x0A, 0, 6, 0], &[])).to_vec();
    assert_eq!(d, vec![15, 0, 0x90, 0, 0x0A, 0x0A]);
}

#[test]
fn changeable_values_show_only_wce() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x1A, 0x08, 0x48, 0, 255, 0], &[])).to_vec();
    assert_eq!(d[4..7], [0x08, 0x12, 0x04]);
    assert!(d[7..].iter().all(|&b| b == 0));
}

#[test]
fn unknown_page_and_saved_values_are_refused() {
    let (t, n, _, _) = single();
    let o = exec(&t, &n, 0, &[0x1A, 0, 0x19, 0, 255, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    assert_eq!(&o.sense.unwrap()[15..18], &[0xCD, 0, 2]);
    let o = exec(&t, &n, 0, &[0x1A, 0, 0x08, 0x01, 255, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = exec(&t, &n, 0, &[0x1A, 0, 0xC8, 0, 255, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x39, 0));
}

fn caching_select(wce: bool, extra: u8) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
    let mut page = vec![0u8; 20];
    page[0] = 0x08;
    page[1] = 0x12;
    page[2] = if wce { 0x04 } else { 0 } | extra;
    p.extend(page);
    p
}

#[test]
fn mode_select_turns_the_write_cache_off_and_writes_become_durable() {
    let (t, n, dev, lu) = single();
    let other = nexus(HOST1, 77, 1);
    clear_ua(&t, &other, 0);
    let p = caching_select(false, 0);
    good(&exec(&t, &n, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p));
    assert!(!lu.write_cache_enabled());
    let flushes = dev.flush_count();
    good(&exec(&t, &n, 0, &write10(0, 1, false), &[1; 512]));
    assert_eq!(dev.flush_count(), flushes + 1);
    let d = good(&exec(&t, &n, 0, &[0x1A, 0x08, 0x08, 0, 255, 0], &[])).to_vec();
    assert_eq!(d[6], 0);
    // The other nexus learns the parameters changed.
    assert_eq!(
        sense_of(&exec(&t, &other, 0, &[0; 6], &[])),
        (key::UNIT_ATTENTION, 0x2A, 0x01)
    );
}

#[test]
fn mode_select_refuses_changes_to_fixed_fields() {
    let (t, n, _, lu) = single();
    // RCD (bit 0 of byte 2) is not changeable: the pointer names byte 14 of the list.
    let p = caching_select(true, 0x01);
    let o = exec(&t, &n, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x26, 0));
    assert_eq!(&o.sense.unwrap()[15..18], &[0x80, 0, 14]);
    // Wrong block length in the descriptor.
    let mut p = caching_select(true, 0);
    p[10] = 0x10;
    let o = exec(&t, &n, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x26, 0));
    // Saving pages and PF=0 are refused in the CDB.
    let o = exec(&t, &n, 0, &[0x15, 0x11, 0, 0, 32, 0], &p);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = exec(&t, &n, 0, &[0x15, 0x00, 0, 0, 32, 0], &p);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    // A list longer than the data sent.
    let o = exec(&t, &n, 0, &[0x15, 0x10, 0, 0, 40, 0], &p);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x1A, 0));
    assert!(lu.write_cache_enabled());
}

#[test]
fn mode_select_10_with_control_page_unchanged_is_accepted() {
    let (t, n, _, _) = single();
    let cur = good(&exec(
        &t,
        &n,
        0,
        &[0x5A, 0x08, 0x0A, 0, 0, 0, 0, 0, 255, 0],
        &[],
    ))
    .to_vec();
    let mut p = cur.clone();
    p[0] = 0;
    p[1] = 0;
    let len = p.len() as u8;
    good(&exec(
        &t,
        &n,
        0,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, len, 0],
        &p,
    ));
}
