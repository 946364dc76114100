//! Property tests: arbitrary CDBs and parameter lists never panic, CHECK CONDITION always has
//! fixed-format sense, and data-in never exceeds the allocation length.

mod common;
use common::*;
use proptest::prelude::*;
use scsi::status;

const OPCODES: &[u8] = &[
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x25, 0x28, 0x2A, 0x2E, 0x2F, 0x35, 0x41,
    0x42, 0x55, 0x5A, 0x5E, 0x5F, 0x88, 0x89, 0x8A, 0x8E, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8,
    0xAA, 0xAE,
];

fn cdb() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![3 => proptest::sample::select(OPCODES), 1 => any::<u8>()],
        proptest::collection::vec(any::<u8>(), 0..20),
        any::<bool>(),
    )
        .prop_map(|(op, mut rest, small)| {
            // Half of the time keep numbers small so that commands reach execution.
            if small {
                for b in rest.iter_mut() {
                    *b &= 0x03;
                }
            }
            rest.insert(0, op);
            rest
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_commands_never_panic_and_honour_allocation_length(
        cmds in proptest::collection::vec(
            (cdb(), proptest::collection::vec(any::<u8>(), 0..1100), 0u64..3, 0u64..3),
            1..6,
        ),
    ) {
        let (t, _, _, lu) = single();
        t.map(HOST2, 1, lu);
        for (c, data, lun, who) in cmds {
            let n = match who { 0 => nexus(HOST1, 1, 1), 1 => nexus(HOST2, 2, 1), _ => nexus(HOST1, 3, 2) };
            let o = exec(&t, &n, lun, &c, &data);
            match o.status {
                status::CHECK_CONDITION => {
                    let s = o.sense.as_ref().expect("sense");
                    prop_assert_eq!(s.len(), 18);
                    prop_assert_eq!(s[0] & 0x7F, 0x70);
                    prop_assert!(o.data_in.is_empty());
                }
                status::GOOD => {
                    if let Some(a) = alloc_of(&c) {
                        prop_assert!(o.data_in.len() as u64 <= a, "{:02x?} gave {} bytes", c, o.data_in.len());
                    }
                }
                status::RESERVATION_CONFLICT => prop_assert!(o.sense.is_none()),
                s => prop_assert!(false, "unexpected status {s:#x}"),
            }
        }
    }

    #[test]
    fn arbitrary_parameter_lists_never_panic(
        which in 0usize..5,
        len in 0u16..80,
        data in proptest::collection::vec(any::<u8>(), 0..80),
        sa in 0u8..8,
    ) {
        let (t, n, _, _) = single();
        let [hi, lo] = len.to_be_bytes();
        let c: Vec<u8> = match which {
            0 => vec![0x42, 0, 0, 0, 0, 0, 0, hi, lo, 0],
            1 => vec![0x15, 0x10, 0, 0, lo, 0],
            2 => vec![0x55, 0x10, 0, 0, 0, 0, 0, hi, lo, 0],
            3 => vec![0x5F, sa, 0x01, 0, 0, 0, 0, hi, lo, 0],
            _ => vec![0x5F, sa, 0x08, 0, 0, 0, 0, 0, 24, 0],
        };
        let o = exec(&t, &n, 0, &c, &data);
        prop_assert!(matches!(o.status, status::GOOD | status::CHECK_CONDITION | status::RESERVATION_CONFLICT));
        if o.status == status::CHECK_CONDITION {
            prop_assert_eq!(o.sense.map(|s| s.len()), Some(18));
        }
    }

    #[test]
    fn reads_return_exactly_the_transfer_length(lba in 0u32..2048, blocks in 0u16..64) {
        let (t, n, _, _) = single();
        let o = exec(&t, &n, 0, &read10(lba, blocks), &[]);
        if u64::from(lba) + u64::from(blocks) <= 2048 {
            prop_assert_eq!(o.status, status::GOOD);
            prop_assert_eq!(o.data_in.len(), blocks as usize * 512);
        } else {
            prop_assert_eq!(sense_of(&o), (5, 0x21, 0));
        }
    }
}
