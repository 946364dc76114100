//! Random persistent-reservation sequences from three nexuses: never a panic, and the state
//! the initiators read back is always self-consistent.

mod common;
use common::*;
use proptest::prelude::*;
use scsi::{Nexus, Target, status};

fn pr_out(t: &Target, n: &Nexus, sa: u8, kind: u8, key: u64, sa_key: u64) -> u8 {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    exec(t, n, 0, &[0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0], &p).status
}

fn pr_in(t: &Target, n: &Nexus, sa: u8) -> Vec<u8> {
    let o = exec(t, n, 0, &[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(o.status, status::GOOD);
    o.data_in
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn reservation_state_stays_consistent(
        ops in proptest::collection::vec((0usize..3, 0u8..7, prop_oneof![Just(1u8), Just(3), Just(5), Just(6), Just(7), Just(8)], 0u64..4, 0u64..4), 1..40)
    ) {
        let t = Target::new(TARGET);
        let (_, lu) = mem_lu(1, 512, 16);
        t.map(HOST1, 0, lu.clone());
        t.map(HOST2, 0, lu);
        let ns = [nexus(HOST1, 1, 1), nexus(HOST1, 2, 2), nexus(HOST2, 1, 1)];
        for n in &ns {
            clear_ua(&t, n, 0);
        }
        let mut generation = 0u32;
        for (who, sa, kind, key, sa_key) in ops {
            let n = &ns[who];
            let st = pr_out(&t, n, sa, kind, key, sa_key);
            prop_assert!(matches!(st, status::GOOD | status::CHECK_CONDITION | status::RESERVATION_CONFLICT));
            // Drain unit attentions the operation raised for the others.
            for m in &ns {
                clear_ua(&t, m, 0);
            }
            let keys = pr_in(&t, n, 0);
            let g = u32::from_be_bytes(keys[0..4].try_into().unwrap());
            prop_assert!(g >= generation, "generation went back");
            generation = g;
            let klen = u32::from_be_bytes(keys[4..8].try_into().unwrap()) as usize;
            prop_assert_eq!(klen % 8, 0);
            let registered: Vec<u64> = keys[8..8 + klen].chunks(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
            prop_assert!(registered.iter().all(|&k| k != 0), "key 0 registered");
            let res = pr_in(&t, n, 1);
            let rlen = u32::from_be_bytes(res[4..8].try_into().unwrap());
            if rlen != 0 {
                prop_assert_eq!(rlen, 16);
                prop_assert!(!registered.is_empty(), "reservation without registrants");
                let holder = u64::from_be_bytes(res[8..16].try_into().unwrap());
                let kind = res[21];
                if kind == 7 || kind == 8 {
                    prop_assert_eq!(holder, 0);
                } else {
                    prop_assert!(registered.contains(&holder), "holder key {} not registered", holder);
                }
            }
            // READ FULL STATUS agrees with READ KEYS.
            let full = pr_in(&t, n, 3);
            let flen = u32::from_be_bytes(full[4..8].try_into().unwrap()) as usize;
            let mut off = 8;
            let mut count = 0;
            while off < 8 + flen {
                let tid = u32::from_be_bytes(full[off + 20..off + 24].try_into().unwrap()) as usize;
                off += 24 + tid;
                count += 1;
            }
            prop_assert_eq!(count, registered.len());
        }
    }
}
