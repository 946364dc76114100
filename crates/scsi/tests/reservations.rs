//! Persistent reservations and RESERVE(6)/RELEASE(6), as failover clustering uses them.

mod common;
use common::*;
use scsi::sense::key;
use scsi::{Nexus, Outcome, Target, status};

fn pr_out(t: &Target, n: &Nexus, sa: u8, kind: u8, key: u64, sa_key: u64, flags: u8) -> Outcome {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    exec(t, n, 0, &[0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0], &p)
}

fn pr_in(t: &Target, n: &Nexus, sa: u8) -> Vec<u8> {
    good(&exec(t, n, 0, &[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], &[])).to_vec()
}

fn two() -> (Target, Nexus, Nexus) {
    let t = Target::new(TARGET);
    let (_, lu) = mem_lu(1, 512, 64);
    t.map(HOST1, 0, lu.clone());
    t.map(HOST2, 0, lu);
    let a = nexus(HOST1, 1, 1);
    let b = nexus(HOST2, 1, 1);
    clear_ua(&t, &a, 0);
    clear_ua(&t, &b, 0);
    (t, a, b)
}

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

fn conflict(o: &Outcome) -> bool {
    o.status == status::RESERVATION_CONFLICT
}

#[test]
fn register_and_read_keys() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &b, 6, 0, 0, 0xB, 0));
    let d = pr_in(&t, &a, 0);
    assert_eq!(&d[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(&d[8..16], &0xAu64.to_be_bytes());
    assert_eq!(&d[16..24], &0xBu64.to_be_bytes());
    // Wrong key to change a registration conflicts; REGISTER AND IGNORE does not.
    assert!(conflict(&pr_out(&t, &a, 0, 0, 0x99, 0xC, 0)));
    good(&pr_out(&t, &a, 6, 0, 0x99, 0xC, 0));
    // Unregistered nexus with a nonzero key conflicts.
    let c = nexus(HOST1, 5, 1);
    clear_ua(&t, &c, 0);
    assert!(conflict(&pr_out(&t, &c, 0, 0, 0xC, 0xD, 0)));
    // Generation counts the three successful registrations.
    assert_eq!(&pr_in(&t, &a, 0)[..4], &[0, 0, 0, 3]);
}

#[test]
fn write_exclusive_blocks_writes_of_others_but_not_reads() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &a, 1, WE, 0xA, 0, 0));
    let d = pr_in(&t, &b, 1);
    assert_eq!(&d[4..8], &[0, 0, 0, 16]);
    assert_eq!(&d[8..16], &0xAu64.to_be_bytes());
    assert_eq!(d[21], WE);
    good(&exec(&t, &a, 0, &write10(0, 1, false), &[1; 512]));
    assert!(conflict(&exec(&t, &b, 0, &write10(0, 1, false), &[1; 512])));
    good(&exec(&t, &b, 0, &read10(0, 1), &[]));
    good(&exec(&t, &b, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
    good(&exec(&t, &b, 0, &[0; 6], &[]));
    assert!(conflict(&exec(
        &t,
        &b,
        0,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[]
    )));
}

#[test]
fn exclusive_access_blocks_reads_of_others() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &a, 1, EA, 0xA, 0, 0));
    assert!(conflict(&exec(&t, &b, 0, &read10(0, 1), &[])));
    // Even a registrant that does not hold it.
    good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0));
    assert!(conflict(&exec(&t, &b, 0, &read10(0, 1), &[])));
    good(&exec(&t, &b, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    // Reserving again with another type conflicts; the same type is fine.
    assert!(conflict(&pr_out(&t, &a, 1, WE, 0xA, 0, 0)));
    good(&pr_out(&t, &a, 1, EA, 0xA, 0, 0));
    assert!(conflict(&pr_out(&t, &b, 1, EA, 0xB, 0, 0)));
}

#[test]
fn registrants_only_lets_registrants_write() {
    for (kind, reads_conflict) in [(WE_RO, false), (EA_RO, true), (WE_AR, false), (EA_AR, true)] {
        let (t, a, b) = two();
        good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
        good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0));
        good(&pr_out(&t, &a, 1, kind, 0xA, 0, 0));
        good(&exec(&t, &b, 0, &write10(0, 1, false), &[1; 512]));
        // A third nexus (another session of host2) is not registered.
        let u = nexus(HOST2, 42, 1);
        clear_ua(&t, &u, 0);
        assert!(
            conflict(&exec(&t, &u, 0, &write10(0, 1, false), &[1; 512])),
            "{kind}"
        );
        assert_eq!(
            conflict(&exec(&t, &u, 0, &read10(0, 1), &[])),
            reads_conflict,
            "{kind}"
        );
        let d = pr_in(&t, &b, 1);
        let expect_key = if kind >= WE_AR { 0 } else { 0xA };
        assert_eq!(&d[8..16], &(expect_key as u64).to_be_bytes(), "{kind}");
    }
}

#[test]
fn release_of_registrants_only_tells_the_other_registrants() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0));
    good(&pr_out(&t, &a, 1, WE_RO, 0xA, 0, 0));
    // Releasing with the wrong type is an invalid release.
    let o = pr_out(&t, &a, 2, WE, 0xA, 0, 0);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x26, 0x04));
    good(&pr_out(&t, &a, 2, WE_RO, 0xA, 0, 0));
    assert_eq!(
        sense_of(&exec(&t, &b, 0, &[0; 6], &[])),
        (key::UNIT_ATTENTION, 0x2A, 0x04)
    );
    assert_eq!(exec(&t, &a, 0, &[0; 6], &[]).status, status::GOOD);
    assert_eq!(&pr_in(&t, &a, 1)[4..8], &[0, 0, 0, 0]);
}

#[test]
fn preempt_takes_over_and_tells_the_preempted() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0));
    good(&pr_out(&t, &a, 1, WE_RO, 0xA, 0, 0));
    // B preempts A (cluster node failover), taking the reservation.
    good(&pr_out(&t, &b, 4, WE_RO, 0xB, 0xA, 0));
    assert_eq!(
        sense_of(&exec(&t, &a, 0, &[0; 6], &[])),
        (key::UNIT_ATTENTION, 0x2A, 0x05)
    );
    let d = pr_in(&t, &b, 0);
    assert_eq!(&d[4..8], &[0, 0, 0, 8]);
    assert_eq!(&d[8..16], &0xBu64.to_be_bytes());
    let d = pr_in(&t, &b, 1);
    assert_eq!(&d[8..16], &0xBu64.to_be_bytes());
    // A is no longer registered: writes conflict.
    assert!(conflict(&exec(&t, &a, 0, &write10(0, 1, false), &[0; 512])));
    // Preempting a key nobody has conflicts; key 0 without an all-registrants reservation
    // is an invalid parameter.
    assert!(conflict(&pr_out(&t, &b, 4, WE_RO, 0xB, 0x77, 0)));
    let o = pr_out(&t, &b, 5, WE_RO, 0xB, 0, 0);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x26, 0));
}

#[test]
fn clear_removes_everything_and_tells_the_others() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0));
    good(&pr_out(&t, &a, 1, EA, 0xA, 0, 0));
    good(&pr_out(&t, &b, 3, 0, 0xB, 0, 0));
    assert_eq!(
        sense_of(&exec(&t, &a, 0, &[0; 6], &[])),
        (key::UNIT_ATTENTION, 0x2A, 0x03)
    );
    let d = pr_in(&t, &a, 0);
    assert_eq!(&d[4..8], &[0, 0, 0, 0]);
    good(&exec(&t, &b, 0, &read10(0, 1), &[]));
}

#[test]
fn report_capabilities_and_full_status() {
    let (t, a, b) = two();
    let d = pr_in(&t, &a, 2);
    assert_eq!(d, vec![0, 8, 0x14, 0x80, 0xEA, 0x01, 0, 0]);
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0x04)); // ALL_TG_PT
    good(&pr_out(&t, &a, 1, WE, 0xA, 0, 0));
    let d = pr_in(&t, &a, 3);
    let total = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(total, d.len() - 8);
    let first = &d[8..];
    assert_eq!(&first[..8], &0xAu64.to_be_bytes());
    assert_eq!(first[12], 0x01, "holder");
    assert_eq!(first[13], WE);
    assert_eq!(&first[18..20], &[0, 1], "relative target port");
    let tid_len = u32::from_be_bytes(first[20..24].try_into().unwrap()) as usize;
    let tid = &first[24..24 + tid_len];
    assert_eq!(tid[0], 0x45, "iSCSI, initiator port format");
    let name = std::str::from_utf8(&tid[4..])
        .unwrap()
        .trim_end_matches('\0');
    assert_eq!(name, a.initiator_port);
    assert_eq!(tid_len % 4, 0);
    let second = &first[24 + tid_len..];
    assert_eq!(&second[..8], &0xBu64.to_be_bytes());
    assert_eq!(second[12], 0x02, "ALL_TG_PT, not holder");
}

#[test]
fn prout_parameter_errors() {
    let (t, a, _) = two();
    let o = exec(&t, &a, 0, &[0x5F, 0, 0, 0, 0, 0, 0, 0, 20, 0], &[0; 20]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x1A, 0));
    let o = pr_out(&t, &a, 0, 0, 0, 0xA, 0x01); // APTPL
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x26, 0));
    let o = pr_out(&t, &a, 0, 0, 0, 0xA, 0x08); // SPEC_I_PT
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x26, 0));
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    let o = pr_out(&t, &a, 1, 2, 0xA, 0, 0); // reserved type
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = pr_out(&t, &a, 7, 0, 0xA, 0, 0); // REGISTER AND MOVE
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn reservations_survive_nexus_loss_and_registration_moves_with_unregister() {
    let (t, a, b) = two();
    good(&pr_out(&t, &a, 0, 0, 0, 0xA, 0));
    good(&pr_out(&t, &a, 1, WE, 0xA, 0, 0));
    t.nexus_lost(&a);
    assert!(conflict(&exec(&t, &b, 0, &write10(0, 1, false), &[0; 512])));
    clear_ua(&t, &a, 0);
    // Unregistering the holder releases a WE reservation.
    good(&pr_out(&t, &a, 0, 0, 0xA, 0, 0));
    good(&exec(&t, &b, 0, &write10(0, 1, false), &[0; 512]));
}

#[test]
fn reserve6_excludes_other_nexuses_until_release() {
    let (t, a, b) = two();
    good(&exec(&t, &a, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    assert!(conflict(&exec(&t, &b, 0, &read10(0, 1), &[])));
    assert!(conflict(&exec(&t, &b, 0, &[0x16, 0, 0, 0, 0, 0], &[])));
    good(&exec(&t, &b, 0, &[0x12, 0, 0, 0, 36, 0], &[]));
    // RELEASE from a non-holder succeeds without effect.
    good(&exec(&t, &b, 0, &[0x17, 0, 0, 0, 0, 0], &[]));
    assert!(conflict(&exec(&t, &b, 0, &read10(0, 1), &[])));
    good(&exec(&t, &a, 0, &[0x17, 0, 0, 0, 0, 0], &[]));
    good(&exec(&t, &b, 0, &read10(0, 1), &[]));
    // Released by the holder's nexus loss, too.
    good(&exec(&t, &a, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    t.nexus_lost(&a);
    good(&exec(&t, &b, 0, &read10(0, 1), &[]));
    // A persistent reservation makes RESERVE(6) conflict for non-holders.
    good(&pr_out(&t, &b, 0, 0, 0, 0xB, 0));
    good(&pr_out(&t, &b, 1, WE, 0xB, 0, 0));
    clear_ua(&t, &a, 0);
    assert!(conflict(&exec(&t, &a, 0, &[0x16, 0, 0, 0, 0, 0], &[])));
    good(&exec(&t, &b, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
}
