//! `Volume::cached`: whether a read would find its blocks in the page cache (a transport runs
//! such reads on its own thread). The checks that need pages out of the cache need a file
//! system whose clean pages can be dropped (not a tmpfs, nor some overlays): the pool lives in
//! the first of the build's scratch directory, /var/tmp and the temporary directory where a
//! probe file's page drops; where none does, those checks are skipped and the test says so.
//! Some file systems bring a written block's neighbours into the cache with it (large folios
//! filled around a small write); there the checks that a write brings back only its own block
//! are skipped too.

use blockstore::{CHUNK_SIZE, Pool, PoolOptions};

/// Drops the clean pages of the pool's data file (it must be flushed first).
fn drop_cache(dir: &std::path::Path) {
    let f = std::fs::File::open(dir.join("data")).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// Whether the byte at `offset` of `f` can be read without waiting for the disk.
fn in_page_cache(f: &std::fs::File, offset: u64) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        rustix::io::preadv2(
            f,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        ),
        Ok(1)
    )
}

/// What the scratch file system lets the test observe.
struct Scratch {
    dir: tempfile::TempDir,
    /// Clean pages drop on request.
    droppable: bool,
    /// A one-block write into dropped space brings back that block only.
    block_granular: bool,
}

/// A scratch directory whose file system drops clean pages on request, if there is one.
fn scratch() -> Scratch {
    let candidates = [
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        std::path::PathBuf::from("/var/tmp"),
        std::env::temp_dir(),
    ];
    let found = candidates.iter().find_map(|base| {
        let tmp = tempfile::tempdir_in(base).ok()?;
        let probe = tmp.path().join("probe");
        std::fs::write(&probe, vec![0x11u8; 16 * 4096]).ok()?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&probe)
            .ok()?;
        f.sync_all().ok()?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).ok()?;
        if in_page_cache(&f, 0) {
            return None;
        }
        std::os::unix::fs::FileExt::write_at(&f, &[0x22u8; 4096], 0).ok()?;
        let block_granular = !in_page_cache(&f, 4096);
        std::fs::remove_file(&probe).ok()?;
        Some(Scratch {
            dir: tmp,
            droppable: true,
            block_granular,
        })
    });
    found.unwrap_or_else(|| {
        eprintln!(
            "no scratch file system here drops clean pages (tmpfs or overlay): \
             the checks that need pages out of the cache are skipped"
        );
        Scratch {
            dir: tempfile::tempdir().unwrap(),
            droppable: false,
            block_granular: false,
        }
    })
}

#[test]
fn a_read_is_cached_when_its_first_and_last_blocks_are_in_the_page_cache_or_read_as_zeros() {
    let scratch = scratch();
    let droppable = scratch.droppable;
    if droppable && !scratch.block_granular {
        eprintln!(
            "a one-block write here brings its neighbours into the page cache: \
             the checks that the rest of a chunk stays out are skipped"
        );
    }
    let dir = scratch.dir.path().join("pool");
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
    if droppable && scratch.block_granular {
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

#[test]
fn a_read_now_reads_what_the_page_cache_holds_and_declines_the_rest() {
    let scratch = scratch();
    let dir = scratch.dir.path().join("pool");
    let pool = Pool::create(&dir, PoolOptions::default()).unwrap();
    pool.create_volume("v", 64 * CHUNK_SIZE).unwrap();
    let v = pool.open_volume("v").unwrap();
    // Chunks 0..4 written, the rest never; then a snapshot and a block written over it, so
    // a read spans the clone's own block, its shared blocks and never-written space.
    let data: Vec<u8> = (0..4 * CHUNK_SIZE as usize)
        .map(|i| (i / 4096) as u8 ^ 0x3c)
        .collect();
    v.write_at(0, &data, false).unwrap();
    pool.snapshot("v", "s").unwrap();
    v.write_at(CHUNK_SIZE + 4096, &[0x77; 4096], false).unwrap();
    v.flush().unwrap();
    let mut want = vec![0u8; 8 * CHUNK_SIZE as usize];
    want[..data.len()].copy_from_slice(&data);
    want[CHUNK_SIZE as usize + 4096..CHUNK_SIZE as usize + 8192].fill(0x77);

    // At hand: the same bytes as a waiting read.
    let mut got = vec![0xeeu8; want.len()];
    assert!(
        v.read_now(0, &mut got).unwrap(),
        "everything in the page cache"
    );
    assert!(
        got == want,
        "read_now returned other bytes than were written"
    );
    let mut one = vec![0u8; 4096];
    assert!(v.read_now(CHUNK_SIZE + 4096, &mut one).unwrap());
    assert_eq!(one, vec![0x77; 4096]);
    // Never written: zeros, nothing to wait for.
    let mut z = vec![0xeeu8; 2 * CHUNK_SIZE as usize];
    assert!(v.read_now(10 * CHUNK_SIZE, &mut z).unwrap());
    assert!(z.iter().all(|&b| b == 0));
    // Out of range: refused as a waiting read would be.
    assert!(matches!(
        v.read_now(64 * CHUNK_SIZE, &mut one),
        Err(blockstore::Error::OutOfRange { .. })
    ));

    drop_cache(&dir);
    if scratch.droppable {
        // Only the first look right after the drop: its miss starts the kernel's
        // readahead, which may have brought the neighbours back by a second one.
        assert!(
            !v.read_now(2 * CHUNK_SIZE, &mut got[..CHUNK_SIZE as usize])
                .unwrap(),
            "a shared chunk dropped from the page cache: would wait"
        );
    }
    // The waiting read still reads it all, and brings it back.
    let mut back = vec![0u8; want.len()];
    v.read_at(0, &mut back).unwrap();
    assert!(back == want);
    assert!(v.read_now(0, &mut got).unwrap());
    assert!(got == want);
}
