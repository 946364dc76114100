//! librbd through this crate against a real single-node cluster (`scripts/ceph-lab`), with
//! the `rbd` CLI as the outside witness. Skipped, saying why, only where Ceph is not
//! installed. One test, so one cluster serves every case.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd::lab::Lab;
use rbd::{Cluster, ClusterConfig, DiffExtent, Pool};

const MIB: u64 = 1 << 20;

type Case = fn(&Lab, &Arc<Pool>);

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_add((i % 251) as u8)
                .wrapping_add((i / 4096) as u8)
        })
        .collect()
}

/// Equal byte vectors, or a panic naming the first difference (not both vectors).
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes read, {} expected, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

fn read(img: &rbd::Image, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    assert_eq!(img.read(off, &mut b).unwrap(), len);
    b
}

#[test]
fn librbd_against_a_lab_cluster() {
    let Some(lab) = Lab::get() else { return };
    let cluster = Cluster::connect(&lab.config()).unwrap();
    let ns = format!("t{}", std::process::id());
    let pool = cluster.pool("rbd", &ns).unwrap();
    pool.create_namespace().unwrap();
    pool.create_namespace().unwrap(); // again: no error
    let cases: &[(&str, Case)] = &[
        ("images_hold_bytes_and_resize", images_hold_bytes_and_resize),
        (
            "async_io_overlaps_and_owns_its_buffers",
            async_io_overlaps_and_owns_its_buffers,
        ),
        (
            "clone_v2_of_a_snapshot_is_point_in_time",
            clone_v2_of_a_snapshot_is_point_in_time,
        ),
        (
            "diff_reports_what_changed_since_a_snapshot",
            diff_reports_what_changed_since_a_snapshot,
        ),
        ("errors_say_what_and_where", errors_say_what_and_where),
        (
            "a_lock_left_by_another_client_is_broken",
            a_lock_left_by_another_client_is_broken,
        ),
    ];
    for (name, case) in cases {
        eprintln!("rbd lab: {name}");
        case(&lab, &pool);
    }
    assert_eq!(
        pool.list().unwrap(),
        Vec::<String>::new(),
        "every case cleans up"
    );
    assert_eq!(lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(), "");
    unreachable_cluster_fails_within_the_timeout(&lab);
}

fn images_hold_bytes_and_resize(lab: &Lab, pool: &Arc<Pool>) {
    pool.create("a", 8 * MIB, None).unwrap();
    let listed = lab.rbd(&["ls", &pool.spec("")]);
    assert_eq!(
        listed.trim(),
        "a",
        "the CLI sees the image in the namespace"
    );
    let info = lab.rbd(&["info", &pool.spec("a")]);
    for f in [
        "layering",
        "exclusive-lock",
        "object-map",
        "fast-diff",
        "format: 2",
    ] {
        assert!(info.contains(f), "{f} missing in\n{info}");
    }
    let img = pool.open("a").unwrap();
    assert_eq!(img.size().unwrap(), 8 * MIB);
    assert_eq!(img.features().unwrap() & rbd::FEATURES, rbd::FEATURES);
    assert_eq!(img.object_size().unwrap(), 4 * MIB);
    assert_eq!(
        read(&img, 0, 4096),
        vec![0u8; 4096],
        "a new image reads zeros"
    );
    let data = pattern(1, 3 * 4096);
    img.write(4 * MIB - 4096, &data).unwrap(); // across an object boundary
    img.flush().unwrap();
    same(
        &read(&img, 4 * MIB - 4096, data.len()),
        &data,
        "read(&img, 4 * MIB - 4096, data.len())",
    );
    assert_eq!(img.used_bytes().unwrap(), 8 * MIB, "two objects written");
    img.discard(4 * MIB - 4096, 4096).unwrap();
    same(
        &read(&img, 4 * MIB - 4096, 4096),
        &[0u8; 4096],
        "a discarded range",
    );
    same(
        &read(&img, 4 * MIB, 4096),
        &data[4096..8192],
        "read(&img, 4 * MIB, 4096)",
    );
    // A second handle sees what the first wrote (the exclusive lock moves between them).
    let other = pool.open("a").unwrap();
    same(
        &read(&other, 4 * MIB, 4096),
        &data[4096..8192],
        "read(&other, 4 * MIB, 4096)",
    );
    drop(other);
    img.resize(16 * MIB).unwrap();
    assert_eq!(img.size().unwrap(), 16 * MIB);
    same(
        &read(&img, 4 * MIB, 4096),
        &data[4096..8192],
        "read(&img, 4 * MIB, 4096)",
    );
    assert!(lab.rbd(&["info", &pool.spec("a")]).contains("size 16 MiB"));
    // Reading past the end is refused (librbd answers EINVAL), or stops at the end.
    let mut buf = vec![0u8; 8192];
    match img.read(16 * MIB - 4096, &mut buf) {
        Ok(n) => assert_eq!(n, 4096),
        Err(e) => assert_eq!(e.errno(), Some(22), "{e}"),
    }
    drop(img);
    pool.remove("a").unwrap();
    assert!(pool.list().unwrap().is_empty());
}

fn async_io_overlaps_and_owns_its_buffers(_lab: &Lab, pool: &Arc<Pool>) {
    pool.create("aio", 16 * MIB, None).unwrap();
    let img = pool.open("aio").unwrap();
    // 64 writes of 64 KiB in flight at once; their buffers are moved into the requests.
    let t0 = Instant::now();
    let writes: Vec<_> = (0..64u64)
        .map(|i| rbd::Aio::write(&img, i * 256 * 1024, pattern(i as u8, 65536)).unwrap())
        .collect();
    for w in writes {
        assert_eq!(w.wait().unwrap().len(), 65536, "the buffer comes back");
    }
    rbd::Aio::flush(&img).unwrap().wait().unwrap();
    let reads: Vec<_> = (0..64u64)
        .map(|i| rbd::Aio::read(&img, i * 256 * 1024, 65536).unwrap())
        .collect();
    for (i, r) in reads.into_iter().enumerate() {
        same(
            &r.wait().unwrap(),
            &pattern(i as u8, 65536),
            &format!("extent {i}"),
        );
    }
    eprintln!(
        "  64 x 64 KiB written and read back in flight: {:?}",
        t0.elapsed()
    );
    rbd::Aio::discard(&img, 0, 65536).unwrap().wait().unwrap();
    assert_eq!(read(&img, 0, 65536), vec![0u8; 65536]);
    // A request dropped unwaited is still completed before its buffer goes.
    drop(rbd::Aio::write(&img, MIB, vec![7u8; 4096]).unwrap());
    assert_eq!(read(&img, MIB, 4096), vec![7u8; 4096]);
    // Out of range: librbd fails the request, not the process.
    let err = rbd::Aio::read(&img, 16 * MIB, 4096).and_then(|r| r.wait());
    assert!(
        err.is_err() || err.as_ref().is_ok_and(|b| b.is_empty()),
        "{err:?}"
    );
    drop(img);
    pool.remove("aio").unwrap();
}

fn clone_v2_of_a_snapshot_is_point_in_time(lab: &Lab, pool: &Arc<Pool>) {
    pool.create("src", 8 * MIB, None).unwrap();
    let src = pool.open("src").unwrap();
    src.write(0, &pattern(3, 8192)).unwrap();
    src.snap_create("s1", true).unwrap();
    src.write(0, &pattern(4, 8192)).unwrap();
    assert!(src.snap_exists("s1").unwrap());
    assert!(!src.snap_exists("s2").unwrap());
    let snaps = src.snaps().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].name.as_str(), snaps[0].size), ("s1", 8 * MIB));
    assert!(!src.snap_is_protected("s1").unwrap());
    // Clone v2: no protect step. Made under another name, then renamed: the clone keeps
    // its parent, and the snapshot's children are listed under the new name.
    pool.clone_image("src", "s1", "c1-staged").unwrap();
    pool.rename("c1-staged", "c1").unwrap();
    assert!(pool.rename("c1-staged", "c9").unwrap_err().is_not_found());
    pool.create("taken", MIB, None).unwrap();
    let err = pool.rename("taken", "c1").unwrap_err();
    assert!(err.is_exists(), "a rename onto an image's name: {err}");
    pool.remove("taken").unwrap();
    let c1 = pool.open("c1").unwrap();
    same(
        &read(&c1, 0, 8192),
        &pattern(3, 8192),
        "the clone holds the snapshot's data",
    );
    c1.write(4096, &pattern(5, 4096)).unwrap();
    same(
        &read(&src, 0, 8192),
        &pattern(4, 8192),
        "clone writes stay in the clone",
    );
    let parent = c1.parent().unwrap().unwrap();
    assert_eq!(
        (
            parent.pool.as_str(),
            parent.namespace.as_str(),
            parent.image.as_str(),
            parent.snap.as_str()
        ),
        ("rbd", pool.namespace(), "src", "s1")
    );
    assert_eq!(src.parent().unwrap(), None);
    let at_snap = pool.open_read_only("src", Some("s1")).unwrap();
    assert_eq!(
        at_snap.children().unwrap(),
        vec![(pool.namespace().to_string(), "c1".to_string())]
    );
    same(
        &read(&at_snap, 0, 8192),
        &pattern(3, 8192),
        "a handle at the snapshot reads it",
    );
    assert!(
        at_snap.write(0, &[1u8; 512]).is_err(),
        "a snapshot handle is read-only"
    );
    drop(at_snap);
    let witness = lab.rbd(&["children", &format!("{}@s1", pool.spec("src"))]);
    assert!(witness.contains("c1"), "{witness}");
    // Protect/unprotect still work (clone v1 needs them).
    src.snap_protect("s1").unwrap();
    assert!(src.snap_is_protected("s1").unwrap());
    let err = src.snap_remove("s1").unwrap_err();
    assert!(err.is_busy(), "a protected snapshot is not removed: {err}");
    src.snap_unprotect("s1").unwrap();
    // Flatten cuts the clone loose; then the snapshot has no children and goes.
    c1.flatten().unwrap();
    assert_eq!(c1.parent().unwrap(), None);
    same(
        &read(&c1, 0, 8192),
        &[pattern(3, 4096), pattern(5, 4096)].concat(),
        "read(&c1, 0, 8192)",
    );
    src.snap_remove("s1").unwrap();
    assert!(src.snaps().unwrap().is_empty());
    assert_eq!(lab.rbd(&["snap", "ls", &pool.spec("src")]).trim(), "");
    drop((src, c1));
    pool.remove("c1").unwrap();
    pool.remove("src").unwrap();
}

fn diff_reports_what_changed_since_a_snapshot(_lab: &Lab, pool: &Arc<Pool>) {
    pool.create("d", 32 * MIB, None).unwrap();
    let img = pool.open("d").unwrap();
    img.write(0, &pattern(6, 4096)).unwrap();
    img.snap_create("base", true).unwrap();
    img.write(9 * MIB, &pattern(7, 8192)).unwrap();
    img.write(20 * MIB + 512, &pattern(8, 512)).unwrap();
    img.discard(0, 4096).unwrap();
    let mut seen = Vec::new();
    img.diff(Some("base"), 0, 32 * MIB, true, false, |e| {
        seen.push(e);
        true
    })
    .unwrap();
    // librbd reports at the OSD's granularity: every changed range is covered, with the
    // right existence, and nothing outside the three objects that changed is reported.
    let covered = |off: u64, len: u64, exists: bool| {
        seen.iter().any(|e: &DiffExtent| {
            e.exists == exists && e.offset <= off && off + len <= e.offset + e.len
        })
    };
    assert!(covered(0, 4096, false), "{seen:?}");
    assert!(covered(9 * MIB, 8192, true), "{seen:?}");
    assert!(covered(20 * MIB + 512, 512, true), "{seen:?}");
    for e in &seen {
        let obj = e.offset / (4 * MIB);
        assert!(
            [0, 2, 5].contains(&obj) && (e.offset + e.len - 1) / (4 * MIB) == obj,
            "{e:?}"
        );
    }
    // Whole objects: each changed object once.
    let mut objects = Vec::new();
    img.diff(Some("base"), 0, 32 * MIB, true, true, |e| {
        objects.push((e.offset, e.len));
        true
    })
    .unwrap();
    objects.sort();
    assert_eq!(
        objects,
        vec![(0, 4 * MIB), (8 * MIB, 4 * MIB), (20 * MIB, 4 * MIB)]
    );
    // The callback can stop the walk.
    let mut n = 0;
    let err = img
        .diff(Some("base"), 0, 32 * MIB, true, false, |_| {
            n += 1;
            false
        })
        .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(n, 1);
    img.snap_remove("base").unwrap();
    drop(img);
    pool.remove("d").unwrap();
}

fn errors_say_what_and_where(_lab: &Lab, pool: &Arc<Pool>) {
    let err = pool.open("nope").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains(&pool.spec("nope")), "{err}");
    assert!(pool.remove("nope").unwrap_err().is_not_found());
    pool.create("e", MIB, None).unwrap();
    let err = pool.create("e", MIB, None).unwrap_err();
    assert!(err.is_exists(), "{err}");
    let open = pool.open("e").unwrap();
    let err = pool.remove("e").unwrap_err();
    assert!(err.is_busy(), "an open image is not removed: {err}");
    drop(open);
    pool.remove("e").unwrap();
    assert!(
        pool.clone_image("nope", "s", "c")
            .unwrap_err()
            .is_not_found()
    );
    assert!(matches!(pool.open("a\0b"), Err(rbd::Error::Nul(_))));
    let err = pool.cluster().pool("no-such-pool", "").unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

fn unreachable_cluster_fails_within_the_timeout(lab: &Lab) {
    // A configuration naming a monitor nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("ceph.conf");
    let text = std::fs::read_to_string(lab.conf()).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("mon host") {
                format!("mon host = v2:127.0.0.1:{port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&conf, text + "\n").unwrap();
    let t0 = Instant::now();
    let err = Cluster::connect(&ClusterConfig {
        conf_path: Some(conf),
        timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    })
    .unwrap_err();
    let took = t0.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("  unreachable cluster: {err} after {took:?}");
}

/// A client holding an image's exclusive lock (as a killed process would, until its watch
/// expires) has it broken by another: that one writes at once, the old one no more.
fn a_lock_left_by_another_client_is_broken(lab: &Lab, pool: &Arc<Pool>) {
    pool.create("locked", MIB, None).unwrap();
    let other = Cluster::connect(&lab.config()).unwrap();
    let theirs = other
        .pool("rbd", pool.namespace())
        .unwrap()
        .open("locked")
        .unwrap();
    theirs.write(0, &[1u8; 512]).unwrap(); // takes the lock
    let mine = pool.open("locked").unwrap();
    assert_eq!(mine.break_locks().unwrap(), 1);
    assert_eq!(mine.break_locks().unwrap(), 0, "no owner left");
    let t0 = Instant::now();
    mine.write(0, &[2u8; 512]).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        theirs.write(512, &[3u8; 512]).is_err(),
        "the old owner is blocklisted"
    );
    assert_eq!(read(&mine, 0, 1024), [[2u8; 512], [0u8; 512]].concat());
    drop((theirs, other, mine));
    pool.remove("locked").unwrap();
}
