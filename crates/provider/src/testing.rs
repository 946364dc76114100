//! An in-memory array for tests: [`MemoryArray`] holds LUNs with shadowlun identity and data,
//! sets, jobs and per-host visibility; [`MemoryArray::client`] gives the [`ArrayControl`] a
//! given host's provider uses. It records every call and can inject failures and latency.
//!
//! It is a test double, not an engine: snapshots copy the LUN's bytes, so keep LUNs small.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vss::identity::LunIdentity;
use vss::inquiry::Designator;
use vss::lun::ScsiIdentity;
use vss::{SnapshotContext, VssId};

use crate::array::*;

/// Target name the double pretends to serve its LUNs under.
pub const TARGET_NAME: &str = "iqn.2026-01.org.shadowlun:memory";

#[derive(Debug, Clone)]
struct MemLun {
    identity: LunIdentity,
    data: Vec<u8>,
    snapshot_of: Option<SnapshotOrigin>,
    visible_to: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct MemSet {
    state: SetState,
    context: SnapshotContext,
    host: String,
    /// (planned snapshot, reserved snapshot LUN id)
    snapshots: Vec<(PlannedSnapshot, LunId)>,
}

#[derive(Default)]
struct Mem {
    next_number: u64,
    luns: BTreeMap<LunId, MemLun>,
    sets: BTreeMap<VssId, MemSet>,
    jobs: BTreeMap<JobId, JobStatus>,
    calls: Vec<String>,
    faults: HashMap<String, VecDeque<ControlError>>,
    delays: HashMap<String, Duration>,
    capacity: Option<u64>,
}

impl Mem {
    fn used(&self) -> u64 {
        self.luns.values().map(|l| l.data.len() as u64).sum()
    }

    fn new_lun(&mut self, size: u64, snapshot_of: Option<SnapshotOrigin>) -> LunId {
        self.next_number += 1;
        let id = format!("lun-{}", self.next_number);
        self.luns.insert(
            id.clone(),
            MemLun {
                identity: LunIdentity::for_number(self.next_number),
                data: vec![0; size as usize],
                snapshot_of,
                visible_to: BTreeSet::new(),
            },
        );
        id
    }
}

/// The shared in-memory array (the "SAN").
#[derive(Clone, Default)]
pub struct MemoryArray {
    mem: Arc<Mutex<Mem>>,
}

impl MemoryArray {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Limits the bytes all LUNs together may hold (snapshots copy data here).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Creates an original LUN of `size` bytes visible to `initiators`.
    pub fn create_lun(&self, size: u64, initiators: &[&str]) -> LunId {
        let mut m = self.lock();
        let id = m.new_lun(size, None);
        let lun = m.luns.get_mut(&id).expect("just inserted");
        lun.visible_to = initiators.iter().map(|s| s.to_string()).collect();
        id
    }

    /// The [`ArrayControl`] for the provider on the host with this initiator name.
    pub fn client(&self, initiator: &str) -> MemoryArrayClient {
        MemoryArrayClient {
            array: self.clone(),
            host: initiator.to_string(),
        }
    }

    /// LUNs the initiator sees, in creation order: (id, identity pages, size).
    pub fn visible_luns(&self, initiator: &str) -> Vec<(LunId, ScsiIdentity, u64)> {
        let m = self.lock();
        let mut v: Vec<_> = m
            .luns
            .iter()
            .filter(|(_, l)| l.visible_to.contains(initiator))
            .map(|(id, l)| {
                (
                    l.identity.number,
                    id.clone(),
                    Self::pages(l),
                    l.data.len() as u64,
                )
            })
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|(_, id, p, s)| (id, p, s)).collect()
    }

    fn pages(l: &MemLun) -> ScsiIdentity {
        let ports = Designator::iscsi_target_port(TARGET_NAME, 1, 1);
        l.identity.scsi_identity(&ports)
    }

    /// The identity pages of a LUN.
    pub fn identity(&self, lun: &str) -> Option<ScsiIdentity> {
        self.lock().luns.get(lun).map(Self::pages)
    }

    pub fn read(&self, lun: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let m = self.lock();
        let l = m.luns.get(lun)?;
        let end = (offset as usize).checked_add(len)?;
        l.data.get(offset as usize..end).map(<[u8]>::to_vec)
    }

    pub fn write(&self, lun: &str, offset: u64, data: &[u8]) -> bool {
        let mut m = self.lock();
        let Some(l) = m.luns.get_mut(lun) else {
            return false;
        };
        let Some(end) = (offset as usize).checked_add(data.len()) else {
            return false;
        };
        match l.data.get_mut(offset as usize..end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    pub fn lun_exists(&self, lun: &str) -> bool {
        self.lock().luns.contains_key(lun)
    }

    pub fn lun_ids(&self) -> Vec<LunId> {
        self.lock().luns.keys().cloned().collect()
    }

    /// The snapshot LUNs currently on the array.
    pub fn snapshot_luns(&self) -> Vec<LunId> {
        self.lock()
            .luns
            .iter()
            .filter(|(_, l)| l.snapshot_of.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn set_state(&self, set_id: VssId) -> Option<SetState> {
        self.lock().sets.get(&set_id).map(|s| s.state)
    }

    /// Every ArrayControl call so far, as `verb` strings.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The next call of `verb` fails with `err`.
    pub fn fail_next(&self, verb: &str, err: ControlError) {
        self.lock()
            .faults
            .entry(verb.to_string())
            .or_default()
            .push_back(err);
    }

    /// Every call of `verb` takes at least `d`.
    pub fn delay(&self, verb: &str, d: Duration) {
        self.lock().delays.insert(verb.to_string(), d);
    }

    /// Records the call, applies any injected delay and fault.
    fn enter(&self, verb: &str) -> Result<MutexGuard<'_, Mem>, ControlError> {
        let delay = {
            let mut m = self.lock();
            m.calls.push(verb.to_string());
            if let Some(e) = m.faults.get_mut(verb).and_then(VecDeque::pop_front) {
                return Err(e);
            }
            m.delays.get(verb).copied()
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Ok(self.lock())
    }
}

/// One host's view of a [`MemoryArray`].
#[derive(Clone)]
pub struct MemoryArrayClient {
    array: MemoryArray,
    host: String,
}

impl MemoryArrayClient {
    pub fn array(&self) -> &MemoryArray {
        &self.array
    }
}

fn set_mut(m: &mut Mem, set_id: VssId) -> Result<&mut MemSet, ControlError> {
    m.sets
        .get_mut(&set_id)
        .ok_or_else(|| ControlError::NotFound(format!("snapshot set {set_id}")))
}

impl ArrayControl for MemoryArrayClient {
    fn lookup(&self, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ControlError> {
        let m = self.array.enter("lookup")?;
        Ok(keys
            .iter()
            .map(|k| {
                m.luns.iter().find_map(|(id, l)| {
                    let ours = l.identity.designators.iter().any(|d| {
                        k.identifiers
                            .iter()
                            .any(|i| i.id_type == d.designator_type && i.identifier == d.value)
                    });
                    ours.then(|| ArrayLun {
                        id: id.clone(),
                        size_bytes: l.data.len() as u64,
                        snapshot_of: l.snapshot_of.clone(),
                    })
                })
            })
            .collect())
    }

    fn prepare(
        &self,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ControlError> {
        let mut m = self.array.enter("prepare")?;
        for s in snapshots {
            if !m.luns.contains_key(&s.source) {
                return Err(ControlError::NotFound(format!("LUN {}", s.source)));
            }
        }
        let set = m.sets.entry(set_id).or_insert_with(|| MemSet {
            state: SetState::Prepared,
            context,
            host: self.host.clone(),
            snapshots: Vec::new(),
        });
        if set.state != SetState::Prepared {
            return Err(ControlError::Conflict(format!(
                "set {set_id} is {:?}",
                set.state
            )));
        }
        let new: Vec<PlannedSnapshot> = snapshots
            .iter()
            .filter(|s| !set.snapshots.iter().any(|(p, _)| p.source == s.source))
            .cloned()
            .collect();
        for s in new {
            m.next_number += 1;
            let id = format!("lun-{}", m.next_number);
            m.sets
                .get_mut(&set_id)
                .expect("inserted")
                .snapshots
                .push((s, id));
        }
        Ok(())
    }

    fn end_prepare(&self, set_id: VssId) -> Result<(), ControlError> {
        let mut m = self.array.enter("end_prepare")?;
        let set = set_mut(&mut m, set_id)?;
        if set.state != SetState::Prepared {
            return Err(ControlError::Conflict(format!(
                "set {set_id} is {:?}",
                set.state
            )));
        }
        Ok(())
    }

    fn commit(&self, set_id: VssId) -> Result<(), ControlError> {
        let mut m = self.array.enter("commit")?;
        let set = set_mut(&mut m, set_id)?.clone();
        match set.state {
            SetState::Committed | SetState::Completed => return Ok(()),
            SetState::Aborted => {
                return Err(ControlError::Conflict(format!("set {set_id} was aborted")));
            }
            SetState::Prepared => {}
        }
        let need: u64 = set
            .snapshots
            .iter()
            .map(|(p, _)| m.luns[&p.source].data.len() as u64)
            .sum();
        if let Some(cap) = m.capacity {
            if m.used() + need > cap {
                return Err(ControlError::NoSpace(format!("{need} bytes needed")));
            }
        }
        // All LUNs at one instant: the lock is held across the whole set.
        for (p, snap_id) in &set.snapshots {
            let number: u64 = snap_id
                .trim_start_matches("lun-")
                .parse()
                .expect("own id format");
            let data = m.luns[&p.source].data.clone();
            m.luns.insert(
                snap_id.clone(),
                MemLun {
                    identity: LunIdentity::for_number(number),
                    data,
                    snapshot_of: Some(SnapshotOrigin {
                        source: p.source.clone(),
                        set_id,
                        snapshot_id: p.snapshot_id,
                    }),
                    visible_to: BTreeSet::new(),
                },
            );
        }
        set_mut(&mut m, set_id)?.state = SetState::Committed;
        Ok(())
    }

    fn complete(&self, set_id: VssId) -> Result<(), ControlError> {
        let mut m = self.array.enter("complete")?;
        let set = set_mut(&mut m, set_id)?;
        match set.state {
            SetState::Committed | SetState::Completed => {
                set.state = SetState::Completed;
                Ok(())
            }
            s => Err(ControlError::Conflict(format!("set {set_id} is {s:?}"))),
        }
    }

    fn abort(&self, set_id: VssId) -> Result<(), ControlError> {
        let mut m = self.array.enter("abort")?;
        let set = set_mut(&mut m, set_id)?.clone();
        if set.state == SetState::Completed {
            return Err(ControlError::Conflict(format!(
                "set {set_id} is complete; release its LUNs instead"
            )));
        }
        for (_, snap) in &set.snapshots {
            m.luns.remove(snap);
        }
        set_mut(&mut m, set_id)?.state = SetState::Aborted;
        Ok(())
    }

    fn describe(&self, set_id: VssId, sources: &[LunId]) -> Result<Vec<SnapshotLun>, ControlError> {
        let mut m = self.array.enter("describe")?;
        let set = set_mut(&mut m, set_id)?.clone();
        if !matches!(set.state, SetState::Committed | SetState::Completed) {
            return Err(ControlError::Conflict(format!(
                "set {set_id} is {:?}",
                set.state
            )));
        }
        sources
            .iter()
            .map(|src| {
                let (_, lun) = set
                    .snapshots
                    .iter()
                    .find(|(p, _)| &p.source == src)
                    .ok_or_else(|| ControlError::NotFound(format!("LUN {src} in set {set_id}")))?;
                let l = m
                    .luns
                    .get(lun)
                    .ok_or_else(|| ControlError::NotFound(format!("snapshot LUN {lun}")))?;
                Ok(SnapshotLun {
                    source: src.clone(),
                    lun: lun.clone(),
                    identity: MemoryArray::pages(l),
                })
            })
            .collect()
    }

    fn expose(&self, luns: &[LunId]) -> Result<(), ControlError> {
        let mut m = self.array.enter("expose")?;
        for id in luns {
            let l = m
                .luns
                .get_mut(id)
                .ok_or_else(|| ControlError::NotFound(format!("LUN {id}")))?;
            l.visible_to.insert(self.host.clone());
        }
        Ok(())
    }

    fn mask(&self, luns: &[LunId]) -> Result<(), ControlError> {
        let mut m = self.array.enter("mask")?;
        for id in luns {
            let l = m
                .luns
                .get_mut(id)
                .ok_or_else(|| ControlError::NotFound(format!("LUN {id}")))?;
            l.visible_to.remove(&self.host);
        }
        Ok(())
    }

    fn release(&self, lun: &LunId) -> Result<(), ControlError> {
        let mut m = self.array.enter("release")?;
        match m.luns.get(lun) {
            None => Err(ControlError::NotFound(format!("LUN {lun}"))),
            Some(l) if l.snapshot_of.is_none() => Err(ControlError::Conflict(format!(
                "LUN {lun} is an original LUN"
            ))),
            Some(_) => {
                m.luns.remove(lun);
                Ok(())
            }
        }
    }

    fn start_resync(&self, pairs: &[ResyncPair]) -> Result<JobId, ControlError> {
        let mut m = self.array.enter("start_resync")?;
        for p in pairs {
            let src = m
                .luns
                .get(&p.snapshot)
                .ok_or_else(|| ControlError::NotFound(format!("LUN {}", p.snapshot)))?;
            if src.snapshot_of.is_none() {
                return Err(ControlError::Conflict(format!(
                    "LUN {} is not a snapshot",
                    p.snapshot
                )));
            }
            if !m.luns.contains_key(&p.destination) {
                return Err(ControlError::NotFound(format!("LUN {}", p.destination)));
            }
        }
        for p in pairs {
            let data = m.luns[&p.snapshot].data.clone();
            // The destination takes the snapshot's size (docs/vss-contract.md §4.12
            // asks this of a larger destination).
            m.luns.get_mut(&p.destination).expect("checked").data = data;
        }
        let job = format!("job-{}", m.jobs.len() + 1);
        m.jobs.insert(
            job.clone(),
            JobStatus {
                state: JobState::Finished,
                progress: 100,
            },
        );
        Ok(job)
    }

    fn resync_status(&self, job: &JobId) -> Result<JobStatus, ControlError> {
        let m = self.array.enter("resync_status")?;
        m.jobs
            .get(job)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("job {job}")))
    }

    fn cancel_resync(&self, job: &JobId) -> Result<(), ControlError> {
        let mut m = self.array.enter("cancel_resync")?;
        let j = m
            .jobs
            .get_mut(job)
            .ok_or_else(|| ControlError::NotFound(format!("job {job}")))?;
        if j.state == JobState::Running {
            j.state = JobState::Cancelled;
        }
        Ok(())
    }

    fn list_sets(&self) -> Result<Vec<SetSummary>, ControlError> {
        let m = self.array.enter("list_sets")?;
        Ok(m.sets
            .iter()
            .filter(|(_, s)| s.host == self.host)
            .map(|(id, s)| SetSummary {
                set_id: *id,
                state: s.state,
                context: s.context,
                snapshots: s.snapshots.iter().map(|(p, _)| p.clone()).collect(),
            })
            .collect())
    }
}
