//! A connection's thread, and everything it owns, ends promptly once its peer is gone,
//! whatever the session was doing: over real loopback sockets, each case closes the client
//! in one state and watches the server's count of live connections return to zero.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{BS, MemHandler};
use iscsi::pdu::{self, Bhs, Digests, Pdu, op};
use iscsi::{AuthPolicy, TargetConfig, TargetServer};

const TARGET: &str = "iqn.2026-01.org.shadowlun:teardown";
const HOST: &str = "iqn.1991-05.com.microsoft:host-a";
/// How long a closed connection's thread may take to end.
const PROMPT: Duration = Duration::from_secs(1);
/// How long the slow commands of these tests take.
const SLOW: Duration = Duration::from_secs(3);

fn start(cfg: TargetConfig) -> (Arc<MemHandler>, TargetServer, SocketAddr) {
    let h = Arc::new(MemHandler::new(4096));
    h.map(HOST, 0);
    let server = TargetServer::spawn(TargetConfig {
        portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        logout_grace: Duration::from_millis(500),
        ..cfg
    })
    .unwrap();
    server
        .add_target(TARGET, None, h.clone(), AuthPolicy::None)
        .unwrap();
    let addr = server.local_addrs()[0];
    (h, server, addr)
}

fn login(addr: SocketAddr) -> TcpStream {
    let c = common::raw_login(addr, TARGET, HOST);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// A SCSI command PDU: READ (16) or WRITE (16) of `blocks` blocks at LBA 0, no data.
fn rw16(write: bool, itt: u32, cmd_sn: u32, blocks: u32) -> Vec<u8> {
    let mut b = Bhs::new(op::SCSI_CMD);
    b.set_flags(if write {
        0x80 | 0x20 | 1
    } else {
        0x80 | 0x40 | 1
    });
    b.set_itt(itt);
    b.set_u32(20, blocks * BS);
    b.set_u32(24, cmd_sn);
    let mut cdb = [0u8; 16];
    cdb[0] = if write { 0x8a } else { 0x88 };
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    b.0[32..48].copy_from_slice(&cdb);
    Pdu::new(b).encode(Digests::default())
}

/// Waits until the slow READ has started executing on the target.
fn wait_executing(h: &MemHandler, n: usize) {
    let t0 = Instant::now();
    while h.executed.load(Ordering::SeqCst) < n {
        assert!(t0.elapsed() < Duration::from_secs(5), "command never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for the server's live connection count to reach zero; fails past `limit`.
#[track_caller]
fn threads_end_within(server: &TargetServer, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while server.connection_count() > 0 {
        assert!(
            t0.elapsed() < limit,
            "{} connection thread(s) still alive {limit:?} after the peer closed",
            server.connection_count()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    t0.elapsed()
}

/// The nexus is released only after the session's last command has finished, and then
/// the session is gone from the server.
#[track_caller]
fn nexus_released_after_the_slow_command(h: &MemHandler, server: &TargetServer) {
    assert!(
        h.lost.lock().unwrap().is_empty(),
        "nexus released while its command still runs"
    );
    let t0 = Instant::now();
    while h.lost.lock().unwrap().is_empty() {
        assert!(
            t0.elapsed() < SLOW + Duration::from_secs(5),
            "nexus never released"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.lost.lock().unwrap().len(), 1);
    assert_eq!(server.session_count(), 0);
}

#[test]
fn a_client_that_closes_in_the_middle_of_a_pdu_leaves_no_thread() {
    let (_h, server, addr) = start(TargetConfig::default());
    // Inside the header.
    let mut c = login(addr);
    assert_eq!(server.connection_count(), 1);
    c.write_all(&rw16(false, 1, 10, 1)[..20]).unwrap();
    drop(c);
    threads_end_within(&server, PROMPT);
    // Inside a data segment the header announced.
    let mut c = login(addr);
    let mut b = Bhs::new(op::NOP_OUT);
    b.set_itt(2);
    b.set_u32(20, 0xffff_ffff);
    b.set_u32(24, 10);
    b.set_data_len(1000);
    c.write_all(&b.0).unwrap();
    c.write_all(&[0x5a; 100]).unwrap();
    drop(c);
    threads_end_within(&server, PROMPT);
    // Before the login completed.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&Bhs::new(op::LOGIN_REQ).0[..30]).unwrap();
    drop(c);
    threads_end_within(&server, PROMPT);
    server.shutdown();
}

#[test]
fn a_client_that_closes_while_the_target_waits_for_solicited_data_leaves_no_thread() {
    let (h, server, addr) = start(TargetConfig::default());
    let mut c = login(addr);
    c.write_all(&rw16(true, 1, 10, 128)).unwrap();
    let r2t = pdu::read_sync(&mut c, Digests::default(), 65536).unwrap();
    assert_eq!(r2t.bhs.opcode(), op::R2T, "the target solicits the data");
    drop(c);
    threads_end_within(&server, PROMPT);
    assert_eq!(h.executed.load(Ordering::SeqCst), 0, "the write never ran");
    assert_eq!(h.lost.lock().unwrap().len(), 1);
    server.shutdown();
}

#[test]
fn a_client_that_closes_during_task_management_leaves_no_thread() {
    let (h, server, addr) = start(TargetConfig::default());
    *h.delay_reads.lock().unwrap() = Some(SLOW);
    let mut c = login(addr);
    c.write_all(&rw16(false, 1, 10, 8)).unwrap();
    wait_executing(&h, 1);
    // ABORT TASK for the slow READ: the target answers once the READ has finished.
    let mut b = Bhs::new(op::TMF_REQ);
    b.set_immediate(true);
    b.set_flags(0x80 | 1);
    b.set_itt(2);
    b.set_u32(20, 1);
    b.set_u32(24, 11);
    b.set_u32(32, 10);
    c.write_all(&Pdu::new(b).encode(Digests::default()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.shutdown(Shutdown::Both).unwrap();
    drop(c);
    threads_end_within(&server, PROMPT);
    nexus_released_after_the_slow_command(&h, &server);
    server.shutdown();
}

#[test]
fn a_client_that_closes_during_logout_leaves_no_thread() {
    let (h, server, addr) = start(TargetConfig::default());
    *h.delay_reads.lock().unwrap() = Some(SLOW);
    let mut c = login(addr);
    c.write_all(&rw16(false, 1, 10, 8)).unwrap();
    wait_executing(&h, 1);
    // The logout waits for the READ before it is answered.
    let mut b = Bhs::new(op::LOGOUT_REQ);
    b.set_immediate(true);
    b.set_flags(0x80);
    b.set_itt(2);
    b.set_u32(24, 11);
    c.write_all(&Pdu::new(b).encode(Digests::default()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    threads_end_within(&server, PROMPT);
    nexus_released_after_the_slow_command(&h, &server);
    server.shutdown();
}

#[test]
fn a_client_that_closes_while_a_slow_command_runs_leaves_no_thread() {
    let (h, server, addr) = start(TargetConfig::default());
    *h.delay_reads.lock().unwrap() = Some(SLOW);
    let mut c = login(addr);
    c.write_all(&rw16(false, 1, 10, 8)).unwrap();
    wait_executing(&h, 1);
    drop(c);
    let took = threads_end_within(&server, PROMPT);
    assert!(took < SLOW / 2, "{took:?}");
    nexus_released_after_the_slow_command(&h, &server);
    // The server goes on serving.
    *h.delay_reads.lock().unwrap() = None;
    let mut c = login(addr);
    c.write_all(&rw16(false, 1, 10, 1)).unwrap();
    let r = pdu::read_sync(&mut c, Digests::default(), 65536).unwrap();
    assert_eq!((r.bhs.opcode(), r.bhs.itt()), (op::DATA_IN, 1));
    drop(c);
    threads_end_within(&server, PROMPT);
    server.shutdown();
}

#[test]
fn a_client_that_vanishes_without_closing_is_dropped_by_the_keep_alive() {
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(300);
    let (h, server, addr) = start(TargetConfig {
        nop_interval: Some(interval),
        nop_timeout: timeout,
        ..TargetConfig::default()
    });
    // Silent, with nothing queued: the ping goes unanswered.
    let idle = login(addr);
    // Silent with 128 MiB of READ data queued that it never takes: the target's writer is
    // stuck on a full socket when the ping times out.
    h.map("iqn.1991-05.com.microsoft:host-b", 0);
    let mut stuck = common::raw_login(addr, TARGET, "iqn.1991-05.com.microsoft:host-b");
    for i in 0..64 {
        stuck
            .write_all(&rw16(false, 100 + i, 10 + i, 4096))
            .unwrap();
    }
    assert_eq!(server.connection_count(), 2);
    // Neither socket is closed: both stay open, unread, until the end of the test.
    let limit = interval + timeout + Duration::from_secs(1) + PROMPT;
    threads_end_within(&server, limit);
    assert_eq!(server.session_count(), 0);
    assert_eq!(h.lost.lock().unwrap().len(), 2);
    drop((idle, stuck));
    server.shutdown();
}
