//! The durable journal: an append-only file of records, one per line, each
//! `<crc32c as 8 hex digits> <JSON>\n`. A change is acknowledged only after its records are
//! written and `fdatasync`ed. On open the file is replayed (a torn last line, from a crash in
//! the middle of an append, is dropped) and rewritten compactly (temp file, fsync, rename,
//! directory fsync), so it holds one record per live object.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};

use crate::error::JournalError;

/// An open journal of records `R`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    poisoned: bool,
    appended: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn encode<R: Serialize>(rec: &R) -> Vec<u8> {
    let json = serde_json::to_vec(rec).expect("journal records serialize");
    let mut line = format!("{:08x} ", crc32c::crc32c(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// Bytes `records` take in the journal once appended.
pub fn encoded_len<R: Serialize>(records: &[R]) -> u64 {
    records.iter().map(|r| encode(r).len() as u64).sum()
}

impl Journal {
    /// Replays the journal at `path` (created if missing), returning every record in order,
    /// then rewrites it as `compact(records)` and opens it for appending.
    pub fn open<R, F>(path: &Path, compact: F) -> Result<(Self, Vec<R>), JournalError>
    where
        R: Serialize + DeserializeOwned,
        F: FnOnce(Vec<R>) -> Vec<R>,
    {
        let records = match File::open(path) {
            Ok(f) => Self::replay(path, f)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(path)(e)),
        };
        let live = compact(records);
        Self::write_compact(path, &live)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                poisoned: false,
                appended: 0,
            },
            live,
        ))
    }

    /// Replaces the journal with `live` (temp file, fsync, rename, directory fsync) and keeps
    /// appending to the new file: bounds the file of a long-running daemon.
    pub fn rewrite<R: Serialize>(&mut self, live: &[R]) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if let Err(e) = Self::write_compact(&self.path, live) {
            self.poisoned = true;
            return Err(e);
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.appended = 0;
        Ok(())
    }

    fn write_compact<R: Serialize>(path: &Path, live: &[R]) -> Result<(), JournalError> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            let mut buf = Vec::new();
            for r in live {
                buf.extend_from_slice(&encode(r));
            }
            f.write_all(&buf).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    fn replay<R: DeserializeOwned>(path: &Path, f: File) -> Result<Vec<R>, JournalError> {
        let mut out = Vec::new();
        let mut lines = BufReader::new(f).split(b'\n').enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let line = line.map_err(io(path))?;
            let last = lines.peek().is_none();
            let parsed = (|| {
                let (crc, json) = line.split_first_chunk::<9>().ok_or("line too short")?;
                let want = std::str::from_utf8(&crc[..8])
                    .ok()
                    .and_then(|s| u32::from_str_radix(s, 16).ok())
                    .ok_or("bad checksum field")?;
                if crc[8] != b' ' || crc32c::crc32c(json) != want {
                    return Err("checksum mismatch");
                }
                serde_json::from_slice::<R>(json).map_err(|_| "undecodable record")
            })();
            match parsed {
                Ok(r) => out.push(r),
                // A crash mid-append leaves a partial last line: the change was never acked.
                Err(reason) if last => {
                    tracing::warn!(line = i + 1, reason, "dropping torn last journal line");
                }
                Err(reason) => {
                    return Err(JournalError::Corrupt {
                        path: path.display().to_string(),
                        line: i + 1,
                        reason: reason.into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Appends `records` as one write and makes them durable before returning.
    pub fn append<R: Serialize>(&mut self, records: &[R]) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        let mut buf = Vec::new();
        for r in records {
            buf.extend_from_slice(&encode(r));
        }
        let res = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            // After a failed fsync the page cache state is unknown: refuse further changes.
            self.poisoned = true;
            return Err(io(&self.path)(e));
        }
        self.appended += records.len() as u64;
        Ok(())
    }

    /// A write or fsync failed: every later append is refused.
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Records appended since open.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Flushes to disk (appends are already durable; this is for shutdown).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_all().map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec(u32, String);

    #[test]
    fn appended_records_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (mut j, recs) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        assert!(recs.is_empty());
        j.append(&[Rec(1, "a".into()), Rec(2, "b".into())]).unwrap();
        j.append(&[Rec(3, "c".into())]).unwrap();
        drop(j);
        let (_, recs) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        assert_eq!(
            recs,
            vec![Rec(1, "a".into()), Rec(2, "b".into()), Rec(3, "c".into())]
        );
    }

    #[test]
    fn torn_last_line_is_dropped_but_corruption_inside_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (mut j, _) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        j.append(&[Rec(1, "a".into()), Rec(2, "b".into())]).unwrap();
        drop(j);
        let mut text = std::fs::read(&p).unwrap();
        text.extend_from_slice(b"0000abcd {\"par");
        std::fs::write(&p, &text).unwrap();
        let (_, recs) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        assert_eq!(recs.len(), 2);
        // Flip a byte inside the first record: not a torn tail, so refuse to guess.
        let mut text = std::fs::read(&p).unwrap();
        text[12] ^= 0x01;
        std::fs::write(&p, &text).unwrap();
        let err = Journal::open::<Rec, _>(&p, |r| r).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn rewrite_replaces_the_file_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (mut j, _) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        j.append(&[Rec(1, "a".into()), Rec(2, "b".into())]).unwrap();
        j.rewrite(&[Rec(2, "b".into())]).unwrap();
        assert_eq!(j.appended(), 0);
        j.append(&[Rec(3, "c".into())]).unwrap();
        drop(j);
        let (_, recs) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        assert_eq!(recs, vec![Rec(2, "b".into()), Rec(3, "c".into())]);
    }

    #[test]
    fn open_compacts_and_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (mut j, _) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        for i in 0..10 {
            j.append(&[Rec(i, "x".into())]).unwrap();
        }
        drop(j);
        let (_, recs) =
            Journal::open::<Rec, _>(&p, |r| r.into_iter().filter(|r| r.0 >= 8).collect()).unwrap();
        assert_eq!(recs.len(), 2);
        let (_, recs) = Journal::open::<Rec, _>(&p, |r| r).unwrap();
        assert_eq!(recs, vec![Rec(8, "x".into()), Rec(9, "x".into())]);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
