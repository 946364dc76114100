//! RADOS objects through this crate against a real single-node cluster (`scripts/ceph-lab`):
//! compound operations and their guards, omap reads, locks with an expiry, watch/notify and
//! blocklisting, each between separate connections. Skipped, saying why, only where Ceph is
//! not installed.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rbd::lab::Lab;
use rbd::{Cluster, ClusterConfig, Pool, WatchEvent, WriteOp};

fn connect(lab: &Lab) -> Arc<Pool> {
    let cluster = Cluster::connect(&ClusterConfig {
        settings: vec![("admin_socket".into(), String::new())],
        timeout: Duration::from_secs(10),
        ..lab.config()
    })
    .unwrap();
    cluster
        .pool("rbd", &format!("rados{}", std::process::id()))
        .unwrap()
}

fn val(entries: &[(String, Vec<u8>)], key: &str) -> Option<Vec<u8>> {
    entries
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

#[test]
fn rados_objects_against_a_lab_cluster() {
    let Some(lab) = Lab::get() else { return };
    let (a, b) = (connect(&lab), connect(&lab));
    compound_ops_apply_whole_or_not_at_all(&a, &b);
    locks_expire_and_renewals_notice(&a, &b);
    a_notify_reaches_a_watch_of_another_client(&a, &b);
    a_blocklisted_client_is_refused(&lab, &a);
    for oid in ["ops", "lock"] {
        a.remove_object(oid).unwrap();
    }
}

fn compound_ops_apply_whole_or_not_at_all(a: &Arc<Pool>, b: &Arc<Pool>) {
    let create = WriteOp::new()
        .create(true)
        .omap_set([("v", &b"1"[..]), ("x", &b"old"[..])])
        .unwrap()
        .setxattr("owner", b"a")
        .unwrap();
    a.operate("ops", &create).unwrap();
    assert!(b.operate("ops", &create).unwrap_err().is_exists());

    // A guard that does not hold: ECANCELED, and neither the set nor the remove happened.
    let stale = WriteOp::new()
        .omap_cmp_eq("v", b"0")
        .unwrap()
        .omap_set([("x", &b"new"[..]), ("v", &b"2"[..])])
        .unwrap()
        .omap_rm(["x"])
        .unwrap();
    let e = b.operate("ops", &stale).unwrap_err();
    assert!(e.is_guard_failed(), "{e}");
    // A missing key fails its guard too.
    let missing = WriteOp::new()
        .omap_cmp_eq("nope", b"1")
        .unwrap()
        .omap_set([("x", &b"new"[..])])
        .unwrap();
    assert!(b.operate("ops", &missing).unwrap_err().is_guard_failed());
    let xattr = WriteOp::new()
        .cmpxattr_eq("owner", b"b")
        .unwrap()
        .omap_set([("x", &b"new"[..])])
        .unwrap();
    assert!(b.operate("ops", &xattr).unwrap_err().is_guard_failed());
    let got = a.omap_get("ops", &["v", "x", "absent"]).unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(val(&got, "v").unwrap(), b"1");
    assert_eq!(val(&got, "x").unwrap(), b"old");

    // Guards that hold: the whole op applies.
    let good = WriteOp::new()
        .omap_cmp_eq("v", b"1")
        .unwrap()
        .cmpxattr_eq("owner", b"a")
        .unwrap()
        .omap_set([("v", &b"2"[..]), ("y/1", &b"one"[..]), ("y/2", &b"two"[..])])
        .unwrap()
        .omap_rm(["x"])
        .unwrap();
    b.operate("ops", &good).unwrap();
    let (page, more) = a.omap_page("ops", "", "", 100, None).unwrap();
    assert!(!more);
    let keys: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["v", "y/1", "y/2"]);
    // Pages, a prefix, and a guarded read.
    let (page, more) = a.omap_page("ops", "", "y/", 1, None).unwrap();
    assert_eq!((page.len(), more), (1, true));
    assert_eq!(page[0], ("y/1".to_string(), b"one".to_vec()));
    let (page, more) = a
        .omap_page("ops", "y/1", "y/", 1, Some(("v", b"2")))
        .unwrap();
    assert_eq!((page[0].0.as_str(), more), ("y/2", false));
    let e = a
        .omap_page("ops", "", "", 10, Some(("v", b"1")))
        .unwrap_err();
    assert!(e.is_guard_failed(), "{e}");
    assert!(
        a.omap_get("no-such-object", &["v"])
            .unwrap_err()
            .is_not_found()
    );
}

fn locks_expire_and_renewals_notice(a: &Arc<Pool>, b: &Arc<Pool>) {
    let ttl = Duration::from_secs(2);
    a.lock_exclusive("lock", "l", "ca", "held by a", Some(ttl), false)
        .unwrap();
    let e = b
        .lock_exclusive("lock", "l", "cb", "held by b", Some(ttl), false)
        .unwrap_err();
    assert!(e.is_busy(), "{e}");
    let lockers = b.lockers("lock", "l").unwrap();
    assert!(lockers.exclusive);
    assert_eq!(lockers.holders.len(), 1);
    let holder = &lockers.holders[0];
    let a_id = a.cluster().instance_id().unwrap();
    assert_eq!(holder.client, format!("client.{a_id}"));
    assert_eq!(holder.cookie, "ca");
    assert!(!holder.addr.is_empty());

    // Renewing what one holds works; what one does not hold fails as lost.
    a.lock_exclusive("lock", "l", "ca", "held by a", Some(ttl), true)
        .unwrap();
    let e = b
        .lock_exclusive("lock", "l", "cb", "held by b", Some(ttl), true)
        .unwrap_err();
    assert!(e.is_lock_lost(), "{e}");

    // Broken by another client, the holder's renewal says so.
    b.break_lock("lock", "l", &holder.client, "ca").unwrap();
    let e = a
        .lock_exclusive("lock", "l", "ca", "held by a", Some(ttl), true)
        .unwrap_err();
    assert!(e.is_lock_lost(), "{e}");

    // An expiry frees the lock by itself.
    b.lock_exclusive("lock", "l", "cb", "held by b", Some(ttl), false)
        .unwrap();
    let t0 = Instant::now();
    loop {
        match a.lock_exclusive("lock", "l", "ca", "held by a", Some(ttl), false) {
            Ok(()) => break,
            Err(e) if e.is_busy() => {
                assert!(t0.elapsed() < ttl * 3, "the lock outlived {:?}", ttl * 3);
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        t0.elapsed() >= ttl - Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    a.unlock("lock", "l", "ca").unwrap();
    assert!(a.unlock("lock", "l", "ca").unwrap_err().is_not_found());
    assert!(b.lockers("lock", "l").unwrap().holders.is_empty());
    assert!(b.lockers("no-such-object", "l").unwrap().holders.is_empty());
}

fn a_notify_reaches_a_watch_of_another_client(a: &Arc<Pool>, b: &Arc<Pool>) {
    let (tx, rx) = mpsc::channel();
    let watch = b
        .watch("ops", Duration::from_secs(10), move |ev| {
            let _ = tx.send(ev);
        })
        .unwrap();
    assert!(watch.check().is_ok());
    // Acknowledged by the watch: the notify returns well within its timeout.
    let t0 = Instant::now();
    a.notify("ops", b"hello", Duration::from_secs(5)).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let ev = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        ev,
        WatchEvent::Notify {
            notifier: a.cluster().instance_id().unwrap(),
            payload: b"hello".to_vec()
        }
    );
    drop(watch);
    a.notify("ops", b"nobody", Duration::from_secs(1)).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

fn a_blocklisted_client_is_refused(lab: &Lab, a: &Arc<Pool>) {
    let c = connect(lab);
    c.operate("ops", &WriteOp::new().omap_set([("c", &b"1"[..])]).unwrap())
        .unwrap();
    let addrs = c.cluster().addrs().unwrap();
    assert!(addrs.contains("127.0.0.1"), "{addrs}");
    a.cluster()
        .blocklist(&addrs, Duration::from_secs(600))
        .unwrap();
    // The fencing client's next operation carries the OSD map that blocklists `c`: the OSD
    // serving the object takes that map before it, so everything after it from `c` is refused.
    a.operate("ops", &WriteOp::new().omap_set([("a", &b"1"[..])]).unwrap())
        .unwrap();
    let e = c
        .operate("ops", &WriteOp::new().omap_set([("c", &b"2"[..])]).unwrap())
        .unwrap_err();
    assert!(e.is_blocklisted(), "{e}");
    assert_eq!(val(&a.omap_get("ops", &["c"]).unwrap(), "c").unwrap(), b"1");
}
