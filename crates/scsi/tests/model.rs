//! Model-based property tests: random command sequences against a plain in-memory model.

mod common;
use common::*;
use proptest::prelude::*;
use scsi::status;

const BLOCKS: u64 = 512;
const BS: usize = 512;

#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u64,
        blocks: u16,
        seed: u8,
    },
    WriteSame {
        lba: u64,
        blocks: u16,
        byte: u8,
        unmap: bool,
    },
    Unmap {
        lba: u64,
        blocks: u32,
    },
    Caw {
        lba: u64,
        seed: u8,
        matching: bool,
    },
    Read {
        lba: u64,
        blocks: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let lba = 0..BLOCKS + 4;
    prop_oneof![
        (lba.clone(), 0u16..200, any::<u8>()).prop_map(|(lba, blocks, seed)| Op::Write {
            lba,
            blocks,
            seed
        }),
        (
            lba.clone(),
            1u16..300,
            prop_oneof![Just(0u8), any::<u8>()],
            any::<bool>()
        )
            .prop_map(|(lba, blocks, byte, unmap)| Op::WriteSame {
                lba,
                blocks,
                byte,
                unmap
            }),
        (lba.clone(), 0u32..300).prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        (lba.clone(), any::<u8>(), any::<bool>()).prop_map(|(lba, seed, matching)| Op::Caw {
            lba,
            seed,
            matching
        }),
        (lba, 0u16..300).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
    ]
}

fn fill(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn fits(lba: u64, blocks: u64) -> bool {
    lba + blocks <= BLOCKS
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn block_commands_match_a_flat_model(ops in proptest::collection::vec(op(), 1..40)) {
        let t = scsi::Target::new(TARGET);
        let (dev, lu) = mem_lu(1, BS as u32, BLOCKS);
        t.map(HOST1, 0, lu);
        let n = nexus(HOST1, 1, 1);
        clear_ua(&t, &n, 0);
        let mut model = vec![0u8; BLOCKS as usize * BS];
        let range = |lba: u64, blocks: u64| (lba as usize * BS)..((lba + blocks) as usize * BS);
        for op in ops {
            match op {
                Op::Write { lba, blocks, seed } => {
                    let data = fill(blocks as usize * BS, seed);
                    let o = exec(&t, &n, 0, &cdb16(0x8A, 0, lba, blocks.into()), &data);
                    if fits(lba, blocks.into()) {
                        prop_assert_eq!(o.status, status::GOOD);
                        model[range(lba, blocks.into())].copy_from_slice(&data);
                    } else {
                        prop_assert_eq!(sense_of(&o), (5, 0x21, 0));
                    }
                }
                Op::WriteSame { lba, blocks, byte, unmap } => {
                    let o = exec(&t, &n, 0, &cdb16(0x93, if unmap { 0x08 } else { 0 }, lba, blocks.into()), &[byte; BS]);
                    if fits(lba, blocks.into()) {
                        prop_assert_eq!(o.status, status::GOOD);
                        model[range(lba, blocks.into())].fill(byte);
                    } else {
                        prop_assert_eq!(sense_of(&o), (5, 0x21, 0));
                    }
                }
                Op::Unmap { lba, blocks } => {
                    let mut p = vec![0, 22, 0, 16, 0, 0, 0, 0];
                    p.extend_from_slice(&lba.to_be_bytes());
                    p.extend_from_slice(&blocks.to_be_bytes());
                    p.extend_from_slice(&[0; 4]);
                    let o = exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
                    if fits(lba, blocks.into()) {
                        prop_assert_eq!(o.status, status::GOOD);
                        model[range(lba, blocks.into())].fill(0);
                    } else {
                        prop_assert_eq!(sense_of(&o), (5, 0x21, 0));
                    }
                }
                Op::Caw { lba, seed, matching } => {
                    let mut buf = if matching && fits(lba, 1) {
                        model[range(lba, 1)].to_vec()
                    } else {
                        fill(BS, seed.wrapping_add(1))
                    };
                    let new = fill(BS, seed);
                    buf.extend_from_slice(&new);
                    let mut c = cdb16(0x89, 0, lba, 0);
                    c[13] = 1;
                    let o = exec(&t, &n, 0, &c, &buf);
                    if !fits(lba, 1) {
                        prop_assert_eq!(sense_of(&o), (5, 0x21, 0));
                    } else if buf[..BS] == model[range(lba, 1)] {
                        prop_assert_eq!(o.status, status::GOOD);
                        model[range(lba, 1)].copy_from_slice(&new);
                    } else {
                        prop_assert_eq!(sense_of(&o).0, 0x0E);
                    }
                }
                Op::Read { lba, blocks } => {
                    let o = exec(&t, &n, 0, &cdb16(0x88, 0, lba, blocks.into()), &[]);
                    if fits(lba, blocks.into()) {
                        prop_assert_eq!(o.status, status::GOOD);
                        prop_assert!(o.data_in == model[range(lba, blocks.into())]);
                    } else {
                        prop_assert_eq!(sense_of(&o), (5, 0x21, 0));
                    }
                }
            }
        }
        // Everything that reads as non-zero must be mapped.
        for b in 0..BLOCKS {
            let nonzero = model[range(b, 1)].iter().any(|&x| x != 0);
            let (mapped, _) = scsi::BlockDevice::mapping_status(&*dev, b * BS as u64).unwrap();
            prop_assert!(!nonzero || mapped, "block {} has data but is unmapped", b);
        }
    }
}
