//! The audit trail: every change asked of the control API (who, what, when, from where, and
//! the answer's status), one JSON object a line in `audit.log` in the pool directory.
//!
//! Each record is appended with one `write` and `fdatasync`ed before the answer leaves the
//! daemon, so an acknowledged change is in the trail whatever happens next (`kill -9`
//! included). The trail is bounded: when `audit.log` would pass its size limit it becomes
//! `audit.log.1` (replacing the older one) and a new `audit.log` starts, so the trail keeps
//! between one and two limits' worth of the most recent changes. A torn last line (a crash
//! in the middle of an append, or power loss) is skipped when the trail is read.
//!
//! Records never hold a token or a secret: what goes in is chosen field by field (see
//! `ops::details`), not copied from the request.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use api::AuditRecord;

/// Default size at which `audit.log` is rotated.
pub const DEFAULT_LIMIT: u64 = 16 << 20;

/// Why the trail could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("audit trail {path}: {source}")]
pub struct AuditError {
    path: String,
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError {
        path: path.display().to_string(),
        source,
    }
}

/// The open trail.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    rotated: PathBuf,
    limit: u64,
    file: Mutex<(File, u64)>,
}

fn open_append(path: &Path) -> Result<(File, u64), AuditError> {
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err(path))?;
    let mut len = f.metadata().map_err(err(path))?.len();
    if len > 0 {
        // A torn last line (a crash mid-append) is ended, so the next record starts a line
        // of its own; readers skip the torn one.
        let mut last = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1).map_err(err(path))?;
        if last[0] != b'\n' {
            let mut w = &f;
            w.write_all(b"\n")
                .and_then(|()| f.sync_data())
                .map_err(err(path))?;
            len += 1;
        }
    }
    Ok((f, len))
}

impl AuditLog {
    /// Opens (or creates, 0600) `dir/audit.log`, rotating at `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, AuditError> {
        let path = dir.join("audit.log");
        let rotated = dir.join("audit.log.1");
        let file = open_append(&path)?;
        Ok(Self {
            path,
            rotated,
            limit: limit.max(4096),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `rec` durably (write, then fdatasync). Blocking.
    pub fn append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(rec).expect("audit records serialize");
        line.push(b'\n');
        let mut guard = self.file.lock().expect("audit file lock");
        if guard.1 > 0 && guard.1 + line.len() as u64 > self.limit {
            self.rotate(&mut guard)?;
        }
        let (f, len) = &mut *guard;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(err(&self.path))?;
        *len += line.len() as u64;
        Ok(())
    }

    fn rotate(&self, current: &mut (File, u64)) -> Result<(), AuditError> {
        std::fs::rename(&self.path, &self.rotated).map_err(err(&self.rotated))?;
        *current = open_append(&self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err(dir))?;
        }
        tracing::info!(path = %self.rotated.display(), "audit trail rotated");
        Ok(())
    }

    /// Every record at or after `since` (seconds since the Unix epoch), oldest first.
    pub fn read(&self, since: u64) -> Result<Vec<AuditRecord>, AuditError> {
        // Hold the lock so a rotation does not happen between the two reads.
        let _guard = self.file.lock().expect("audit file lock");
        let mut out = Vec::new();
        for p in [&self.rotated, &self.path] {
            let f = match File::open(p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(p)(e)),
            };
            for line in BufReader::new(f).split(b'\n') {
                let line = line.map_err(err(p))?;
                // A torn last line (a crash mid-append) does not parse: skip it.
                if let Ok(r) = serde_json::from_slice::<AuditRecord>(&line)
                    && r.time >= since
                {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(time: u64, action: &str) -> AuditRecord {
        AuditRecord {
            time,
            who: "admin".into(),
            from: "127.0.0.1:1".into(),
            action: action.into(),
            details: Default::default(),
            status: 200,
        }
    }

    #[test]
    fn appends_reads_since_and_rotates_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 4096).unwrap();
        for i in 0..200 {
            log.append(&rec(i, &format!("lun create {i}"))).unwrap();
        }
        let all = log.read(0).unwrap();
        // Rotation keeps the most recent records, in order, and at most two files' worth.
        assert_eq!(all.last().unwrap().time, 199);
        assert!(all.windows(2).all(|w| w[0].time + 1 == w[1].time));
        assert!(all.len() < 200, "the trail is bounded");
        let on_disk = std::fs::metadata(dir.path().join("audit.log"))
            .unwrap()
            .len()
            + std::fs::metadata(dir.path().join("audit.log.1"))
                .unwrap()
                .len();
        assert!(on_disk <= 2 * 4096, "{on_disk} bytes on disk");
        assert!(log.read(195).unwrap().iter().all(|r| r.time >= 195));
        assert_eq!(log.read(195).unwrap().len(), 5);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_LIMIT).unwrap();
        log.append(&rec(1, "host add")).unwrap();
        drop(log);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.log"))
            .unwrap();
        f.write_all(b"{\"time\":2,\"who\":\"adm").unwrap();
        drop(f);
        let log = AuditLog::open(dir.path(), DEFAULT_LIMIT).unwrap();
        log.append(&rec(3, "host map")).unwrap();
        let got: Vec<u64> = log.read(0).unwrap().iter().map(|r| r.time).collect();
        assert_eq!(got, vec![1, 3]);
    }
}
