//! Asymmetric logical unit access: target port groups, TPGS, the target port group
//! designator, REPORT TARGET PORT GROUPS, what each access state lets through, and the unit
//! attention a state change raises.

mod common;
use common::*;
use scsi::sense::key;
use scsi::{AccessState, PortGroup, Target, status};
use vss::IdentifierType;
use vss::inquiry::{Association, decode_device_identification};

const TUR: [u8; 6] = [0; 6];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
const VPD83: [u8; 6] = [0x12, 1, 0x83, 1, 0, 0];

fn rtpg(format: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, format << 5 | 0x0A, 0, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// Two groups: group 1 holds port 1, group 2 ports 2 and 3; port 9 is in none. LUN 0 and
/// LUN 1 mapped for HOST1.
fn grouped() -> Target {
    let t = Target::new(TARGET);
    t.set_port_groups(vec![
        PortGroup {
            id: 1,
            ports: vec![1],
        },
        PortGroup {
            id: 2,
            ports: vec![3, 2],
        },
    ])
    .unwrap();
    for n in 0..2 {
        t.map(HOST1, n, mem_lu(n + 1, 512, 64).1);
    }
    t
}

fn ready(t: &Target, port: u16) -> scsi::Nexus {
    let n = nexus(HOST1, 0x100 + u64::from(port), port);
    clear_ua(t, &n, 0);
    clear_ua(t, &n, 1);
    n
}

/// Takes every pending unit attention with REQUEST SENSE, which every state allows.
fn drain_ua(t: &Target, n: &scsi::Nexus, lun: u64) {
    for _ in 0..16 {
        let d = good(&exec(t, n, lun, &[0x03, 0, 0, 0, 18, 0], &[])).to_vec();
        if d[2] & 0xF != key::UNIT_ATTENTION {
            return;
        }
    }
    panic!("unit attentions did not clear");
}

#[test]
fn standard_inquiry_reports_implicit_access_only_through_a_port_in_a_group() {
    let t = grouped();
    let d = good(&exec(&t, &ready(&t, 2), 0, &INQUIRY, &[])).to_vec();
    assert_eq!((d[5] >> 4) & 0x3, 0b01, "TPGS");
    let d = good(&exec(&t, &ready(&t, 9), 0, &INQUIRY, &[])).to_vec();
    assert_eq!((d[5] >> 4) & 0x3, 0b00, "TPGS for a port in no group");
    // A target without groups answers as it always did.
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &INQUIRY, &[])).to_vec();
    assert_eq!(d[5] & 0x30, 0);
}

#[test]
fn vpd_83_carries_the_group_next_to_the_relative_port_as_predicted() {
    let t = grouped();
    let n = ready(&t, 3);
    let page = good(&exec(&t, &n, 0, &VPD83, &[])).to_vec();
    let (_, ds) = decode_device_identification(&page).unwrap();
    let ports: Vec<_> = ds
        .iter()
        .filter(|d| d.association == Association::TARGET_PORT)
        .collect();
    assert_eq!(ports[0].designator_type, IdentifierType::PORT_RELATIVE);
    assert_eq!(ports[0].value, vec![0, 0, 0, 3]);
    assert_eq!(ports[1].designator_type, IdentifierType::TARGET_PORT_GROUP);
    assert_eq!(ports[1].value, vec![0, 0, 0, 2]);
    // The descriptor's bytes: iSCSI with PIV, binary, association 1, type 5, length 4.
    let at = page
        .windows(8)
        .position(|w| w == [0x51, 0x95, 0, 4, 0, 0, 0, 2])
        .expect("the target port group descriptor's bytes");
    assert!(at > 4);
    // What the device serves is what `target_designators` predicts after the LU's own.
    let own = identity(1).designators;
    let mut want = own.clone();
    want.extend(scsi::target_designators(TARGET, 3, 3, Some(2)));
    assert_eq!(ds, want);
    // Through a port in no group: no group designator, as before.
    let page = good(&exec(&t, &ready(&t, 9), 0, &VPD83, &[])).to_vec();
    let (_, ds) = decode_device_identification(&page).unwrap();
    assert!(
        ds.iter()
            .all(|d| d.designator_type != IdentifierType::TARGET_PORT_GROUP)
    );
    let mut want = own;
    want.extend(scsi::target_designators(TARGET, 9, 9, None));
    assert_eq!(ds, want);
}

#[test]
fn report_target_port_groups_in_both_formats_with_states_and_ports() {
    let t = grouped();
    let n = ready(&t, 1);
    let lu1 = 1;
    t.set_access_state(2, AccessState::Standby);
    clear_ua(&t, &n, 0);
    clear_ua(&t, &n, lu1);
    let d = good(&exec(&t, &n, 0, &rtpg(0, 1024), &[])).to_vec();
    assert_eq!(
        d,
        vec![
            0, 0, 0, 28, // RETURN DATA LENGTH: the descriptors only
            0x00, 0x8F, 0, 1, 0, 0, 0, 1, // group 1: A/O; T, U, S, AN, AO supported
            0, 0, 0, 1, // relative port 1
            0x02, 0x8F, 0, 2, 0, 0x02, 0, 2, // group 2: standby, altered implicitly
            0, 0, 0, 2, 0, 0, 0, 3,
        ]
    );
    let e = good(&exec(&t, &n, 0, &rtpg(1, 1024), &[])).to_vec();
    assert_eq!(&e[..8], &[0, 0, 0, 28, 0x10, 0, 0, 0], "extended header");
    assert_eq!(&e[8..], &d[4..]);
    // Allocation length cuts the data, never the RETURN DATA LENGTH.
    let c = good(&exec(&t, &n, 0, &rtpg(0, 10), &[])).to_vec();
    assert_eq!(c, d[..10].to_vec());
    let c = good(&exec(&t, &n, 0, &rtpg(1, 3), &[])).to_vec();
    assert_eq!(c, vec![0, 0, 0]);
    assert!(good(&exec(&t, &n, 0, &rtpg(0, 0), &[])).is_empty());
    // Another LU in another state answers its own states.
    t.map(HOST1, 2, mem_lu(3, 512, 64).1);
    for lun in 0..3 {
        clear_ua(&t, &n, lun);
    }
    let d = good(&exec(&t, &n, 2, &rtpg(0, 1024), &[])).to_vec();
    assert_eq!((d[4], d[9], d[16], d[21]), (0x00, 0, 0x00, 0), "a new LU");
    let d = good(&exec(&t, &n, lu1, &rtpg(0, 1024), &[])).to_vec();
    assert_eq!(d[16], 0x02);
    // Reserved PARAMETER DATA FORMAT values are invalid: field pointer byte 1, bit 7.
    let o = exec(&t, &n, 0, &rtpg(2, 1024), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    assert_eq!(o.sense.unwrap()[15..18], [0xC8 | 7, 0, 1]);
}

#[test]
fn a_port_in_no_group_knows_nothing_of_report_target_port_groups() {
    let t = grouped();
    let n = ready(&t, 9);
    let o = exec(&t, &n, 0, &rtpg(0, 1024), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    assert_eq!(
        o.sense.unwrap()[15..18],
        [0xC8 | 4, 0, 1],
        "as before groups existed"
    );
    let (t, n, _, _) = single();
    let o = exec(&t, &n, 0, &rtpg(0, 1024), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn set_target_port_groups_is_refused_as_an_unknown_command() {
    let t = grouped();
    let n = ready(&t, 1);
    let mut c = vec![0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    let o = exec(&t, &n, 0, &c, &[0, 0, 0, 0, 0x01, 0, 0, 1]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x20, 0));
    c[9] = 0;
    assert_eq!(sense_of(&exec(&t, &n, 0, &c, &[])).1, 0x20);
}

#[test]
fn report_supported_operation_codes_lists_rtpg_only_through_a_port_in_a_group() {
    let rsoc_one = |t: &Target, n: &scsi::Nexus| {
        let c = [0xA3, 0x0C, 0x02, 0xA3, 0, 0x0A, 0, 0, 1, 0, 0, 0];
        good(&exec(t, n, 0, &c, &[])).to_vec()
    };
    let t = grouped();
    let d = rsoc_one(&t, &ready(&t, 1));
    assert_eq!(&d[..4], &[0, 0x03, 0, 12], "supported, 12-byte CDB");
    assert_eq!(
        &d[4..],
        &[0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07]
    );
    assert_eq!(rsoc_one(&t, &ready(&t, 9)), vec![0, 0x01, 0, 0]);
    // The full list has one more entry through a grouped port.
    let all = |n: &scsi::Nexus| {
        let c = [0xA3, 0x0C, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        u32::from_be_bytes(good(&exec(&t, n, 0, &c, &[]))[..4].try_into().unwrap()) as usize / 8
    };
    assert_eq!(all(&ready(&t, 1)), scsi::cdb::opcode_table_len(true, true));
    assert_eq!(all(&ready(&t, 9)), scsi::cdb::opcode_table_len(true, false));
    assert_eq!(
        scsi::cdb::opcode_table_len(true, true),
        scsi::cdb::opcode_table_len(true, false) + 1
    );
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION; `None` for GOOD.
type Answer = Option<(u8, u8, u8)>;

/// What each command gets through a port whose state is `state`.
fn answers(state: AccessState) -> Vec<(&'static str, Answer)> {
    let t = grouped();
    let n = ready(&t, 2);
    let other = ready(&t, 1);
    t.set_access_state(2, state);
    drain_ua(&t, &n, 0);
    drain_ua(&t, &other, 0);
    // The other group is untouched.
    assert_eq!(exec(&t, &other, 0, &read10(0, 1), &[]).status, status::GOOD);
    let pr_in = [0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    let cmds: Vec<(&'static str, Vec<u8>, Vec<u8>)> = vec![
        ("READ(10)", read10(0, 1), vec![]),
        ("WRITE(10)", write10(0, 1, false), vec![0; 512]),
        (
            "SYNCHRONIZE CACHE",
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
        ),
        ("TEST UNIT READY", TUR.to_vec(), vec![]),
        (
            "READ CAPACITY(10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
        ),
        ("MODE SENSE(6)", vec![0x1A, 0, 0x3F, 0, 255, 0], vec![]),
        ("PERSISTENT RESERVE IN", pr_in.to_vec(), vec![]),
        ("INQUIRY", INQUIRY.to_vec(), vec![]),
        ("REQUEST SENSE", vec![0x03, 0, 0, 0, 18, 0], vec![]),
        (
            "REPORT LUNS",
            vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
        ),
        ("REPORT TARGET PORT GROUPS", rtpg(0, 256), vec![]),
    ];
    cmds.into_iter()
        .map(|(name, c, d)| {
            let o = exec(&t, &n, 0, &c, &d);
            (name, (o.status != status::GOOD).then(|| sense_of(&o)))
        })
        .collect()
}

#[test]
fn each_state_refuses_with_its_sense_what_it_does_not_allow() {
    let standby = Some((key::NOT_READY, 0x04, 0x0B));
    let unavailable = Some((key::NOT_READY, 0x04, 0x0C));
    let transitioning = Some((key::NOT_READY, 0x04, 0x0A));
    for (state, media, probe) in [
        (AccessState::ActiveOptimized, None, None),
        (AccessState::ActiveNonOptimized, None, None),
        (AccessState::Standby, standby, None),
        (AccessState::Unavailable, unavailable, unavailable),
        (AccessState::Transitioning, transitioning, transitioning),
    ] {
        let got = answers(state);
        for (name, sense) in &got {
            let want = match *name {
                "READ(10)" | "WRITE(10)" | "SYNCHRONIZE CACHE" | "TEST UNIT READY" => media,
                "READ CAPACITY(10)" | "MODE SENSE(6)" | "PERSISTENT RESERVE IN" => probe,
                _ => None,
            };
            assert_eq!(*sense, want, "{state:?}: {name}");
        }
    }
}

#[test]
fn a_state_change_raises_one_unit_attention_on_every_nexus_of_that_lu_only() {
    let t = grouped();
    let a = ready(&t, 1);
    let b = ready(&t, 2);
    let c = ready(&t, 9);
    let lu0 = t.port_groups(); // groups as configured
    assert_eq!(lu0.len(), 2);
    // LUN 0's unit only: LUN 1 is another logical unit.
    let unit = {
        let (_, lu) = mem_lu(7, 512, 64);
        t.map(HOST1, 5, lu.clone());
        for n in [&a, &b, &c] {
            clear_ua(&t, n, 5);
            clear_ua(&t, n, 0);
            clear_ua(&t, n, 1);
        }
        lu
    };
    unit.set_access_state(2, AccessState::ActiveNonOptimized);
    // The same state again changes nothing.
    unit.set_access_state(2, AccessState::ActiveNonOptimized);
    for n in [&a, &b, &c] {
        assert_eq!(
            sense_of(&exec(&t, n, 5, &TUR, &[])),
            (key::UNIT_ATTENTION, 0x2A, 0x06),
            "port {}",
            n.target_port
        );
        assert_eq!(exec(&t, n, 5, &TUR, &[]).status, status::GOOD, "once");
        assert_eq!(exec(&t, n, 0, &TUR, &[]).status, status::GOOD, "other LU");
        assert_eq!(exec(&t, n, 1, &TUR, &[]).status, status::GOOD, "other LU");
    }
    assert_eq!(unit.access_state(2), AccessState::ActiveNonOptimized);
    assert_eq!(unit.access_state(1), AccessState::ActiveOptimized);
    // A pending unit attention comes before the state's refusal.
    unit.set_access_state(2, AccessState::Standby);
    assert_eq!(
        sense_of(&exec(&t, &b, 5, &read10(0, 1), &[])),
        (key::UNIT_ATTENTION, 0x2A, 0x06)
    );
    assert_eq!(
        sense_of(&exec(&t, &b, 5, &read10(0, 1), &[])),
        (key::NOT_READY, 0x04, 0x0B)
    );
    // REQUEST SENSE hands the condition over too.
    let d = good(&exec(&t, &a, 5, &[0x03, 0, 0, 0, 18, 0], &[])).to_vec();
    assert_eq!(
        (d[2] & 0xF, d[12], d[13]),
        (key::UNIT_ATTENTION, 0x2A, 0x06)
    );
    assert_eq!(exec(&t, &a, 5, &TUR, &[]).status, status::GOOD);
}

#[test]
fn changing_the_groups_tells_every_nexus_the_inquiry_data_changed() {
    let t = grouped();
    let n = ready(&t, 9);
    t.set_port_groups(vec![PortGroup {
        id: 4,
        ports: vec![9],
    }])
    .unwrap();
    assert_eq!(
        sense_of(&exec(&t, &n, 0, &TUR, &[])),
        (key::UNIT_ATTENTION, 0x3F, 0x03)
    );
    let d = good(&exec(&t, &n, 0, &INQUIRY, &[])).to_vec();
    assert_eq!(d[5] & 0x30, 0x10);
    // The same groups again: nothing to tell.
    clear_ua(&t, &n, 1);
    t.set_port_groups(t.port_groups()).unwrap();
    assert_eq!(exec(&t, &n, 1, &TUR, &[]).status, status::GOOD);
    // Invalid groups are refused and change nothing.
    assert!(
        t.set_port_groups(vec![PortGroup {
            id: 1,
            ports: vec![0],
        }])
        .is_err()
    );
    assert_eq!(t.port_group_of(9), Some(4));
}

#[test]
fn a_read_answered_by_reference_is_refused_in_standby_too() {
    let dir = tempfile::tempdir().unwrap();
    let dev = scsi::FileDevice::create(&dir.path().join("lun.img"), 512, 64).unwrap();
    let t = Target::new(TARGET);
    t.set_port_groups(vec![PortGroup {
        id: 1,
        ports: vec![1],
    }])
    .unwrap();
    let lu = std::sync::Arc::new(scsi::LogicalUnit::new(
        std::sync::Arc::new(dev),
        identity(1),
    ));
    t.map(HOST1, 0, lu.clone());
    let n = nexus(HOST1, 0x101, 1);
    clear_ua(&t, &n, 0);
    let read = |t: &Target| {
        t.execute_zero_copy(&scsi::Command {
            nexus: &n,
            lun: scsi::encode_lun(0),
            cdb: &read10(0, 8),
            data_out: &[],
            expected_length: 4096,
            task_tag: 1,
            attribute: scsi::TaskAttribute::Simple,
        })
    };
    let (o, span) = read(&t);
    assert_eq!((o.status, span.is_some()), (status::GOOD, true));
    lu.set_access_state(1, AccessState::Standby);
    drain_ua(&t, &n, 0);
    let (o, span) = read(&t);
    assert_eq!(
        (sense_of(&o), span.is_none()),
        ((key::NOT_READY, 0x04, 0x0B), true)
    );
}
