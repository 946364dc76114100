//! Behaviour of the engine on real pool files in a temporary directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use blockstore::{CHUNK_SIZE, DeletePolicy, Error, Pool, PoolOptions, VolumeKind};
use rand::{Rng, SeedableRng, rngs::StdRng};

const MIB: u64 = 1 << 20;

fn pool() -> (tempfile::TempDir, Pool) {
    let dir = tempfile::tempdir().unwrap();
    let p = Pool::create(dir.path().join("pool"), PoolOptions::default()).unwrap();
    (dir, p)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random()).collect()
}

/// Compares byte buffers, reporting the first difference instead of both buffers.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: got {} want {}",
            got[i], want[i]
        );
    }
}

fn read(p: &Pool, name: &str, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xAAu8; len];
    p.open_volume(name).unwrap().read_at(off, &mut b).unwrap();
    b
}

#[test]
fn never_written_ranges_read_as_zeros() {
    let (_d, p) = pool();
    p.create_volume("v", 8 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    v.write_at(MIB + 512, &[7u8; 100], false).unwrap();
    let b = read(&p, "v", 0, 8 * MIB as usize);
    assert!(b[..(MIB + 512) as usize].iter().all(|&x| x == 0));
    assert!(
        b[(MIB + 512) as usize..(MIB + 612) as usize]
            .iter()
            .all(|&x| x == 7)
    );
    assert!(b[(MIB + 612) as usize..].iter().all(|&x| x == 0));
}

#[test]
fn random_io_matches_a_byte_model_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let size = 4 * MIB;
    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
    {
        let p = Pool::create(&path, PoolOptions::default()).unwrap();
        p.set_checkpoint_threshold(16 * 1024);
        p.create_volume("v", size).unwrap();
        model.insert("v".into(), vec![0; size as usize]);
        let mut r = StdRng::seed_from_u64(1);
        let mut snaps = 0;
        for i in 0..600u64 {
            let names: Vec<String> = model.keys().cloned().collect();
            let name = names[r.random_range(0..names.len())].clone();
            let writable = !p.open_volume(&name).unwrap().is_read_only().unwrap();
            match r.random_range(0..10) {
                0..=4 if writable => {
                    let len = r.random_range(1..200_000usize);
                    let off = r.random_range(0..size - len as u64);
                    let data = pattern(i, len);
                    p.open_volume(&name)
                        .unwrap()
                        .write_at(off, &data, r.random_bool(0.1))
                        .unwrap();
                    model.get_mut(&name).unwrap()[off as usize..off as usize + len]
                        .copy_from_slice(&data);
                }
                5 if writable => {
                    let len = r.random_range(1..300_000u64);
                    let off = r.random_range(0..size - len);
                    p.open_volume(&name).unwrap().discard(off, len).unwrap();
                    model.get_mut(&name).unwrap()[off as usize..(off + len) as usize].fill(0);
                }
                6 if snaps < 12 => {
                    snaps += 1;
                    let s = format!("s{i}");
                    if r.random_bool(0.5) {
                        p.snapshot(&name, &s).unwrap();
                    } else {
                        p.clone_volume(&name, &s).unwrap();
                    }
                    let m = model[&name].clone();
                    model.insert(s, m);
                }
                7 if model.len() > 2 && name != "v" => {
                    p.delete(&name, DeletePolicy::Promote).unwrap();
                    model.remove(&name);
                }
                8 => p.flush().unwrap(),
                _ => {
                    let len = r.random_range(1..300_000usize);
                    let off = r.random_range(0..size - len as u64);
                    same(
                        &read(&p, &name, off, len),
                        &model[&name][off as usize..off as usize + len],
                        &format!("{name} at {off}+{len} (op {i})"),
                    );
                }
            }
        }
        p.flush().unwrap();
        for (name, m) in &model {
            same(
                &read(&p, name, 0, size as usize),
                m,
                &format!("{name} before reopen"),
            );
        }
    }
    let p = Pool::open(&path).unwrap();
    assert_eq!(p.list().unwrap().len(), model.len());
    for (name, m) in &model {
        same(
            &read(&p, name, 0, size as usize),
            m,
            &format!("{name} after reopen"),
        );
    }
}

/// Small unaligned writes between frequent snapshots and clones: every chunk ends up layered
/// (`phys` over `under`) and shared again, the path where a write must copy only the blocks
/// `phys` holds and keep the right `under`.
#[test]
fn small_writes_over_layered_shared_chunks_match_a_byte_model() {
    for seed in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let size = 8 * CHUNK_SIZE;
        let mut model: HashMap<String, Vec<u8>> = HashMap::new();
        {
            let p = Pool::create(&path, PoolOptions::default()).unwrap();
            p.create_volume("v", size).unwrap();
            model.insert("v".into(), vec![0; size as usize]);
            let mut writable = vec!["v".to_string()];
            let mut r = StdRng::seed_from_u64(100 + seed);
            for i in 0..1000u64 {
                let name = writable[r.random_range(0..writable.len())].clone();
                match r.random_range(0..20) {
                    0 => {
                        let s = format!("s{i}");
                        p.snapshot(&name, &s).unwrap();
                        let m = model[&name].clone();
                        model.insert(s, m);
                    }
                    1 if writable.len() < 6 => {
                        let c = format!("c{i}");
                        p.clone_volume(&name, &c).unwrap();
                        let m = model[&name].clone();
                        model.insert(c.clone(), m);
                        writable.push(c);
                    }
                    2 => p.flush().unwrap(),
                    3 => {
                        let len = r.random_range(1..20_000u64);
                        let off = r.random_range(0..size - len);
                        p.open_volume(&name).unwrap().discard(off, len).unwrap();
                        model.get_mut(&name).unwrap()[off as usize..(off + len) as usize].fill(0);
                    }
                    _ => {
                        let len = r.random_range(1..9000usize);
                        let off = r.random_range(0..size - len as u64);
                        let data = pattern(i * 7 + seed, len);
                        p.open_volume(&name)
                            .unwrap()
                            .write_at(off, &data, false)
                            .unwrap();
                        model.get_mut(&name).unwrap()[off as usize..off as usize + len]
                            .copy_from_slice(&data);
                    }
                }
                if i % 250 == 249 {
                    for (n, m) in &model {
                        same(
                            &read(&p, n, 0, size as usize),
                            m,
                            &format!("{n} (seed {seed}, op {i})"),
                        );
                    }
                }
            }
            p.flush().unwrap();
        }
        let p = Pool::open(&path).unwrap();
        for (n, m) in &model {
            same(
                &read(&p, n, 0, size as usize),
                m,
                &format!("{n} after reopen (seed {seed})"),
            );
        }
    }
}

#[test]
fn snapshot_keeps_the_point_in_time_and_is_read_only() {
    let (_d, p) = pool();
    p.create_volume("v", 4 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    v.write_at(0, &pattern(1, 2 * MIB as usize), false).unwrap();
    let s = p.snapshot("v", "s").unwrap();
    assert_eq!(s.kind, VolumeKind::Snapshot);
    assert_eq!(s.parent.as_deref(), Some("v"));
    v.write_at(4096, &pattern(2, 8192), false).unwrap();
    v.write_at(MIB, &pattern(3, 100), false).unwrap();
    same(
        &read(&p, "s", 0, 2 * MIB as usize),
        &pattern(1, 2 * MIB as usize),
        "&p, s, 0, 2 * MIB as usize",
    );
    let mut now = pattern(1, 2 * MIB as usize);
    now[4096..4096 + 8192].copy_from_slice(&pattern(2, 8192));
    now[MIB as usize..MIB as usize + 100].copy_from_slice(&pattern(3, 100));
    same(
        &read(&p, "v", 0, 2 * MIB as usize),
        &now,
        "&p, v, 0, 2 * MIB as usize",
    );
    let sv = p.open_volume("s").unwrap();
    assert!(matches!(
        sv.write_at(0, &[1], false),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(sv.discard(0, 4096), Err(Error::ReadOnly { .. })));
}

#[test]
fn clones_of_clones_are_writable_and_independent() {
    let (_d, p) = pool();
    p.create_volume("v", MIB).unwrap();
    p.open_volume("v")
        .unwrap()
        .write_at(0, &[1u8; 65536], false)
        .unwrap();
    p.snapshot("v", "s").unwrap();
    p.clone_volume("s", "c1").unwrap();
    p.open_volume("c1")
        .unwrap()
        .write_at(100, &[2u8; 10], false)
        .unwrap();
    p.clone_volume("c1", "c2").unwrap();
    p.open_volume("c2")
        .unwrap()
        .write_at(200, &[3u8; 10], false)
        .unwrap();
    p.open_volume("c1")
        .unwrap()
        .write_at(300, &[4u8; 10], false)
        .unwrap();
    let (v, s, c1, c2) = (
        read(&p, "v", 0, 400),
        read(&p, "s", 0, 400),
        read(&p, "c1", 0, 400),
        read(&p, "c2", 0, 400),
    );
    assert!(v.iter().all(|&x| x == 1) && s == v);
    assert_eq!(&c1[100..110], &[2; 10]);
    assert_eq!(&c1[200..210], &[1; 10]);
    assert_eq!(&c1[300..310], &[4; 10]);
    assert_eq!(&c2[100..110], &[2; 10]);
    assert_eq!(&c2[200..210], &[3; 10]);
    assert_eq!(&c2[300..310], &[1; 10]);
    assert_eq!(p.info("c2").unwrap().kind, VolumeKind::Clone);
}

#[test]
fn consistency_group_of_64_volumes_captures_one_instant() {
    let (_d, p) = pool();
    let names: Vec<String> = (0..64).map(|i| format!("v{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        p.create_volume(n, MIB).unwrap();
        p.open_volume(n)
            .unwrap()
            .write_at(0, &[i as u8; 4096], false)
            .unwrap();
    }
    let snaps: Vec<String> = (0..64).map(|i| format!("g{i}")).collect();
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .zip(&snaps)
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    p.snapshot_group(&pairs).unwrap();
    for (i, n) in names.iter().enumerate() {
        p.open_volume(n)
            .unwrap()
            .write_at(0, &[0xFF; 4096], false)
            .unwrap();
        same(
            &read(&p, &snaps[i], 0, 4096),
            &vec![i as u8; 4096],
            "&p, &snaps[i], 0, 4096",
        );
    }
    // A group with a missing member or a taken name creates nothing.
    let bad = [("v0", "x0"), ("nope", "x1")];
    assert!(matches!(
        p.snapshot_group(&bad),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(p.info("x0"), Err(Error::NotFound { .. })));
    let dup = [("v0", "x0"), ("v1", "g3")];
    assert!(matches!(
        p.snapshot_group(&dup),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(p.info("x0"), Err(Error::NotFound { .. })));
}

#[test]
fn delete_refuses_dependents_or_promotes_them_and_reclaims_space() {
    let (_d, p) = pool();
    p.create_volume("v", 4 * MIB).unwrap();
    p.open_volume("v")
        .unwrap()
        .write_at(0, &pattern(5, 4 * MIB as usize), false)
        .unwrap();
    p.flush().unwrap();
    let base = p.stats().unwrap().used_bytes;
    assert_eq!(base, 4 * MIB);
    p.snapshot("v", "s").unwrap();
    p.clone_volume("s", "c").unwrap();
    p.open_volume("c")
        .unwrap()
        .write_at(0, &[9u8; 65536], false)
        .unwrap();
    p.flush().unwrap();
    assert_eq!(p.stats().unwrap().used_bytes, base + CHUNK_SIZE);
    match p.delete("s", DeletePolicy::Refuse) {
        Err(Error::HasDependents { dependents, .. }) => assert_eq!(dependents, vec!["c"]),
        other => panic!("{other:?}"),
    }
    p.delete("s", DeletePolicy::Promote).unwrap();
    assert_eq!(p.info("c").unwrap().parent.as_deref(), Some("v"));
    p.delete("v", DeletePolicy::Promote).unwrap();
    assert_eq!(p.info("c").unwrap().parent, None);
    // The clone still has everything it shared with the deleted volume.
    let mut want = pattern(5, 4 * MIB as usize);
    want[..65536].fill(9);
    same(
        &read(&p, "c", 0, 4 * MIB as usize),
        &want,
        "&p, c, 0, 4 * MIB as usize",
    );
    assert_eq!(p.stats().unwrap().used_bytes, 4 * MIB);
    p.delete("c", DeletePolicy::Refuse).unwrap();
    let st = p.stats().unwrap();
    assert_eq!((st.used_bytes, st.volumes), (0, 0));
    assert!(matches!(
        p.delete("c", DeletePolicy::Refuse),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn accounting_reports_allocated_unique_and_shared() {
    let (_d, p) = pool();
    p.create_volume("v", 4 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    v.write_at(0, &[1u8; 4 * 65536], false).unwrap();
    let i = p.info("v").unwrap();
    assert_eq!(
        (i.allocated_bytes, i.unique_bytes, i.shared_bytes),
        (4 * CHUNK_SIZE, 4 * CHUNK_SIZE, 0)
    );
    p.snapshot("v", "s").unwrap();
    let i = p.info("v").unwrap();
    assert_eq!(
        (i.allocated_bytes, i.unique_bytes, i.shared_bytes),
        (4 * CHUNK_SIZE, 0, 4 * CHUNK_SIZE)
    );
    // Rewrite one chunk whole: it becomes unique to the volume.
    v.write_at(0, &[2u8; 65536], false).unwrap();
    p.flush().unwrap();
    let i = p.info("v").unwrap();
    assert_eq!(
        (i.allocated_bytes, i.unique_bytes, i.shared_bytes),
        (4 * CHUNK_SIZE, CHUNK_SIZE, 3 * CHUNK_SIZE)
    );
    let s = p.info("s").unwrap();
    assert_eq!(
        (s.allocated_bytes, s.unique_bytes),
        (4 * CHUNK_SIZE, CHUNK_SIZE)
    );
    assert_eq!(p.stats().unwrap().used_bytes, 5 * CHUNK_SIZE);
}

#[test]
fn discard_frees_chunks_and_reads_zeros() {
    let (_d, p) = pool();
    p.create_volume("v", 4 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    v.write_at(0, &pattern(1, 4 * MIB as usize), false).unwrap();
    v.discard(65536 + 4096, 3 * 65536).unwrap();
    v.flush().unwrap();
    // Chunks 2 and 3 are wholly discarded; 1 and 4 partly.
    assert_eq!(p.stats().unwrap().used_bytes, 4 * MIB - 2 * CHUNK_SIZE);
    let mut want = pattern(1, 4 * MIB as usize);
    want[65536 + 4096..4 * 65536 + 4096].fill(0);
    same(
        &read(&p, "v", 0, 4 * MIB as usize),
        &want,
        "&p, v, 0, 4 * MIB as usize",
    );
    assert_eq!(v.mapping_status(0).unwrap(), (true, 65536 + 4096));
    assert_eq!(v.mapping_status(65536 + 4096).unwrap(), (false, 3 * 65536));
    // Sub-block discards zero bytes without unmapping.
    v.discard(10, 20).unwrap();
    want[10..30].fill(0);
    same(&read(&p, "v", 0, 4096), &want[..4096], "&p, v, 0, 4096");
}

#[test]
fn a_full_pool_fails_writes_with_no_space_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let p = Pool::create(
        &path,
        PoolOptions {
            size_limit: Some(16 * CHUNK_SIZE),
        },
    )
    .unwrap();
    p.create_volume("v", 4 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    let data = pattern(3, 12 * CHUNK_SIZE as usize);
    v.write_at(0, &data, false).unwrap();
    p.snapshot("v", "s").unwrap();
    // 4 free chunks: the fifth new chunk fails.
    for i in 0..4u64 {
        v.write_at(i * CHUNK_SIZE, &[i as u8 + 1; 512], false)
            .unwrap();
    }
    assert!(matches!(
        v.write_at(4 * CHUNK_SIZE, &[9; 512], false),
        Err(Error::NoSpace)
    ));
    assert!(matches!(
        v.write_at(20 * CHUNK_SIZE, &[9; 512], false),
        Err(Error::NoSpace)
    ));
    assert_eq!(p.stats().unwrap().free_bytes, 0);
    // Everything stays readable and intact.
    same(&read(&p, "s", 0, data.len()), &data, "&p, s, 0, data.len()");
    let mut now = data.clone();
    for i in 0..4usize {
        now[i * 65536..i * 65536 + 512].fill(i as u8 + 1);
    }
    same(&read(&p, "v", 0, data.len()), &now, "&p, v, 0, data.len()");
    // Overwrites of owned blocks still work; discarding a chunk gives space back.
    v.write_at(0, &[0xEE; 512], false).unwrap();
    now[..512].fill(0xEE);
    p.delete("s", DeletePolicy::Refuse).unwrap();
    assert!(matches!(
        v.write_at(20 * CHUNK_SIZE, &[9; 512], false),
        Err(Error::NoSpace)
    ));
    v.discard(8 * CHUNK_SIZE, CHUNK_SIZE).unwrap();
    now[8 * 65536..9 * 65536].fill(0);
    v.write_at(20 * CHUNK_SIZE, &[9; 512], false).unwrap();
    now.resize(4 * MIB as usize, 0);
    now[20 * 65536..20 * 65536 + 512].fill(9);
    drop(v);
    drop(p);
    let p = Pool::open(&path).unwrap();
    same(
        &read(&p, "v", 0, 4 * MIB as usize),
        &now,
        "&p, v, 0, 4 * MIB as usize",
    );
    // Raising the limit allows more.
    p.set_size_limit(64 * CHUNK_SIZE).unwrap();
    p.open_volume("v")
        .unwrap()
        .write_at(30 * CHUNK_SIZE, &[1; 100], true)
        .unwrap();
}

#[test]
fn a_write_that_fills_the_pool_midway_leaves_whole_chunks_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let p = Pool::create(
        &path,
        PoolOptions {
            size_limit: Some(4 * CHUNK_SIZE),
        },
    )
    .unwrap();
    p.create_volume("v", MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    let data = pattern(8, 6 * CHUNK_SIZE as usize);
    assert!(matches!(v.write_at(0, &data, false), Err(Error::NoSpace)));
    let got = read(&p, "v", 0, data.len());
    let cut = 4 * CHUNK_SIZE as usize;
    same(
        &got[..cut],
        &data[..cut],
        "chunks allocated before the pool filled",
    );
    assert!(got[cut..].iter().all(|&b| b == 0));
    drop(v);
    drop(p);
    let p = Pool::open(&path).unwrap();
    same(&read(&p, "v", 0, cut), &data[..cut], "after reopen");
}

#[test]
fn resize_grows_with_zeros_and_refuses_to_shrink() {
    let (_d, p) = pool();
    p.create_volume("v", MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    v.write_at(MIB - 10, &[5; 10], false).unwrap();
    assert!(matches!(
        v.write_at(MIB - 5, &[5; 10], false),
        Err(Error::OutOfRange { .. })
    ));
    p.resize("v", 2 * MIB).unwrap();
    assert_eq!(v.size().unwrap(), 2 * MIB);
    assert!(read(&p, "v", MIB, MIB as usize).iter().all(|&x| x == 0));
    v.write_at(2 * MIB - 5, &[6; 5], false).unwrap();
    assert!(matches!(p.resize("v", MIB), Err(Error::InvalidSize { .. })));
    assert!(matches!(
        p.resize("v", MIB + 1),
        Err(Error::InvalidSize { .. })
    ));
    p.snapshot("v", "s").unwrap();
    assert!(matches!(
        p.resize("s", 4 * MIB),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn bad_names_and_sizes_are_refused() {
    let (_d, p) = pool();
    assert!(matches!(
        p.create_volume("", MIB),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        p.create_volume("a\nb", MIB),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        p.create_volume(&"x".repeat(256), MIB),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        p.create_volume("v", 0),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        p.create_volume("v", (64 << 40) + CHUNK_SIZE),
        Err(Error::InvalidSize { .. })
    ));
    p.create_volume("v", MIB).unwrap();
    assert!(matches!(
        p.create_volume("v", MIB),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        p.snapshot("v", "v"),
        Err(Error::AlreadyExists { .. })
    ));
    let v = p.open_volume("v").unwrap();
    assert!(matches!(
        v.read_at(u64::MAX - 2, &mut [0; 4]),
        Err(Error::OutOfRange { .. })
    ));
    p.delete("v", DeletePolicy::Refuse).unwrap();
    assert!(matches!(
        v.read_at(0, &mut [0; 4]),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_64_tib_volume_maps_only_what_is_written() {
    let (_d, p) = pool();
    let size = 64u64 << 40;
    p.create_volume("big", size).unwrap();
    let v = p.open_volume("big").unwrap();
    v.write_at(size - 4096, &[3; 4096], true).unwrap();
    v.write_at(size / 2, &[4; 4096], true).unwrap();
    same(
        &read(&p, "big", size - 8192, 8192)[4096..],
        &[3; 4096],
        "end of big",
    );
    assert_eq!(p.info("big").unwrap().allocated_bytes, 2 * CHUNK_SIZE);
    let (mapped, len) = v.mapping_status(0).unwrap();
    assert!(!mapped && len > 0);
    p.snapshot("big", "s").unwrap();
    same(
        &read(&p, "s", size / 2, 4096),
        &[4; 4096],
        "middle of the snapshot",
    );
}

#[test]
fn resync_reverts_a_volume_to_its_snapshot_and_reports_progress() {
    let (_d, p) = pool();
    p.create_volume("v", 8 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    let orig = pattern(1, 8 * MIB as usize);
    v.write_at(0, &orig, false).unwrap();
    p.snapshot("v", "s").unwrap();
    v.write_at(3 * 65536 + 100, &[1; 10], false).unwrap();
    v.write_at(70 * 65536, &[2; 70000], false).unwrap();
    v.discard(100 * 65536, 65536).unwrap();
    let job = p.resync("s", "v").unwrap();
    let rep = job.wait().unwrap();
    assert_eq!(rep.changed_chunks, 1 + 2 + 1);
    same(&read(&p, "v", 0, orig.len()), &orig, "&p, v, 0, orig.len()");
    // The volume is writable again, without touching the snapshot.
    v.write_at(0, &[7; 10], false).unwrap();
    same(&read(&p, "s", 0, orig.len()), &orig, "&p, s, 0, orig.len()");
}

#[test]
fn resync_onto_another_volume_resizes_it_to_the_source() {
    let (_d, p) = pool();
    p.create_volume("a", 2 * MIB).unwrap();
    p.open_volume("a")
        .unwrap()
        .write_at(0, &pattern(2, 2 * MIB as usize), false)
        .unwrap();
    p.snapshot("a", "sa").unwrap();
    for (name, size) in [("small", MIB), ("large", 8 * MIB)] {
        p.create_volume(name, size).unwrap();
        p.open_volume(name)
            .unwrap()
            .write_at(0, &pattern(9, MIB as usize), false)
            .unwrap();
        if size > MIB {
            p.open_volume(name)
                .unwrap()
                .write_at(7 * MIB, &[1; 100], false)
                .unwrap();
        }
        let job = p.resync("sa", name).unwrap();
        job.wait().unwrap();
        assert_eq!(p.info(name).unwrap().size, 2 * MIB);
        same(
            &read(&p, name, 0, 2 * MIB as usize),
            &pattern(2, 2 * MIB as usize),
            "&p, name, 0, 2 * MIB as usize",
        );
    }
    p.flush().unwrap();
    // The large one's chunk beyond the new size was freed: only "a"'s chunks remain in use.
    assert_eq!(p.stats().unwrap().used_bytes, 2 * MIB);
    assert!(matches!(p.resync("sa", "sa"), Err(Error::Invalid(_))));
    assert!(matches!(p.resync("a", "sa"), Err(Error::ReadOnly { .. })));
}

#[test]
fn concurrent_writers_readers_and_snapshots_stay_consistent() {
    let (_d, p) = pool();
    let threads = 6u64;
    let region = 16 * CHUNK_SIZE;
    p.create_volume("v", threads * region).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for t in 0..threads {
        let v = p.open_volume("v").unwrap();
        let stop = stop.clone();
        hs.push(std::thread::spawn(move || {
            let mut version = 0u64;
            let mut r = StdRng::seed_from_u64(t);
            while !stop.load(Ordering::Relaxed) && version < 3000 {
                version += 1;
                // Every 4 KiB block of the region holds the thread's latest version number.
                let blk = r.random_range(0..region / 4096);
                let mut b = vec![0u8; 4096];
                for w in b.chunks_mut(8) {
                    w.copy_from_slice(&version.to_le_bytes());
                }
                v.write_at(t * region + blk * 4096, &b, false).unwrap();
                let mut rb = vec![0u8; 4096];
                v.read_at(t * region + blk * 4096, &mut rb).unwrap();
                assert_eq!(rb, b);
            }
            version
        }));
    }
    let mut snaps = Vec::new();
    for i in 0..20 {
        let n = format!("s{i}");
        p.snapshot("v", &n).unwrap();
        snaps.push(n);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    // Each block of each snapshot holds one whole version, never decreasing over snapshots.
    let mut last = vec![0u64; (threads * region / 4096) as usize];
    for n in snaps.iter().chain(std::iter::once(&"v".to_string())) {
        let b = read(&p, n, 0, (threads * region) as usize);
        for (i, blk) in b.chunks(4096).enumerate() {
            let ver = u64::from_le_bytes(blk[..8].try_into().unwrap());
            assert!(
                blk.chunks(8).all(|w| w == ver.to_le_bytes()),
                "torn block {i} in {n}"
            );
            assert!(ver >= last[i], "block {i} went back in time in {n}");
            last[i] = ver;
        }
    }
}

#[test]
fn a_second_open_of_the_same_pool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let p = Pool::create(&path, PoolOptions::default()).unwrap();
    assert!(matches!(Pool::open(&path), Err(Error::Locked { .. })));
    assert!(matches!(
        Pool::create(dir.path().join("pool2"), PoolOptions::default())
            .and(Pool::create(&path, PoolOptions::default())),
        Err(Error::Locked { .. })
    ));
    drop(p);
    assert!(matches!(
        Pool::create(&path, PoolOptions::default()),
        Err(Error::NotAPool { .. })
    ));
    Pool::open(&path).unwrap();
    assert!(matches!(
        Pool::open(dir.path()),
        Err(Error::NotAPool { .. })
    ));
}
