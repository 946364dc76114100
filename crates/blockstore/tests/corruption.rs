//! Damaged pool files give an error at open (or, for a torn last commit, the state before
//! it), never a panic.

use std::fs;
use std::path::Path;

use blockstore::{Error, Pool, PoolOptions};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

/// A pool with a checkpoint, then two commits in the log. Returns the log length after
/// the first commit.
fn build(dir: &Path) -> u64 {
    let p = Pool::create(dir, PoolOptions::default()).unwrap();
    p.create_volume("v", 4 * MIB).unwrap();
    let v = p.open_volume("v").unwrap();
    v.write_at(0, &[1; 8192], false).unwrap();
    p.snapshot("v", "s").unwrap();
    let first = fs::metadata(dir.join("log")).unwrap().len();
    v.write_at(65536, &[2; 4096], true).unwrap();
    first
}

fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in ["data", "checkpoint", "log"] {
        fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn read(p: &Pool, name: &str, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    p.open_volume(name).unwrap().read_at(off, &mut b).unwrap();
    b
}

#[test]
fn a_torn_last_commit_is_cut_off_and_the_one_before_survives() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let first = build(&src);
    let full = fs::metadata(src.join("log")).unwrap().len();
    for cut in [first + 1, first + 8, (first + full) / 2, full - 1] {
        let t = d.path().join(format!("cut{cut}"));
        copy(&src, &t);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(t.join("log"))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let p = Pool::open(&t).unwrap();
        assert_eq!(read(&p, "s", 0, 8192), vec![1; 8192]);
        assert_eq!(read(&p, "v", 65536, 4096), vec![0; 4096], "cut at {cut}");
        // The cut tail is gone from the file: new commits follow the good part.
        p.open_volume("v")
            .unwrap()
            .write_at(65536, &[3; 4096], true)
            .unwrap();
        drop(p);
        let p = Pool::open(&t).unwrap();
        assert_eq!(read(&p, "v", 65536, 4096), vec![3; 4096]);
    }
}

#[test]
fn damage_inside_the_log_before_a_good_commit_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let first = build(&src);
    let t = d.path().join("t");
    copy(&src, &t);
    let mut log = fs::read(t.join("log")).unwrap();
    log[first as usize - 3] ^= 0x40;
    fs::write(t.join("log"), &log).unwrap();
    assert!(matches!(Pool::open(&t), Err(Error::Corrupt { .. })));
}

#[test]
fn every_flipped_byte_of_the_checkpoint_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    build(&src);
    let ck = fs::read(src.join("checkpoint")).unwrap();
    for i in 0..ck.len() {
        let t = d.path().join("t");
        let _ = fs::remove_dir_all(&t);
        copy(&src, &t);
        let mut b = ck.clone();
        b[i] ^= 0x01;
        fs::write(t.join("checkpoint"), &b).unwrap();
        assert!(
            matches!(Pool::open(&t), Err(Error::Corrupt { .. })),
            "byte {i}"
        );
    }
    let t = d.path().join("t");
    fs::write(t.join("checkpoint"), &ck[..ck.len() - 1]).unwrap();
    assert!(matches!(Pool::open(&t), Err(Error::Corrupt { .. })));
}

#[test]
fn a_data_file_shorter_than_the_mapped_chunks_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    build(&src);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.join("data"))
        .unwrap();
    f.set_len(65536).unwrap();
    drop(f);
    assert!(matches!(Pool::open(&src), Err(Error::Corrupt { .. })));
    fs::write(src.join("data"), b"not a pool").unwrap();
    assert!(matches!(Pool::open(&src), Err(Error::Corrupt { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_damage_to_any_pool_file_never_panics(
        file in 0usize..3,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
        truncate in proptest::option::of(any::<u16>()),
    ) {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        build(&src);
        let name = ["data", "checkpoint", "log"][file];
        let path = src.join(name);
        let mut b = fs::read(&path).unwrap();
        // Damage the metadata files anywhere, the data file in its header.
        let span = if name == "data" { 64 } else { b.len() };
        for (at, v) in edits {
            let i = at as usize % span;
            b[i] = v;
        }
        if let Some(t) = truncate {
            b.truncate(t as usize % (b.len() + 1));
        }
        fs::write(&path, &b).unwrap();
        if let Ok(p) = Pool::open(&src) {
            // Whatever was recovered can be used.
            for v in p.list().unwrap() {
                let h = p.open_volume(&v.name).unwrap();
                let mut buf = vec![0u8; 65536 * 2];
                let _ = h.read_at(0, &mut buf);
            }
        }
    }
}
