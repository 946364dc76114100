//! Two gateways of one array on a lab Ceph cluster (`scripts/ceph-lab`), each a
//! `shadowlun array serve` process with `[gateway]`: the array's state lives in RADOS, one
//! gateway serves while the other stands by, serving the same LUNs as Standby paths (ALUA:
//! a target port group per gateway), and when the serving one is killed with SIGKILL the
//! standby takes office, fences it, and serves the same LUNs (same ids, same SCSI
//! identities, the same host mappings) with every acknowledged write intact: a host with
//! MPIO over both gateways writes on through the kill without an error, and the paths'
//! states flip with a unit attention. Persistent reservations made through either gateway
//! are one state, kept by the gateway in office and served by the next one. A gateway
//! stopped cleanly, or drained, hands over without waiting for its lease. Skipped, saying
//! why, only where Ceph is not installed.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Daemon;
use common::gateways::{LEASE_SECS, Starting, sigterm, start_gateway, start_standby, two_gateways};
use iscsi::initiator::{DataDir, InitiatorConfig, InitiatorError, Session};
use rbd::lab::Lab;
use vss_emulator::HostStorage;
use vss_emulator::mpio::{MpioPolicy, MpioStorage};
use vss_emulator::storage::DiskAddress;

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";
/// The same host's initiator that MPIO logs in with (its own sessions, apart from the
/// test's direct ones).
const SQL01_MPIO: &str = "iqn.1991-05.com.microsoft:sql01-mpio";

fn session(d: &Daemon, target: &str) -> Session {
    session_at(&d.portal, target)
}

fn session_at(portal: &str, target: &str) -> Session {
    let mut cfg = InitiatorConfig::new(SQL01);
    cfg.timeout = Duration::from_secs(30);
    Session::login(portal.parse().unwrap(), target, &cfg).unwrap()
}

/// The sense a command ended with (`None`: GOOD).
fn sense_of<T>(r: Result<T, InitiatorError>) -> Option<(u8, u8, u8)> {
    match r {
        Ok(_) => None,
        Err(InitiatorError::Check(s)) => Some((s.key, s.asc, s.ascq)),
        Err(e) => panic!("not a CHECK CONDITION: {e}"),
    }
}

/// Each target port group's state for `lun` through `s`: (group, state code).
fn groups(s: &mut Session, lun: u64) -> Vec<(u16, u8)> {
    let g = s.report_target_port_groups(lun).unwrap();
    g.iter().map(|d| (d.group, d.state)).collect()
}

const OPTIMIZED: u8 = 0x0;
const STANDBY: u8 = 0x2;
/// NOT READY / LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
const IN_STANDBY: Option<(u8, u8, u8)> = Some((0x2, 0x04, 0x0B));

fn block(byte: u8) -> Vec<u8> {
    vec![byte; 4096]
}

fn blocklisted(lab: &Lab) -> usize {
    let out = Command::new("ceph")
        .env("CEPH_CONF", lab.conf())
        .args(["osd", "blocklist", "ls"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().filter(|l| l.contains(':')).count()
}

#[test]
fn a_standby_gateway_takes_over_when_the_serving_one_is_killed() {
    let Some(lab) = Lab::get() else { return };
    let place = two_gateways(&lab, "gwt");
    let ([pa, pb], [ca, cb]) = (&place.pools, &place.configs);

    // gw-a takes office (nobody else is there) and serves.
    let a = start_gateway(&pa.0, ca)
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the first gateway serves");

    // Through gw-a: a LUN, a host mapping, and a write made durable.
    let lun = a.json(&["lun", "create", "data", "16MiB"])[0].clone();
    let id = lun["id"].as_str().unwrap().to_string();
    a.json(&[
        "host",
        "add",
        "sql01",
        "--initiator",
        SQL01,
        "--initiator",
        SQL01_MPIO,
    ]);
    let mapped = a.json(&["host", "map", "sql01", &id]);
    let number = mapped[0]["luns"][0]["lun_number"].as_u64().unwrap();
    let target = a.json(&["status"])["target"].as_str().unwrap().to_string();
    let mut s = session(&a, &target);
    s.write16(number, 800, &block(0xA1), 512, false).unwrap();
    s.synchronize_cache(number).unwrap();
    let serial = s.inquiry(number, Some(0x80)).unwrap();
    assert_eq!(groups(&mut s, number), [(1, OPTIMIZED)]);

    // gw-b, with the same identity, stands by: it does not serve the API, but its portal
    // serves the same LUN as a Standby path (its own group 2), gw-a's group optimized.
    let (b_start, b_portal) = start_standby(&pa.0, &pb.0, cb);
    let mut sb = session_at(&b_portal, &target);
    assert!(
        sb.report_luns().unwrap().contains(&number),
        "the standby path shows the LUN"
    );
    assert_eq!(
        sb.inquiry(number, Some(0x80)).unwrap(),
        serial,
        "the same logical unit"
    );
    assert_eq!(groups(&mut sb, number), [(1, OPTIMIZED), (2, STANDBY)]);
    assert_eq!(sense_of(sb.test_unit_ready(number)), IN_STANDBY);
    assert_eq!(sense_of(sb.read16(number, 800, 8, 512)), IN_STANDBY);
    assert_eq!(
        sense_of(sb.write16(number, 800, &block(0xEE), 512, false)),
        IN_STANDBY
    );
    assert_eq!(sb.read_capacity16(number).unwrap().blocks, 16 << 11);
    // gw-a learns gw-b's group: the LUN is Standby there.
    let learnt = Instant::now();
    while groups(&mut s, number) != [(1, OPTIMIZED), (2, STANDBY)] {
        assert!(
            learnt.elapsed() < Duration::from_secs(10),
            "gw-a never reported gw-b's group"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);

    // A change through gw-a reaches gw-b's paths.
    let late = a.json(&["lun", "create", "late", "8MiB"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = Instant::now();
    let late_number = a.json(&["host", "map", "sql01", &late])[0]["luns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lun"].as_str() == Some(late.as_str()))
        .map(|l| l["lun_number"].as_u64().unwrap())
        .expect("the new mapping");
    while !sb.report_luns().unwrap().contains(&late_number) {
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the standby never showed the new mapping"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "a mapping reached the standby's paths {:.2?} after it was made",
        changed.elapsed()
    );
    // gw-b's control API while it stands by: every call relayed to gw-a.
    let b_api = b_start
        .standby_api
        .recv_timeout(Duration::from_secs(10))
        .expect("the standby says where its API is");
    let via_b = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(common::BIN)
            .args(args)
            .args([
                "--array",
                &b_api,
                "--fingerprint",
                &a.fingerprint,
                "--token-file",
            ])
            .arg(&a.token_file)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shadowlun {args:?} through the standby: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    assert_eq!(
        stable(&via_b(&["lun", "list"])),
        stable(&a.json(&["lun", "list"])),
        "the LUN list through the standby's API"
    );
    via_b(&["lun", "create", "relayed", "4MiB"]);
    let names = |d: &serde_json::Value| -> Vec<String> {
        d.as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&a.json(&["lun", "list"])).contains(&"relayed".to_string()));
    via_b(&["lun", "delete", "relayed"]);
    assert!(!names(&a.json(&["lun", "list"])).contains(&"relayed".to_string()));

    // Persistent reservations on the late LUN, as a failover cluster makes them: one node
    // registers through gw-b's Standby path (gw-b hands the command to gw-a), the other
    // through gw-a, which reserves WRITE EXCLUSIVE - REGISTRANTS ONLY. Both paths report
    // the one state.
    let mut s1 = session(&a, &target);
    assert_eq!(pr_out(&mut sb, late_number, REGISTER, 0, 0, KEY_B), None);
    assert_eq!(pr_out(&mut s1, late_number, REGISTER, 0, 0, KEY_A), None);
    assert_eq!(pr_out(&mut s1, late_number, RESERVE, WE_RO, KEY_A, 0), None);
    for path in [&mut sb, &mut s1] {
        assert_eq!(read_keys(path, late_number), [KEY_B, KEY_A]);
        assert_eq!(reservation(path, late_number), Some((KEY_A, WE_RO)));
    }
    // A wrong key through the standby is refused by gw-a's rules.
    assert_eq!(
        pr_out(&mut sb, late_number, REGISTER, 0, 0x99, 0x98),
        Some(RESERVATION_CONFLICT)
    );
    s1.write16(late_number, 0, &block(0xC1), 512, false)
        .unwrap();
    drop(s1);
    assert!(
        b_start
            .ready
            .recv_timeout(Duration::from_secs(LEASE_SECS))
            .is_err(),
        "the second gateway served while the first was in office"
    );
    let before = a.json(&["lun", "list"]);
    let fenced_before = blocklisted(&lab);

    // A host with MPIO over both gateways writes on, each write made durable, through
    // what follows; every write it was told is done is read back at the end.
    let ledger = Ledger::start(&[&a.portal, &b_portal], &target, number);
    ledger.wait_for(20, "the MPIO writer did not start");

    // gw-a killed: gw-b takes office after gw-a's lease, fences it, and serves the same
    // array: the LUN with its identity, the mapping, the acknowledged write.
    let mut a = a;
    let killed = Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let at_kill = ledger.count();
    let b = b_start
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the standby took over");
    let serving = killed.elapsed();
    assert!(
        blocklisted(&lab) > fenced_before,
        "the killed gateway was not fenced"
    );
    // The standby's own session, logged in since before the kill: its path turns optimized,
    // which it hears as ASYMMETRIC ACCESS STATE CHANGED, and it reads what gw-a wrote.
    // (The initiator retries a command that meets a unit attention, and keeps what it
    // heard.)
    let mut heard = Vec::new();
    let turned = Instant::now();
    loop {
        let r = sense_of(sb.test_unit_ready(number));
        let uas = sb.take_unit_attentions();
        heard.extend(uas.iter().map(|s| (s.key, s.asc, s.ascq)));
        match r {
            None => break,
            Some(sense) => heard.push(sense),
        }
        assert!(
            turned.elapsed() < Duration::from_secs(30),
            "the path never turned: {heard:x?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        heard.contains(&(0x6, 0x2A, 0x06)),
        "no ASYMMETRIC ACCESS STATE CHANGED: {heard:x?}"
    );
    assert_eq!(
        groups(&mut sb, number).iter().find(|g| g.0 == 2),
        Some(&(2, OPTIMIZED))
    );
    assert!(sb.read16(number, 800, 8, 512).unwrap() == block(0xA1));
    // gw-b serves the reservations gw-a made durable: sb's nexus is registered, so it
    // writes; a new session of the same host (another initiator port) is not, so it may
    // read but not write; then sb preempts the dead node's reservation.
    assert_eq!(read_keys(&mut sb, late_number), [KEY_B, KEY_A]);
    assert_eq!(reservation(&mut sb, late_number), Some((KEY_A, WE_RO)));
    sb.write16(late_number, 8, &block(0xC2), 512, false)
        .unwrap();
    let mut s3 = session(&b, &target);
    assert!(s3.read16(late_number, 0, 8, 512).unwrap() == block(0xC1));
    assert!(matches!(
        s3.write16(late_number, 16, &block(0xC3), 512, false),
        Err(InitiatorError::Status(RESERVATION_CONFLICT))
    ));
    assert_eq!(
        pr_out(&mut sb, late_number, PREEMPT, WE_RO, KEY_B, KEY_A),
        None
    );
    assert_eq!(read_keys(&mut s3, late_number), [KEY_B]);
    assert_eq!(reservation(&mut s3, late_number), Some((KEY_B, WE_RO)));
    drop(s3);
    drop(sb);
    // The MPIO writer goes on through gw-b.
    ledger.wait_for(
        at_kill + 20,
        "the MPIO writer did not go on after the failover",
    );
    let acked = ledger.finish();
    eprintln!("MPIO: {acked} writes acknowledged, {at_kill} of them before the kill, none lost");
    let after = b.json(&["lun", "list"]);
    assert_eq!(
        stable(&after),
        stable(&before),
        "the LUN table another gateway serves"
    );
    let mut s = session(&b, &target);
    let got = s.read16(number, 800, 8, 512).unwrap();
    assert!(got == block(0xA1), "the write acknowledged through gw-a");
    s.write16(number, 808, &block(0xB2), 512, false).unwrap();
    s.synchronize_cache(number).unwrap();
    let first_write = killed.elapsed();
    drop(s);
    eprintln!(
        "failover: the standby served {serving:.1?} after the kill, \
         its first write was acknowledged {first_write:.1?} after it"
    );

    // A change through gw-b; gw-a restarts and stands by; gw-b stops cleanly (it resigns):
    // gw-a takes office without waiting for a lease, and serves gw-b's change.
    b.json(&["lun", "create", "made-on-b", "8MiB"]);
    let a_ready = start_gateway(&pa.0, ca).ready;
    assert!(
        a_ready
            .recv_timeout(Duration::from_secs(3 * LEASE_SECS))
            .is_err(),
        "the restarted gateway served while the other was in office"
    );
    let stopped = Instant::now();
    let mut b = b;
    sigterm(b.child.id());
    let code = b.child.wait().unwrap();
    assert!(code.success(), "a clean stop: {code:?}");
    let a = a_ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the standby took over after the clean stop");
    eprintln!("handover after a clean stop: {:.1?}", stopped.elapsed());
    let names: Vec<String> = a
        .json(&["lun", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["data", "late", "made-on-b"]);
    let mut s = session(&a, &target);
    assert!(s.read16(number, 808, 8, 512).unwrap() == block(0xB2));
    drop(s);

    // A standby stops at once when asked to, without ever serving.
    let Starting {
        pid,
        ready: b_ready,
        ..
    } = start_gateway(&pb.0, cb);
    std::thread::sleep(Duration::from_secs(LEASE_SECS));
    let asked = Instant::now();
    sigterm(pid);
    assert!(
        b_ready.recv_timeout(Duration::from_secs(30)).is_err(),
        "a stopped standby served"
    );
    // The thread waiting for it reaps it once it exits.
    let gone = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the standby did not stop");
    eprintln!("a standby stopped {:.1?} after SIGTERM", asked.elapsed());
}

/// `shadowlun gateway list` through `d`: (name, serving, draining), by name.
fn gateway_list(d: &Daemon) -> Vec<(String, bool, bool)> {
    d.json(&["gateway", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["serving"].as_bool().unwrap(),
                g["draining"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Waits (at most 30 s) until `gateway list` through `d` says `want`.
fn wait_for_gateways(d: &Daemon, want: &[(&str, bool, bool)]) {
    let want: Vec<(String, bool, bool)> = want
        .iter()
        .map(|(n, s, dr)| (n.to_string(), *s, *dr))
        .collect();
    let t0 = Instant::now();
    loop {
        let got = gateway_list(d);
        if got == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "gateway list: {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_drained_gateway_hands_over_without_an_io_error() {
    let Some(lab) = Lab::get() else { return };
    let place = two_gateways(&lab, "gwd");
    let ([pa, pb], [ca, cb]) = (&place.pools, &place.configs);
    let mut a = start_gateway(&pa.0, ca)
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the first gateway serves");
    // Guard rails: the only gateway is not drained without --force; a name that is no
    // live gateway is refused.
    let (code, err) = a.fails(&["gateway", "drain", "gw-a"]);
    assert_ne!(code, 0);
    assert!(err.contains("only live gateway"), "{err}");
    let (code, err) = a.fails(&["gateway", "drain", "gw-z"]);
    assert_ne!(code, 0);
    assert!(err.contains("no live gateway named"), "{err}");
    wait_for_gateways(&a, &[("gw-a", true, false)]);

    let id = a.json(&["lun", "create", "data", "16MiB"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.json(&["host", "add", "sql01", "--initiator", SQL01_MPIO]);
    let number = a.json(&["host", "map", "sql01", &id])[0]["luns"][0]["lun_number"]
        .as_u64()
        .unwrap();
    let target = a.json(&["status"])["target"].as_str().unwrap().to_string();
    let (b_start, b_portal) = start_standby(&pa.0, &pb.0, cb);
    wait_for_gateways(&a, &[("gw-a", true, false), ("gw-b", false, false)]);

    // A host with MPIO over both writes on while gw-a is drained: gw-a hands over and
    // exits with status 0, gw-b takes office, and no write fails or is lost.
    let ledger = Ledger::start(&[&a.portal, &b_portal], &target, number);
    ledger.wait_for(20, "the MPIO writer did not start");
    let asked = Instant::now();
    let g = a.json(&["gateway", "drain", "gw-a"]);
    assert_eq!(
        (g["serving"].as_bool(), g["draining"].as_bool()),
        (Some(true), Some(true))
    );
    let at_drain = ledger.count();
    let code = a.child.wait().unwrap();
    assert!(
        code.success(),
        "a drained gateway exits with status 0: {code:?}"
    );
    let b = b_start
        .ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the standby took office after the drain");
    let handed = asked.elapsed();
    ledger.wait_for(
        at_drain + 20,
        "the MPIO writer did not go on after the drain",
    );
    let acked = ledger.finish();
    eprintln!(
        "drain: gw-b in office {handed:.2?} after the request; {acked} writes, \
         {at_drain} before it, none failed or lost"
    );
    wait_for_gateways(&b, &[("gw-b", true, false)]);

    // gw-a started again stands by (its drain request cleared); drained as a standby, it
    // stops without serving.
    let Starting {
        pid,
        standby,
        ready: a_ready,
        ..
    } = start_gateway(&pa.0, ca);
    standby
        .recv_timeout(Duration::from_secs(60))
        .expect("the restarted gateway stands by");
    wait_for_gateways(&b, &[("gw-a", false, false), ("gw-b", true, false)]);
    let g = b.json(&["gateway", "drain", "gw-a"]);
    assert_eq!(
        (g["serving"].as_bool(), g["draining"].as_bool()),
        (Some(false), Some(true))
    );
    let gone = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the drained standby did not stop");
    assert!(
        a_ready.try_recv().is_err(),
        "the drained standby took office"
    );
    wait_for_gateways(&b, &[("gw-b", true, false)]);
}

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const PREEMPT: u8 = 4;
/// WRITE EXCLUSIVE - REGISTRANTS ONLY, as Windows failover clustering reserves.
const WE_RO: u8 = 5;
const KEY_A: u64 = 0xA0A0;
const KEY_B: u64 = 0xB0B0;
const RESERVATION_CONFLICT: u8 = 0x18;

/// PERSISTENT RESERVE OUT; `None` for GOOD, else the status.
fn pr_out(s: &mut Session, lun: u64, sa: u8, kind: u8, key: u64, sa_key: u64) -> Option<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    let cdb = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    match s.command(lun, &cdb, DataDir::Write(p)) {
        Ok(_) => None,
        Err(InitiatorError::Status(st)) => Some(st),
        Err(e) => panic!("PERSISTENT RESERVE OUT {sa}: {e}"),
    }
}

fn pr_in(s: &mut Session, lun: u64, sa: u8) -> Vec<u8> {
    let cdb = [0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0];
    s.command(lun, &cdb, DataDir::Read(0x1000)).unwrap().data
}

/// READ KEYS.
fn read_keys(s: &mut Session, lun: u64) -> Vec<u64> {
    pr_in(s, lun, 0)[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

/// READ RESERVATION: the holder's key and the type.
fn reservation(s: &mut Session, lun: u64) -> Option<(u64, u8)> {
    let d = pr_in(s, lun, 1);
    (d.len() >= 24).then(|| {
        (
            u64::from_be_bytes(d[8..16].try_into().unwrap()),
            d[21] & 0xF,
        )
    })
}

/// A host with MPIO over every gateway's portal writing ledger entries on a LUN, each write
/// followed by SYNCHRONIZE CACHE, on a thread of its own.
struct Ledger {
    mpio: Arc<MpioStorage>,
    disk: DiskAddress,
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<Result<(), String>>,
}

impl Ledger {
    fn start(portals: &[&str], target: &str, lun: u64) -> Ledger {
        let portals: Vec<_> = portals.iter().map(|p| p.parse().unwrap()).collect();
        let mut cfg = InitiatorConfig::new(SQL01_MPIO);
        cfg.timeout = Duration::from_secs(30);
        let policy = MpioPolicy {
            failover_timeout: Duration::from_secs(60),
            ..MpioPolicy::default()
        };
        let mpio = MpioStorage::with_config(&portals, target, cfg, policy);
        let disk = DiskAddress {
            target: target.to_string(),
            lun,
        };
        let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (mpio, disk, acked, stop) =
                (mpio.clone(), disk.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..4000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    mpio.write(&disk, 4096 + i * 8, &ledger_block(i))
                        .and_then(|()| mpio.flush(&disk))
                        .map_err(|e| format!("write {i}: {e}"))?;
                    acked.lock().unwrap().push(i);
                }
                Ok(())
            })
        };
        Ledger {
            mpio,
            disk,
            acked,
            stop,
            writer,
        }
    }

    /// Writes acknowledged so far.
    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits (at most a minute) until `n` writes are acknowledged.
    fn wait_for(&self, n: usize, what: &str) {
        let waited = Instant::now();
        while self.count() < n {
            assert!(
                waited.elapsed() < Duration::from_secs(60) && !self.writer.is_finished(),
                "{what} ({} writes)",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the writer, checks that no write failed and that every acknowledged one reads
    /// back; returns how many there were.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.writer
            .join()
            .unwrap()
            .expect("no write failed through it all");
        let acked = self.acked.lock().unwrap().clone();
        for i in &acked {
            let got = self.mpio.read(&self.disk, 4096 + i * 8, 8).unwrap();
            assert!(got == ledger_block(*i), "acknowledged write {i} was lost");
        }
        acked.len()
    }
}

/// The block MPIO writes as its `i`th ledger entry.
fn ledger_block(i: u64) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; 4096];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// A LUN list without what moves by itself (the space allocated).
fn stable(list: &serde_json::Value) -> Vec<serde_json::Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("allocated_bytes");
            l
        })
        .collect()
}
