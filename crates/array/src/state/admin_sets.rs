//! Snapshot sets the array takes by itself, on an administrator's command (`shadowlun set
//! create`): a crash-consistent copy of several LUNs at one instant, without VSS.
//!
//! A VSS set has Windows holding the applications' writes around CommitSnapshots. Here nobody
//! upstream holds them, so the target does: the set's sources are fenced (new writes wait,
//! the writes in flight finish), the group snapshot is taken, the fence comes down. Every
//! LUN of the set then holds exactly the writes acknowledged before the fence, whatever the
//! backend's group commit looks like inside (parallel `rbd_snap_create2` is one image after
//! another). The set goes through the same journaled states as a VSS set (prepared, space
//! reserved, committed, completed), so a crash at any step leaves what a crashed VSS set
//! leaves: a prepared set the reaper removes, or a committed one that is kept.
//!
//! The set belongs to the administrator (journal spelling `*admin*`): no host's provider
//! sees it; its snapshot LUNs are mapped, resynced and deleted with the admin verbs.

use std::time::Duration;

use api::{PlannedSnapshot, SetRecord};
use vss::{SnapshotContext, VssId};

use super::Array;
use super::auth::ADMIN_IN_JOURNAL;
use crate::error::ArrayError;

/// How long the fence waits for the writes in flight before the set is given up: VSS's own
/// flush-and-hold limit is ten seconds, and a write that takes that long is a sick backend.
pub const FENCE_DRAIN: Duration = Duration::from_secs(10);

impl Array {
    /// Takes a snapshot set of `luns` (ids or names) now, with the target holding their
    /// writes across the commit, and returns it complete. Each LUN once (400), at least one
    /// (400), each a LUN of the array (404); refused like a VSS set when the pool cannot
    /// hold it (`no-space`, nothing left behind). A commit that fails aborts the set.
    pub fn admin_take_set(&self, luns: &[String]) -> Result<SetRecord, ArrayError> {
        if luns.is_empty() {
            return Err(ArrayError::BadRequest(
                "Name at least one LUN to take a snapshot set of.".into(),
            ));
        }
        let sources: Vec<String> = {
            let inner = self.lock();
            let mut ids = Vec::with_capacity(luns.len());
            for key in luns {
                let id = Self::get_row(&inner.db, key)?.id.clone();
                if ids.contains(&id) {
                    return Err(ArrayError::BadRequest(format!(
                        "LUN {key} is named twice; name each LUN of the set once."
                    )));
                }
                ids.push(id);
            }
            ids
        };
        let set_id = VssId::new_v4();
        let planned: Vec<PlannedSnapshot> = sources
            .iter()
            .map(|s| PlannedSnapshot {
                source: s.clone(),
                snapshot_id: VssId::new_v4(),
            })
            .collect();
        // Persistent, kept until deleted, no writers involved: VSS's NAS rollback context.
        self.prepare(
            ADMIN_IN_JOURNAL,
            set_id,
            SnapshotContext::NAS_ROLLBACK,
            &planned,
        )?;
        let committed = self
            .end_prepare(ADMIN_IN_JOURNAL, set_id)
            .and_then(|()| self.commit_as(ADMIN_IN_JOURNAL, set_id, Some(FENCE_DRAIN)))
            .and_then(|()| self.complete(ADMIN_IN_JOURNAL, set_id));
        if let Err(e) = committed {
            // A refused end-prepare has aborted the set already; aborting again is a no-op.
            if let Err(abort) = self.admin_abort(set_id) {
                tracing::warn!(%set_id, error = %abort, "could not abort a failed set; the reaper will");
            }
            return Err(e);
        }
        tracing::info!(%set_id, luns = ?sources, "snapshot set taken by the administrator");
        self.admin_sets()
            .into_iter()
            .find(|s| s.set_id == set_id)
            .ok_or_else(|| ArrayError::NotFound(format!("Snapshot set {set_id} vanished.")))
    }
}
