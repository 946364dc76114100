//! The target and the initiator against each other over real loopback sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{BS, MemHandler};
use iscsi::initiator::{
    ChapCredentials, DataDir, InitiatorConfig, InitiatorError, Session, discover,
};
use iscsi::pdu::{self, Bhs, Digests, Pdu, op};
use iscsi::{AuthPolicy, TargetConfig, TargetServer};

const TARGET: &str = "iqn.2026-01.org.shadowlun:test";
const HOST_A: &str = "iqn.1991-05.com.microsoft:host-a";
const HOST_B: &str = "iqn.1991-05.com.microsoft:host-b";

fn config() -> TargetConfig {
    TargetConfig {
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        logout_grace: Duration::from_millis(500),
        ..TargetConfig::default()
    }
}

fn start(handler: Arc<MemHandler>, auth: AuthPolicy) -> (TargetServer, SocketAddr) {
    let server = TargetServer::spawn(config()).unwrap();
    server
        .add_target(TARGET, Some("test"), handler, auth)
        .unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

fn handler_with_lun0() -> Arc<MemHandler> {
    let h = Arc::new(MemHandler::new(4096));
    h.map(HOST_A, 0);
    h
}

/// A login refused with 0x0201 (authentication failure).
#[track_caller]
fn expect_auth_failure(r: Result<Session, InitiatorError>) {
    match r {
        Err(InitiatorError::LoginRefused {
            class: 2,
            detail: 1,
        }) => {}
        other => panic!("expected auth failure, got {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn login_without_auth_then_write_and_read_back_across_r2t_bursts() {
    let h = handler_with_lun0();
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    let inq = s.inquiry(0, None).unwrap();
    assert_eq!(&inq[8..16], b"SHADOWLN");
    assert_eq!(s.report_luns().unwrap(), vec![0]);
    let cap = s.read_capacity16(0).unwrap();
    assert_eq!((cap.blocks, cap.block_size), (4096, BS));
    // 1 MiB: more than FirstBurstLength (256 KiB) so the rest goes through R2Ts.
    let data = pattern(1 << 20, 7);
    s.write16(0, 8, &data, BS, false).unwrap();
    s.synchronize_cache(0).unwrap();
    let back = s
        .read16(0, 8, (data.len() / BS as usize) as u32, BS)
        .unwrap();
    assert!(back == data, "read back differs");
    assert_eq!(&h.data.lock().unwrap()[8 * 512..8 * 512 + 16], &data[..16]);
    s.logout().unwrap();
    server.shutdown();
}

#[test]
fn crc32c_digests_are_negotiated_and_carry_data_intact() {
    let h = handler_with_lun0();
    let (server, addr) = start(h, AuthPolicy::None);
    let mut cfg = InitiatorConfig::new(HOST_A);
    cfg.header_digest = true;
    cfg.data_digest = true;
    let mut s = Session::login(addr, TARGET, &cfg).unwrap();
    let data = pattern(300 * 1024 + 512, 3);
    s.write16(0, 0, &data, BS, true).unwrap();
    assert!(s.read16(0, 0, (data.len() / 512) as u32, BS).unwrap() == data);
    server.shutdown();
}

/// A file LUN behind the device model, its file holding `blocks` blocks of a pattern.
fn file_lun(dir: &std::path::Path, blocks: u64) -> (TargetServer, SocketAddr, Vec<u8>) {
    file_lun_with(dir, blocks, false)
}

/// As [`file_lun`]; with `direct`, the LUN reads and writes its file with `O_DIRECT` and
/// the file's pages are dropped from the page cache first.
fn file_lun_with(
    dir: &std::path::Path,
    blocks: u64,
    direct: bool,
) -> (TargetServer, SocketAddr, Vec<u8>) {
    let path = dir.join("lun0.img");
    let bytes = pattern((blocks * 512) as usize, 11);
    std::fs::write(&path, &bytes).unwrap();
    let dev = if direct {
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        scsi::FileDevice::open_direct(&path, 512, false).unwrap()
    } else {
        scsi::FileDevice::open(&path, 512, false).unwrap()
    };
    let (server, addr) = serve_device(Arc::new(dev));
    (server, addr, bytes)
}

/// A target serving `dev` as LUN 0 to HOST_A.
fn serve_device(dev: Arc<dyn scsi::BlockDevice>) -> (TargetServer, SocketAddr) {
    let t = Arc::new(scsi::Target::new(TARGET));
    let identity = scsi::LuIdentity {
        vendor: "SHADOWLN".into(),
        product: "file".into(),
        revision: "0001".into(),
        serial: "FILE0001".into(),
        designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xf11e)],
    };
    t.map(HOST_A, 0, Arc::new(scsi::LogicalUnit::new(dev, identity)));
    let server = TargetServer::spawn(config()).unwrap();
    server
        .add_target(TARGET, None, t, AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

#[test]
fn large_reads_of_a_file_lun_carry_the_file_bytes_with_and_without_digests() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, bytes) = file_lun(dir.path(), 8192);
    reads_and_writes_match_the_file(addr, bytes);
    server.shutdown();
}

#[test]
fn a_direct_io_file_lun_carries_the_file_bytes_and_leaves_the_page_cache_empty() {
    // On the build's disk: /tmp may be a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (server, addr, bytes) = file_lun_with(dir.path(), 8192, true);
    let path = dir.path().join("lun0.img");
    assert_eq!(cached_pages(&path), 0);
    let bytes = reads_and_writes_match_the_file(addr, bytes);
    assert_eq!(
        cached_pages(&path),
        0,
        "direct I/O went through the page cache"
    );
    server.shutdown();
    assert!(std::fs::read(&path).unwrap() == bytes);
}

#[test]
fn a_direct_io_lun_reads_streams_ahead_and_every_write_shows_in_later_reads() {
    // On the build's disk: /tmp may be a tmpfs, which has no direct I/O.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    const BLOCKS: u64 = 32768; // 16 MiB: the stream runs well into its readahead window
    let (server, addr, mut bytes) = file_lun_with(dir.path(), BLOCKS, true);
    let path = dir.path().join("lun0.img");
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    let mut lba = 0u64;
    for round in 0..96u64 {
        // Eight 64 KiB reads in flight, in order: a sequential stream at QD8.
        let mut want = std::collections::HashMap::new();
        for _ in 0..8 {
            let cdb = read16_cdb(lba, 128);
            let itt = s.submit(0, &cdb, DataDir::Read(128 * BS)).unwrap();
            want.insert(itt, lba as usize * 512);
            lba = (lba + 128) % BLOCKS;
        }
        // Until every answer is taken: one wait may read several, so in_flight() can reach
        // zero while answers are still to be handed out.
        while !want.is_empty() {
            let (itt, r) = s.wait_any().unwrap();
            let r = r.unwrap();
            let at = want.remove(&itt).unwrap();
            assert_eq!(r.status, 0, "round {round}");
            assert!(
                r.data == bytes[at..at + 128 * 512],
                "round {round}: stale or wrong bytes at {at}"
            );
        }
        // Change blocks just ahead of the stream, where chunks are being read or already
        // are: a plain write, a FUA write, or WRITE SAME with UNMAP (a punched hole).
        let ahead = (lba + 2048 + round * 8 % 1024) % (BLOCKS - 8);
        let at = ahead as usize * 512;
        match round % 3 {
            0 | 1 => {
                let data = pattern(8 * 512, round as u8 + 100);
                s.write16(0, ahead, &data, BS, round % 3 == 1).unwrap();
                bytes[at..at + data.len()].copy_from_slice(&data);
            }
            _ => {
                let mut cdb = [0u8; 16];
                cdb[0] = 0x93;
                cdb[1] = 0x08;
                cdb[2..10].copy_from_slice(&ahead.to_be_bytes());
                cdb[10..14].copy_from_slice(&8u32.to_be_bytes());
                let r = s.command(0, &cdb, DataDir::Write(vec![0; 512])).unwrap();
                assert_eq!(r.status, 0, "WRITE SAME with UNMAP");
                bytes[at..at + 8 * 512].fill(0);
            }
        }
    }
    assert_eq!(
        cached_pages(&path),
        0,
        "direct I/O readahead went through the page cache"
    );
    s.logout().unwrap();
    server.shutdown();
    assert!(std::fs::read(&path).unwrap() == bytes);
}

fn read16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

#[test]
fn queued_reads_of_a_file_lun_outside_the_page_cache_return_the_file_bytes() {
    // On the build's disk: /tmp may be a tmpfs, whose pages cannot be dropped.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (server, addr, bytes) = file_lun_with(dir.path(), 8192, false);
    let path = dir.path().join("lun0.img");
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    for round in 0..2 {
        // Out of the cache (file_lun_with wrote the file; sync it first): the reads miss,
        // go to the pool and are read into memory there.
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert_eq!(cached_pages(&path), 0);
        // Sixteen 64 KiB reads in flight at once, from the end of the file backwards, with
        // small ones and a TEST UNIT READY among them.
        let mut want = std::collections::HashMap::new();
        for i in 0..16u64 {
            let (lba, blocks): (u64, u32) = if i % 4 == 3 {
                (8192 - 1 - i * 100, 1)
            } else {
                (8192 - (i + 1) * 128, 128)
            };
            let mut cdb = [0u8; 16];
            cdb[0] = 0x88;
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
            let itt = s.submit(0, &cdb, DataDir::Read(blocks * BS)).unwrap();
            want.insert(itt, (lba as usize * 512, blocks as usize * 512));
            if i == 8 {
                let tur = s.submit(0, &[0; 6], DataDir::None).unwrap();
                want.insert(tur, (0, 0));
            }
        }
        // Until every answer is taken: one wait may read several, so in_flight() can reach
        // zero while answers are still to be handed out.
        while !want.is_empty() {
            let (itt, r) = s.wait_any().unwrap();
            let r = r.unwrap();
            let (at, len) = want.remove(&itt).unwrap();
            assert_eq!(r.status, 0, "round {round}");
            assert!(
                r.data == bytes[at..at + len],
                "round {round}: bytes at {at}"
            );
        }
        assert!(want.is_empty());
        assert!(
            cached_pages(&path) > 0,
            "buffered reads fill the page cache"
        );
    }
    s.logout().unwrap();
    server.shutdown();
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

/// Reads (several Data-In PDUs per command, one segment length that needs padding, commands
/// that end at the last block) and writes through the target at `addr` of `bytes` (8192
/// blocks), with and without digests; returns the file's expected content.
fn reads_and_writes_match_the_file(addr: SocketAddr, mut bytes: Vec<u8>) -> Vec<u8> {
    // Several Data-In PDUs per command (one segment length that needs padding), and
    // commands that end at the last block.
    for (header, data, segment) in [
        (false, false, 8192),
        (true, false, 8192),
        (true, true, 8192),
        (false, false, 1001),
    ] {
        let mut cfg = InitiatorConfig::new(HOST_A);
        cfg.header_digest = header;
        cfg.data_digest = data;
        cfg.max_recv_data_segment = segment;
        let mut s = Session::login(addr, TARGET, &cfg).unwrap();
        s.test_unit_ready(0).unwrap();
        for (lba, blocks) in [(0u64, 2048u32), (8192 - 128, 128), (77, 64), (5, 1)] {
            let got = s.read16(0, lba, blocks, BS).unwrap();
            let at = lba as usize * 512;
            assert!(
                got == bytes[at..at + blocks as usize * 512],
                "lba {lba} blocks {blocks} digests {header}/{data} segment {segment}"
            );
        }
        // Written through the target, then read back from the file.
        let new = pattern(64 * 1024, 99 + u8::from(data));
        s.write16(0, 300, &new, BS, false).unwrap();
        bytes[300 * 512..300 * 512 + new.len()].copy_from_slice(&new);
        assert!(s.read16(0, 296, 136, BS).unwrap() == bytes[296 * 512..432 * 512]);
        s.logout().unwrap();
    }
    bytes
}

/// A file LUN that takes every read for cached, as if the file were cut short between the
/// residency probe and the send: the only way to meet a short file at sendfile time
/// without a race.
struct CachedAlways(scsi::FileDevice);

impl scsi::BlockDevice for CachedAlways {
    fn block_size(&self) -> u32 {
        self.0.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.0.num_blocks()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), scsi::DeviceError> {
        self.0.read_at(offset, buf)
    }
    fn read_to_vec(
        &self,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), scsi::DeviceError> {
        self.0.read_to_vec(offset, len, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), scsi::DeviceError> {
        self.0.write_at(offset, data, fua)
    }
    fn flush(&self) -> Result<(), scsi::DeviceError> {
        self.0.flush()
    }
    fn quick_io(&self) -> bool {
        true
    }
    fn cached(&self, _: u64, _: usize) -> bool {
        true
    }
    fn file_span(&self, offset: u64, len: usize) -> Option<scsi::FileSpan> {
        self.0.file_span(offset, len)
    }
}

#[test]
fn a_file_cut_short_behind_the_target_gets_an_error_or_ends_the_connection_never_short_data() {
    // On the build's disk: on a tmpfs without RWF_NOWAIT every read counts as cached.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (server, addr, bytes) = file_lun(dir.path(), 4096);
    let path = dir.path().join("lun0.img");
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    assert!(s.read16(0, 4000, 96, BS).unwrap() == bytes[4000 * 512..]);
    let cut = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4000 * 512)
            .unwrap()
    };
    cut();
    // The residency probe finds the range's end missing; the read runs on the pool and
    // fails: HARDWARE ERROR, INTERNAL TARGET FAILURE, no data.
    match s.read16(0, 3968, 128, BS) {
        Err(InitiatorError::Check(sense)) => {
            assert_eq!((sense.key, sense.asc, sense.ascq), (0x04, 0x44, 0x00))
        }
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
    assert!(s.read16(0, 0, 128, BS).unwrap() == bytes[..128 * 512]);
    s.logout().unwrap();
    server.shutdown();

    // Cut after the READ passed every check: its data is no longer in the file. The
    // target cannot take back the GOOD status it already committed to, so the connection
    // ends and the initiator gets no data at all.
    std::fs::write(&path, &bytes).unwrap();
    let (server, addr) = serve_device(Arc::new(CachedAlways(
        scsi::FileDevice::open(&path, 512, false).unwrap(),
    )));
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    assert!(s.read16(0, 4000, 96, BS).unwrap() == bytes[4000 * 512..]);
    cut();
    match s.read16(0, 3968, 128, BS) {
        Err(InitiatorError::ConnectionLost | InitiatorError::Pdu(_)) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    // Earlier blocks still read (a new session).
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    assert!(s.read16(0, 0, 128, BS).unwrap() == bytes[..128 * 512]);
    server.shutdown();
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once_and_the_others_keep_working() {
    let server = TargetServer::spawn(TargetConfig {
        max_connections: 2,
        ..config()
    })
    .unwrap();
    let h = handler_with_lun0();
    h.map(HOST_B, 0);
    server
        .add_target(TARGET, None, h, AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    let idle = TcpStream::connect(addr).unwrap();
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    // A third connection: accepted by the kernel, closed by the target without a byte.
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(third.read(&mut b).unwrap(), 0);
    s.test_unit_ready(0).unwrap();
    // Once one ends, a new connection is served again.
    drop(idle);
    let start = std::time::Instant::now();
    let mut again = loop {
        match Session::login(addr, TARGET, &InitiatorConfig::new(HOST_B)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("no login after a connection ended: {e}"),
        }
    };
    again.test_unit_ready(0).unwrap();
    s.logout().unwrap();
    server.shutdown();
}

#[test]
fn discovery_lists_only_targets_the_initiator_may_log_in_to() {
    let h = handler_with_lun0();
    let (server, addr) = start(h, AuthPolicy::None);
    let other = Arc::new(MemHandler::new(16));
    other.map(HOST_B, 0);
    server
        .add_target(
            "iqn.2026-01.org.shadowlun:other",
            None,
            other,
            AuthPolicy::None,
        )
        .unwrap();
    let seen = discover(addr, &InitiatorConfig::new(HOST_A)).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].name, TARGET);
    assert_eq!(
        seen[0].addresses,
        vec![format!("127.0.0.1:{},1", addr.port())]
    );
    let seen_b = discover(addr, &InitiatorConfig::new(HOST_B)).unwrap();
    assert_eq!(
        seen_b.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["iqn.2026-01.org.shadowlun:other"]
    );
    server.shutdown();
}

#[test]
fn initiator_without_mapped_lun_is_refused_at_login_unless_allowed() {
    let h = handler_with_lun0();
    let (server, addr) = start(h, AuthPolicy::None);
    match Session::login(addr, TARGET, &InitiatorConfig::new(HOST_B)) {
        Err(InitiatorError::LoginRefused {
            class: 2,
            detail: 2,
        }) => {}
        other => panic!("expected authorization failure, got {other:?}"),
    }
    match Session::login(
        addr,
        "iqn.2026-01.org.shadowlun:nope",
        &InitiatorConfig::new(HOST_A),
    ) {
        Err(InitiatorError::LoginRefused {
            class: 2,
            detail: 3,
        }) => {}
        other => panic!("expected target not found, got {other:?}"),
    }
    assert!(server.allow_initiator(TARGET, HOST_B));
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_B)).unwrap();
    assert_eq!(s.report_luns().unwrap(), Vec::<u64>::new());
    server.shutdown();
}

#[test]
fn an_initiator_with_a_secret_must_use_chap_even_where_the_target_does_not_require_it() {
    let h = handler_with_lun0();
    h.map(HOST_B, 0);
    let (server, addr) = start(h, AuthPolicy::None);
    server.set_chap(HOST_A, HOST_A, b"secret-of-a-12", None);
    // Knowing host A's name is not enough: without CHAP its login is refused (2/1).
    expect_auth_failure(Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)));
    let mut cfg = InitiatorConfig::new(HOST_A);
    cfg.chap = Some(ChapCredentials {
        user: HOST_A.into(),
        secret: b"secret-of-a-12".to_vec(),
        mutual: None,
    });
    let mut s = Session::login(addr, TARGET, &cfg).unwrap();
    s.test_unit_ready(0).unwrap();
    drop(s);
    // Host B has no secret and the target's policy is None: it logs in without CHAP.
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_B)).unwrap();
    s.test_unit_ready(0).unwrap();
    drop(s);
    // Once the secret is cleared, host A may log in without CHAP again.
    server.clear_chap(HOST_A);
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    drop(s);
    server.shutdown();
}

#[test]
fn chap_one_way_and_mutual_succeed_and_wrong_secrets_fail() {
    let h = handler_with_lun0();
    let (server, addr) = start(h, AuthPolicy::Chap);
    server.set_chap(
        HOST_A,
        "host-a",
        b"secret-of-a-12",
        Some(("array", b"secret-of-array")),
    );
    // No credentials at all: CHAP is required.
    expect_auth_failure(Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)));
    let mut cfg = InitiatorConfig::new(HOST_A);
    cfg.chap = Some(ChapCredentials {
        user: "host-a".into(),
        secret: b"secret-of-a-12".to_vec(),
        mutual: None,
    });
    let mut s = Session::login(addr, TARGET, &cfg).unwrap();
    s.test_unit_ready(0).unwrap();
    drop(s);
    cfg.chap = Some(ChapCredentials {
        user: "host-a".into(),
        secret: b"secret-of-a-12".to_vec(),
        mutual: Some(("array".into(), b"secret-of-array".to_vec())),
    });
    let mut s = Session::login(addr, TARGET, &cfg).unwrap();
    s.test_unit_ready(0).unwrap();
    drop(s);
    // The initiator detects a target that does not know the mutual secret.
    cfg.chap = Some(ChapCredentials {
        user: "host-a".into(),
        secret: b"secret-of-a-12".to_vec(),
        mutual: Some(("array".into(), b"another-secret".to_vec())),
    });
    assert!(matches!(
        Session::login(addr, TARGET, &cfg),
        Err(InitiatorError::Auth(_))
    ));
    cfg.chap = Some(ChapCredentials {
        user: "host-a".into(),
        secret: b"wrong-secret".to_vec(),
        mutual: None,
    });
    expect_auth_failure(Session::login(addr, TARGET, &cfg));
    server.shutdown();
}

#[test]
fn unit_attention_is_retried_and_reported_to_the_caller() {
    let h = handler_with_lun0();
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut cfg = InitiatorConfig::new(HOST_A);
    cfg.isid = 0x8000_0000_0042;
    let mut s = Session::login(addr, TARGET, &cfg).unwrap();
    h.raise_ua(scsi::Nexus {
        initiator_port: format!("{HOST_A},i,0x800000000042"),
        initiator: HOST_A.into(),
        target_port: 1,
        portal_group_tag: 1,
    });
    s.test_unit_ready(0).unwrap();
    let uas = s.take_unit_attentions();
    assert_eq!(uas.len(), 1);
    assert_eq!((uas[0].key, uas[0].asc, uas[0].ascq), (6, 0x3f, 0x0e));
    assert!(s.take_unit_attentions().is_empty());
    server.shutdown();
}

#[test]
fn thirty_two_queued_reads_all_complete_with_their_own_data() {
    let h = handler_with_lun0();
    for i in 0..64usize {
        h.data.lock().unwrap()[i * 512] = i as u8;
    }
    *h.delay_reads.lock().unwrap() = Some(Duration::from_millis(5));
    let (server, addr) = start(h, AuthPolicy::None);
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    let mut tags = Vec::new();
    for i in 0..32u64 {
        let cdb = iscsi::initiator::rw16(0x88, i, 1, false);
        tags.push((s.submit(0, &cdb, DataDir::Read(512)).unwrap(), i));
    }
    assert_eq!(s.in_flight(), 32);
    let start = std::time::Instant::now();
    for (tag, i) in tags {
        let r = s.wait(tag).unwrap();
        assert_eq!(r.status, 0);
        assert_eq!(r.data[0], i as u8);
    }
    // Executed concurrently: 32 × 5 ms serially would be 160 ms.
    assert!(
        start.elapsed() < Duration::from_millis(150),
        "took {:?}",
        start.elapsed()
    );
    server.shutdown();
}

#[test]
fn quick_commands_run_on_the_connection_thread_and_pass_a_slow_one() {
    let h = handler_with_lun0();
    h.quick_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    *h.delay_sync.lock().unwrap() = Some(Duration::from_millis(400));
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    let mut sync = [0u8; 16];
    sync[0] = 0x91;
    let sync_tag = s.submit(0, &sync, DataDir::None).unwrap();
    let mut writes = Vec::new();
    for i in 0..8u64 {
        let cdb = iscsi::initiator::rw16(0x8a, i, 1, false);
        writes.push(
            s.submit(0, &cdb, DataDir::Write(pattern(512, i as u8)))
                .unwrap(),
        );
    }
    // The eight writes are answered while SYNCHRONIZE CACHE still runs on the pool.
    for _ in 0..8 {
        let (tag, r) = s.wait_any().unwrap();
        assert_eq!(r.unwrap().status, 0);
        assert!(
            writes.contains(&tag),
            "tag {tag} answered before the writes"
        );
    }
    let (tag, r) = s.wait_any().unwrap();
    assert_eq!((tag, r.unwrap().status), (sync_tag, 0));
    for i in 0..8usize {
        assert_eq!(
            h.data.lock().unwrap()[i * 512..(i + 1) * 512],
            pattern(512, i as u8)[..]
        );
    }
    let threads = h.threads.lock().unwrap().clone();
    let on = |op: u8| {
        threads
            .iter()
            .filter(move |(o, _)| *o == op)
            .map(|(_, t)| t.clone())
    };
    assert_eq!(on(0x8a).count(), 8);
    assert!(
        on(0x8a).all(|t| t.starts_with("iscsi-conn-")),
        "{threads:?}"
    );
    assert!(
        on(0x91).all(|t| !t.starts_with("iscsi-conn-")),
        "{threads:?}"
    );
    server.shutdown();
}

#[test]
fn reinstating_a_session_with_the_same_isid_ends_the_old_nexus() {
    let h = handler_with_lun0();
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut cfg = InitiatorConfig::new(HOST_A);
    cfg.isid = 0x8000_0000_0007;
    let mut s1 = Session::login(addr, TARGET, &cfg).unwrap();
    s1.test_unit_ready(0).unwrap();
    let mut s2 = Session::login(addr, TARGET, &cfg).unwrap();
    s2.test_unit_ready(0).unwrap();
    assert_eq!(h.lost.lock().unwrap().len(), 1);
    assert_eq!(
        h.lost.lock().unwrap()[0].initiator_port,
        format!("{HOST_A},i,0x800000000007")
    );
    assert!(
        s1.test_unit_ready(0).is_err(),
        "old connection must be closed"
    );
    assert_eq!(server.session_count(), 1);
    s2.reconnect().unwrap();
    s2.test_unit_ready(0).unwrap();
    server.shutdown();
}

#[test]
fn shutdown_asks_the_initiator_to_log_out() {
    let h = handler_with_lun0();
    let (server, addr) = start(h, AuthPolicy::None);
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    let t = std::thread::spawn(move || server.shutdown());
    // The Async Message arrives before the connection closes; a ping pumps it in.
    let mut saw = false;
    for _ in 0..50 {
        if s.ping(b"x").is_err() {
            break;
        }
        if s.logout_requested() {
            saw = true;
            let _ = s.logout();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t.join().unwrap();
    assert!(saw, "no Async logout request seen");
}

#[test]
fn ping_is_echoed_and_target_keepalive_is_answered() {
    let h = handler_with_lun0();
    let mut cfg = config();
    cfg.nop_interval = Some(Duration::from_millis(200));
    cfg.nop_timeout = Duration::from_millis(600);
    let server = TargetServer::spawn(cfg).unwrap();
    server
        .add_target(TARGET, None, h, AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    assert_eq!(s.ping(b"hello").unwrap(), b"hello");
    // Idle longer than the keep-alive; the initiator answers pings while it waits.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(250));
        s.test_unit_ready(0).unwrap();
    }
    // A raw connection that never answers the ping is dropped.
    let mut raw = raw_login(addr, HOST_A);
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let nop = pdu::read_sync(&mut raw, Digests::default(), 65536).unwrap();
    assert_eq!(nop.bhs.opcode(), op::NOP_IN);
    assert_ne!(nop.bhs.u32_at(20), 0xffff_ffff);
    let mut buf = [0u8; 64];
    let closed = loop {
        match raw.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "unanswered keep-alive must close the connection");
    server.shutdown();
}

fn raw_login(addr: SocketAddr, initiator: &str) -> TcpStream {
    common::raw_login(addr, TARGET, initiator)
}

#[test]
fn unknown_opcode_gets_reject_and_oversized_segment_closes_the_connection() {
    let h = handler_with_lun0();
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut c = raw_login(addr, HOST_A);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Bhs::new(0x1c);
    b.set_immediate(true);
    b.set_itt(5);
    c.write_all(&Pdu::new(b.clone()).encode(Digests::default()))
        .unwrap();
    let r = pdu::read_sync(&mut c, Digests::default(), 65536).unwrap();
    assert_eq!(r.bhs.opcode(), op::REJECT);
    assert_eq!(r.bhs.0[2], pdu::reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(&r.data[..48], &b.0[..]);
    // Announce a 16 MiB data segment: more than MaxRecvDataSegmentLength.
    let mut b = Bhs::new(op::NOP_OUT);
    b.set_immediate(true);
    b.set_itt(6);
    b.set_data_len(0xff_ffff);
    c.write_all(&b.0).unwrap();
    let r = pdu::read_sync(&mut c, Digests::default(), 65536).unwrap();
    assert_eq!(r.bhs.opcode(), op::REJECT);
    assert_eq!(r.bhs.0[2], pdu::reject::PROTOCOL_ERROR);
    let mut buf = [0u8; 16];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "connection must close");
    // The server is still fine.
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    s.test_unit_ready(0).unwrap();
    server.shutdown();
}

#[test]
fn command_outside_the_cmdsn_window_is_ignored() {
    let h = handler_with_lun0();
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut c = raw_login(addr, HOST_A);
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tur = |itt: u32, cmd_sn: u32| {
        let mut b = Bhs::new(op::SCSI_CMD);
        b.set_flags(0x81);
        b.set_itt(itt);
        b.set_u32(24, cmd_sn);
        Pdu::new(b).encode(Digests::default())
    };
    c.write_all(&tur(1, 10 + 1000)).unwrap();
    let mut buf = [0u8; 48];
    assert!(
        c.read_exact(&mut buf).is_err(),
        "no answer to an out-of-window command"
    );
    assert_eq!(h.executed.load(std::sync::atomic::Ordering::SeqCst), 0);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&tur(2, 10)).unwrap();
    let r = pdu::read_sync(&mut c, Digests::default(), 65536).unwrap();
    assert_eq!(r.bhs.opcode(), op::SCSI_RESP);
    assert_eq!(r.bhs.itt(), 2);
    assert_eq!(r.bhs.u32_at(28), 11, "ExpCmdSN advanced");
    server.shutdown();
}

#[test]
fn lun_reset_is_forwarded_and_answered_complete() {
    let h = handler_with_lun0();
    let (server, addr) = start(h.clone(), AuthPolicy::None);
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    assert_eq!(s.task_management(0, 5, 0xffff_ffff).unwrap(), 0);
    assert_eq!(
        s.task_management(0, 1, 0x1234).unwrap(),
        1,
        "abort of an unknown task"
    );
    assert_eq!(
        s.task_management(0, 8, 0x1234).unwrap(),
        4,
        "task reassign needs ERL 2"
    );
    let tmfs = h.tmfs.lock().unwrap().clone();
    assert_eq!(tmfs[0], scsi::TaskManagement::LogicalUnitReset);
    server.shutdown();
}

#[test]
fn write_longer_than_the_maximum_transfer_is_refused_without_soliciting_data() {
    let h = handler_with_lun0();
    let mut cfg = config();
    cfg.max_transfer = 64 * 1024;
    let server = TargetServer::spawn(cfg).unwrap();
    server
        .add_target(TARGET, None, h.clone(), AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    let mut s = Session::login(addr, TARGET, &InitiatorConfig::new(HOST_A)).unwrap();
    match s.write16(0, 0, &pattern(1 << 20, 1), BS, false) {
        Err(InitiatorError::Check(sense)) => {
            assert_eq!((sense.key, sense.asc, sense.ascq), (5, 0x24, 0))
        }
        other => panic!("expected INVALID FIELD IN CDB, got {other:?}"),
    }
    assert_eq!(h.executed.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(h.data.lock().unwrap()[..4096].iter().all(|b| *b == 0));
    // The session is still usable.
    s.write16(0, 0, &pattern(64 * 1024, 2), BS, false).unwrap();
    server.shutdown();
}

#[test]
fn two_portals_and_several_initiators_work_at_the_same_time() {
    let h = handler_with_lun0();
    h.map(HOST_B, 0);
    let mut cfg = config();
    cfg.portals = vec![
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ];
    let server = TargetServer::spawn(cfg).unwrap();
    server
        .add_target(TARGET, None, h.clone(), AuthPolicy::None)
        .unwrap();
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    let seen = discover(addrs[1], &InitiatorConfig::new(HOST_A)).unwrap();
    // Without target ports listed, both portals are the one port: relative port 1, tag 1.
    assert_eq!(
        seen[0].addresses,
        vec![format!("{},1", addrs[0]), format!("{},1", addrs[1])],
        "SendTargets lists every portal"
    );
    assert_eq!(server.ports().len(), 1);
    assert_eq!(
        (server.ports()[0].relative_port, &server.ports()[0].portals),
        (1, &addrs)
    );
    let workers: Vec<_> = [
        (HOST_A, addrs[0], 0u64),
        (HOST_B, addrs[1], 1024),
        (HOST_A, addrs[1], 2048),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (host, addr, lba))| {
        std::thread::spawn(move || {
            let mut cfg = InitiatorConfig::new(host);
            cfg.isid = 0x8000_0000_0100 + i as u64;
            let mut s = Session::login(addr, TARGET, &cfg).unwrap();
            for round in 0..20u8 {
                let data = pattern(64 * 1024, round.wrapping_add(i as u8));
                s.write16(0, lba, &data, BS, false).unwrap();
                assert!(s.read16(0, lba, 128, BS).unwrap() == data);
            }
            s.logout().unwrap();
        })
    })
    .collect();
    for w in workers {
        w.join().unwrap();
    }
    // The nexus is released just after the Logout Response is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lost = loop {
        let n = h.lost.lock().unwrap().len();
        if n >= 3 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(lost, 3, "each logout ends its nexus");
    server.shutdown();
}
