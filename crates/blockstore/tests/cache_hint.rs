//! `Volume::cached`: whether a read would find its blocks in the page cache (a transport runs
//! such reads on its own thread). Needs a file system whose clean pages can be dropped, so
//! the pool lives on the build's disk rather than in /tmp, which may be a tmpfs.

use blockstore::{CHUNK_SIZE, Pool, PoolOptions};

/// Drops the clean pages of the pool's data file (it must be flushed first).
fn drop_cache(dir: &std::path::Path) {
    let f = std::fs::File::open(dir.join("data")).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

#[test]
fn a_read_is_cached_when_its_first_and_last_blocks_are_in_the_page_cache_or_read_as_zeros() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("pool");
    let pool = Pool::create(&dir, PoolOptions::default()).unwrap();
    pool.create_volume("v", 64 * CHUNK_SIZE).unwrap();
    let v = pool.open_volume("v").unwrap();
    // Chunks 0..4 written, the rest never.
    let data = vec![0x3cu8; 4 * CHUNK_SIZE as usize];
    v.write_at(0, &data, false).unwrap();
    v.flush().unwrap();
    drop_cache(&dir);

    assert!(!v.cached(0, 4096), "dropped from the page cache");
    assert!(
        !v.cached(CHUNK_SIZE, 3 * CHUNK_SIZE as usize),
        "first and last block dropped"
    );
    // Never written: reads as zeros, nothing to wait for.
    assert!(v.cached(10 * CHUNK_SIZE, 2 * CHUNK_SIZE as usize));
    // Out of range or empty: fails or ends at once.
    assert!(v.cached(64 * CHUNK_SIZE, 4096));
    assert!(v.cached(0, 0));

    // A whole-block write puts that block (only) back in the page cache without reading.
    v.write_at(0, &[0x5a; 4096], false).unwrap();
    assert!(v.cached(0, 4096));
    assert!(v.cached(512, 1024));
    assert!(!v.cached(4096, 4096), "the chunk's next block is still out");
    assert!(
        !v.cached(0, 3 * CHUNK_SIZE as usize),
        "so is the last one of the range"
    );
    // A range that ends in never-written space needs only its first block.
    assert!(v.cached(0, 8 * CHUNK_SIZE as usize));

    // A deleted volume's reads fail at once.
    drop(pool.delete("v", blockstore::DeletePolicy::Refuse));
    assert!(v.cached(0, 4096));
}
