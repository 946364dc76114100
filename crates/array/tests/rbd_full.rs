//! The array on a Ceph pool that fills up, on a lab cluster of the test's own (`Lab::own`:
//! filling a cluster others use would fail them; skipped, saying why, only where Ceph is not
//! installed). librados holds writes to a full pool until they time out rather than failing
//! them; the array reports what that is:
//! - a write made durable (FUA) answers DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT
//!   (07/27/07), the thin-provisioning sense Windows handles, within the configured timeout,
//!   not an I/O error and not a hang;
//! - a new LUN is refused as `no-space` with the reason, and leaves no image behind;
//! - a start that has to write to the pool stops with the reason;
//! - once the cluster has room again, writes go on and every acknowledged byte is there.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use api::routes as r;
use api::*;
use common::*;
use iscsi::initiator::{DataDir, InitiatorConfig, InitiatorError, Session, rw16};
use rbd::lab::Lab;

const IQN: &str = "iqn.1991-05.com.microsoft:full-host";
/// How long a call into the cluster may take (a full pool's writes time out after it).
const TIMEOUT_SECS: u64 = 4;

fn backend(conf: &Path, ns: &str) -> array::BackendConfig {
    array::BackendConfig::Rbd(storage::RbdConfig {
        pool: "rbd".into(),
        namespace: ns.into(),
        ceph_conf: Some(conf.to_path_buf()),
        timeout_secs: TIMEOUT_SECS,
        ..Default::default()
    })
}

fn ceph(lab: &Lab, args: &[&str]) {
    let out = std::process::Command::new("ceph")
        .env("CEPH_CONF", lab.conf())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ceph {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills the cluster (or gives it room again) by moving its full ratios, and waits until
/// the pool's flags say so.
fn full(lab: &Lab, on: bool) {
    let (near, back, full) = if on {
        ("0.0001", "0.0002", "0.0003")
    } else {
        ("0.85", "0.90", "0.95")
    };
    if on {
        ceph(lab, &["osd", "set-nearfull-ratio", near]);
        ceph(lab, &["osd", "set-backfillfull-ratio", back]);
        ceph(lab, &["osd", "set-full-ratio", full]);
    } else {
        ceph(lab, &["osd", "set-full-ratio", full]);
        ceph(lab, &["osd", "set-backfillfull-ratio", back]);
        ceph(lab, &["osd", "set-nearfull-ratio", near]);
    }
    let t0 = Instant::now();
    loop {
        let out = std::process::Command::new("ceph")
            .env("CEPH_CONF", lab.conf())
            .args(["osd", "pool", "ls", "detail"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let flagged = text
            .lines()
            .any(|l| l.contains("'rbd'") && l.contains(",full"));
        if flagged == on {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pool's full flag never became {on}: {text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn login(t: &TestArray) -> Session {
    let mut cfg = InitiatorConfig::new(IQN);
    cfg.timeout = Duration::from_secs(60);
    let mut s = Session::login(
        t.running().iscsi_addrs[0],
        t.running().array.target_name(),
        &cfg,
    )
    .unwrap();
    for _ in 0..4 {
        if s.test_unit_ready(0).is_ok() {
            break;
        }
    }
    s
}

#[test]
fn a_full_pool_is_reported_as_no_space() {
    let Some(lab) = Lab::own() else { return };
    let ns = "fullns";
    lab.rbd(&["namespace", "create", &format!("rbd/{ns}")]);
    let dir = tempfile::tempdir().unwrap();
    let t = TestArray::start_in(dir, |c| {
        c.backend = backend(lab.conf(), ns);
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    });
    let mut admin = t.admin();
    let (lun, _) = lun_for_host(&mut admin, "data", "full-host", IQN);
    let mut s = login(&t);
    let before = vec![0x5au8; 4096];
    s.write16(0, 0, &before, 512, true).unwrap();

    // The rbd CLI blocks on a full cluster: the witness looks before and after.
    let images_before = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    full(&lab, true);

    // A durable write: the thin-provisioning sense, within the timeout (and some slack).
    let t0 = Instant::now();
    let r = s.command(
        0,
        &rw16(0x8a, 64, 8, true),
        DataDir::Write(vec![0xa5u8; 4096]),
    );
    let took = t0.elapsed();
    match r {
        Err(InitiatorError::Check(sense)) => {
            assert_eq!(
                (sense.key, sense.asc, sense.ascq),
                (0x07, 0x27, 0x07),
                "not SPACE ALLOCATION FAILED WRITE PROTECT: {sense:?}"
            );
        }
        other => panic!("a write to a full pool answered {other:?}"),
    }
    assert!(
        took < Duration::from_secs(4 * TIMEOUT_SECS + 10),
        "the write took {took:?}"
    );

    // A new LUN: no-space, with the reason, and no image left of it.
    let r = admin
        .post(
            r::ADMIN_LUNS,
            &CreateLun {
                name: "more".into(),
                size_bytes: 1 << 20,
            },
        )
        .unwrap();
    let p = problem(&r);
    assert_eq!(p.code, ProblemCode::NoSpace, "{}", p.detail);
    assert!(p.detail.contains("full"), "{}", p.detail);
    let luns: Vec<LunRecord> = admin.get(r::ADMIN_LUNS).unwrap().json().unwrap();
    assert_eq!(luns.len(), 1, "{luns:?}");
    let _ = lun;

    // A new array on the full pool (it must make its namespace): refused with the reason.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let mut cfg = config(fresh.path());
    cfg.backend = backend(lab.conf(), "fullns-new");
    let Err(err) = rt.block_on(array::start(cfg)) else {
        panic!("an array started on a full pool it had to write to")
    };
    let text = format!("{err:#}");
    assert!(text.contains("full"), "{text}");

    // Room again: writes go on, and what was acknowledged is there.
    full(&lab, false);
    assert_eq!(
        lab.rbd(&["ls", &format!("rbd/{ns}")]),
        images_before,
        "the refused LUN left an image"
    );
    let t0 = Instant::now();
    loop {
        match s.write16(0, 64, &[0xa5u8; 4096], 512, true) {
            Ok(()) => break,
            Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                eprintln!("waiting for the cluster: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("writes never resumed: {e}"),
        }
    }
    assert_eq!(s.read16(0, 0, 8, 512).unwrap(), before);
    assert_eq!(s.read16(0, 64, 8, 512).unwrap(), vec![0xa5u8; 4096]);
}
