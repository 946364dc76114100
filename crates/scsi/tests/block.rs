//! SBC-3 block commands through the target, on a MemDevice.

mod common;
use common::*;
use scsi::sense::key;
use scsi::{BlockDevice, status};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn writes_read_back_through_every_cdb_size() {
    let (t, n, _, _) = single();
    let data = pattern(1024, 1);
    good(&exec(&t, &n, 0, &[0x0A, 0, 0, 10, 2, 0], &data));
    assert_eq!(
        good(&exec(&t, &n, 0, &[0x08, 0, 0, 10, 2, 0], &[])),
        &data[..]
    );
    assert_eq!(good(&exec(&t, &n, 0, &read10(10, 2), &[])), &data[..]);
    let r12 = [0xA8, 0, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0];
    assert_eq!(good(&exec(&t, &n, 0, &r12, &[])), &data[..]);
    let data2 = pattern(512, 7);
    good(&exec(&t, &n, 0, &cdb16(0x8A, 0, 2047, 1), &data2));
    assert_eq!(
        good(&exec(&t, &n, 0, &cdb16(0x88, 0, 2047, 1), &[])),
        &data2[..]
    );
    let w12 = [0xAA, 0, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0];
    good(&exec(&t, &n, 0, &w12, &data2));
    assert_eq!(good(&exec(&t, &n, 0, &read10(11, 1), &[])), &data2[..]);
}

#[test]
fn access_beyond_the_last_block_is_lba_out_of_range() {
    let (t, n, _, _) = single();
    for c in [
        read10(2047, 2),
        read10(2049, 0),
        cdb16(0x88, 0, u64::MAX, 1),
        cdb16(0x8A, 0, 2048, 1),
    ] {
        let o = exec(&t, &n, 0, &c, &[0; 512]);
        assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x21, 0), "{c:02x?}");
    }
    // Zero blocks at the end of the medium is fine.
    good(&exec(&t, &n, 0, &read10(2048, 0), &[]));
}

#[test]
fn short_data_out_writes_only_the_whole_blocks_received() {
    let (t, n, dev, _) = single();
    good(&exec(&t, &n, 0, &write10(0, 2, false), &[b'a'; 1024]));
    // Two blocks announced, one and a bit sent: the first block is written, not the second.
    good(&exec(&t, &n, 0, &write10(0, 2, false), &[b'b'; 600]));
    let d = good(&exec(&t, &n, 0, &read10(0, 2), &[])).to_vec();
    assert!(d[..512].iter().all(|&b| b == b'b'));
    assert!(d[512..].iter().all(|&b| b == b'a'));
    // Nothing sent: nothing written, nothing allocated.
    good(&exec(&t, &n, 0, &write10(100, 1, false), &[]));
    assert_eq!(dev.mapped_blocks(), 2);
    // More than announced: only the transfer length is written.
    good(&exec(&t, &n, 0, &write10(0, 1, false), &[b'c'; 1024]));
    let d = good(&exec(&t, &n, 0, &read10(0, 2), &[])).to_vec();
    assert!(d[..512].iter().all(|&b| b == b'c'));
    assert!(d[512..].iter().all(|&b| b == b'a'));
}

#[test]
fn compare_and_write_and_write_same_need_exactly_their_data() {
    let (t, n, _, _) = single();
    let mut caw = cdb16(0x89, 0, 0, 0);
    caw[13] = 1;
    let o = exec(&t, &n, 0, &caw, &[0; 1536]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    assert_eq!(&o.sense.unwrap()[15..18], &[0xC0, 0, 13]);
    // 256 blocks wrap to 0 in the one-byte field: the data then cannot match.
    caw[13] = 0;
    let o = exec(&t, &n, 0, &caw, &[0; 512 * 512]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    good(&exec(&t, &n, 0, &caw, &[]));
    let o = exec(&t, &n, 0, &cdb16(0x93, 0, 0, 1), &[0; 1024]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = exec(&t, &n, 0, &cdb16(0x93, 0x09, 0, 1), &[0; 512]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn fua_and_synchronize_cache_flush_the_device() {
    let (t, n, dev, _) = single();
    good(&exec(&t, &n, 0, &write10(0, 1, false), &[1; 512]));
    assert_eq!(dev.flush_count(), 0);
    good(&exec(&t, &n, 0, &write10(0, 1, true), &[1; 512]));
    assert_eq!(dev.flush_count(), 1);
    good(&exec(&t, &n, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(dev.flush_count(), 2);
    good(&exec(&t, &n, 0, &cdb16(0x91, 0, 0, 0), &[]));
    assert_eq!(dev.flush_count(), 3);
    let o = exec(&t, &n, 0, &cdb16(0x91, 0, 2048, 1), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x21, 0));
}

#[test]
fn write_protected_unit_refuses_writes() {
    let (t, n, _, lu) = single();
    lu.set_write_protected(true);
    let o = exec(&t, &n, 0, &write10(0, 1, false), &[1; 512]);
    assert_eq!(sense_of(&o), (key::DATA_PROTECT, 0x27, 0x00));
    good(&exec(&t, &n, 0, &read10(0, 1), &[]));
    // A device that is itself read-only reports the same.
    lu.set_write_protected(false);
    let (t2, n2, dev2, _) = single();
    dev2.set_read_only(true);
    let o = exec(&t2, &n2, 0, &write10(0, 1, false), &[1; 512]);
    assert_eq!(sense_of(&o), (key::DATA_PROTECT, 0x27, 0x00));
}

#[test]
fn full_thin_pool_is_space_allocation_failed() {
    let (t, n, dev, _) = single();
    dev.set_pool_limit(Some(1));
    good(&exec(&t, &n, 0, &write10(0, 1, false), &[1; 512]));
    let o = exec(&t, &n, 0, &write10(1, 1, false), &[1; 512]);
    assert_eq!(sense_of(&o), (key::DATA_PROTECT, 0x27, 0x07));
}

#[test]
fn medium_errors_report_the_failing_lba() {
    let (t, n, dev, _) = single();
    dev.inject_medium_error(12);
    let o = exec(&t, &n, 0, &read10(10, 4), &[]);
    assert_eq!(sense_of(&o), (key::MEDIUM_ERROR, 0x11, 0x00));
    let s = o.sense.unwrap();
    assert_eq!(s[0], 0xF0);
    assert_eq!(&s[3..7], &12u32.to_be_bytes());
    let o = exec(&t, &n, 0, &write10(12, 1, false), &[0; 512]);
    assert_eq!(sense_of(&o), (key::MEDIUM_ERROR, 0x0C, 0x00));
}

#[test]
fn read_capacity_reports_size_and_thin_bits() {
    let (t, n, _, _) = single();
    let d = good(&exec(&t, &n, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])).to_vec();
    assert_eq!(d, vec![0, 0, 0x07, 0xFF, 0, 0, 0x02, 0]);
    let d = good(&exec(&t, &n, 0, &cdb16(0x9E, 0x10, 0, 32), &[])).to_vec();
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &2047u64.to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[13], 0, "one logical block per physical block");
    assert_eq!(d[14], 0xC0, "LBPME and LBPRZ");
    let d = good(&exec(&t, &n, 0, &cdb16(0x9E, 0x10, 0, 12), &[])).to_vec();
    assert_eq!(d.len(), 12);
    let o = exec(&t, &n, 0, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn unmap_deallocates_and_reads_zeros() {
    let (t, n, dev, _) = single();
    good(&exec(&t, &n, 0, &write10(0, 16, false), &[0xAB; 16 * 512]));
    assert_eq!(dev.mapped_blocks(), 16);
    let mut p = vec![0, 22, 0, 16, 0, 0, 0, 0];
    p.extend_from_slice(&4u64.to_be_bytes());
    p.extend_from_slice(&8u32.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    good(&exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p));
    assert_eq!(dev.mapped_blocks(), 8);
    let d = good(&exec(&t, &n, 0, &read10(0, 16), &[])).to_vec();
    assert!(d[..4 * 512].iter().all(|&b| b == 0xAB));
    assert!(d[4 * 512..12 * 512].iter().all(|&b| b == 0));
    // GET LBA STATUS sees the hole.
    let s = good(&exec(&t, &n, 0, &cdb16(0x9E, 0x12, 0, 1024), &[])).to_vec();
    let descs: Vec<(u64, u32, u8)> = s[8..]
        .chunks(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[0..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12],
            )
        })
        .collect();
    assert_eq!(descs, vec![(0, 4, 0), (4, 8, 1), (12, 4, 0), (16, 2032, 1)]);
    assert_eq!(
        u32::from_be_bytes(s[0..4].try_into().unwrap()) as usize,
        s.len() - 4
    );
    // Out of range descriptor.
    let mut bad = p.clone();
    bad[8..16].copy_from_slice(&2045u64.to_be_bytes());
    let o = exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &bad);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x21, 0));
    // Parameter list shorter than its header.
    let o = exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &p);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x1A, 0));
    let o = exec(&t, &n, 0, &cdb16(0x9E, 0x12, 2048, 1024), &[]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x21, 0));
}

#[test]
fn write_same_with_unmap_deallocates_zero_pattern_and_writes_others() {
    let (t, n, dev, _) = single();
    good(&exec(&t, &n, 0, &write10(0, 8, false), &[1; 8 * 512]));
    let ws10 = |b1: u8, lba: u32, blocks: u16| {
        let mut c = read10(lba, blocks);
        c[0] = 0x41;
        c[1] = b1;
        c
    };
    good(&exec(&t, &n, 0, &ws10(0x08, 0, 4), &[0; 512]));
    assert_eq!(dev.mapped_blocks(), 4);
    let pat = pattern(512, 3);
    good(&exec(&t, &n, 0, &ws10(0x08, 100, 3), &pat));
    assert_eq!(dev.mapped_blocks(), 7);
    let d = good(&exec(&t, &n, 0, &read10(100, 3), &[])).to_vec();
    assert!(d.chunks(512).all(|c| c == &pat[..]));
    // NDOB with UNMAP on WRITE SAME(16) needs no data.
    good(&exec(&t, &n, 0, &cdb16(0x93, 0x09, 100, 3), &[]));
    assert_eq!(dev.mapped_blocks(), 4);
    // Zero blocks is refused (WSNZ), as is ANCHOR.
    let o = exec(&t, &n, 0, &ws10(0, 0, 0), &pat);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = exec(&t, &n, 0, &ws10(0x10, 0, 1), &pat);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
    let o = exec(&t, &n, 0, &ws10(0, 2047, 2), &pat);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x21, 0));
}

#[test]
fn compare_and_write_swaps_only_on_match() {
    let (t, n, _, _) = single();
    let old = pattern(512, 1);
    let new = pattern(512, 2);
    good(&exec(&t, &n, 0, &write10(5, 1, false), &old));
    let caw = |lba: u64, blocks: u8| {
        let mut c = cdb16(0x89, 0, lba, 0);
        c[10..14].copy_from_slice(&[0, 0, 0, blocks]);
        c
    };
    let mut buf = old.clone();
    buf.extend_from_slice(&new);
    good(&exec(&t, &n, 0, &caw(5, 1), &buf));
    assert_eq!(good(&exec(&t, &n, 0, &read10(5, 1), &[])), &new[..]);
    // Again: the verify data no longer matches at byte 0.
    let o = exec(&t, &n, 0, &caw(5, 1), &buf);
    assert_eq!(sense_of(&o), (key::MISCOMPARE, 0x1D, 0));
    let s = o.sense.unwrap();
    assert_eq!(s[0], 0xF0);
    assert_eq!(&s[3..7], &[0, 0, 0, 0]);
    let mut near = new.clone();
    near[100] ^= 1;
    near.extend_from_slice(&old);
    let o = exec(&t, &n, 0, &caw(5, 1), &near);
    assert_eq!(&o.sense.unwrap()[3..7], &100u32.to_be_bytes());
    assert_eq!(good(&exec(&t, &n, 0, &read10(5, 1), &[])), &new[..]);
}

#[test]
fn compare_and_write_is_atomic_across_threads() {
    let (t, _, _, _) = single();
    let t = std::sync::Arc::new(t);
    let caw = {
        let mut c = cdb16(0x89, 0, 9, 0);
        c[13] = 1;
        c
    };
    let threads = 4;
    let per = 200;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let t = t.clone();
            let caw = caw.clone();
            std::thread::spawn(move || {
                let n = nexus(HOST1, 100 + i, 1);
                clear_ua(&t, &n, 0);
                let mut wins = 0u64;
                for _ in 0..per {
                    let cur = exec(&t, &n, 0, &read10(9, 1), &[]).data_in;
                    let v = u64::from_be_bytes(cur[..8].try_into().unwrap());
                    let mut next = cur.clone();
                    next[..8].copy_from_slice(&(v + 1).to_be_bytes());
                    let mut buf = cur;
                    buf.extend_from_slice(&next);
                    if exec(&t, &n, 0, &caw, &buf).status == status::GOOD {
                        wins += 1;
                    }
                }
                wins
            })
        })
        .collect();
    let wins: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let n = nexus(HOST1, 999, 1);
    clear_ua(&t, &n, 0);
    let d = good(&exec(&t, &n, 0, &read10(9, 1), &[])).to_vec();
    assert_eq!(u64::from_be_bytes(d[..8].try_into().unwrap()), wins);
    assert!(wins >= per as u64);
}

#[test]
fn verify_compares_data_out_with_the_medium() {
    let (t, n, _, _) = single();
    let data = pattern(1024, 9);
    good(&exec(&t, &n, 0, &write10(20, 2, false), &data));
    let v10 = |b1: u8| {
        let mut c = read10(20, 2);
        c[0] = 0x2F;
        c[1] = b1;
        c
    };
    good(&exec(&t, &n, 0, &v10(0), &[]));
    good(&exec(&t, &n, 0, &v10(0x02), &data));
    let mut off = data.clone();
    off[700] ^= 0xFF;
    let o = exec(&t, &n, 0, &v10(0x02), &off);
    assert_eq!(sense_of(&o), (key::MISCOMPARE, 0x1D, 0));
    assert_eq!(&o.sense.unwrap()[3..7], &700u32.to_be_bytes());
    // BYTCHK 11b: one block compared against each.
    good(&exec(&t, &n, 0, &write10(30, 2, false), &[5; 1024]));
    let mut c = read10(30, 2);
    c[0] = 0x2F;
    c[1] = 0x06;
    good(&exec(&t, &n, 0, &c, &[5; 512]));
    let o = exec(&t, &n, 0, &c, &[6; 512]);
    assert_eq!(sense_of(&o).0, key::MISCOMPARE);
    // VERIFY(12) with BYTCHK 01b.
    let v12 = [0xAF, 0x02, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0];
    good(&exec(&t, &n, 0, &v12, &data));
    assert_eq!(sense_of(&exec(&t, &n, 0, &v12, &off)).0, key::MISCOMPARE);
    let o = exec(&t, &n, 0, &v10(0x04), &data);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x24, 0));
}

#[test]
fn write_and_verify_writes_durably() {
    let (t, n, dev, _) = single();
    let data = pattern(512, 4);
    let mut c = write10(3, 1, false);
    c[0] = 0x2E;
    good(&exec(&t, &n, 0, &c, &data));
    assert_eq!(dev.flush_count(), 1);
    let mut back = vec![0; 512];
    dev.read_at(3 * 512, &mut back).unwrap();
    assert_eq!(back, data);
}

/// The I/O methods of a test device that wraps a `MemDevice` in its field `0`.
macro_rules! mem_io {
    () => {
        fn read_at(&self, o: u64, b: &mut [u8]) -> Result<(), scsi::DeviceError> {
            self.0.read_at(o, b)
        }
        fn write_at(&self, o: u64, d: &[u8], f: bool) -> Result<(), scsi::DeviceError> {
            self.0.write_at(o, d, f)
        }
        fn flush(&self) -> Result<(), scsi::DeviceError> {
            self.0.flush()
        }
    };
}

#[test]
fn unmap_on_a_thick_device_is_an_invalid_opcode() {
    struct Thick(scsi::MemDevice);
    impl BlockDevice for Thick {
        fn block_size(&self) -> u32 {
            self.0.block_size()
        }
        fn num_blocks(&self) -> u64 {
            self.0.num_blocks()
        }
        mem_io!();
    }
    let t = scsi::Target::new(TARGET);
    let lu = std::sync::Arc::new(scsi::LogicalUnit::new(
        std::sync::Arc::new(Thick(scsi::MemDevice::new(4096, 16))),
        identity(1),
    ));
    t.map(HOST1, 0, lu);
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    let o = exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24]);
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x20, 0));
    let d = good(&exec(&t, &n, 0, &cdb16(0x9E, 0x10, 0, 32), &[])).to_vec();
    assert_eq!((d[13], d[14]), (0, 0));
    let d = good(&exec(&t, &n, 0, &[0x12, 1, 0xB2, 0, 255, 0], &[])).to_vec();
    assert_eq!(d, vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
}

#[test]
fn data_length_tells_the_transport_what_the_cdb_implies() {
    let (t, n, _, _) = single();
    let cmd = |cdb: &[u8]| {
        let c = scsi::Command {
            nexus: &n,
            lun: scsi::encode_lun(0),
            cdb,
            data_out: &[],
            expected_length: 0,
            task_tag: 1,
            attribute: scsi::TaskAttribute::Simple,
        };
        t.data_length(&c)
    };
    assert_eq!(cmd(&write10(0, 2, false)), Some(1024));
    assert_eq!(cmd(&read10(0, 3)), Some(1536));
    let mut caw = cdb16(0x89, 0, 0, 0);
    caw[13] = 2;
    assert_eq!(cmd(&caw), Some(2048));
    assert_eq!(cmd(&cdb16(0x93, 0x08, 0, 100)), Some(512));
    assert_eq!(cmd(&[0x12, 1, 0x83, 0, 200, 0]), Some(200));
    assert_eq!(cmd(&[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]), Some(24));
    assert_eq!(cmd(&[0xFF, 0, 0, 0, 0, 0]), None);
}

#[test]
fn reads_of_a_slow_device_are_quick_only_for_blocks_it_holds_and_its_size_is_not_asked() {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Not quick; blocks 0..8 "in memory"; counts size queries.
    struct Slow(scsi::MemDevice, AtomicU64);
    impl BlockDevice for Slow {
        fn block_size(&self) -> u32 {
            self.0.block_size()
        }
        fn num_blocks(&self) -> u64 {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.num_blocks()
        }
        fn cached(&self, offset: u64, len: usize) -> bool {
            offset + len as u64 <= 8 * 512
        }
        mem_io!();
    }
    let dev = std::sync::Arc::new(Slow(scsi::MemDevice::new(512, 64), AtomicU64::new(0)));
    let t = scsi::Target::new(TARGET);
    t.map(
        HOST1,
        0,
        std::sync::Arc::new(scsi::LogicalUnit::new(dev.clone(), identity(1))),
    );
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    let asked = dev.1.load(Ordering::SeqCst);
    assert!(is_quick(&t, &n, 0, &read10(0, 8)));
    assert!(is_quick(&t, &n, 0, &cdb16(0x88, 0, 4, 4)));
    assert!(!is_quick(&t, &n, 0, &read10(4, 8)), "partly held");
    assert!(
        !is_quick(&t, &n, 0, &read10(100, 1)),
        "out of range: the pool answers"
    );
    assert!(!is_quick(&t, &n, 0, &write10(0, 1, false)));
    assert!(
        !is_quick(&t, &n, 0, &[0; 6]),
        "TEST UNIT READY on a slow device"
    );
    assert_eq!(
        dev.1.load(Ordering::SeqCst),
        asked,
        "size asked on the fast path"
    );
    // The held READ still executes normally.
    let o = exec(&t, &n, 0, &read10(0, 8), &[]);
    assert_eq!(good(&o).len(), 8 * 512);
}

#[test]
fn reads_of_a_device_that_reads_now_run_at_once_only_if_its_blocks_are_held() {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Not quick; reads now what blocks 0..8 hold; counts size queries and probes.
    struct Now(scsi::MemDevice, AtomicU64, AtomicU64);
    impl BlockDevice for Now {
        fn block_size(&self) -> u32 {
            self.0.block_size()
        }
        fn num_blocks(&self) -> u64 {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.num_blocks()
        }
        fn cached(&self, _: u64, _: usize) -> bool {
            self.2.fetch_add(1, Ordering::SeqCst);
            true
        }
        fn reads_now(&self) -> bool {
            true
        }
        fn read_now(
            &self,
            offset: u64,
            len: usize,
            buf: &mut Vec<u8>,
        ) -> Result<bool, scsi::DeviceError> {
            if offset + len as u64 > 64 * 512 {
                return Err(scsi::DeviceError::OutOfRange);
            }
            if offset + len as u64 > 8 * 512 {
                return Ok(false);
            }
            self.0.read_to_vec(offset, len, buf).map(|()| true)
        }
        mem_io!();
    }
    let dev = std::sync::Arc::new(Now(
        scsi::MemDevice::new(512, 64),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ));
    let t = scsi::Target::new(TARGET);
    t.map(
        HOST1,
        0,
        std::sync::Arc::new(scsi::LogicalUnit::new(dev.clone(), identity(1))),
    );
    let n = nexus(HOST1, 1, 1);
    let now = |cdb: &[u8]| {
        t.execute_now(&scsi::Command {
            nexus: &n,
            lun: 0,
            cdb,
            data_out: &[],
            expected_length: 0,
            task_tag: 1,
            attribute: scsi::TaskAttribute::Simple,
        })
    };
    // A pending unit attention answers the READ, as `execute` would.
    let o = now(&read10(0, 1)).expect("the unit attention answers at once");
    assert_eq!(sense_of(&o).0, key::UNIT_ATTENTION);
    clear_ua(&t, &n, 0);
    let data = pattern(16 * 512, 7);
    good(&exec(&t, &n, 0, &write10(0, 16, false), &data));
    let asked = dev.1.load(Ordering::SeqCst);

    // Not probed by `is_quick`: the read itself tells.
    assert!(!is_quick(&t, &n, 0, &read10(0, 8)));
    assert_eq!(dev.2.load(Ordering::SeqCst), 0, "cached() asked");
    let o = now(&read10(0, 8)).expect("held blocks are read at once");
    assert_eq!(good(&o), &data[..8 * 512]);
    let o = now(&cdb16(0x88, 0, 2, 4)).expect("READ 16 of held blocks");
    assert_eq!(good(&o), &data[2 * 512..6 * 512]);
    assert!(now(&read10(4, 8)).is_none(), "partly held: would wait");
    assert!(now(&write10(0, 1, false)).is_none(), "a WRITE");
    assert!(now(&cdb16(0x88, 0x08, 0, 1)).is_none(), "a READ with FUA");
    assert!(now(&[0; 6]).is_none(), "TEST UNIT READY");
    let o = now(&read10(100, 1)).expect("out of range answers at once");
    assert_eq!(sense_of(&o), (key::ILLEGAL_REQUEST, 0x21, 0x00));
    assert_eq!(
        dev.1.load(Ordering::SeqCst),
        asked,
        "size asked on the transport's thread"
    );
    // What would wait executes normally after.
    let o = exec(&t, &n, 0, &read10(4, 8), &[]);
    assert_eq!(good(&o), &data[4 * 512..12 * 512]);
}
