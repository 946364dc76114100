//! [`MemoryArray`]: the real array ([`array::Array`], every rule of `array::state`) on the
//! memory storage engine, with its journal in a temporary directory, for tests, the emulator's
//! memory lab and `shadowlun bench provider`. Hosts are named after their initiators on first
//! use; [`MemoryArray::client`] gives the [`ArrayControl`] a host's provider uses: an
//! [`ArrayAdapter`] (no HTTP) behind a thin wrapper that records every call and can inject
//! failures and latency. The wrapper holds no rule of its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use api::{
    ArrayLun, CreateHost, CreateLun, JobId, JobStatus, LunId, LunKey, MapLun, PlannedSnapshot,
    ResyncPair, SetState, SetSummary, SnapshotLun,
};
use provider::{ArrayControl, ControlError};
use storage::Backend;
use vss::lun::ScsiIdentity;
use vss::{SnapshotContext, VssId};

use crate::adapter::ArrayAdapter;

/// Calls seen so far and what is to be injected into the next ones.
#[derive(Default)]
struct Injected {
    calls: Vec<String>,
    faults: HashMap<String, VecDeque<ControlError>>,
    delays: HashMap<String, Duration>,
    /// Lookups answer that no plex copy can be made (as an array on storage without one).
    no_plex: bool,
}

struct Shared {
    array: array::Array,
    backend: Arc<storage::MemoryBackend>,
    /// initiator → host name
    hosts: Mutex<BTreeMap<String, String>>,
    luns_made: AtomicU64,
    injected: Mutex<Injected>,
    _dir: tempfile::TempDir,
}

/// The array, shared by every host's client (the "SAN"). Cheap to clone; every clone is the
/// same array.
#[derive(Clone)]
pub struct MemoryArray(Arc<Shared>);

impl std::fmt::Debug for MemoryArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemoryArray").field(&self.0.array).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("memory array lock")
}

/// The number of the LUN whose id is `lun` ([`array::state::lun_id`] the other way).
pub fn lun_number(lun: &str) -> Option<u64> {
    lun.strip_prefix("lun-")?.parse().ok()
}

impl MemoryArray {
    /// A new, empty array.
    ///
    /// # Panics
    /// If the temporary directory or the journal in it cannot be created.
    pub fn new() -> Self {
        Self::try_new().expect("an in-memory array")
    }

    /// A new, empty array, or why it could not be opened.
    pub fn try_new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("shadowlun-memory-array-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let backend = Arc::new(storage::MemoryBackend::new(None));
        let admin = array::state::new_token().map_err(|e| e.to_string())?;
        let array = array::Array::open(
            &dir.path().join("journal"),
            backend.clone() as Arc<dyn Backend>,
            Arc::new(array::NoExport),
            array::Policy::default(),
            array::state::token_hash(&admin),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self(Arc::new(Shared {
            array,
            backend,
            hosts: Mutex::new(BTreeMap::new()),
            luns_made: AtomicU64::new(0),
            injected: Mutex::default(),
            _dir: dir,
        })))
    }

    /// The array itself, for its admin verbs.
    pub fn array(&self) -> &array::Array {
        &self.0.array
    }

    /// The name of the host with this initiator, created on first use. Hosts trust each
    /// other as a lab's do: a new host may import the sets of every host made before it.
    pub fn host(&self, initiator: &str) -> Result<String, String> {
        let mut hosts = lock(&self.0.hosts);
        if let Some(h) = hosts.get(initiator) {
            return Ok(h.clone());
        }
        let name = format!("host{}", hosts.len() + 1);
        self.0
            .array
            .create_host(&CreateHost {
                name: name.clone(),
                initiators: vec![initiator.into()],
                chap_secret: None,
                import_from: hosts.values().cloned().collect(),
            })
            .map_err(|e| format!("host for {initiator}: {e}"))?;
        hosts.insert(initiator.into(), name.clone());
        Ok(name)
    }

    /// Creates an original LUN of `size` bytes mapped to the hosts of `initiators`.
    pub fn try_create_lun(&self, size: u64, initiators: &[&str]) -> Result<LunId, String> {
        let n = self.0.luns_made.fetch_add(1, Ordering::Relaxed) + 1;
        let lun = self
            .0
            .array
            .create_lun(&CreateLun {
                name: format!("lun{n}"),
                size_bytes: size,
            })
            .map_err(|e| e.to_string())?;
        for i in initiators {
            let host = self.host(i)?;
            self.0
                .array
                .map_lun(
                    &host,
                    &MapLun {
                        lun: lun.id.clone(),
                        lun_number: None,
                        shared: false,
                    },
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(lun.id)
    }

    /// [`MemoryArray::try_create_lun`], for tests.
    ///
    /// # Panics
    /// If the array refuses the LUN (a size that is not a multiple of 512, an initiator that
    /// is not an iSCSI name).
    pub fn create_lun(&self, size: u64, initiators: &[&str]) -> LunId {
        self.try_create_lun(size, initiators)
            .unwrap_or_else(|e| panic!("creating a {size}-byte LUN: {e}"))
    }

    /// The [`ArrayControl`] of the provider on the host with this initiator.
    ///
    /// # Panics
    /// If `initiator` is not an iSCSI name (the array refuses the host).
    pub fn client(&self, initiator: &str) -> MemoryArrayClient {
        let host = self.host(initiator).unwrap_or_else(|e| panic!("{e}"));
        MemoryArrayClient {
            array: self.clone(),
            adapter: ArrayAdapter::new(self.0.array.clone(), &host),
        }
    }

    /// The LUNs mapped to the initiator's host, by the LUN number it sees them at.
    pub fn mapped(&self, initiator: &str) -> BTreeMap<u64, LunId> {
        let Some(host) = lock(&self.0.hosts).get(initiator).cloned() else {
            return BTreeMap::new();
        };
        self.0
            .array
            .get_host(&host)
            .map(|h| h.luns.into_iter().map(|l| (l.lun_number, l.lun)).collect())
            .unwrap_or_default()
    }

    /// The LUNs mapped to the initiator's host, in creation order: (id, identity pages, size).
    pub fn visible_luns(&self, initiator: &str) -> Vec<(LunId, ScsiIdentity, u64)> {
        let mut v: Vec<(u64, LunId, ScsiIdentity, u64)> = self
            .mapped(initiator)
            .into_values()
            .filter_map(|id| {
                let number = lun_number(&id)?;
                let size = self.size(&id)?;
                let pages = self.0.array.lun_identity_pages(&id)?;
                Some((number, id, pages, size))
            })
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|(_, id, p, s)| (id, p, s)).collect()
    }

    /// The size of a LUN in bytes.
    pub fn size(&self, lun: &str) -> Option<u64> {
        self.0.array.get_lun(lun).ok().map(|l| l.size_bytes)
    }

    /// The identity pages a LUN serves.
    pub fn identity(&self, lun: &str) -> Option<ScsiIdentity> {
        self.0.array.lun_identity_pages(lun)
    }

    /// The LUN's volume, as the SCSI target would serve it.
    pub fn device(&self, lun: &str) -> Option<scsi::Device> {
        self.0.array.get_lun(lun).ok()?;
        self.0.backend.device(lun).ok()
    }

    pub fn read(&self, lun: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        self.device(lun)?.read_at(offset, &mut buf).ok()?;
        Some(buf)
    }

    pub fn write(&self, lun: &str, offset: u64, data: &[u8]) -> bool {
        self.device(lun)
            .is_some_and(|d| d.write_at(offset, data, false).is_ok())
    }

    pub fn lun_exists(&self, lun: &str) -> bool {
        self.0.array.get_lun(lun).is_ok()
    }

    /// Every LUN, originals and snapshots (LUNs reserved by a prepared set not yet).
    pub fn lun_ids(&self) -> Vec<LunId> {
        let mut v: Vec<LunId> = self
            .0
            .array
            .list_luns(false)
            .into_iter()
            .map(|l| l.id)
            .collect();
        v.sort_by_key(|id| lun_number(id));
        v
    }

    /// The snapshot LUNs currently on the array.
    pub fn snapshot_luns(&self) -> Vec<LunId> {
        self.0
            .array
            .list_luns(true)
            .into_iter()
            .map(|l| l.id)
            .collect()
    }

    pub fn set_state(&self, set_id: VssId) -> Option<SetState> {
        self.0
            .array
            .admin_sets()
            .into_iter()
            .find(|s| s.set_id == set_id)
            .map(|s| s.state)
    }

    /// Every [`ArrayControl`] call so far, as `verb` strings.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.0.injected).calls.clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.0.injected).calls.clear();
    }

    /// The next call of `verb` fails with `err` (without reaching the array).
    pub fn fail_next(&self, verb: &str, err: ControlError) {
        lock(&self.0.injected)
            .faults
            .entry(verb.to_string())
            .or_default()
            .push_back(err);
    }

    /// From now on lookups answer `plex: false`, as an array whose storage cannot make plex
    /// copies does (the array's own refusal of a plex prepare is the array's to test).
    pub fn without_plex(&self) {
        lock(&self.0.injected).no_plex = true;
    }

    /// Every call of `verb` takes at least `d` more.
    pub fn delay(&self, verb: &str, d: Duration) {
        lock(&self.0.injected).delays.insert(verb.to_string(), d);
    }

    /// Records the call, applies any injected delay and fault.
    fn enter(&self, verb: &str) -> Result<(), ControlError> {
        let delay = {
            let mut m = lock(&self.0.injected);
            m.calls.push(verb.to_string());
            if let Some(e) = m.faults.get_mut(verb).and_then(VecDeque::pop_front) {
                return Err(e);
            }
            m.delays.get(verb).copied()
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Ok(())
    }
}

impl Default for MemoryArray {
    fn default() -> Self {
        Self::new()
    }
}

/// One host's view of a [`MemoryArray`]: its [`ArrayAdapter`], with the array's recording and
/// injected failures in front.
#[derive(Clone)]
pub struct MemoryArrayClient {
    array: MemoryArray,
    adapter: ArrayAdapter,
}

impl MemoryArrayClient {
    pub fn array(&self) -> &MemoryArray {
        &self.array
    }
}

impl ArrayControl for MemoryArrayClient {
    fn lookup(&self, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ControlError> {
        self.array.enter("lookup")?;
        let mut found = self.adapter.lookup(keys)?;
        if lock(&self.array.0.injected).no_plex {
            found.iter_mut().flatten().for_each(|l| l.plex = false);
        }
        Ok(found)
    }

    fn prepare(
        &self,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ControlError> {
        self.array.enter("prepare")?;
        self.adapter.prepare(set_id, context, snapshots)
    }

    fn end_prepare(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array.enter("end_prepare")?;
        self.adapter.end_prepare(set_id)
    }

    fn commit(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array.enter("commit")?;
        self.adapter.commit(set_id)
    }

    fn complete(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array.enter("complete")?;
        self.adapter.complete(set_id)
    }

    fn abort(&self, set_id: VssId) -> Result<(), ControlError> {
        self.array.enter("abort")?;
        self.adapter.abort(set_id)
    }

    fn describe(&self, set_id: VssId, sources: &[LunId]) -> Result<Vec<SnapshotLun>, ControlError> {
        self.array.enter("describe")?;
        self.adapter.describe(set_id, sources)
    }

    fn expose(&self, luns: &[LunId]) -> Result<(), ControlError> {
        self.array.enter("expose")?;
        self.adapter.expose(luns)
    }

    fn mask(&self, luns: &[LunId]) -> Result<(), ControlError> {
        self.array.enter("mask")?;
        self.adapter.mask(luns)
    }

    fn release(&self, lun: &LunId) -> Result<(), ControlError> {
        self.array.enter("release")?;
        self.adapter.release(lun)
    }

    fn start_resync(&self, pairs: &[ResyncPair]) -> Result<JobId, ControlError> {
        self.array.enter("start_resync")?;
        self.adapter.start_resync(pairs)
    }

    fn resync_status(&self, job: &JobId) -> Result<JobStatus, ControlError> {
        self.array.enter("resync_status")?;
        self.adapter.resync_status(job)
    }

    fn cancel_resync(&self, job: &JobId) -> Result<(), ControlError> {
        self.array.enter("cancel_resync")?;
        self.adapter.cancel_resync(job)
    }

    fn list_sets(&self) -> Result<Vec<SetSummary>, ControlError> {
        self.array.enter("list_sets")?;
        self.adapter.list_sets()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "iqn.1991-05.com.microsoft:host-a";

    #[test]
    fn a_lun_is_mapped_to_its_host_and_holds_bytes_at_any_offset() {
        let a = MemoryArray::new();
        let l = a.create_lun(1 << 20, &[HOST]);
        assert!(a.write(&l, 100, b"golden"));
        assert_eq!(a.read(&l, 100, 6).unwrap(), b"golden");
        assert!(!a.write(&l, (1 << 20) - 2, b"over"));
        let seen = a.visible_luns(HOST);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, l);
        assert_eq!(seen[0].2, 1 << 20);
        assert_eq!(Some(seen[0].1.clone()), a.identity(&l));
        assert!(a.visible_luns("iqn.1991-05.com.microsoft:other").is_empty());
        assert_eq!(a.lun_ids(), vec![l]);
    }

    #[test]
    fn injected_failures_never_reach_the_array_and_calls_are_recorded() {
        let a = MemoryArray::new();
        a.create_lun(1 << 20, &[HOST]);
        let c = a.client(HOST);
        a.fail_next("list_sets", ControlError::Timeout("x".into()));
        assert_eq!(c.list_sets(), Err(ControlError::Timeout("x".into())));
        assert_eq!(c.list_sets(), Ok(vec![]));
        assert_eq!(a.calls(), vec!["list_sets", "list_sets"]);
        // The array's own refusals come back as the HTTPS client reports them.
        assert!(matches!(
            c.end_prepare(VssId::from_u128(7)),
            Err(ControlError::NotFound(_))
        ));
    }
}
