//! Writers around a backup: which take part in a set (`NO_WRITERS`, `writer exclude`),
//! `writer verify`, `PrepareForBackup` with the backup type, `BackupComplete` at the end of
//! a backup, restore brackets, and the state `list writers status` shows.

use std::sync::Arc;

use vss::{Hresult, VolumeSnapshotAttributes as Attr, VssId};

use super::create::PendingSet;
use super::{BackupComponents, Coordinator, VssError, lock};
use crate::writer::{BackupType, Component, Writer, WriterError};

/// A writer's state as `GatherWriterStatus` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WriterState {
    Stable,
    WaitingForBackupComplete,
    FailedAtFreeze,
    FailedAtPrepareBackup,
    FailedAtBackupComplete,
}

impl std::fmt::Display for WriterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // diskshadow prints VSS_WRITER_STATE's number and text.
        f.write_str(match self {
            WriterState::Stable => "[1] Stable",
            WriterState::WaitingForBackupComplete => "[5] Waiting for completion",
            WriterState::FailedAtPrepareBackup => "[7] Failed at prepare backup",
            WriterState::FailedAtFreeze => "[9] Failed at freeze",
            WriterState::FailedAtBackupComplete => "[14] Failed at backup complete",
        })
    }
}

#[derive(Debug, Clone)]
pub(super) struct Status {
    state: WriterState,
    last_error: Option<String>,
    instance_id: VssId,
}

/// What `list writers` shows of one writer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriterInfo {
    pub name: String,
    pub id: VssId,
    pub instance_id: VssId,
    pub state: WriterState,
    pub last_error: Option<String>,
    pub components: Vec<Component>,
    /// What the writer did at its last `BackupComplete` ([`Writer::last_backup`]).
    pub last_backup: Option<String>,
}

impl Coordinator {
    /// Every subscribed writer with its metadata and state.
    pub fn writer_info(&self) -> Vec<WriterInfo> {
        let ws: Vec<Arc<dyn Writer>> = lock(&self.writers).clone();
        ws.iter()
            .map(|w| {
                let st = self.status(w.as_ref());
                WriterInfo {
                    name: w.name(),
                    id: w.id(),
                    instance_id: st.instance_id,
                    state: st.state,
                    last_error: st.last_error,
                    components: w.components(),
                    last_backup: w.last_backup(),
                }
            })
            .collect()
    }

    fn status(&self, w: &dyn Writer) -> Status {
        lock(&self.writer_states)
            .entry(w.name())
            .or_insert_with(|| Status {
                state: WriterState::Stable,
                last_error: None,
                instance_id: uuid::Uuid::new_v4(),
            })
            .clone()
    }

    fn set_state(&self, w: &dyn Writer, state: WriterState, error: Option<String>) {
        let _ = self.status(w);
        if let Some(s) = lock(&self.writer_states).get_mut(&w.name()) {
            s.state = state;
            s.last_error = error;
        }
    }

    /// Records a writer's failure and turns it into the requester's error.
    pub(super) fn writer_failed(&self, w: &dyn Writer, source: WriterError) -> VssError {
        let state = match self.status(w).state {
            WriterState::WaitingForBackupComplete => WriterState::FailedAtBackupComplete,
            _ => WriterState::FailedAtFreeze,
        };
        self.set_state(w, state, Some(format!("{} ({source})", source.hresult())));
        VssError::Writer {
            code: source.hresult(),
            source,
        }
    }
}

fn names(w: &dyn Writer, list: &[String]) -> bool {
    let id = w.id();
    list.iter().any(|n| {
        n.eq_ignore_ascii_case(&w.name())
            || uuid::Uuid::parse_str(n.trim_matches(['{', '}'])).ok() == Some(id)
    })
}

impl BackupComponents {
    /// `SetBackupState`: full (the default) or copy.
    pub fn set_backup_type(&mut self, t: BackupType) {
        self.backup_type = t;
    }

    /// `writer exclude` and `writer verify` for the sets this requester creates next.
    pub fn set_writer_rules(&mut self, excluded: Vec<String>, verified: Vec<String>) {
        self.excluded_writers = excluded;
        self.verified_writers = verified;
    }

    /// The writers that take part in a set: none with `NO_WRITERS`; otherwise those whose
    /// volumes the set touches, less the excluded ones.
    pub(super) fn writers_of(&self, pending: &PendingSet) -> Vec<Arc<dyn Writer>> {
        if self.context.contains(Attr::NO_WRITERS) {
            return Vec::new();
        }
        let vols = pending.volumes();
        lock(&self.coord.writers)
            .iter()
            .filter(|w| w.volumes().iter().any(|v| vols.contains(v)))
            .filter(|w| !names(w.as_ref(), &self.excluded_writers))
            .cloned()
            .collect()
    }

    /// `writer verify`: every verified writer must take part.
    pub(super) fn verify_writers(&self, taking_part: &[Arc<dyn Writer>]) -> Result<(), VssError> {
        for v in &self.verified_writers {
            let ok = taking_part
                .iter()
                .any(|w| names(w.as_ref(), std::slice::from_ref(v)));
            if !ok {
                self.coord
                    .trace
                    .step(format!("writer verification failed: {v}"));
                return Err(VssError::refused(
                    Hresult::VSS_E_WRITER_NOT_RESPONDING,
                    format!(
                        "writer {v} does not take part in the set (excluded, nowriters, or none of its volumes is in the set)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `BackupComplete`: sent to every writer that took part in a set of this requester
    /// since the last one. Returns how many writers were told.
    pub fn backup_complete(&mut self) -> Result<usize, VssError> {
        let ws: Vec<Arc<dyn Writer>> = std::mem::take(&mut self.took_part);
        let c = &self.coord;
        for w in &ws {
            c.trace.step(format!(
                "W: OnBackupComplete {} ({:?})",
                w.name(),
                self.backup_type
            ));
            c.set_state(w.as_ref(), WriterState::WaitingForBackupComplete, None);
            w.backup_complete()
                .map_err(|source| c.writer_failed(w.as_ref(), source))?;
            c.set_state(w.as_ref(), WriterState::Stable, None);
        }
        Ok(ws.len())
    }

    /// `begin restore` (`PreRestore` to the writers).
    pub fn begin_restore(&mut self) {
        self.restoring = true;
        for w in lock(&self.coord.writers).iter() {
            self.coord
                .trace
                .step(format!("W: OnPreRestore {}", w.name()));
        }
    }

    /// `end restore` (`PostRestore` to the writers).
    pub fn end_restore(&mut self) {
        self.restoring = false;
        for w in lock(&self.coord.writers).iter() {
            self.coord
                .trace
                .step(format!("W: OnPostRestore {}", w.name()));
        }
    }
}
