//! `Volume::cached`: whether a read would find its blocks in the page cache (a transport runs
//! such reads on its own thread). The checks that need pages out of the cache need a file
//! system whose clean pages can be dropped (not a tmpfs, nor some overlays): the pool lives in
//! the first of the build's scratch directory, /var/tmp and the temporary directory where a
//! probe file's page drops; where none does, those checks are skipped and the test says so.

use blockstore::{CHUNK_SIZE, Pool, PoolOptions};

/// Drops the clean pages of the pool's data file (it must be flushed first).
fn drop_cache(dir: &std::path::Path) {
    let f = std::fs::File::open(dir.join("data")).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// Whether the first byte of `f` can be read without waiting for the disk.
fn in_page_cache(f: &std::fs::File) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        rustix::io::preadv2(
            f,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            0,
            rustix::io::ReadWriteFlags::NOWAIT,
        ),
        Ok(1)
    )
}

/// A scratch directory whose file system drops clean pages on request, if there is one.
fn droppable_dir() -> Option<tempfile::TempDir> {
    let candidates = [
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        std::path::PathBuf::from("/var/tmp"),
        std::env::temp_dir(),
    ];
    candidates.iter().find_map(|base| {
        let tmp = tempfile::tempdir_in(base).ok()?;
        let probe = tmp.path().join("probe");
        std::fs::write(&probe, [0x11u8; 4096]).ok()?;
        let f = std::fs::File::open(&probe).ok()?;
        f.sync_all().ok()?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).ok()?;
        (!in_page_cache(&f)).then_some(tmp)
    })
}

#[test]
fn a_read_is_cached_when_its_first_and_last_blocks_are_in_the_page_cache_or_read_as_zeros() {
    let (tmp, droppable) = match droppable_dir() {
        Some(t) => (t, true),
        None => {
            eprintln!(
                "no scratch file system here drops clean pages (tmpfs or overlay): \
                 the checks that need pages out of the cache are skipped"
            );
            (tempfile::tempdir().unwrap(), false)
        }
    };
    let dir = tmp.path().join("pool");
    let pool = Pool::create(&dir, PoolOptions::default()).unwrap();
    pool.create_volume("v", 64 * CHUNK_SIZE).unwrap();
    let v = pool.open_volume("v").unwrap();
    // Chunks 0..4 written, the rest never.
    let data = vec![0x3cu8; 4 * CHUNK_SIZE as usize];
    v.write_at(0, &data, false).unwrap();
    v.flush().unwrap();
    drop_cache(&dir);

    if droppable {
        assert!(!v.cached(0, 4096), "dropped from the page cache");
        assert!(
            !v.cached(CHUNK_SIZE, 3 * CHUNK_SIZE as usize),
            "first and last block dropped"
        );
    }
    // Never written: reads as zeros, nothing to wait for.
    assert!(v.cached(10 * CHUNK_SIZE, 2 * CHUNK_SIZE as usize));
    // Out of range or empty: fails or ends at once.
    assert!(v.cached(64 * CHUNK_SIZE, 4096));
    assert!(v.cached(0, 0));

    // A whole-block write puts that block (only) back in the page cache without reading.
    v.write_at(0, &[0x5a; 4096], false).unwrap();
    assert!(v.cached(0, 4096));
    assert!(v.cached(512, 1024));
    if droppable {
        assert!(!v.cached(4096, 4096), "the chunk's next block is still out");
        assert!(
            !v.cached(0, 3 * CHUNK_SIZE as usize),
            "so is the last one of the range"
        );
    }
    // A range that ends in never-written space needs only its first block.
    assert!(v.cached(0, 8 * CHUNK_SIZE as usize));

    // A deleted volume's reads fail at once.
    drop(pool.delete("v", blockstore::DeletePolicy::Refuse));
    assert!(v.cached(0, 4096));
}
