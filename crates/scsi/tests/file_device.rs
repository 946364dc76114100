//! The durability paths on a real file: FUA, SYNCHRONIZE CACHE, WCE off, UNMAP punching holes.

mod common;
use common::*;
use scsi::encode_lun;
use scsi::{FileDevice, LogicalUnit, Target};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

fn file_target(
    dir: &std::path::Path,
) -> (Target, scsi::Nexus, Arc<FileDevice>, std::path::PathBuf) {
    let path = dir.join("lun0.img");
    let dev = Arc::new(FileDevice::create(&path, 4096, 1024).unwrap());
    let t = Target::new(TARGET);
    t.map(
        HOST1,
        0,
        Arc::new(LogicalUnit::new(dev.clone(), identity(1))),
    );
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    (t, n, dev, path)
}

#[test]
fn fua_write_is_in_the_file_when_the_command_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (t, n, _, path) = file_target(dir.path());
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    good(&exec(&t, &n, 0, &write10(10, 2, true), &data));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[10 * 4096..12 * 4096], &data[..]);
    good(&exec(&t, &n, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn data_written_then_synchronized_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let (t, n, _, path) = file_target(dir.path());
        good(&exec(&t, &n, 0, &write10(5, 1, false), &[0x5A; 4096]));
        good(&exec(&t, &n, 0, &cdb16(0x91, 0, 0, 0), &[]));
        path
    };
    let dev = Arc::new(FileDevice::open(&path, 4096, false).unwrap());
    let t = Target::new(TARGET);
    t.map(HOST1, 0, Arc::new(LogicalUnit::new(dev, identity(1))));
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    assert_eq!(
        good(&exec(&t, &n, 0, &read10(5, 1), &[])),
        &[0x5A; 4096][..]
    );
}

#[test]
fn unmap_punches_holes_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (t, n, _, path) = file_target(dir.path());
    good(&exec(
        &t,
        &n,
        0,
        &write10(0, 256, false),
        &vec![0xEE; 256 * 4096],
    ));
    let before = std::fs::metadata(&path).unwrap().blocks();
    assert!(before >= 2048, "1 MiB allocated, got {before} sectors");
    let mut p = vec![0, 22, 0, 16, 0, 0, 0, 0];
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&256u32.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    good(&exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p));
    let after = std::fs::metadata(&path).unwrap().blocks();
    assert!(after < before, "blocks {before} -> {after}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024 * 4096);
    let d = good(&exec(&t, &n, 0, &read10(0, 256), &[])).to_vec();
    assert!(d.iter().all(|&b| b == 0));
    let s = good(&exec(&t, &n, 0, &cdb16(0x9E, 0x12, 0, 24), &[])).to_vec();
    assert_eq!(&s[8..16], &0u64.to_be_bytes());
    assert_eq!(s[20], 1, "deallocated");
}

#[test]
fn write_cache_off_makes_plain_writes_durable_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (t, n, _, path) = file_target(dir.path());
    let mut p = vec![0, 0, 0, 0];
    let mut page = vec![0u8; 20];
    page[0] = 0x08;
    page[1] = 0x12;
    p.append(&mut page);
    good(&exec(&t, &n, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p));
    good(&exec(&t, &n, 0, &write10(1, 1, false), &[0x33; 4096]));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[4096..8192], &[0x33; 4096][..]);
}

#[test]
fn resized_file_reports_new_capacity_after_unit_attention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.img");
    let dev = Arc::new(FileDevice::create(&path, 512, 100).unwrap());
    let lu = Arc::new(LogicalUnit::new(dev.clone(), identity(2)));
    let t = Target::new(TARGET);
    t.map(HOST1, 0, lu.clone());
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    dev.resize(200).unwrap();
    lu.capacity_changed();
    assert_eq!(sense_of(&exec(&t, &n, 0, &[0; 6], &[])), (6, 0x2A, 0x09));
    let d = good(&exec(&t, &n, 0, &cdb16(0x9E, 0x10, 0, 32), &[])).to_vec();
    assert_eq!(&d[..8], &199u64.to_be_bytes());
    good(&exec(&t, &n, 0, &read10(150, 1), &[]));
}

#[test]
fn reads_of_a_file_lun_return_the_file_bytes_and_range_errors_leave_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let (t, n, dev, path) = file_target(dir.path());
    let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 253) as u8).collect();
    good(&exec(&t, &n, 0, &write10(1021, 3, false), &data));
    // Through the device model: the last three blocks, exactly.
    let o = exec(&t, &n, 0, &read10(1022, 3), &[]);
    assert_eq!(sense_of(&o), (0x05, 0x21, 0x00));
    let o = exec(&t, &n, 0, &read10(1024, 1), &[]);
    assert_eq!(sense_of(&o), (0x05, 0x21, 0x00));
    assert!(good(&exec(&t, &n, 0, &read10(1021, 3), &[])) == &data[..]);
    // Straight from the device: appends to what the buffer holds.
    use scsi::BlockDevice;
    let mut buf = vec![0xee; 5];
    dev.read_to_vec(1022 * 4096, 4096, &mut buf).unwrap();
    assert_eq!(&buf[..5], &[0xee; 5]);
    assert!(buf[5..] == data[4096..8192]);
    assert_eq!(
        dev.read_to_vec(1023 * 4096, 8192, &mut buf),
        Err(scsi::DeviceError::OutOfRange)
    );
    assert_eq!(buf.len(), 5 + 4096);
    // A file shorter than the device says (truncated behind its back): an error, not zeros.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1022 * 4096)
        .unwrap();
    let mut buf = Vec::new();
    assert!(dev.read_to_vec(1021 * 4096, 2 * 4096, &mut buf).is_err());
    assert!(buf.is_empty());
}

#[test]
fn plain_reads_and_writes_of_file_and_memory_luns_are_quick_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (t, n, _, _) = file_target(dir.path());
    // The file's first block in the page cache (a whole-page write leaves it there).
    good(&exec(&t, &n, 0, &write10(0, 1, false), &[0x42; 4096]));
    let (_, mem) = mem_lu(2, 512, 64);
    t.map(HOST1, 1, mem);
    let quick = |lun: u64, cdb: &[u8]| is_quick(&t, &n, lun, cdb);
    for lun in [0, 1] {
        assert!(quick(lun, &read10(0, 1)));
        assert!(quick(lun, &write10(0, 1, false)));
        assert!(quick(lun, &cdb16(0x88, 0, 0, 1)));
        assert!(quick(lun, &cdb16(0x8a, 0, 0, 1)));
        assert!(quick(lun, &[0, 0, 0, 0, 0, 0]));
        // FUA waits for the medium; SYNCHRONIZE CACHE, UNMAP, COMPARE AND WRITE and
        // reservations are never quick.
        assert!(!quick(lun, &write10(0, 1, true)));
        assert!(!quick(lun, &cdb16(0x8a, 0x08, 0, 1)));
        assert!(!quick(lun, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!quick(lun, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]));
        assert!(!quick(lun, &cdb16(0x89, 0, 0, 1)));
        assert!(!quick(lun, &[0x5f, 1, 0, 0, 0, 0, 0, 0, 24, 0]));
    }
    // An unmapped LUN, an empty CDB.
    assert!(!quick(7, &read10(0, 1)));
    assert!(!quick(0, &[]));
}

#[test]
fn zero_copy_reads_of_a_file_lun_point_at_the_very_bytes_a_copied_read_returns() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (t, n, _, _) = file_target(dir.path());
    let data: Vec<u8> = (0..16 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
    good(&exec(&t, &n, 0, &write10(100, 16, false), &data));
    let cmd = |cdb: &[u8], nexus: &scsi::Nexus| {
        t.execute_zero_copy(&scsi::Command {
            nexus,
            lun: encode_lun(0),
            cdb,
            data_out: &[],
            expected_length: 16 * 4096,
            task_tag: 1,
            attribute: scsi::TaskAttribute::Simple,
        })
    };
    let (o, span) = cmd(&read10(100, 16), &n);
    assert_eq!((o.status, o.sense.is_none(), o.data_in.len()), (0, true, 0));
    let span = span.expect("a file LUN answers a READ by reference");
    assert_eq!((span.offset, span.len), (100 * 4096, 16 * 4096));
    let mut bytes = vec![0u8; span.len];
    span.file.read_exact_at(&mut bytes, span.offset).unwrap();
    assert!(bytes == data);
    // Every check still applies: range, then reservations.
    let (o, span) = cmd(&read10(1020, 8), &n);
    assert_eq!((sense_of(&o), span.is_none()), ((0x05, 0x21, 0x00), true));
    let other = nexus(HOST1, 2, 1);
    clear_ua(&t, &other, 0);
    good(&exec(&t, &other, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    let (o, span) = cmd(&read10(100, 16), &n);
    assert_eq!(
        (o.status, span.is_none()),
        (scsi::status::RESERVATION_CONFLICT, true)
    );
    good(&exec(&t, &other, 0, &[0x17, 0, 0, 0, 0, 0], &[]));
    // Commands other than READ are executed as usual.
    let (o, span) = cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &n);
    assert_eq!((o.data_in.len(), span.is_none()), (8, true));
    // Once COMPARE AND WRITE has run, reads are copied under the LUN's I/O gate again, so
    // that it stays atomic with respect to them.
    let mut caw = vec![0u8; 2 * 4096];
    caw[..4096].copy_from_slice(&data[..4096]);
    caw[4096..].fill(0x3c);
    good(&exec(&t, &n, 0, &cdb16(0x89, 0, 100, 1), &caw));
    let (o, span) = cmd(&read10(100, 1), &n);
    assert!(span.is_none());
    assert!(o.data_in == vec![0x3c; 4096]);
}

#[test]
fn reads_of_blocks_outside_the_page_cache_are_not_quick_and_still_return_the_bytes() {
    use scsi::BlockDevice;
    // On the build's disk rather than /tmp, which may be a tmpfs (whose pages cannot be
    // dropped).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (t, n, dev, path) = file_target(dir.path());
    let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i * 13 % 251) as u8).collect();
    good(&exec(&t, &n, 0, &write10(256, 64, false), &data));
    good(&exec(&t, &n, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    let quick = |cdb: &[u8]| is_quick(&t, &n, 0, cdb);
    // Drops every page of the file from the cache (the data is on disk after SYNCHRONIZE
    // CACHE). A probe that misses starts readahead, and pages still being read in cannot be
    // dropped yet: the drop is repeated until none is left.
    let drop_cache = || {
        for _ in 0..500 {
            rustix::fs::fadvise(
                std::fs::File::open(&path).unwrap(),
                0,
                None,
                rustix::fs::Advice::DontNeed,
            )
            .unwrap();
            if cached_pages(&path) == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("pages of {} stay in the page cache", path.display());
    };
    // The readahead a missing probe starts can complete before the kernel looks at the page
    // again (a fast disk, or the host's cache under a VM), and then the probe reads the byte:
    // correct, since the data came without waiting, but not a miss. So a miss is asserted as
    // "reported in one of five tries, each after a complete drop"; a probe that never
    // misses fails every try.
    let misses = |probe: &dyn Fn() -> bool| {
        (0..5).any(|_| {
            drop_cache();
            !probe()
        })
    };
    assert!(dev.cached(256 * 4096, 64 * 4096));
    assert!(quick(&read10(256, 64)));
    assert!(
        misses(&|| quick(&read10(256, 64))),
        "a read that waits for the disk"
    );
    assert!(misses(&|| dev.cached(300 * 4096, 4096)));
    // Writes and reads out of range stay quick: neither waits for the disk.
    drop_cache();
    assert!(quick(&write10(256, 1, false)));
    assert!(quick(&read10(1020, 8)));
    // The read itself, on any thread, returns the bytes and fills the cache.
    assert!(good(&exec(&t, &n, 0, &read10(256, 64), &[])) == &data[..]);
    assert!(dev.cached(256 * 4096, 64 * 4096));
    assert!(quick(&read10(256, 64)));
    // The last block of a range is probed too: only block 256 in the cache (a whole-page
    // write puts it there), so a read of blocks 256 and 257 is not quick.
    assert!(misses(&|| {
        good(&exec(&t, &n, 0, &write10(256, 1, false), &data[..4096]));
        assert_eq!(cached_pages(&path), 1, "the written page alone");
        assert!(quick(&read10(256, 1)));
        quick(&read10(256, 2))
    }));
}

/// Pages of `path` in the page cache, from util-linux's fincore.
fn cached_pages(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--noheadings", "--output", "PAGES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn direct_io_lun_moves_exact_bytes_without_the_page_cache() {
    use scsi::BlockDevice;
    // On the build's disk rather than /tmp, which may be a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("direct.img");
    drop(FileDevice::create(&path, 512, 8192).unwrap());
    let dev = Arc::new(FileDevice::open_direct(&path, 512, false).unwrap());
    assert!(dev.is_direct());
    assert!(
        !dev.quick_io(),
        "direct I/O waits on storage: not for the receiving thread"
    );
    assert!(
        dev.file_span(0, 4096).is_none(),
        "sendfile would go through the page cache"
    );
    let t = Target::new(TARGET);
    t.map(
        HOST1,
        0,
        Arc::new(LogicalUnit::new(dev.clone(), identity(3))),
    );
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);

    // 1.5 MiB + 512 bytes crosses the 1 MiB piece of the aligned buffer; a FUA write goes
    // with RWF_DSYNC on the direct descriptor.
    let data: Vec<u8> = (0..3073 * 512u32).map(|i| (i % 247) as u8).collect();
    good(&exec(&t, &n, 0, &cdb16(0x8A, 0, 3, 3073), &data));
    good(&exec(&t, &n, 0, &cdb16(0x8A, 0x08, 4000, 1), &[0x77; 512]));
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[3 * 512..3076 * 512] == data[..]);
    assert_eq!(&bytes[4000 * 512..4001 * 512], &[0x77; 512][..]);
    assert!(bytes[..3 * 512].iter().all(|&b| b == 0));
    // The file read above went through the cache: empty it, then read through the LUN.
    rustix::fs::fadvise(
        std::fs::File::open(&path).unwrap(),
        0,
        None,
        rustix::fs::Advice::DontNeed,
    )
    .unwrap();
    assert_eq!(cached_pages(&path), 0);
    assert!(good(&exec(&t, &n, 0, &cdb16(0x88, 0, 3, 3073), &[])) == &data[..]);
    assert_eq!(
        cached_pages(&path),
        0,
        "direct reads must not fill the page cache"
    );

    // Unaligned memory on both sides of the device interface.
    let mut buf = vec![0u8; 4096 + 1];
    dev.read_at(3 * 512, &mut buf[1..]).unwrap();
    assert!(buf[1..] == data[..4096]);
    dev.write_at(512, &buf[1..1 + 1024], false).unwrap();
    let mut back = vec![0xEEu8; 3];
    dev.read_to_vec(512, 1024, &mut back).unwrap();
    assert_eq!(&back[..3], &[0xEE; 3]);
    assert!(back[3..] == data[..1024]);
    // Range errors as for buffered files, buffer untouched.
    assert_eq!(
        dev.read_to_vec(8191 * 512, 1024, &mut back),
        Err(scsi::DeviceError::OutOfRange)
    );
    assert_eq!(back.len(), 3 + 1024);
    let o = exec(&t, &n, 0, &cdb16(0x88, 0, 8191, 2), &[]);
    assert_eq!(sense_of(&o), (0x05, 0x21, 0x00));
    // UNMAP still punches the file.
    let mut p = vec![0, 22, 0, 16, 0, 0, 0, 0];
    p.extend_from_slice(&3u64.to_be_bytes());
    p.extend_from_slice(&8u32.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    good(&exec(&t, &n, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p));
    assert!(
        good(&exec(&t, &n, 0, &read10(3, 8), &[]))
            .iter()
            .all(|&b| b == 0)
    );
    assert!(good(&exec(&t, &n, 0, &read10(11, 1), &[])) == &data[8 * 512..9 * 512]);
}

#[test]
fn direct_io_reads_a_sequential_stream_ahead_without_the_page_cache() {
    use scsi::BlockDevice;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("direct.img");
    let bytes: Vec<u8> = (0..16u32 << 20).map(|i| (i / 512 % 253) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let dev = Arc::new(FileDevice::open_direct(&path, 512, false).unwrap());
    let t = Target::new(TARGET);
    t.map(
        HOST1,
        0,
        Arc::new(LogicalUnit::new(dev.clone(), identity(4))),
    );
    let n = nexus(HOST1, 1, 1);
    clear_ua(&t, &n, 0);
    let quick = |cdb: &[u8]| is_quick(&t, &n, 0, cdb);
    let (chunk, _) = scsi::READAHEAD_REQUEST;
    let ahead_lba = (chunk / 512) as u32;
    // Nothing is read ahead of single reads.
    let mut buf = vec![0u8; 65536];
    dev.read_at(5 << 20, &mut buf).unwrap();
    assert!(!dev.cached(6 << 20, 4096));
    assert!(!quick(&read10(ahead_lba, 128)), "a direct read waits");
    // Three reads in a row make a stream: the chunks in front of it are read.
    for i in 0..3u64 {
        dev.read_at(i * 65536, &mut buf).unwrap();
        assert!(buf[..] == bytes[i as usize * 65536..][..65536]);
    }
    let ahead = chunk as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dev.cached(ahead, 65536) {
        assert!(std::time::Instant::now() < deadline, "nothing read ahead");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // Blocks read ahead are in memory: the READ may run on the receiving thread. Writes
    // still wait for the storage.
    assert!(quick(&read10(ahead_lba, 128)));
    assert!(!quick(&write10(ahead_lba, 1, false)));
    // A write there drops the chunk; the next read has the new bytes.
    dev.write_at(ahead + 4096, &[0x5A; 1024], false).unwrap();
    assert!(!dev.cached(ahead, 65536));
    assert!(!quick(&read10(ahead_lba, 128)));
    let mut got = vec![0u8; 8192];
    dev.read_at(ahead + 4096 - 512, &mut got).unwrap();
    assert!(got[..512] == bytes[(ahead + 3584) as usize..][..512]);
    assert!(got[512..1536].iter().all(|&b| b == 0x5A));
    // The rest of the stream, read ahead or not, is the file.
    let mut all = vec![0u8; 65536];
    for i in 3..256u64 {
        let at = i * 65536;
        dev.read_at(at, &mut all).unwrap();
        if at != ahead {
            assert!(all[..] == bytes[at as usize..][..65536], "bytes at {at}");
        }
    }
    assert_eq!(
        cached_pages(&path),
        0,
        "readahead of a direct LUN bypasses the page cache"
    );
}

#[test]
fn direct_io_refuses_what_it_cannot_honour() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("odd.img");
    drop(FileDevice::create(&path, 512, 16).unwrap());
    let e = FileDevice::open_direct(&path, 1024, false).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let e = FileDevice::open_direct(&dir.path().join("missing.img"), 512, false).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
