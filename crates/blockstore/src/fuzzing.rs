//! The metadata decoders a pool is opened with, reachable without the files around them, for
//! the fuzz target `engine_metadata` (`fuzz/fuzz_targets/engine_metadata.rs`). Not part of the
//! engine's API: nothing but the fuzz target may depend on it.

use std::path::Path;

use crate::format::{self, Frame, HEADER_LEN, Record};
use crate::state::{CHUNK_SIZE, MAX_CHUNK, State};

/// Largest chunk bound given to the decoder (its reference-count table takes 4 bytes a chunk;
/// a real pool's bound follows from its data file's size).
pub const MAX_BOUND: u64 = 1 << 20;

/// What a decoded state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub volumes: usize,
    pub nodes: usize,
    pub used_chunks: u64,
}

fn figures(st: &State) -> Decoded {
    Decoded {
        volumes: st.vols.len(),
        nodes: st.node_count(),
        used_chunks: st.used_chunks,
    }
}

/// Deletes every volume as the log would; the state must then hold no node and no chunk.
fn delete_all(st: &mut State) {
    let ids: Vec<u64> = st.vols.keys().copied().collect();
    for id in ids {
        st.replay(vec![Record::Delete { id }])
            .expect("deleting a volume that exists");
        let (_, rel) = st.take_pending();
        st.apply_releases(rel);
    }
    assert_eq!(
        st.node_count(),
        0,
        "every node is released with its volumes"
    );
    assert_eq!(
        st.used_chunks, 0,
        "every chunk is released with its volumes"
    );
}

/// Decodes a checkpoint body under `chunk_bound`, replays a log file (`log`, header included;
/// skipped when shorter than a header) and then each of `bodies` as the records of one
/// commit (no checksum to pass), as [`crate::Pool::open`] does. `None` if any of it is
/// refused. What decodes must be consistent: written as a checkpoint it decodes to the same
/// figures, and once every volume is deleted no node and no chunk is left in use (in both
/// the decoded state and the re-read one). Panics only when that does not hold.
pub fn decode_and_replay(
    checkpoint: &[u8],
    chunk_bound: u64,
    log: &[u8],
    bodies: &[&[u8]],
) -> Option<Decoded> {
    let bound = chunk_bound.min(MAX_BOUND) as u32;
    let mut st = State::decode_checkpoint(checkpoint, bound).ok()?;
    if log.len() >= HEADER_LEN {
        crate::pool::replay_log(&mut st, log, Path::new("log")).ok()?;
    }
    for body in bodies {
        let recs = format::decode_records(body).ok()?;
        st.replay(recs).ok()?;
        let (_, rel) = st.take_pending();
        st.apply_releases(rel);
    }
    st.rebuild_free_list();
    st.chunk_bound = MAX_CHUNK;
    let seen = figures(&st);

    let mut again = State::decode_checkpoint(&st.encode_checkpoint(), bound)
        .expect("a state written as a checkpoint decodes");
    assert_eq!(figures(&again), seen, "a checkpoint keeps every figure");
    delete_all(&mut again);
    delete_all(&mut st);
    Some(seen)
}

/// A pool split as [`decode_and_replay`] takes it: the checkpoint's body, the chunk bound its
/// data file gives, the log file, and the records of each whole commit of the log. For
/// writing fuzz seeds from real pools.
pub struct PoolFiles {
    pub checkpoint: Vec<u8>,
    pub chunk_bound: u64,
    pub log: Vec<u8>,
    pub bodies: Vec<Vec<u8>>,
}

/// Reads the files of the (closed) pool in `dir`.
pub fn pool_files(dir: &Path) -> std::io::Result<PoolFiles> {
    let ck = std::fs::read(dir.join(crate::pool::CHECKPOINT_FILE))?;
    let log = std::fs::read(dir.join(crate::pool::LOG_FILE))?;
    let data_len = std::fs::metadata(dir.join(crate::pool::DATA_FILE))?.len();
    let bad = || std::io::Error::other("not a pool checkpoint");
    let checkpoint = ck
        .get(HEADER_LEN..ck.len().checked_sub(4).ok_or_else(bad)?)
        .ok_or_else(bad)?
        .to_vec();
    let mut bodies = Vec::new();
    let mut pos = HEADER_LEN.min(log.len());
    while let Frame::Good { records, len, .. } = format::parse_frame(&log[pos..]) {
        bodies.push(records.to_vec());
        pos += len;
    }
    Ok(PoolFiles {
        checkpoint,
        chunk_bound: data_len.saturating_sub(1) / CHUNK_SIZE,
        log,
        bodies,
    })
}
