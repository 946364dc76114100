//! The reaper: sets a provider prepared and never committed, or aborted, go after a timeout;
//! transportable sets nobody imported go after `transportable_retention_secs` (when set).
//! An administrator deletes a complete set at any time (`admin_delete_set`).

use api::{LunId, ReapReport, SetState};
use vss::{VolumeSnapshotAttributes, VssId};

use super::Array;
use super::rows::{Db, Inner, Record, SetRow};
use crate::error::ArrayError;
use crate::metrics::SetOutcome;

/// A complete transportable set none of whose LUNs a host imported.
fn unimported_transportable(s: &SetRow) -> bool {
    s.state == SetState::Completed
        && s.context.contains(VolumeSnapshotAttributes::TRANSPORTABLE)
        && s.imported_at.is_none()
}

/// The set's snapshot LUNs that still exist.
fn live_luns(db: &Db, s: &SetRow) -> Vec<LunId> {
    s.members
        .iter()
        .filter(|m| db.luns.contains_key(&m.lun))
        .map(|m| m.lun.clone())
        .collect()
}

impl Array {
    /// The reaper: removes sets prepared but not committed for longer than the timeout, and
    /// aborted sets (with any LUN an abort left behind) once the timeout has passed since the
    /// abort. With a transportable retention, complete transportable sets nobody imported
    /// (no LUN of theirs exposed to a host since completion) and whose LUNs no host has
    /// mapped go once they are older than it: their LUNs are deleted and the set forgotten.
    /// Other committed and completed sets are never touched.
    pub fn reap(&self, dry_run: bool) -> Result<ReapReport, ArrayError> {
        let mut inner = self.lock();
        let now = self.now();
        let timeout = self.0.policy.reaper_timeout.as_secs();
        let retention = self.0.policy.transportable_retention.map(|d| d.as_secs());
        let db = &inner.db;
        let due: Vec<(SetRow, bool)> = db
            .sets
            .values()
            .filter_map(|s| {
                if matches!(s.state, SetState::Prepared | SetState::Aborted) {
                    return (now.saturating_sub(s.updated_at) >= timeout)
                        .then(|| (s.clone(), false));
                }
                let keep = retention?;
                let expired = unimported_transportable(s)
                    && now.saturating_sub(s.created_at) >= keep
                    && live_luns(db, s)
                        .iter()
                        .all(|l| db.mappings_of(l).is_empty());
                expired.then(|| (s.clone(), true))
            })
            .collect();
        let mut report = ReapReport {
            sets: Vec::new(),
            luns: Vec::new(),
            dry_run,
            expired: Vec::new(),
        };
        for (s, expired) in due {
            let luns = live_luns(&inner.db, &s);
            if !dry_run {
                if !self.forget_set(&mut inner, &s, &luns) {
                    continue;
                }
                if expired {
                    tracing::warn!(
                        set = %s.set_id,
                        host = %s.host,
                        luns = ?luns,
                        age_secs = now.saturating_sub(s.created_at),
                        "deleted a transportable set nobody imported within transportable_retention_secs"
                    );
                } else {
                    tracing::info!(set = %s.set_id, host = %s.host, state = ?s.state, "reaped set");
                }
            }
            report.sets.push(s.set_id);
            if expired {
                report.expired.push(s.set_id);
            }
            report.luns.extend(luns);
        }
        if !dry_run {
            for _ in &report.sets {
                self.0.metrics.set(SetOutcome::Reaped);
            }
            self.0.metrics.reaped(report.sets.len(), report.luns.len());
        }
        Ok(report)
    }

    /// Deletes `luns` (the set's live snapshot LUNs) and forgets the set; false (logged) if a
    /// LUN could not be deleted, the set then stays for a later try.
    fn forget_set(&self, inner: &mut Inner, s: &SetRow, luns: &[LunId]) -> bool {
        for l in luns {
            if let Err(e) = self.remove_snapshot_lun(inner, l) {
                tracing::warn!(set = %s.set_id, lun = %l, error = %e, "could not remove a LUN of the set");
                return false;
            }
        }
        if let Err(e) = Self::write(inner, vec![Record::SetGone { set_id: s.set_id }]) {
            tracing::warn!(set = %s.set_id, error = %e, "could not forget the set");
            return false;
        }
        true
    }

    /// An administrator deletes a complete set: every snapshot LUN of it, then the set.
    /// Guard rails: a set still in flight is 409 (abort it); a LUN of it mapped to a host
    /// (imported and in use there) is 409 unless `force`; a LUN a snapshot was taken of is
    /// 409 (delete that snapshot first). Returns the LUNs deleted.
    pub fn admin_delete_set(&self, set_id: VssId, force: bool) -> Result<Vec<LunId>, ArrayError> {
        let mut inner = self.lock();
        let db = &inner.db;
        let s = db.sets.get(&set_id).cloned().ok_or_else(|| {
            ArrayError::NotFound(format!(
                "Snapshot set {set_id} is unknown to the array (shadowlun set list shows the sets)."
            ))
        })?;
        if s.state != SetState::Completed {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {:?}, not complete; abort it instead (shadowlun set \
                 abort {set_id}).",
                s.state
            )));
        }
        let luns = live_luns(db, &s);
        let mapped: Vec<String> = luns
            .iter()
            .flat_map(|l| {
                db.mappings_of(l)
                    .into_iter()
                    .map(move |m| format!("{l} on host {}", m.host))
            })
            .collect();
        if !mapped.is_empty() && !force {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is in use: {} mapped ({}); delete the shadow copies on \
                 that host, or add --force to delete them under it.",
                if mapped.len() == 1 {
                    "a LUN is"
                } else {
                    "LUNs are"
                },
                mapped.join(", ")
            )));
        }
        for l in &luns {
            let deps = db.dependants(l);
            if !deps.is_empty() {
                return Err(ArrayError::Conflict(format!(
                    "Snapshot LUN(s) {} were taken of LUN {l} of set {set_id}; delete them first.",
                    deps.join(", ")
                )));
            }
        }
        if !self.forget_set(&mut inner, &s, &luns) {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} was only partly deleted; the array log says why, retry."
            )));
        }
        tracing::info!(set = %set_id, host = %s.host, luns = ?luns, force, "set deleted by admin");
        Ok(luns)
    }
}
