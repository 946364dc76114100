//! The snapshot-set verbs the provider drives, each with its rule. Every verb is idempotent:
//! a retried or replayed call never creates a second snapshot.

use api::{
    ArrayLun, LunId, LunKey, PlannedSnapshot, SetState, SetSummary, SnapshotLun, SnapshotOrigin,
};
use storage::BackendError;
use vss::identity::LunIdentity;
use vss::{SnapshotContext, VolumeSnapshotAttributes, VssId};

use super::auth::{ADMIN_IN_JOURNAL, not_visible};
use super::rows::{Db, Inner, LunRow, LunState, MemberRow, PlexRow, Record, SetRow, lun_id};
use super::{Array, MAX_LUN_NUMBER, Scope};
use crate::error::ArrayError;
use crate::metrics::SetOutcome;

fn set_not_found(set: VssId) -> ArrayError {
    ArrayError::NotFound(format!(
        "Snapshot set {set} is unknown to the array; prepare it first."
    ))
}

impl Array {
    /// For each key, the LUN whose SCSI designators match one of the key's identifiers, among
    /// the LUNs the host sees (prepared snapshot LUNs excluded); `None` for any other, so
    /// another host's LUN looks absent.
    pub fn lookup(&self, host: &str, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ArrayError> {
        let plex_ok = self.0.backend.plex_support().is_ok();
        let inner = self.lock();
        let db = &inner.db;
        let idents: Vec<(&LunRow, LunIdentity)> = db
            .luns
            .values()
            .filter(|l| l.state != LunState::Prepared && db.visible_to(host, &l.id))
            .map(|l| (l, l.identity()))
            .collect();
        Ok(keys
            .iter()
            .map(|k| {
                idents.iter().find_map(|(l, ident)| {
                    let ours = ident.designators.iter().any(|d| {
                        k.identifiers
                            .iter()
                            .any(|i| i.id_type == d.designator_type && i.identifier == d.value)
                    });
                    ours.then(|| ArrayLun {
                        id: l.id.clone(),
                        size_bytes: l.size_bytes,
                        snapshot_of: l.snapshot_of.clone(),
                        plex: plex_ok,
                    })
                })
            })
            .collect())
    }

    /// The set, if it is the host's: unknown is 404, another host's is 403.
    fn own_set<'a>(db: &'a Db, host: &str, set_id: VssId) -> Result<&'a SetRow, ArrayError> {
        let set = db.sets.get(&set_id).ok_or_else(|| set_not_found(set_id))?;
        if set.host != host {
            tracing::warn!(host, %set_id, owner = %set.host, "refused a call on another host's set");
            return Err(ArrayError::Forbidden(format!(
                "Snapshot set {set_id} belongs to another host; use your own set id."
            )));
        }
        Ok(set)
    }

    /// Creates the set (prepared) or adds sources to it, reserving for each new source a
    /// snapshot LUN: its number and identity, no volume yet. Idempotent per (set, source): a
    /// source already in the set is skipped, and a retry changes nothing. Every source must
    /// be a LUN the host sees (404 otherwise); only a prepared set takes more (409), only the
    /// host's own (403); a set holds at most `max_luns_per_set` LUNs (limit reached).
    pub fn prepare(
        &self,
        host: &str,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ArrayError> {
        let plex = context.contains(VolumeSnapshotAttributes::PLEX);
        if plex {
            if let Err(why) = self.0.backend.plex_support() {
                return Err(ArrayError::Conflict(format!(
                    "A plex copy was asked, but {why}; ask for a differential copy."
                )));
            }
        }
        let mut inner = self.lock();
        let now = self.now();
        let db = &inner.db;
        for s in snapshots {
            let ok = db
                .luns
                .get(&s.source)
                .is_some_and(|l| l.state != LunState::Prepared)
                && (host == ADMIN_IN_JOURNAL || db.visible_to(host, &s.source));
            if !ok {
                return Err(not_visible(host, &s.source));
            }
        }
        let mut set = match db.sets.get(&set_id) {
            Some(_) => {
                let s = Self::own_set(db, host, set_id)?;
                if s.state != SetState::Prepared {
                    return Err(ArrayError::Conflict(format!(
                        "Snapshot set {set_id} is {:?}; only a prepared set takes more LUNs, \
                         start a new set.",
                        s.state
                    )));
                }
                s.clone()
            }
            None => SetRow {
                set_id,
                host: host.into(),
                state: SetState::Prepared,
                context,
                members: Vec::new(),
                created_at: now,
                updated_at: now,
                imported_at: None,
                reserved_bytes: None,
            },
        };
        let mut next = db.next_number;
        let mut records = Vec::new();
        for s in snapshots {
            if set.members.iter().any(|m| m.source == s.source) {
                continue;
            }
            if set.members.len() >= self.0.policy.max_luns_per_set {
                return Err(ArrayError::LimitReached(format!(
                    "A snapshot set holds at most {} LUNs; split the set.",
                    self.0.policy.max_luns_per_set
                )));
            }
            next += 1;
            self.check_number(next)?;
            let id = lun_id(next);
            let src = &db.luns[&s.source];
            records.push(Record::Lun(LunRow {
                id: id.clone(),
                number: next,
                name: format!("{}@{}", src.name, next),
                size_bytes: src.size_bytes,
                snapshot_of: Some(SnapshotOrigin {
                    source: s.source.clone(),
                    set_id,
                    snapshot_id: s.snapshot_id,
                }),
                owner: Some(host.into()),
                state: LunState::Prepared,
                created_at: now,
                array_id: self.0.policy.array_id,
                plex: plex.then_some(PlexRow { independent: false }),
            }));
            set.members.push(MemberRow {
                snapshot_id: s.snapshot_id,
                source: s.source.clone(),
                lun: id,
                released: false,
            });
        }
        if records.is_empty() && db.sets.contains_key(&set_id) {
            return Ok(()); // a retry
        }
        set.updated_at = now;
        // New members: what the commit needs is reckoned again at end-prepare (or commit).
        set.reserved_bytes = None;
        records.insert(
            0,
            Record::Counters {
                next_number: next,
                next_job: db.next_job,
            },
        );
        let new_set = !db.sets.contains_key(&set_id);
        records.push(Record::Set(set));
        Self::write(&mut inner, records)?;
        if new_set {
            self.0.metrics.set(SetOutcome::Prepared);
        }
        tracing::info!(%set_id, host, "set prepared");
        Ok(())
    }

    /// While the set is prepared: reserves the pool space its commit needs (journaled with
    /// the set), or refuses it with `no-space` when the pool cannot give that much (free
    /// space less other sets' reservations and the critical threshold's margin, `space.rs`);
    /// a refused set is aborted at once, so nothing of it stays in flight. A set already
    /// reserved succeeds again. 409 in any other state.
    pub fn end_prepare(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        match set.state {
            SetState::Prepared if set.reserved_bytes.is_some() => Ok(()),
            SetState::Prepared => match self.reservation(&inner.db, &set) {
                Ok(bytes) => {
                    let mut set = set;
                    set.reserved_bytes = Some(bytes);
                    set.updated_at = self.now();
                    Self::write(&mut inner, vec![Record::Set(set)])?;
                    tracing::info!(%set_id, host, reserved_bytes = bytes, "set space reserved");
                    Ok(())
                }
                Err(refused @ ArrayError::NoSpace(_)) => {
                    self.refuse_set(&mut inner, set, &refused)?;
                    Err(refused)
                }
                Err(e) => Err(e),
            },
            s => Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {s:?}, not prepared; start a new set."
            ))),
        }
    }

    /// Aborts a set the pool cannot hold, in one journaled change: the set aborted, its
    /// prepared snapshot LUNs (numbers and identities only, no volume yet) gone.
    fn refuse_set(
        &self,
        inner: &mut Inner,
        set: SetRow,
        why: &ArrayError,
    ) -> Result<(), ArrayError> {
        let (set_id, host) = (set.set_id, set.host.clone());
        let mut records: Vec<Record> = set
            .members
            .iter()
            .filter(|m| {
                inner
                    .db
                    .luns
                    .get(&m.lun)
                    .is_some_and(|l| l.state == LunState::Prepared)
            })
            .map(|m| Record::LunGone { id: m.lun.clone() })
            .collect();
        let mut set = set;
        for m in &mut set.members {
            m.released = true;
        }
        set.state = SetState::Aborted;
        set.updated_at = self.now();
        records.push(Record::Set(set));
        Self::write(inner, records)?;
        self.0.metrics.set(SetOutcome::Refused);
        tracing::warn!(%set_id, host, reason = %why, "set refused: the pool cannot hold it");
        Ok(())
    }

    /// Prepared: one consistency-group snapshot of every member, journaled before the answer
    /// (the writable clones are made after it). Committed or completed: success and no second
    /// snapshot. Aborted: 409; a source deleted since prepare: 409.
    pub fn commit(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        self.commit_as(host, set_id, None)
    }

    /// [`Array::commit`]; with `fence`, the target first holds new writes to the set's
    /// sources and waits (at most that long) for the writes in flight, and lets them go on
    /// once the snapshots are taken: a set the array takes by itself, with no VSS holding
    /// writes upstream (`admin_sets.rs`).
    pub(super) fn commit_as(
        &self,
        host: &str,
        set_id: VssId,
        fence: Option<std::time::Duration>,
    ) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        match set.state {
            SetState::Committed | SetState::Completed => return Ok(()),
            SetState::Aborted => {
                return Err(ArrayError::Conflict(format!(
                    "Snapshot set {set_id} was aborted; start a new set."
                )));
            }
            SetState::Prepared => {}
        }
        // A set committed without end-prepare reserves now (refused: it stays prepared).
        let mut set = set;
        if set.reserved_bytes.is_none() {
            set.reserved_bytes = Some(self.reservation(&inner.db, &set)?);
        }
        let pairs: Vec<(String, String)> = set
            .members
            .iter()
            .map(|m| (m.source.clone(), m.lun.clone()))
            .collect();
        let plex = set.context.contains(VolumeSnapshotAttributes::PLEX);
        let t0 = std::time::Instant::now();
        // Under the array's lock: no LUN is mapped (and so served) while the fence goes up.
        let held = match fence {
            Some(drain) => {
                let sources: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
                Some(self.0.exporter.fence_writes(&sources, drain).map_err(|e| {
                    self.0.metrics.set(SetOutcome::Failed);
                    ArrayError::Conflict(format!(
                        "Writes to the set's LUNs could not be held: {e}; try again."
                    ))
                })?)
            }
            None => None,
        };
        let taken = if pairs.is_empty() {
            Ok(()) // an empty set commits with nothing to snapshot
        } else {
            self.0.backend.snapshot_group(&pairs)
        };
        let fenced_us = held.map(|f| {
            drop(f);
            t0.elapsed().as_micros() as u64
        });
        if let Err(e) = taken {
            self.0.metrics.set(SetOutcome::Failed);
            return Err(match e {
                BackendError::NoVolume(v) => ArrayError::Conflict(format!(
                    "Source LUN {v} no longer exists; abort the set and start again."
                )),
                other => other.into(),
            });
        }
        let now = self.now();
        let mut records = Vec::new();
        for m in &set.members {
            let mut row = inner.db.luns[&m.lun].clone();
            row.state = LunState::Committed;
            // The snapshot has its source's size at this instant (a resize takes the same
            // lock). Asking the engine would also compute space accounting, a walk of the
            // whole mapping tree of every LUN of the set while applications are held.
            if let Some(src) = inner.db.luns.get(&m.source) {
                row.size_bytes = src.size_bytes;
            }
            records.push(Record::Lun(row));
        }
        set.state = SetState::Committed;
        set.updated_at = now;
        records.push(Record::Set(set));
        if let Err(e) = Self::write(&mut inner, records) {
            for (_, clone) in &pairs {
                let _ = self.0.backend.delete_volume(clone);
            }
            self.0.metrics.set(SetOutcome::Failed);
            return Err(e);
        }
        self.0.metrics.commit_duration.observe(t0.elapsed());
        self.0.metrics.set(SetOutcome::Committed);
        tracing::info!(%set_id, host, luns = pairs.len(), elapsed_us = t0.elapsed().as_micros() as u64, ?fenced_us, "set committed");
        drop(inner);
        // Engines that clone lazily get the writable clones made now, off the commit path;
        // plex copies are then made independent.
        let backend = self.0.backend.clone();
        let clones: Vec<String> = pairs.into_iter().map(|(_, c)| c).collect();
        if plex {
            self.start_plex(clones.clone());
        }
        let _ = std::thread::Builder::new()
            .name("materialize".into())
            .spawn(move || {
                for clone in clones {
                    if let Err(e) = backend.materialize(&clone) {
                        tracing::warn!(lun = %clone, error = %e, "creating the writable clone failed; retried on first use");
                    }
                }
            });
        Ok(())
    }

    /// Committed becomes completed; completed stays so; any other state is 409.
    pub fn complete(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        match set.state {
            SetState::Completed => Ok(()),
            SetState::Committed => {
                let mut set = set;
                set.state = SetState::Completed;
                set.updated_at = self.now();
                Self::write(&mut inner, vec![Record::Set(set)])?;
                self.0.metrics.set(SetOutcome::Completed);
                Ok(())
            }
            s => Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {s:?}; only a committed set completes."
            ))),
        }
    }

    /// Removes a snapshot LUN: unmaps it everywhere, deletes its volume, drops its row.
    /// A missing volume counts as deleted (the crash-retry case).
    pub(super) fn remove_snapshot_lun(
        &self,
        inner: &mut Inner,
        lun: &str,
    ) -> Result<(), ArrayError> {
        let Some(row) = inner.db.luns.get(lun).cloned() else {
            return Ok(());
        };
        let mut records = Vec::new();
        for h in inner.db.hosts.values() {
            let nums: Vec<u64> = h
                .luns
                .iter()
                .filter(|(_, l)| l.as_str() == lun)
                .map(|(n, _)| *n)
                .collect();
            if nums.is_empty() {
                continue;
            }
            let mut h2 = h.clone();
            for n in nums {
                h2.luns.remove(&n);
                self.unexport(&h.initiators, n);
            }
            records.push(Record::Host(h2));
        }
        if row.state != LunState::Prepared {
            match self.0.backend.delete_volume(lun) {
                Ok(()) | Err(BackendError::NoVolume(_)) => {}
                Err(e) => {
                    if !records.is_empty() {
                        Self::write(inner, records)?;
                    }
                    return Err(e.into());
                }
            }
        }
        records.push(Record::LunGone { id: lun.into() });
        if let Some(o) = &row.snapshot_of {
            if let Some(set) = inner.db.sets.get(&o.set_id) {
                let mut set = set.clone();
                for m in set.members.iter_mut().filter(|m| m.lun == lun) {
                    m.released = true;
                }
                set.updated_at = self.now();
                records.push(Record::Set(set));
            }
        }
        Self::write(inner, records)
    }

    /// Any set not completed becomes aborted (journaled first) and loses its snapshot LUNs; one
    /// that cannot be deleted now is left to the reaper. Repeating it succeeds. Completed: 409
    /// (its LUNs are released one by one instead).
    pub fn abort(&self, host: &str, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?.clone();
        self.abort_set(&mut inner, set)
    }

    /// An administrator aborts a set that is not complete, whoever's it is (a set left
    /// prepared by a requester that went away), instead of waiting for the reaper.
    pub fn admin_abort(&self, set_id: VssId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let set = inner
            .db
            .sets
            .get(&set_id)
            .cloned()
            .ok_or_else(|| set_not_found(set_id))?;
        self.abort_set(&mut inner, set)
    }

    fn abort_set(&self, inner: &mut Inner, set: SetRow) -> Result<(), ArrayError> {
        let (set_id, host) = (set.set_id, set.host.clone());
        if set.state == SetState::Completed {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is complete; release its LUNs instead of aborting."
            )));
        }
        if set.state != SetState::Aborted {
            let mut s = set.clone();
            s.state = SetState::Aborted;
            s.updated_at = self.now();
            Self::write(inner, vec![Record::Set(s)])?;
            self.0.metrics.set(SetOutcome::Aborted);
        }
        for m in &set.members {
            if let Err(e) = self.remove_snapshot_lun(inner, &m.lun) {
                // The reaper retries leftovers of aborted sets.
                tracing::warn!(%set_id, lun = %m.lun, error = %e, "abort left a LUN behind");
            }
        }
        tracing::info!(%set_id, host, "set aborted");
        Ok(())
    }

    /// The identity pages each requested source's snapshot LUN serves, byte for byte as the
    /// target serves them. Committed or completed sets only (409); a source not in the set or
    /// a released snapshot LUN is 404.
    pub fn describe(
        &self,
        host: &str,
        set_id: VssId,
        sources: &[LunId],
    ) -> Result<Vec<SnapshotLun>, ArrayError> {
        let inner = self.lock();
        let set = Self::own_set(&inner.db, host, set_id)?;
        if !matches!(set.state, SetState::Committed | SetState::Completed) {
            return Err(ArrayError::Conflict(format!(
                "Snapshot set {set_id} is {:?}; describe it after commit.",
                set.state
            )));
        }
        sources
            .iter()
            .map(|src| {
                let m = set
                    .members
                    .iter()
                    .find(|m| &m.source == src)
                    .ok_or_else(|| {
                        ArrayError::NotFound(format!(
                            "LUN {src} is not in snapshot set {set_id}; describe only its members."
                        ))
                    })?;
                let row = inner.db.luns.get(&m.lun).ok_or_else(|| {
                    ArrayError::NotFound(format!("Snapshot LUN {} was released.", m.lun))
                })?;
                Ok(SnapshotLun {
                    source: src.clone(),
                    lun: m.lun.clone(),
                    identity: self.identity_pages(row),
                })
            })
            .collect()
    }

    /// Maps each LUN to the host's initiators at its lowest free LUN number; a LUN already
    /// mapped keeps its number. Every LUN must be visible to the host (404) and committed
    /// (409). A snapshot LUN becomes exposed.
    pub fn expose(&self, host: &str, luns: &[LunId]) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        Self::check_visible(&inner.db, &Scope::host(host), luns)?;
        let Some(mut h) = inner.db.hosts.get(host).cloned() else {
            return Err(ArrayError::Unauthorized("Unknown host.".into()));
        };
        let mut records = Vec::new();
        let mut added = Vec::new();
        for l in luns {
            if h.luns.values().any(|x| x == l) {
                continue;
            }
            let n = (0u64..)
                .find(|n| !h.luns.contains_key(n))
                .expect("free number");
            if n >= MAX_LUN_NUMBER {
                return Err(ArrayError::LimitReached(
                    "The host has no free LUN number; mask LUNs it no longer needs.".into(),
                ));
            }
            h.luns.insert(n, l.clone());
            added.push((n, l.clone()));
            let mut row = inner.db.luns[l].clone();
            if let Some(o) = &row.snapshot_of {
                // Exposed after completion: an import (exposure during creation is the
                // creating host's auto-recovery).
                if let Some(set) = inner.db.sets.get(&o.set_id) {
                    let first = set.state == SetState::Completed && set.imported_at.is_none();
                    if first
                        && !records
                            .iter()
                            .any(|r| matches!(r, Record::Set(s) if s.set_id == o.set_id))
                    {
                        let mut set = set.clone();
                        set.imported_at = Some(self.now());
                        records.push(Record::Set(set));
                    }
                }
                row.state = LunState::Exposed;
                records.push(Record::Lun(row));
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        records.push(Record::Host(h.clone()));
        Self::write(&mut inner, records)?;
        for (n, l) in added {
            self.export(&inner.db, &h.initiators, n, &l);
        }
        Ok(())
    }

    /// Unmaps each LUN from the host's initiators; same checks as [`Array::expose`]. A
    /// snapshot LUN becomes masked.
    pub fn mask(&self, host: &str, luns: &[LunId]) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        Self::check_visible(&inner.db, &Scope::host(host), luns)?;
        let Some(mut h) = inner.db.hosts.get(host).cloned() else {
            return Err(ArrayError::Unauthorized("Unknown host.".into()));
        };
        let mut records = Vec::new();
        let mut removed = Vec::new();
        for l in luns {
            let nums: Vec<u64> = h
                .luns
                .iter()
                .filter(|(_, x)| *x == l)
                .map(|(n, _)| *n)
                .collect();
            for n in nums {
                h.luns.remove(&n);
                removed.push(n);
            }
            let mut row = inner.db.luns[l].clone();
            if row.snapshot_of.is_some() && row.state != LunState::Masked {
                row.state = LunState::Masked;
                records.push(Record::Lun(row));
            }
        }
        if removed.is_empty() && records.is_empty() {
            return Ok(());
        }
        records.push(Record::Host(h.clone()));
        Self::write(&mut inner, records)?;
        for n in removed {
            self.unexport(&h.initiators, n);
        }
        Ok(())
    }

    /// Deletes a committed snapshot LUN the host sees (OnLunEmpty): unmapped everywhere, its
    /// volume deleted, its set member marked released. An original LUN is 409 (never deleted
    /// by a provider verb), a prepared one 409 (abort its set), one with snapshots taken of it
    /// 409; unknown or not visible (a second release) 404.
    pub fn release(&self, host: &str, lun: &LunId) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        if !inner.db.visible_to(host, lun) {
            return Err(not_visible(host, lun));
        }
        let row = &inner.db.luns[lun];
        if row.snapshot_of.is_none() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is an original LUN, not a snapshot; only snapshot LUNs are released."
            )));
        }
        if row.state == LunState::Prepared {
            return Err(ArrayError::Conflict(format!(
                "Snapshot LUN {lun} is not committed; abort its set instead."
            )));
        }
        let deps = inner.db.dependants(lun);
        if !deps.is_empty() {
            return Err(ArrayError::Conflict(format!(
                "{} snapshot LUNs were taken of LUN {lun}; release them first.",
                deps.len()
            )));
        }
        self.remove_snapshot_lun(&mut inner, lun)?;
        tracing::info!(lun, host, "snapshot LUN released");
        Ok(())
    }

    /// The host's sets with their planned snapshots.
    pub fn list_sets(&self, host: &str) -> Vec<SetSummary> {
        self.lock()
            .db
            .sets
            .values()
            .filter(|s| s.host == host)
            .map(|s| SetSummary {
                set_id: s.set_id,
                state: s.state,
                context: s.context,
                snapshots: s
                    .members
                    .iter()
                    .map(|m| PlannedSnapshot {
                        snapshot_id: m.snapshot_id,
                        source: m.source.clone(),
                    })
                    .collect(),
            })
            .collect()
    }
}
