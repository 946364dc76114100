//! Resync jobs: a snapshot LUN copied back onto a LUN in the background, with progress and
//! cancel; a job the array was running when it stopped is failed on the next start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, MutexGuard};

use api::{JobId, JobState, JobStatus, ResyncPair};
use storage::BackendError;

use super::rows::{Db, JobRow, Record};
use super::{Array, Scope};
use crate::error::ArrayError;

/// A running job's cancel flag and progress, shared with its thread.
pub(super) struct JobHandle {
    cancel: Arc<AtomicBool>,
    progress: Arc<AtomicU8>,
}

/// Marks failed every job the journal says was running: its thread died with the process.
pub(super) fn fail_interrupted(db: &mut Db) {
    for j in db.jobs.values_mut() {
        if j.status.state == JobState::Running {
            j.status.state = JobState::Failed {
                reason: "the array restarted during the resync; start it again".into(),
                no_space: false,
            };
        }
    }
}

impl Array {
    fn running_jobs(&self) -> MutexGuard<'_, HashMap<JobId, JobHandle>> {
        self.0.jobs.lock().expect("resync jobs lock")
    }

    /// Starts copying each pair's snapshot LUN onto its destination, in order, on a thread
    /// of its own; the destination grows to the snapshot's size, and one larger than the
    /// snapshot is refused (a resync never shrinks a LUN). Every LUN must be visible to
    /// `scope` and committed, every source a snapshot LUN, no pair a LUN onto itself. An
    /// administrator must also `force` a resync onto a LUN mapped to a host (whose data
    /// changes under it) or onto a LUN that is not the snapshot's source; a host (VSS, which
    /// takes the volumes offline first) may resync onto any of its LUNs.
    pub fn start_resync(
        &self,
        scope: &Scope,
        pairs: &[ResyncPair],
        force: bool,
    ) -> Result<JobId, ArrayError> {
        if pairs.is_empty() {
            return Err(ArrayError::BadRequest(
                "The resync request lists no pairs; name at least one.".into(),
            ));
        }
        let mut inner = self.lock();
        // An administrator names LUNs by id or by name; a host by id.
        let pairs: Vec<ResyncPair> = pairs
            .iter()
            .map(|p| {
                let resolve = |l: &str| match scope {
                    Scope::Admin => inner
                        .db
                        .resolve(l)
                        .map_or_else(|| l.to_string(), |r| r.id.clone()),
                    Scope::Host(_) => l.to_string(),
                };
                ResyncPair {
                    snapshot: resolve(&p.snapshot),
                    destination: resolve(&p.destination),
                }
            })
            .collect();
        let pairs = pairs.as_slice();
        for p in pairs {
            Self::check_visible(
                &inner.db,
                scope,
                &[p.snapshot.clone(), p.destination.clone()],
            )?;
            if inner.db.luns[&p.snapshot].snapshot_of.is_none() {
                return Err(ArrayError::Conflict(format!(
                    "LUN {} is not a snapshot LUN; resync copies from a snapshot.",
                    p.snapshot
                )));
            }
            if p.snapshot == p.destination {
                return Err(ArrayError::BadRequest(format!(
                    "LUN {} cannot be resynced onto itself.",
                    p.snapshot
                )));
            }
            let (snap, dst) = (&inner.db.luns[&p.snapshot], &inner.db.luns[&p.destination]);
            if dst.size_bytes > snap.size_bytes {
                return Err(ArrayError::Conflict(format!(
                    "LUN {} ({}) is larger than snapshot LUN {} ({}); a resync never shrinks a \
                     LUN. Resync onto a LUN of the snapshot's size or smaller.",
                    p.destination,
                    api::human_size(dst.size_bytes),
                    p.snapshot,
                    api::human_size(snap.size_bytes)
                )));
            }
            if *scope == Scope::Admin && !force {
                let source = snap.snapshot_of.as_ref().map(|o| o.source.as_str());
                if source != Some(p.destination.as_str()) {
                    return Err(ArrayError::Conflict(format!(
                        "LUN {} is not the source of snapshot LUN {} (that is {}); its data \
                         would be replaced by another LUN's. Add --force if that is meant.",
                        p.destination,
                        p.snapshot,
                        source.unwrap_or("-")
                    )));
                }
                let hosts: Vec<String> = inner
                    .db
                    .mappings_of(&p.destination)
                    .into_iter()
                    .map(|m| m.host)
                    .collect();
                if !hosts.is_empty() {
                    return Err(ArrayError::Conflict(format!(
                        "LUN {} is mapped to host(s) {}, whose data would change under them; \
                         unmap it or take its volumes offline there, then add --force.",
                        p.destination,
                        hosts.join(", ")
                    )));
                }
            }
        }
        let n = inner.db.next_job + 1;
        let id = format!("job-{n}");
        let row = JobRow {
            id: id.clone(),
            host: scope.clone(),
            pairs: pairs.to_vec(),
            status: JobStatus {
                state: JobState::Running,
                progress: 0,
            },
        };
        let next_number = inner.db.next_number;
        Self::write(
            &mut inner,
            vec![
                Record::Counters {
                    next_number,
                    next_job: n,
                },
                Record::Job(row.clone()),
            ],
        )?;
        drop(inner);
        let handle = JobHandle {
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(AtomicU8::new(0)),
        };
        let (cancel, progress) = (handle.cancel.clone(), handle.progress.clone());
        self.running_jobs().insert(id.clone(), handle);
        let array = self.clone();
        std::thread::Builder::new()
            .name(format!("resync-{n}"))
            .spawn(move || array.run_resync(row, cancel, progress))
            .map_err(|e| ArrayError::io("spawning the resync thread", e))?;
        Ok(id)
    }

    /// The job's thread: copies pair by pair, then journals how it ended and, when it
    /// finished, the destinations' new sizes.
    fn run_resync(&self, mut row: JobRow, cancel: Arc<AtomicBool>, progress: Arc<AtomicU8>) {
        let total = row.pairs.len();
        let mut result = Ok(());
        for (i, p) in row.pairs.iter().enumerate() {
            let report = |pct: u8| {
                let overall = (i * 100 + pct as usize) / total;
                progress.store(overall.min(99) as u8, Ordering::Relaxed);
            };
            result = self
                .0
                .backend
                .resync(&p.snapshot, &p.destination, &report, &cancel);
            if result.is_err() {
                break;
            }
        }
        row.status = match result {
            Ok(()) => JobStatus {
                state: JobState::Finished,
                progress: 100,
            },
            Err(BackendError::Cancelled) => JobStatus {
                state: JobState::Cancelled,
                progress: progress.load(Ordering::Relaxed),
            },
            Err(e) => JobStatus {
                state: JobState::Failed {
                    no_space: matches!(e, BackendError::NoSpace(_)),
                    reason: e.to_string(),
                },
                progress: progress.load(Ordering::Relaxed),
            },
        };
        let mut inner = self.lock();
        let mut records = Vec::new();
        for p in &row.pairs {
            if let (Some(src), Some(dst)) = (
                inner.db.luns.get(&p.snapshot),
                inner.db.luns.get(&p.destination),
            ) {
                if dst.size_bytes != src.size_bytes && row.status.state == JobState::Finished {
                    let mut d = dst.clone();
                    d.size_bytes = src.size_bytes;
                    records.push(Record::Lun(d));
                    self.0.exporter.resized(&p.destination);
                }
            }
        }
        records.push(Record::Job(row.clone()));
        if let Err(e) = Self::write(&mut inner, records) {
            tracing::error!(job = %row.id, error = %e, "cannot journal the end of a resync");
        }
        self.running_jobs().remove(&row.id);
        tracing::info!(job = %row.id, state = ?row.status.state, "resync ended");
    }

    /// A job's state and progress, for whoever started it and for the administrator; to
    /// anyone else the job does not exist.
    pub fn resync_status(&self, scope: &Scope, job: &str) -> Result<JobStatus, ArrayError> {
        let inner = self.lock();
        let row = inner
            .db
            .jobs
            .get(job)
            .filter(|j| scope.reaches(&j.host))
            .ok_or_else(|| ArrayError::NotFound(format!("Resync job {job} is unknown.")))?;
        let mut st = row.status.clone();
        if st.state == JobState::Running {
            if let Some(h) = self.running_jobs().get(job) {
                st.progress = h.progress.load(Ordering::Relaxed);
            }
        }
        Ok(st)
    }

    /// Asks a running job to stop (it ends cancelled); a job that already ended is left as
    /// it ended. Reaches the same jobs as [`Array::resync_status`].
    pub fn cancel_resync(&self, scope: &Scope, job: &str) -> Result<(), ArrayError> {
        self.resync_status(scope, job)?;
        if let Some(h) = self.running_jobs().get(job) {
            h.cancel.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}
