//! The pool's space as the array counts it, and the reservation a snapshot set holds from
//! end-prepare to its commit.
//!
//! A set's reservation is what its commit can take from the pool at most: what the backend
//! says the group snapshot and its writable clones cost ([`storage::Backend::snapshot_cost`])
//! plus the journal records the commit appends; for a plex set, also the copies that make
//! its snapshot LUNs independent after the commit ([`storage::Backend::detach_cost`]). End-prepare reserves it, or refuses the set
//! (`no-space`, which the provider returns to VSS as `VSS_E_INSUFFICIENT_STORAGE`) when the
//! pool cannot give it: free space, less what other prepared sets hold, less the part of the
//! pool the critical threshold keeps free. The reservation is a field of the set's journal
//! row, so it survives a restart; it counts only while the set is prepared, so a commit, an
//! abort or the reaper releases it with the set's own state change.

use std::path::PathBuf;

use api::{SetState, human_size};
use storage::Backend;
use vss::{VolumeSnapshotAttributes, VssId};

use super::Array;
use super::rows::{Db, LunState, Record, SetRow};
use crate::error::ArrayError;

/// Where the pool's space is counted, besides the backend's own figures.
#[derive(Debug, Clone, Default)]
pub struct SpacePolicy {
    /// The directory whose file system holds the pool's files (the journal, and the engine's
    /// or the volume files' data): its size stands for an unbounded backend's capacity.
    pub dir: Option<PathBuf>,
    /// Free space is capped by what that file system has left (every kind but `memory`).
    pub capped_by_file_system: bool,
    /// Pool use in percent of its capacity past which new snapshot sets are refused.
    pub critical_percent: u8,
}

/// The pool's space at one moment, as `shadowlun status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    /// What the pool can hold: the backend's limit, else the size of its file system (0 when
    /// neither is known).
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// What it can still take: capacity less use, capped by the file system.
    pub free_bytes: u64,
    /// Held by prepared sets for their commits.
    pub reserved_bytes: u64,
    /// How many sets hold those bytes.
    pub reserving_sets: usize,
    /// Nothing bounds the pool (the memory engine without a capacity): every set fits.
    pub unbounded: bool,
}

impl Db {
    /// Bytes reserved by prepared sets other than `except`, and how many sets hold them.
    pub(super) fn reserved(&self, except: Option<VssId>) -> (u64, usize) {
        self.sets
            .values()
            .filter(|s| s.state == SetState::Prepared && Some(s.set_id) != except)
            .filter_map(|s| s.reserved_bytes)
            .fold((0, 0), |(b, n), r| (b.saturating_add(r), n + 1))
    }
}

/// Space figures from the backend's usage and the file system holding the pool.
pub(super) fn measure(
    backend: &dyn Backend,
    policy: &SpacePolicy,
    reserved: (u64, usize),
) -> Result<PoolSpace, storage::BackendError> {
    let usage = backend.usage()?;
    let (fs_total, fs_avail) = policy
        .dir
        .as_ref()
        .and_then(|d| rustix::fs::statvfs(d).ok())
        .map(|s| {
            (
                s.f_blocks.saturating_mul(s.f_frsize),
                s.f_bavail.saturating_mul(s.f_frsize),
            )
        })
        .unwrap_or((0, u64::MAX));
    let bounded = usage.capacity_bytes != u64::MAX && usage.capacity_bytes > 0;
    let capacity = if bounded {
        usage.capacity_bytes
    } else {
        fs_total
    };
    let mut free = capacity.saturating_sub(usage.allocated_bytes);
    if policy.capped_by_file_system {
        free = free.min(fs_avail);
    }
    Ok(PoolSpace {
        capacity_bytes: capacity,
        used_bytes: usage.allocated_bytes,
        free_bytes: free,
        reserved_bytes: reserved.0,
        reserving_sets: reserved.1,
        unbounded: !bounded && !policy.capped_by_file_system,
    })
}

impl PoolSpace {
    /// What the critical threshold keeps free: `(100 - critical) %` of the capacity.
    fn kept_free(&self, critical_percent: u8) -> u64 {
        (u128::from(self.capacity_bytes) * u128::from(100 - critical_percent.min(100)) / 100) as u64
    }

    /// What a new set may reserve: free space less the other sets' reservations and what the
    /// critical threshold keeps free.
    pub fn room_for_sets(&self, critical_percent: u8) -> u64 {
        if self.unbounded {
            return u64::MAX;
        }
        self.free_bytes
            .saturating_sub(self.reserved_bytes)
            .saturating_sub(self.kept_free(critical_percent))
    }

    /// The refusal of a set needing `need` bytes, in an administrator's words.
    fn refusal(&self, set: VssId, need: u64, critical_percent: u8) -> String {
        let room = self.room_for_sets(critical_percent);
        let mut parts = vec![format!(
            "{} free of {}",
            human_size(self.free_bytes),
            human_size(self.capacity_bytes)
        )];
        if self.reserved_bytes > 0 {
            parts.push(format!(
                "{} reserved by {} other set(s) in flight",
                human_size(self.reserved_bytes),
                self.reserving_sets
            ));
        }
        let kept = self.kept_free(critical_percent);
        if kept > 0 {
            parts.push(format!(
                "{} kept free by the critical threshold ({critical_percent}% full)",
                human_size(kept)
            ));
        }
        format!(
            "The pool cannot hold snapshot set {set}: its commit needs {}, the pool can give \
             new sets {} ({}). Free space in the pool (shadowlun snapshot list, then \
             shadowlun snapshot delete LUN) or snapshot fewer LUNs, then retry the backup.",
            human_size(need),
            human_size(room),
            parts.join(", ")
        )
    }
}

impl Array {
    /// The pool's space now, reservations included.
    pub fn pool_space(&self) -> Result<PoolSpace, ArrayError> {
        let reserved = self.lock().db.reserved(None);
        Ok(measure(
            self.0.backend.as_ref(),
            &self.0.policy.space,
            reserved,
        )?)
    }

    /// What the commit of `set` needs at most: the backend's cost of its group snapshot and
    /// clones, and the journal records the commit appends.
    fn commit_need(&self, db: &Db, set: &SetRow) -> Result<u64, ArrayError> {
        let pairs: Vec<(String, String)> = set
            .members
            .iter()
            .map(|m| (m.source.clone(), m.lun.clone()))
            .collect();
        if pairs.is_empty() {
            return Ok(0);
        }
        let mut backend = self.0.backend.snapshot_cost(&pairs)?;
        if set.context.contains(VolumeSnapshotAttributes::PLEX) {
            // The copies that make plex snapshot LUNs independent run after the commit; a
            // set whose copies cannot fit is refused now rather than fail half-way.
            backend = backend.saturating_add(self.0.backend.detach_cost(&pairs)?);
        }
        let mut records: Vec<Record> = set
            .members
            .iter()
            .filter_map(|m| db.luns.get(&m.lun))
            .map(|row| {
                let mut row = row.clone();
                row.state = LunState::Committed;
                Record::Lun(row)
            })
            .collect();
        let mut committed = set.clone();
        committed.state = SetState::Committed;
        committed.reserved_bytes = Some(u64::MAX);
        records.push(Record::Set(committed));
        Ok(backend.saturating_add(crate::journal::encoded_len(&records)))
    }

    /// The reservation `set` needs, if the pool can give it (`no-space` otherwise, saying
    /// what it needs and what the pool has). Changes nothing: the caller journals the set
    /// with the returned figure.
    pub(super) fn reservation(&self, db: &Db, set: &SetRow) -> Result<u64, ArrayError> {
        let need = self.commit_need(db, set)?;
        let space = measure(
            self.0.backend.as_ref(),
            &self.0.policy.space,
            db.reserved(Some(set.set_id)),
        )?;
        let critical = self.0.policy.space.critical_percent;
        if need > space.room_for_sets(critical) {
            return Err(ArrayError::NoSpace(
                space.refusal(set.set_id, need, critical),
            ));
        }
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(capacity: u64, used: u64, reserved: u64) -> PoolSpace {
        PoolSpace {
            capacity_bytes: capacity,
            used_bytes: used,
            free_bytes: capacity - used,
            reserved_bytes: reserved,
            reserving_sets: usize::from(reserved > 0),
            unbounded: false,
        }
    }

    #[test]
    fn room_is_free_space_less_reservations_and_the_critical_margin() {
        assert_eq!(space(1000, 0, 0).room_for_sets(100), 1000);
        assert_eq!(space(1000, 0, 0).room_for_sets(90), 900);
        assert_eq!(space(1000, 300, 0).room_for_sets(90), 600);
        assert_eq!(space(1000, 300, 200).room_for_sets(90), 400);
        // At or past the threshold nothing is left for a new set.
        assert_eq!(space(1000, 900, 0).room_for_sets(90), 0);
        assert_eq!(space(1000, 950, 0).room_for_sets(90), 0);
        assert_eq!(space(1000, 500, 600).room_for_sets(100), 0);
        let unbounded = PoolSpace {
            unbounded: true,
            ..space(0, 0, 0)
        };
        assert_eq!(unbounded.room_for_sets(90), u64::MAX);
    }

    #[test]
    fn a_refusal_names_what_is_needed_and_where_the_space_went() {
        let set = VssId::from_u128(0x1111_1111_2222_3333_4444_5555_5555_5555);
        let s = space(16 << 20, 12 << 20, 2 << 20).refusal(set, 3 << 20, 90);
        assert!(s.contains("its commit needs 3 MiB"), "{s}");
        assert!(s.contains("the pool can give new sets 409.6 KiB"), "{s}");
        assert!(s.contains("4 MiB free of 16 MiB"), "{s}");
        assert!(
            s.contains("2 MiB reserved by 1 other set(s) in flight"),
            "{s}"
        );
        assert!(s.contains("(90% full)"), "{s}");
        assert!(s.contains("shadowlun snapshot delete"), "{s}");
        assert!(!s.contains("bytes"), "{s}");
    }
}
