//! Snapshot sets the array takes by itself (`POST /v1/admin/sets`, `shadowlun set create`),
//! through the real HTTPS API and the array's own iSCSI target on 127.0.0.1, on the engine
//! and on rbd (a lab cluster; skipped, saying why, only where Ceph is not installed):
//! - a writer writes a sequence number to LUN A, waits for the acknowledgement, then writes
//!   it to LUN B, without pause, while sets of both are taken: every set holds one instant
//!   (B's number ≤ A's ≤ B's + 1), every write acknowledged before the request is in it, and
//!   the writer never sees an error, only a pause;
//! - bad requests are refused with the reason and leave nothing: no LUN, a LUN named twice,
//!   an unknown LUN;
//! - the set is the administrator's: listed with host `*admin*`, complete, no host's
//!   provider sees it; its snapshot LUNs map to a host; `set delete` removes them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use api::routes as r;
use api::*;
use array::client::Client;
use common::*;
use iscsi::initiator::{InitiatorConfig, Session};

const IQN: &str = "iqn.1991-05.com.microsoft:fence-host";
const BS: u32 = 512;
/// Sets taken while the writer runs.
const SETS: usize = 6;

fn login(t: &TestArray) -> Session {
    let mut cfg = InitiatorConfig::new(IQN);
    cfg.timeout = Duration::from_secs(30);
    let mut s = Session::login(
        t.running().iscsi_addrs[0],
        t.running().array.target_name(),
        &cfg,
    )
    .unwrap();
    // Clear the unit attentions a new nexus starts with, on every LUN it sees.
    for lun in s.report_luns().unwrap() {
        for _ in 0..4 {
            if s.test_unit_ready(lun).is_ok() {
                break;
            }
        }
    }
    s
}

fn block(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&seq.to_le_bytes());
    }
    b
}

/// The sequence number a block holds (every 8 bytes the same, or the block is torn).
fn seq_of(b: &[u8]) -> u64 {
    let v = u64::from_le_bytes(b[..8].try_into().unwrap());
    assert!(
        b.chunks(8).all(|c| c == v.to_le_bytes()),
        "a torn block: {b:02x?}"
    );
    v
}

fn map(admin: &mut Client, host: &str, lun: &str) -> u64 {
    let r = admin
        .post(
            &r::fill(r::ADMIN_MAP, &[("host", host)]),
            &MapLun {
                lun: lun.into(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap();
    expect_status(&r, 200);
    let h: HostRecord = r.json().unwrap();
    h.luns.iter().find(|m| m.lun == lun).unwrap().lun_number
}

fn take(admin: &mut Client, luns: &[&str]) -> Result<SetRecord, Problem> {
    let r = admin
        .post(
            r::ADMIN_SETS,
            &TakeSet {
                luns: luns.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap();
    if r.status == 201 {
        Ok(r.json().unwrap())
    } else {
        Err(problem(&r))
    }
}

fn fenced_sets_hold_one_instant(t: &TestArray) {
    let mut admin = t.admin();
    let (a, _) = lun_for_host(&mut admin, "fence-a", "fence-host", IQN);
    let b = create_lun(&mut admin, "fence-b");
    let (na, nb) = (
        admin
            .get(&r::fill(r::ADMIN_HOST, &[("host", "fence-host")]))
            .unwrap()
            .json::<HostRecord>()
            .unwrap()
            .luns[0]
            .lun_number,
        map(&mut admin, "fence-host", &b),
    );

    // Bad requests first: nothing is left of them.
    for (luns, status) in [
        (vec![], 400),
        (vec![a.as_str(), "fence-a"], 400),
        (vec![a.as_str(), "no-such-lun"], 404),
    ] {
        let p = take(&mut admin, &luns).unwrap_err();
        assert_eq!(p.status, status, "{luns:?}: {}", p.detail);
    }
    let sets: Vec<SetRecord> = admin.get(r::ADMIN_SETS).unwrap().json().unwrap();
    assert!(sets.is_empty(), "a refused request left {sets:?}");

    // The writer: A then B, each acknowledged before the next.
    let stop = Arc::new(AtomicBool::new(false));
    let acked_b = Arc::new(AtomicU64::new(0));
    let mut s = login(t);
    let writer = {
        let (stop, acked_b) = (stop.clone(), acked_b.clone());
        std::thread::spawn(move || {
            let mut seq = 0u64;
            // Bounded: stops when told, or after a million pairs.
            while !stop.load(Ordering::SeqCst) && seq < 1_000_000 {
                seq += 1;
                s.write16(na, 0, &block(seq), BS, false)
                    .expect("a write to A failed");
                s.write16(nb, 0, &block(seq), BS, false)
                    .expect("a write to B failed");
                acked_b.store(seq, Ordering::SeqCst);
            }
            seq
        })
    };
    let mut taken = Vec::new();
    while taken.len() < SETS {
        std::thread::sleep(Duration::from_millis(150));
        let before = acked_b.load(Ordering::SeqCst);
        let set = take(&mut admin, &[a.as_str(), "fence-b"]).expect("a set");
        taken.push((before, set));
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("the writer");
    assert!(
        written > taken.last().unwrap().0,
        "the writer stalled: {written} pairs"
    );

    // Every set: complete, the administrator's, one instant, nothing acknowledged missing.
    let mut reader = None;
    for (before, set) in &taken {
        assert_eq!(set.host, "*admin*");
        assert_eq!(set.state, SetState::Completed);
        assert_eq!(set.snapshots.len(), 2);
        let snap = |src: &str| {
            set.snapshots
                .iter()
                .find(|m| m.source == src)
                .unwrap()
                .lun
                .clone()
        };
        let (sa, sb) = (snap(&a), snap(&b));
        let (ma, mb) = (
            map(&mut admin, "fence-host", &sa),
            map(&mut admin, "fence-host", &sb),
        );
        let s = reader.insert(login(t));
        let va = seq_of(&s.read16(ma, 0, 1, BS).unwrap());
        let vb = seq_of(&s.read16(mb, 0, 1, BS).unwrap());
        assert!(
            vb <= va && va <= vb + 1,
            "set {} is not one instant: A holds {va}, B holds {vb}",
            set.set_id
        );
        assert!(
            vb >= *before,
            "set {} lost acknowledged writes: B holds {vb}, {before} was acknowledged before",
            set.set_id
        );
    }
    drop(reader);

    // No host's provider sees the administrator's sets.
    let listed: Vec<SetRecord> = admin.get(r::ADMIN_SETS).unwrap().json().unwrap();
    assert_eq!(listed.len(), SETS);
    // Deleting a set with mapped LUNs needs force; then its LUNs are gone.
    let (_, first) = &taken[0];
    let r = admin
        .request("DELETE", &set_path(r::ADMIN_SET, first.set_id), None)
        .unwrap();
    expect_status(&r, 409);
    let r = admin
        .request(
            "DELETE",
            &format!("{}?force=true", set_path(r::ADMIN_SET, first.set_id)),
            None,
        )
        .unwrap();
    expect_status(&r, 204);
    let luns: Vec<LunRecord> = admin.get(r::ADMIN_LUNS).unwrap().json().unwrap();
    for m in &first.snapshots {
        assert!(
            luns.iter().all(|l| l.id != m.lun),
            "{} survived its set",
            m.lun
        );
    }
    for (_, set) in &taken[1..] {
        let r = admin
            .request(
                "DELETE",
                &format!("{}?force=true", set_path(r::ADMIN_SET, set.set_id)),
                None,
            )
            .unwrap();
        expect_status(&r, 204);
    }
}

#[test]
fn sets_the_array_takes_by_itself_on_the_engine() {
    let t = TestArray::start_with(|c| {
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    });
    fenced_sets_hold_one_instant(&t);
}

#[test]
fn sets_the_array_takes_by_itself_on_rbd() {
    let Some(lab) = rbd::lab::Lab::get() else {
        return;
    };
    let ns = format!("fence{}", std::process::id());
    lab.rbd(&["namespace", "create", &format!("rbd/{ns}")]);
    let backend = array::BackendConfig::Rbd(storage::RbdConfig {
        pool: "rbd".into(),
        namespace: ns.clone(),
        ceph_conf: Some(lab.conf().to_path_buf()),
        timeout_secs: 20,
        ..Default::default()
    });
    let t = TestArray::start_in(tempfile::tempdir().unwrap(), |c| {
        c.backend = backend;
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    });
    fenced_sets_hold_one_instant(&t);
    drop(t);
    for image in lab
        .rbd(&["ls", &format!("rbd/{ns}")])
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
    {
        lab.rbd(&[
            "snap",
            "purge",
            "--no-progress",
            &format!("rbd/{ns}/{image}"),
        ]);
        lab.rbd(&["rm", "--no-progress", &format!("rbd/{ns}/{image}")]);
    }
}
