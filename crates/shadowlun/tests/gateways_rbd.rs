//! Two gateways of one array on a lab Ceph cluster (`scripts/ceph-lab`), each a
//! `shadowlun array serve` process with `[gateway]`: the array's state lives in RADOS, one
//! gateway serves while the other stands by, serving the same LUNs as Standby paths (ALUA:
//! a target port group per gateway), and when the serving one is killed with SIGKILL the
//! standby takes office, fences it, and serves the same LUNs (same ids, same SCSI
//! identities, the same host mappings) with every acknowledged write intact: a host with
//! MPIO over both gateways writes on through the kill without an error, and the paths'
//! states flip with a unit attention. A gateway stopped cleanly hands over without waiting
//! for its lease. Skipped, saying why, only where Ceph is not installed.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Daemon, Pool, share_identity, spawn_at, try_ready_seeing};
use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};
use rbd::lab::Lab;
use vss_emulator::HostStorage;
use vss_emulator::mpio::{MpioPolicy, MpioStorage};
use vss_emulator::storage::DiskAddress;

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";
/// The same host's initiator that MPIO logs in with (its own sessions, apart from the
/// test's direct ones).
const SQL01_MPIO: &str = "iqn.1991-05.com.microsoft:sql01-mpio";
const LEASE_SECS: u64 = 3;

/// A gateway's configuration; `port` is its relative target port (its target port group)
/// and its portal group tag.
fn config(dir: &Path, lab: &Lab, namespace: &str, gateway: &str, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{gateway}.toml"));
    std::fs::write(
        &path,
        format!(
            "iscsi_relative_port = {port}\niscsi_portal_group_tag = {port}\n\
             [backend]\nkind = \"rbd\"\npool = \"rbd\"\nnamespace = \"{namespace}\"\n\
             ceph_conf = \"{}\"\ntimeout_secs = 10\n\
             [gateway]\nname = \"{gateway}\"\nlease_secs = {LEASE_SECS}\n",
            lab.conf().display()
        ),
    )
    .unwrap();
    path
}

/// A gateway started: its process id, the portal it serves Standby paths on while it
/// stands by, and the daemon once it is in office (waited for on a thread of its own).
struct Starting {
    pid: u32,
    standby: mpsc::Receiver<String>,
    /// The control API it relays to the gateway in office while it stands by.
    standby_api: mpsc::Receiver<String>,
    ready: mpsc::Receiver<Daemon>,
}

fn start_gateway(pool: &Path, config: &Path) -> Starting {
    let (tx, ready) = mpsc::channel();
    let (standby_tx, standby) = mpsc::channel();
    let (api_tx, standby_api) = mpsc::channel();
    let child = spawn_at(pool, "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
    let pid = child.id();
    let pool = pool.to_path_buf();
    std::thread::spawn(move || {
        let seen = |line: &str| {
            if let Some((_, portal)) = line.split_once(" standby iSCSI portal ") {
                let _ = standby_tx.send(portal.trim().to_string());
            }
            if let Some((_, api)) = line.split_once(" standby API ") {
                let api = api.split_whitespace().next().unwrap_or_default();
                let _ = api_tx.send(api.to_string());
            }
        };
        if let Some(d) = try_ready_seeing(child, &pool, seen) {
            let _ = tx.send(d);
        }
    });
    Starting {
        pid,
        standby,
        standby_api,
        ready,
    }
}

fn sigterm(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

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

/// The images of namespace `ns`, removed when dropped (the lab cluster is shared).
struct Images<'a>(&'a Lab, String);

impl Drop for Images<'_> {
    fn drop(&mut self) {
        let spec = format!("rbd/{}", self.1);
        let out = Command::new("rbd")
            .env("CEPH_CONF", self.0.conf())
            .args(["ls", &spec])
            .output();
        let Ok(out) = out else { return };
        for i in String::from_utf8_lossy(&out.stdout).lines() {
            let image = format!("{spec}/{i}");
            for args in [
                vec!["snap", "purge", "--no-progress", &image],
                vec!["rm", "--no-progress", &image],
            ] {
                let _ = Command::new("rbd")
                    .env("CEPH_CONF", self.0.conf())
                    .args(&args)
                    .output();
            }
        }
    }
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
    let ns = format!("gwt{}", std::process::id());
    lab.rbd(&["namespace", "create", &format!("rbd/{ns}")]);
    let _images = Images(&lab, ns.clone());
    let (pa, pb) = (Pool::new("gw-a"), Pool::new("gw-b"));
    let conf_dir = Pool::new("gw-conf");
    let (ca, cb) = (
        config(&conf_dir.0, &lab, &ns, "gw-a", 1),
        config(&conf_dir.0, &lab, &ns, "gw-b", 2),
    );

    // gw-a takes office (nobody else is there) and serves.
    let a = start_gateway(&pa.0, &ca)
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
    share_identity(&pa.0, &pb.0);
    let b_start = start_gateway(&pb.0, &cb);
    let b_portal = b_start
        .standby
        .recv_timeout(Duration::from_secs(60))
        .expect("the standby gateway listens");
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
    let portals = [a.portal.parse().unwrap(), b_portal.parse().unwrap()];
    let mut cfg = InitiatorConfig::new(SQL01_MPIO);
    cfg.timeout = Duration::from_secs(30);
    let policy = MpioPolicy {
        failover_timeout: Duration::from_secs(60),
        ..MpioPolicy::default()
    };
    let mpio = MpioStorage::with_config(&portals, &target, cfg, policy);
    let disk = DiskAddress {
        target: target.clone(),
        lun: number,
    };
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mpio, disk, acked, stop) = (mpio.clone(), disk.clone(), acked.clone(), stop.clone());
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
    let count = || acked.lock().unwrap().len();
    let waited = Instant::now();
    while count() < 20 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the MPIO writer did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // gw-a killed: gw-b takes office after gw-a's lease, fences it, and serves the same
    // array: the LUN with its identity, the mapping, the acknowledged write.
    let mut a = a;
    let killed = Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let at_kill = count();
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
    drop(sb);
    // The MPIO writer goes on through gw-b.
    let waited = Instant::now();
    while count() < at_kill + 20 {
        assert!(
            waited.elapsed() < Duration::from_secs(60) && !writer.is_finished(),
            "the MPIO writer did not go on after the failover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .unwrap()
        .expect("no write failed through the failover");
    let acked = acked.lock().unwrap().clone();
    for i in &acked {
        let got = mpio.read(&disk, 4096 + i * 8, 8).unwrap();
        assert!(got == ledger_block(*i), "acknowledged write {i} was lost");
    }
    eprintln!(
        "MPIO: {} writes acknowledged, {} of them before the kill, none lost",
        acked.len(),
        at_kill
    );
    drop(mpio);
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
    let a_ready = start_gateway(&pa.0, &ca).ready;
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
    } = start_gateway(&pb.0, &cb);
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
