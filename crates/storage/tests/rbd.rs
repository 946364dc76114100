//! The rbd backend against a real single-node cluster (`scripts/ceph-lab`): the conformance
//! suite, then what only this backend promises, with the `rbd` CLI as the outside witness.
//! Skipped, saying why, only where Ceph is not installed. One test, one cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rbd::lab::Lab;
use storage::{Backend, RbdBackend};

const MIB: u64 = 1 << 20;

/// A backend for a fresh array in a fresh namespace.
fn backend(cluster: &Arc<rbd::Cluster>, ns: &str, array_id: u32) -> RbdBackend {
    RbdBackend::new(cluster.pool("rbd", ns).unwrap(), array_id).unwrap()
}

#[test]
fn rbd_backend_against_a_lab_cluster() {
    let Some(lab) = Lab::get() else { return };
    let cluster = rbd::Cluster::connect(&lab.config()).unwrap();
    let n = AtomicU32::new(0);
    let pid = std::process::id();
    storage::conformance::run_all(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        (backend(&cluster, &format!("conf{pid}-{i}"), 0x1000 + i), ())
    });
    let ns = format!("own{pid}");
    images_carry_the_array_id_and_strangers_are_left_alone(&lab, &cluster, &ns);
    a_snapshot_is_a_clone_of_a_per_image_snapshot_and_goes_with_it(&lab, &cluster, &ns);
    resync_onto_the_source_copies_only_what_changed(&lab, &cluster, &ns);
    a_stream_is_read_ahead_and_every_write_is_seen(&lab, &cluster, &format!("ra{pid}"));
    a_group_commit_takes_only_the_snapshots(&lab, &cluster, &format!("grp{pid}"));
    a_first_use_during_the_clone_waits_for_it(&lab, &cluster, &format!("race{pid}"));
    a_clone_left_half_made_is_made_again(&lab, &cluster, &format!("half{pid}"));
}

/// The array makes the clones in a thread of their own after the commit answers, and a host
/// may use the snapshot LUN at once: the first use (the device the target serves, the
/// volume's size) must see the snapshot's data, never a clone half made (librbd lists a
/// clone before its parent is attached, and reads zeros from it then) and never no volume.
fn a_first_use_during_the_clone_waits_for_it(lab: &Lab, cluster: &Arc<rbd::Cluster>, ns: &str) {
    let b = Arc::new(backend(cluster, ns, 0xf6));
    b.create_volume("src", 4 * MIB).unwrap();
    let src = b.device("src").unwrap();
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        let byte = round as u8 + 1;
        src.write_at(0, &[byte; 4096], false).unwrap();
        let snap = format!("s{round}");
        b.snapshot_group(&[("src".into(), snap.clone())]).unwrap();
        src.write_at(0, &[0xee; 4096], false).unwrap(); // after the instant
        let bg = {
            let (b, snap) = (b.clone(), snap.clone());
            std::thread::spawn(move || b.materialize(&snap))
        };
        // Staggered so some rounds land mid-clone.
        std::thread::sleep(std::time::Duration::from_millis((round as u64 % 4) * 15));
        let dev = b
            .device(&snap)
            .expect("the snapshot volume opens mid-clone");
        assert_eq!(dev.num_blocks() * 512, 4 * MIB);
        let mut buf = [0u8; 4096];
        dev.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [byte; 4096], "round {round}: the snapshot's data");
        bg.join().unwrap().unwrap();
        assert_eq!(b.volume(&snap).unwrap().size_bytes, 4 * MIB);
    }
    let images = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    assert_eq!(images.lines().count(), ROUNDS + 1, "{images}");
    assert!(!images.contains("slc-"), "no staged clone left: {images}");
    drop(src);
    for round in 0..ROUNDS {
        b.delete_volume(&format!("s{round}")).unwrap();
    }
    b.delete_volume("src").unwrap();
    assert_eq!(lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(), "");
}

/// A process killed between making a clone and renaming it leaves the staged image: the next
/// materialisation removes it and makes the clone again; a delete removes it too.
fn a_clone_left_half_made_is_made_again(lab: &Lab, cluster: &Arc<rbd::Cluster>, ns: &str) {
    let b = backend(cluster, ns, 0xa7);
    b.create_volume("src", 4 * MIB).unwrap();
    b.device("src")
        .unwrap()
        .write_at(0, &[9u8; 512], false)
        .unwrap();
    b.snapshot_group(&[("src".into(), "s1".into())]).unwrap();
    b.snapshot_group(&[("src".into(), "s2".into())]).unwrap();
    let spec = |i: &str| format!("rbd/{ns}/{i}");
    for s in ["s1", "s2"] {
        lab.rbd(&[
            "clone",
            "--rbd-default-clone-format",
            "2",
            &format!("{}@sl-{s}", spec("sl-000000a7-src")),
            &spec(&b.staged_name(s)),
        ]);
    }
    assert_eq!(
        b.volumes()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2", "src"],
        "a staged clone is not a volume"
    );
    let mut buf = [0u8; 512];
    b.device("s1").unwrap().read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [9u8; 512]);
    let info = lab.rbd(&["info", &spec("sl-000000a7-s1")]);
    assert!(info.contains("parent: "), "{info}");
    let images = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    assert_eq!(
        images.lines().filter(|i| i.starts_with("slc-")).count(),
        1,
        "s1's staged clone was removed and made again: {images}"
    );
    // A restarted process removes what is left staged.
    drop(b);
    let b = backend(cluster, ns, 0xa7);
    let images = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    assert!(!images.contains("slc-"), "{images}");
    b.snapshot_group(&[("src".into(), "s3".into())]).unwrap();
    lab.rbd(&[
        "clone",
        "--rbd-default-clone-format",
        "2",
        &format!("{}@sl-s3", spec("sl-000000a7-src")),
        &spec(&b.staged_name("s3")),
    ]);
    b.delete_volume("s3").unwrap(); // never materialised: its staged clone goes with it
    assert!(!lab.rbd(&["ls", &format!("rbd/{ns}")]).contains("slc-"));
    b.delete_volume("s2").unwrap();
    b.delete_volume("s1").unwrap();
    b.delete_volume("src").unwrap();
    assert_eq!(lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(), "");
}

fn a_group_commit_takes_only_the_snapshots(lab: &Lab, cluster: &Arc<rbd::Cluster>, ns: &str) {
    let b = backend(cluster, ns, 0xe5);
    for i in 0..64 {
        b.create_volume(&format!("v{i}"), 4 * MIB).unwrap();
        b.device(&format!("v{i}"))
            .unwrap()
            .write_at(0, &[i as u8; 512], false)
            .unwrap();
    }
    let mut made = Vec::new();
    for (k, n) in [(0, 1usize), (1, 8), (2, 64)] {
        let pairs: Vec<(String, String)> = (0..n)
            .map(|i| (format!("v{i}"), format!("s{k}-{i}")))
            .collect();
        let t0 = std::time::Instant::now();
        b.snapshot_group(&pairs).unwrap();
        eprintln!("  group commit of {n} volumes: {:?}", t0.elapsed());
        made.extend(pairs.into_iter().map(|p| p.1));
    }
    let images = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    assert_eq!(images.lines().count(), 64, "no clone made by the commits");
    let mut buf = [0u8; 512];
    b.device("s2-63").unwrap().read_at(0, &mut buf).unwrap(); // made on first use
    assert_eq!(buf, [63u8; 512]);
    for s in &made {
        b.delete_volume(s).unwrap();
    }
    for i in 0..64 {
        b.delete_volume(&format!("v{i}")).unwrap();
    }
    assert_eq!(lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(), "");
}

fn images_carry_the_array_id_and_strangers_are_left_alone(
    lab: &Lab,
    cluster: &Arc<rbd::Cluster>,
    ns: &str,
) {
    let a = backend(cluster, ns, 0xa1);
    let b = backend(cluster, ns, 0xb2);
    // Someone else's image in the same pool and namespace.
    lab.rbd(&["create", "--size", "4M", &format!("rbd/{ns}/lun-1")]);
    a.create_volume("lun-1", MIB).unwrap();
    b.create_volume("lun-1", 2 * MIB).unwrap();
    let listed = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(listed, ["lun-1", "sl-000000a1-lun-1", "sl-000000b2-lun-1"]);
    let names = |b: &RbdBackend| {
        b.volumes()
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.size_bytes))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), [("lun-1".to_string(), MIB)]);
    assert_eq!(names(&b), [("lun-1".to_string(), 2 * MIB)]);
    a.delete_volume("lun-1").unwrap();
    b.delete_volume("lun-1").unwrap();
    assert_eq!(
        lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(),
        "lun-1",
        "the stranger survives"
    );
    lab.rbd(&["rm", "--no-progress", &format!("rbd/{ns}/lun-1")]);
}

fn a_snapshot_is_a_clone_of_a_per_image_snapshot_and_goes_with_it(
    lab: &Lab,
    cluster: &Arc<rbd::Cluster>,
    ns: &str,
) {
    let b = backend(cluster, ns, 0xc3);
    b.create_volume("lun-1", 4 * MIB).unwrap();
    b.create_volume("lun-2", 4 * MIB).unwrap();
    b.device("lun-1")
        .unwrap()
        .write_at(0, &[6u8; 4096], false)
        .unwrap();
    b.snapshot_group(&[
        ("lun-1".into(), "lun-3".into()),
        ("lun-2".into(), "lun-4".into()),
    ])
    .unwrap();
    let spec = |v: &str| format!("rbd/{ns}/sl-000000c3-{v}");
    assert_eq!(
        lab.rbd(&["snap", "ls", "--format", "json", &spec("lun-1")])
            .matches("\"sl-lun-3\"")
            .count(),
        1
    );
    // Committed: the snapshots exist, the clones not yet; the volumes are there all the same.
    let images = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    assert!(
        !images.contains("lun-3") && !images.contains("lun-4"),
        "{images}"
    );
    let listed: Vec<_> = b
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.size_bytes))
        .collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(b.volume("lun-3").unwrap().size_bytes, 4 * MIB);
    b.materialize("lun-3").unwrap();
    b.materialize("lun-3").unwrap();
    let info = lab.rbd(&["info", &spec("lun-3")]);
    assert!(
        info.contains(&format!("parent: rbd/{ns}/sl-000000c3-lun-1@sl-lun-3")),
        "{info}"
    );
    // A snapshot volume that is itself snapshotted, then the source deleted: the clones keep
    // their data (flattened), and nothing of the source is left.
    b.snapshot_group(&[("lun-3".into(), "lun-5".into())])
        .unwrap();
    b.delete_volume("lun-3").unwrap();
    let mut buf = [0u8; 4096];
    b.device("lun-5").unwrap().read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [6u8; 4096]);
    assert_eq!(
        lab.rbd(&["snap", "ls", &spec("lun-1")]).trim(),
        "",
        "lun-3's snapshot went with it"
    );
    for v in ["lun-4", "lun-5", "lun-1", "lun-2"] {
        b.delete_volume(v).unwrap();
    }
    assert_eq!(
        lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(),
        "",
        "nothing left"
    );
}

fn resync_onto_the_source_copies_only_what_changed(
    lab: &Lab,
    cluster: &Arc<rbd::Cluster>,
    ns: &str,
) {
    let b = backend(cluster, ns, 0xd4);
    b.create_volume("src", 64 * MIB).unwrap();
    let src = b.device("src").unwrap();
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8).collect();
    for i in 0..8 {
        src.write_at(i * 8 * MIB, &data, false).unwrap(); // 64 MiB of data
    }
    b.snapshot_group(&[("src".into(), "snap".into())]).unwrap();
    src.write_at(5 * MIB, &[1u8; 4096], false).unwrap(); // the source changes
    let snap = b.device("snap").unwrap();
    snap.write_at(40 * MIB, &[2u8; 4096], false).unwrap(); // and the snapshot too
    src.flush().unwrap();
    snap.flush().unwrap();
    // A host streams across the snapshot's change first: what was read ahead there must
    // not outlive the resync.
    stream(src.as_ref(), 39 * MIB, 41 * MIB);
    assert!(wait_read_ahead(src.as_ref(), 40 * MIB, 4096));
    let seen = std::sync::Mutex::new(Vec::new());
    let t0 = std::time::Instant::now();
    b.resync(
        "snap",
        "src",
        &|p| seen.lock().unwrap().push(p),
        &AtomicBool::new(false),
    )
    .unwrap();
    eprintln!(
        "  resync of 2 changed objects in a 64 MiB volume: {:?}",
        t0.elapsed()
    );
    let mut got = vec![0u8; 4096];
    src.read_at(5 * MIB, &mut got).unwrap();
    assert_eq!(
        got,
        data[5 * MIB as usize..5 * MIB as usize + 4096],
        "the source's change is undone"
    );
    src.read_at(40 * MIB, &mut got).unwrap();
    assert_eq!(got, [2u8; 4096], "the snapshot's change is copied");
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.last(), Some(&100));
    drop((src, snap));
    b.delete_volume("snap").unwrap();
    b.delete_volume("src").unwrap();
    assert_eq!(lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(), "");
}

/// Reads `[from, to)` in 64 KiB commands, as a host streaming a volume does.
fn stream(dev: &dyn scsi::BlockDevice, from: u64, to: u64) -> Vec<u8> {
    let mut out = vec![0u8; (to - from) as usize];
    for (i, piece) in out.chunks_mut(64 << 10).enumerate() {
        dev.read_at(from + i as u64 * (64 << 10), piece).unwrap();
    }
    out
}

/// Waits (bounded) until the range is held in memory, read ahead.
fn wait_read_ahead(dev: &dyn scsi::BlockDevice, offset: u64, len: usize) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(10) {
        if dev.cached(offset, len) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// A sequential stream is served from chunks read ahead (the device says the blocks in front
/// of the stream are in memory, and they hold the image's bytes); a write in front of the
/// stream, through another device of the same volume, and a discard are seen by the reads
/// that follow; a resize keeps nothing stale.
fn a_stream_is_read_ahead_and_every_write_is_seen(
    lab: &Lab,
    cluster: &Arc<rbd::Cluster>,
    ns: &str,
) {
    let b = backend(cluster, ns, 0xe5);
    b.create_volume("v", 16 * MIB).unwrap();
    let dev = b.device("v").unwrap();
    let data: Vec<u8> = (0..16 * MIB).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    dev.write_at(0, &data, false).unwrap();
    dev.flush().unwrap();
    let at = |o: u64, n: u64| &data[o as usize..(o + n) as usize];

    assert!(
        !dev.cached(3 * MIB, 4096),
        "nothing is read ahead before a stream"
    );
    assert_eq!(stream(dev.as_ref(), 0, 2 * MIB), at(0, 2 * MIB));
    for chunk in [2, 3] {
        assert!(
            wait_read_ahead(dev.as_ref(), chunk * MIB, 64 << 10),
            "the blocks in front of a sequential stream are read ahead"
        );
    }
    // Another device of the same volume (a second path's, say) writes on blocks read
    // ahead in front of the stream, and discards others (each in a chunk of its own).
    let other = b.device("v").unwrap();
    other
        .write_at(2 * MIB + 8192, &[0xc3; 4096], false)
        .unwrap();
    other.discard(3 * MIB + 65536, 65536).unwrap();
    let got = stream(dev.as_ref(), 2 * MIB, 4 * MIB);
    let mut want = at(2 * MIB, 2 * MIB).to_vec();
    want[8192..12288].fill(0xc3);
    want[MIB as usize + 65536..MIB as usize + 131072].fill(0);
    assert!(
        got[..MIB as usize] == want[..MIB as usize],
        "a read after a write sees it"
    );
    assert!(
        got[MIB as usize..] == want[MIB as usize..],
        "a read after a discard sees it"
    );
    // The rest of the stream comes from the image's bytes, read ahead or not.
    assert_eq!(stream(dev.as_ref(), 4 * MIB, 8 * MIB), at(4 * MIB, 4 * MIB));
    assert!(wait_read_ahead(dev.as_ref(), 8 * MIB, 64 << 10));
    // A write the backend makes behind the devices (a resize here) drops every chunk.
    b.resize_volume("v", 32 * MIB).unwrap();
    assert!(
        !dev.cached(8 * MIB, 64 << 10),
        "a resize drops what was read ahead"
    );
    assert_eq!(
        lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(),
        b.image_name("v")
    );
    drop((dev, other));
    b.delete_volume("v").unwrap();
    assert_eq!(lab.rbd(&["ls", &format!("rbd/{ns}")]).trim(), "");
}
