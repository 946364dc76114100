//! Plex snapshot LUNs: full, independent copies. The point-in-time image is taken at commit
//! like any snapshot's (one consistency-group snapshot); then a background thread per set has
//! the storage engine copy every block the snapshot LUN still shares with its source into
//! blocks of its own (`storage::Backend::detach`). Progress is kept in memory; the end is
//! journaled (`PlexRow::independent`), so after a restart the array carries unfinished copies
//! on. Until a copy is independent its source counts it as a dependant and cannot be
//! deleted; afterwards the source may be overwritten or deleted and the copy keeps its data.

use std::sync::atomic::AtomicBool;

use api::{LunId, PlexStatus};
use storage::BackendError;

use super::Array;
use super::rows::{LunRow, LunState, PlexRow, Record};

impl Array {
    /// Where a plex snapshot LUN stands; `None` for any other LUN.
    pub(super) fn plex_status(&self, row: &LunRow) -> Option<PlexStatus> {
        let p = row.plex?;
        let progress = if p.independent {
            100
        } else {
            let map = self.0.plex.lock().expect("plex progress lock");
            map.get(&row.id).copied().unwrap_or(0).min(99)
        };
        Some(PlexStatus {
            independent: p.independent,
            progress,
        })
    }

    /// Plex snapshot LUNs committed but not yet independent (at start-up: interrupted).
    pub(super) fn unfinished_plex(&self) -> Vec<LunId> {
        self.lock()
            .db
            .luns
            .values()
            .filter(|l| l.state != LunState::Prepared)
            .filter(|l| l.plex.is_some_and(|p| !p.independent))
            .map(|l| l.id.clone())
            .collect()
    }

    /// Makes `luns` independent one after another on a thread of their own.
    pub(super) fn start_plex(&self, luns: Vec<LunId>) {
        if luns.is_empty() {
            return;
        }
        let array = self.clone();
        let spawned = std::thread::Builder::new()
            .name("plex".into())
            .spawn(move || {
                for lun in luns {
                    array.make_independent(&lun);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the plex copy thread failed; a restart carries the copies on");
        }
    }

    fn make_independent(&self, lun: &str) {
        let never = AtomicBool::new(false);
        let t0 = std::time::Instant::now();
        let progress = |pct: u8| {
            self.0
                .plex
                .lock()
                .expect("plex progress lock")
                .insert(lun.to_string(), pct);
        };
        let r = self.0.backend.detach(lun, &progress, &never);
        self.0.plex.lock().expect("plex progress lock").remove(lun);
        match r {
            Ok(()) => {}
            Err(BackendError::NoVolume(_)) => {
                tracing::info!(
                    lun,
                    "plex copy ended: the snapshot LUN was deleted meanwhile"
                );
                return;
            }
            Err(e) => {
                tracing::error!(lun, error = %e, "making the plex copy independent failed; a restart of the array retries it");
                return;
            }
        }
        let mut inner = self.lock();
        let Some(mut row) = inner.db.luns.get(lun).cloned() else {
            return; // deleted as it finished
        };
        row.plex = Some(PlexRow { independent: true });
        match Self::write(&mut inner, vec![Record::Lun(row)]) {
            Ok(()) => tracing::info!(
                lun,
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "plex copy independent of its source"
            ),
            Err(e) => {
                tracing::error!(lun, error = %e, "journaling the plex copy's independence failed")
            }
        }
    }
}
