//! The reaper: sets a provider prepared and never committed, or aborted, go after a timeout.

use api::{LunId, ReapReport, SetState};

use super::Array;
use super::rows::{Record, SetRow};
use crate::error::ArrayError;
use crate::metrics::SetOutcome;

impl Array {
    /// The reaper: removes sets prepared but not committed for longer than the timeout, and
    /// aborted sets (with any LUN an abort left behind) once the timeout has passed since the
    /// abort. Committed and completed sets are never touched.
    pub fn reap(&self, dry_run: bool) -> Result<ReapReport, ArrayError> {
        let mut inner = self.lock();
        let now = self.now();
        let timeout = self.0.policy.reaper_timeout.as_secs();
        let due: Vec<SetRow> = inner
            .db
            .sets
            .values()
            .filter(|s| matches!(s.state, SetState::Prepared | SetState::Aborted))
            .filter(|s| now.saturating_sub(s.updated_at) >= timeout)
            .cloned()
            .collect();
        let mut report = ReapReport {
            sets: Vec::new(),
            luns: Vec::new(),
            dry_run,
        };
        for s in due {
            let luns: Vec<LunId> = s
                .members
                .iter()
                .filter(|m| inner.db.luns.contains_key(&m.lun))
                .map(|m| m.lun.clone())
                .collect();
            if !dry_run {
                let mut ok = true;
                for l in &luns {
                    if let Err(e) = self.remove_snapshot_lun(&mut inner, l) {
                        tracing::warn!(set = %s.set_id, lun = %l, error = %e, "reaper could not remove a LUN");
                        ok = false;
                    }
                }
                if !ok {
                    continue;
                }
                Self::write(&mut inner, vec![Record::SetGone { set_id: s.set_id }])?;
                tracing::info!(set = %s.set_id, host = %s.host, state = ?s.state, "reaped set");
            }
            report.sets.push(s.set_id);
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
}
