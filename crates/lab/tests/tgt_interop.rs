//! shadowlun's initiator against tgt (Debian's userspace target). Needs `tgtd` and
//! `tgtadm`, so it is ignored in the plain test run and run by `scripts/ci.d/30-iscsi.sh`:
//! `cargo test -p lab --test tgt_interop -- --ignored`.

use iscsi::initiator::{InitiatorConfig, Session, discover};
use lab::tgt::Tgt;

#[test]
#[ignore = "needs tgtd; run by scripts/ci.d/30-iscsi.sh"]
fn initiator_logs_in_to_tgt_and_reads_back_what_it_wrote() {
    let dir = std::env::temp_dir().join(format!("iscsi-tgt-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("lun.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let tgt = Tgt::start(&img, "iqn.2026-01.org.shadowlun:tgt-interop", "TGTSERIAL7").unwrap();
    let cfg = InitiatorConfig::new("iqn.2026-01.org.shadowlun:interop-host");

    let found = discover(tgt.addr, &cfg).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, tgt.target);

    let mut s = Session::login(tgt.addr, &tgt.target, &cfg).unwrap();
    // tgt has its controller at LUN 0, the disk at LUN 1 and the same file again, opened
    // with O_DIRECT, at LUN 2 (the benchmark's direct I/O comparison).
    let luns = s.report_luns().unwrap();
    assert_eq!(luns, vec![0, 1, 2]);
    let inq = s.inquiry(1, None).unwrap();
    assert_eq!(&inq[8..16], b"TGTBENCH");
    let serial = s.inquiry(1, Some(0x80)).unwrap();
    // tgt pads the serial number with leading spaces.
    assert_eq!(serial[1], 0x80);
    assert_eq!(
        serial[4..4 + serial[3] as usize].trim_ascii(),
        b"TGTSERIAL7"
    );
    let cap = s.read_capacity16(1).unwrap();
    assert_eq!((cap.blocks, cap.block_size), (64 << 11, 512));

    // 1 MiB write: immediate data, unsolicited Data-Out and R2Ts as tgt negotiates them.
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    s.write16(1, 2048, &data, 512, true).unwrap();
    s.synchronize_cache(1).unwrap();
    assert!(s.read16(1, 2048, 2048, 512).unwrap() == data);
    s.logout().unwrap();

    // What the initiator wrote is in the file.
    let on_disk = std::fs::read(&img).unwrap();
    assert!(on_disk[2048 * 512..2048 * 512 + data.len()] == data[..]);
    drop(tgt);
    let _ = std::fs::remove_dir_all(&dir);
}
