//! Creating and opening a pool: the directory lock, the files, and recovery from the
//! checkpoint and the log.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use super::commit::{Committer, Inner, checkpoint_bytes, write_atomic};
use super::{CHECKPOINT_FILE, DATA_FILE, LOCK_FILE, LOG_FILE, Pool, PoolOptions};
use crate::error::{Error, Result, io_err};
use crate::format::{
    self, CHECKPOINT_MAGIC, DATA_MAGIC, DecodeError, Frame, HEADER_LEN, Header, LOG_MAGIC,
};
use crate::state::{CHUNK_SIZE, MAX_CHUNK, State};

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        Error::Locked {
            dir: dir.to_path_buf(),
        }
    })?;
    Ok(f)
}

fn corrupt(file: &Path, base: u64, e: DecodeError) -> Error {
    Error::Corrupt {
        file: file.to_path_buf(),
        offset: base + e.offset,
        reason: e.reason,
    }
}

impl Pool {
    /// Creates a pool in `dir` (created if missing; must not already hold a pool).
    pub fn create(dir: impl AsRef<Path>, options: PoolOptions) -> Result<Pool> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let lock = lock_dir(dir)?;
        // The checkpoint is written last: a pool exists once it does.
        if dir.join(CHECKPOINT_FILE).exists() {
            return Err(Error::NotAPool {
                dir: dir.into(),
                reason: "already holds a pool",
            });
        }
        let limit = match options.size_limit {
            Some(b) => (b / CHUNK_SIZE).min(MAX_CHUNK as u64) as u32,
            None => MAX_CHUNK,
        };
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_err(format!("create {}", data_path.display())))?;
        data.write_all_at(&DATA_MAGIC, 0)
            .map_err(io_err("write data header"))?;
        data.sync_all().map_err(io_err("sync data file"))?;
        let state = State::new(limit);
        let log = write_atomic(
            dir,
            LOG_FILE,
            &Header {
                magic: LOG_MAGIC,
                generation: 1,
                body_len: 0,
            }
            .encode(),
        )?;
        write_atomic(
            dir,
            CHECKPOINT_FILE,
            &checkpoint_bytes(1, &state.encode_checkpoint())?,
        )?;
        tracing::info!(dir = %dir.display(), limit_chunks = limit, "created pool");
        Ok(Pool::assemble(
            dir,
            data,
            state,
            log,
            1,
            HEADER_LEN as u64,
            0,
            lock,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        data: File,
        state: State,
        log: File,
        generation: u64,
        len: u64,
        seq: u64,
        lock: File,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                data,
                state: RwLock::new(state),
                commit: Mutex::new(Committer {
                    log,
                    generation,
                    len,
                    seq,
                    checkpoint_bytes: 64 << 20,
                    checkpoint_retry_at: 0,
                }),
                failed: AtomicBool::new(false),
                data_dirty: AtomicBool::new(false),
                _lock: lock,
            }),
        }
    }

    /// Opens an existing pool, recovering the last committed state: the checkpoint, then
    /// every whole commit of the log. A torn last commit is cut off; anything else that fails
    /// a checksum is reported as [`Error::Corrupt`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Pool> {
        let dir = dir.as_ref();
        if !dir.join(CHECKPOINT_FILE).exists() {
            return Err(Error::NotAPool {
                dir: dir.into(),
                reason: "holds no pool checkpoint",
            });
        }
        let lock = lock_dir(dir)?;
        for tmp in [CHECKPOINT_FILE, LOG_FILE] {
            let _ = fs::remove_file(dir.join(format!("{tmp}.tmp")));
        }
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_err(format!("open {}", data_path.display())))?;
        let mut magic = [0u8; 8];
        data.read_exact_at(&mut magic, 0)
            .map_err(|_| Error::Corrupt {
                file: data_path.clone(),
                offset: 0,
                reason: "data file too short".into(),
            })?;
        if magic != DATA_MAGIC {
            return Err(Error::Corrupt {
                file: data_path,
                offset: 0,
                reason: "bad magic".into(),
            });
        }
        let data_len = data.metadata().map_err(io_err("stat data file"))?.len();
        let chunk_bound = ((data_len.saturating_sub(1)) / CHUNK_SIZE).min(MAX_CHUNK as u64) as u32;

        // Checkpoint.
        let ck_path = dir.join(CHECKPOINT_FILE);
        let ck = fs::read(&ck_path).map_err(io_err(format!("read {}", ck_path.display())))?;
        let h = Header::decode(&ck, CHECKPOINT_MAGIC).map_err(|e| corrupt(&ck_path, 0, e))?;
        let body_end = HEADER_LEN + h.body_len as usize;
        if ck.len() != body_end + 4 {
            return Err(Error::Corrupt {
                file: ck_path,
                offset: ck.len() as u64,
                reason: format!(
                    "checkpoint is {} bytes, header says {}",
                    ck.len(),
                    body_end + 4
                ),
            });
        }
        let body = &ck[HEADER_LEN..body_end];
        let crc = u32::from_le_bytes([
            ck[body_end],
            ck[body_end + 1],
            ck[body_end + 2],
            ck[body_end + 3],
        ]);
        if crc32c::crc32c(body) != crc {
            return Err(Error::Corrupt {
                file: ck_path,
                offset: body_end as u64,
                reason: "checkpoint checksum mismatch".into(),
            });
        }
        let mut state = State::decode_checkpoint(body, chunk_bound)
            .map_err(|e| corrupt(&ck_path, HEADER_LEN as u64, e))?;
        let generation = h.generation;

        // Log.
        let log_path = dir.join(LOG_FILE);
        let log_bytes = match fs::read(&log_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(format!("read {}", log_path.display()))(e)),
        };
        let log_gen = match &log_bytes {
            Some(b) => Some(
                Header::decode(b, LOG_MAGIC)
                    .map_err(|e| corrupt(&log_path, 0, e))?
                    .generation,
            ),
            None => None,
        };
        let (log, len, seq) = match (log_bytes, log_gen) {
            (Some(b), Some(g)) if g == generation => {
                let (end, seq, frames) = replay_log(&mut state, &b, &log_path)?;
                let log = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&log_path)
                    .map_err(io_err(format!("open {}", log_path.display())))?;
                if end < b.len() {
                    tracing::warn!(
                        file = %log_path.display(),
                        at = end,
                        dropped = b.len() - end,
                        "cutting off a torn commit at the end of the log"
                    );
                    log.set_len(end as u64).map_err(io_err("truncate log"))?;
                    log.sync_all().map_err(io_err("sync log"))?;
                }
                tracing::info!(dir = %dir.display(), frames, "replayed log");
                (log, end as u64, seq)
            }
            (_, Some(g)) if g > generation => {
                return Err(Error::Corrupt {
                    file: log_path,
                    offset: 16,
                    reason: format!(
                        "log generation {g} is newer than the checkpoint's {generation}"
                    ),
                });
            }
            // No log, or one already folded into the checkpoint (a crash between writing the
            // checkpoint and starting the new log): start a fresh one.
            _ => {
                let f = write_atomic(
                    dir,
                    LOG_FILE,
                    &Header {
                        magic: LOG_MAGIC,
                        generation,
                        body_len: 0,
                    }
                    .encode(),
                )?;
                (f, HEADER_LEN as u64, 0)
            }
        };
        state.rebuild_free_list();
        state.chunk_bound = MAX_CHUNK;
        // Chunks freed by commits whose holes a crash kept from being punched, and the tail
        // past the highest used chunk, go back to the file system.
        let (mut free, end) = state.free_runs();
        let file_chunks = data
            .metadata()
            .map_err(io_err("stat the data file"))?
            .len()
            .div_ceil(CHUNK_SIZE);
        if file_chunks > end as u64 {
            free.push((end, (file_chunks - end as u64).min(u32::MAX as u64) as u32));
        }
        super::commit::punch(&data, &free);
        tracing::info!(
            dir = %dir.display(),
            volumes = state.vols.len(),
            used_chunks = state.used_chunks,
            "opened pool"
        );
        Ok(Pool::assemble(
            dir, data, state, log, generation, len, seq, lock,
        ))
    }
}

/// Replays the frames of a log; returns where the valid part ends, the last sequence number
/// and the number of frames.
pub(crate) fn replay_log(state: &mut State, b: &[u8], path: &Path) -> Result<(usize, u64, u64)> {
    let mut pos = HEADER_LEN;
    let mut seq = 0u64;
    let mut frames = 0u64;
    loop {
        match format::parse_frame(&b[pos..]) {
            Frame::End => return Ok((pos, seq, frames)),
            Frame::Good {
                seq: s,
                records,
                len,
            } => {
                if s != seq + 1 {
                    return Err(Error::Corrupt {
                        file: path.into(),
                        offset: pos as u64,
                        reason: format!("commit {s} follows commit {seq}"),
                    });
                }
                let recs = format::decode_records(records)
                    .map_err(|e| corrupt(path, (pos + 16) as u64, e))?;
                state
                    .replay(recs)
                    .map_err(|e| corrupt(path, pos as u64, e))?;
                let (_, rel) = state.take_pending();
                state.apply_releases(rel);
                seq = s;
                frames += 1;
                pos += len;
            }
            Frame::Bad { reason } => {
                // Only the last commit can be torn. If a whole valid commit follows where this
                // one claims to end, the damage is in the middle of the log.
                let rest = &b[pos..];
                if rest.len() >= 8 {
                    let claimed =
                        8 + u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if claimed < rest.len()
                        && matches!(format::parse_frame(&rest[claimed..]), Frame::Good { .. })
                    {
                        return Err(Error::Corrupt {
                            file: path.into(),
                            offset: pos as u64,
                            reason,
                        });
                    }
                }
                return Ok((pos, seq, frames));
            }
        }
    }
}
