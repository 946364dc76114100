//! Bytes from a peer on a live connection: a real `TargetServer` on loopback serving the
//! SCSI device model (one memory LUN) gets the input either from the first byte of the
//! connection (login phase) or after a valid login (full feature phase), then end of
//! input. The server must never panic (any thread's panic aborts the run) and must keep
//! serving: after every input a new connection still logs in and its READ is answered.
//! Once every connection of the input is closed, the server's count of live connections
//! returns to zero within a bounded time: a connection's thread, and everything it owns,
//! never outlives its peer.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use iscsi::pdu::{self, Bhs, Digests, Pdu, op};
use iscsi::{AuthPolicy, TargetConfig, TargetServer};
use libfuzzer_sys::fuzz_target;
use scsi::{LogicalUnit, LuIdentity, MemDevice};

const TARGET: &str = "iqn.2026-01.org.shadowlun:fuzz";
const INITIATOR: &str = "iqn.2026-01.org.shadowlun:fuzzer";

/// How long a closed connection's thread may take to end (teardown under AddressSanitizer
/// included).
const TEARDOWN: Duration = Duration::from_secs(2);

fn server() -> &'static (TargetServer, SocketAddr) {
    static SERVER: OnceLock<(TargetServer, SocketAddr)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let t = Arc::new(scsi::Target::new(TARGET));
        let identity = LuIdentity {
            vendor: "SHADOWLN".into(),
            product: "fuzz".into(),
            revision: "0001".into(),
            serial: "FUZZ0001".into(),
            designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xf022)],
        };
        let dev = Arc::new(MemDevice::new(512, 2048));
        t.map(INITIATOR, 0, Arc::new(LogicalUnit::new(dev, identity)));
        let server = TargetServer::spawn(TargetConfig {
            portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..TargetConfig::default()
        })
        .expect("target starts");
        server
            .add_target(TARGET, None, t, AuthPolicy::None)
            .expect("target added");
        let addr = server.local_addrs()[0];
        (server, addr)
    })
}

/// Connects and logs in straight to the full feature phase; None if the server refused.
fn login(addr: SocketAddr) -> Option<TcpStream> {
    static ISID: AtomicU32 = AtomicU32::new(0);
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.set_nodelay(true).ok()?;
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.set_immediate(true);
    b.set_flags(0x87); // Transit, CSG 1 (operational), NSG 3 (full feature)
    b.0[8] = 0x40; // ISID type "random", a new one per connection (no reinstatement)
    b.0[10..14].copy_from_slice(&ISID.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    b.set_itt(1);
    b.set_u32(24, 1); // CmdSN
    let keys = format!("InitiatorName={INITIATOR}\0TargetName={TARGET}\0SessionType=Normal\0");
    c.write_all(&Pdu::with_data(b, keys.into_bytes()).encode(Digests::default()))
        .ok()?;
    let r = pdu::read_sync(&mut c, Digests::default(), 1 << 16).ok()?;
    (r.bhs.opcode() == op::LOGIN_RESP && r.bhs.0[36] == 0).then_some(c)
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let (server, addr) = server();
    let addr = *addr;
    let mut conn = if mode & 1 == 0 {
        login(addr).expect("login before the input")
    } else {
        let c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.set_nodelay(true).expect("nodelay");
        c
    };
    // The server may close first (reject, protocol error): later writes may fail.
    let _ = conn.write_all(bytes);
    let _ = conn.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    drop(conn);

    // Still serving: a fresh session's READ(10) of LUN 0 is answered (data, or a status
    // such as a unit attention or a reservation conflict the input may have caused).
    let mut c = login(addr).expect("login after the input");
    let mut b = Bhs::new(op::SCSI_CMD);
    b.set_flags(0x80 | 0x40 | 0x01); // Final, Read, SIMPLE
    b.set_itt(2);
    b.set_u32(20, 512);
    b.set_u32(24, 1);
    b.0[32..42].copy_from_slice(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    c.write_all(&Pdu::new(b).encode(Digests::default()))
        .expect("send READ");
    let r = pdu::read_sync(&mut c, Digests::default(), 1 << 16).expect("READ answered");
    assert!(
        matches!(r.bhs.opcode(), op::DATA_IN | op::SCSI_RESP) && r.bhs.itt() == 2,
        "READ answered with {r:?}"
    );
    drop(c);

    // Every connection of this input is closed: their threads end.
    let start = Instant::now();
    while server.connection_count() > 0 {
        assert!(
            start.elapsed() < TEARDOWN,
            "{} connection thread(s) still alive {TEARDOWN:?} after their peers closed",
            server.connection_count()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
});
