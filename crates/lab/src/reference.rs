//! A small, well-behaved reference provider over [`MemorySan`], for the emulator's own tests,
//! the conformance catalogue's in-process lab and the scripts' examples.
//!
//! It follows the contract the way Microsoft's sample provider does (per-set state machine,
//! cleanup of an abandoned set on a new `BeginPrepareSnapshot`, snapshot LUN identity from
//! the array, `OnLunEmpty` as the only deletion), and it is deliberately simple: it is not
//! shadowlun's provider, which lives in the `provider` crate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::identity::{LunIdentity, is_shadowlun_vendor};
use vss::{
    BusType, HardwareOptions, Hresult, LunInfo, SnapshotContext, SnapshotState,
    VolumeSnapshotAttributes, VssId,
};

use crate::san::{LunNumber, MemorySan};

#[derive(Debug, Clone)]
struct SetState {
    id: VssId,
    state: SnapshotState,
    /// Source LUNs in first-seen order.
    sources: Vec<LunNumber>,
    /// Source → snapshot, after commit.
    snapshots: BTreeMap<LunNumber, LunNumber>,
}

/// What the reference provider needs from an array (its "private channel").
pub trait SanBackend: Send + Sync {
    /// The LUN whose NAA designator (raw bytes) is `naa`.
    fn find_by_naa(&self, naa: &[u8]) -> Option<LunNumber>;
    fn identity(&self, lun: LunNumber) -> Option<LunIdentity>;
    /// Snapshots the LUNs at one instant; new LUNs, visible to nobody.
    fn snapshot_luns(&self, sources: &[LunNumber]) -> Result<Vec<LunNumber>, String>;
    fn copy_lun(&self, from: LunNumber, to: LunNumber) -> Result<(), String>;
    fn delete_lun(&self, lun: LunNumber) -> Result<(), String>;
    fn mask(&self, lun: LunNumber, initiator: &str) -> Result<(), String>;
    fn unmask(&self, lun: LunNumber, initiator: &str) -> Result<(), String>;
    fn is_snapshot(&self, lun: LunNumber) -> bool;
}

impl SanBackend for MemorySan {
    fn find_by_naa(&self, naa: &[u8]) -> Option<LunNumber> {
        MemorySan::find_by_naa(self, naa)
    }
    fn identity(&self, lun: LunNumber) -> Option<LunIdentity> {
        MemorySan::identity(self, lun).ok()
    }
    fn snapshot_luns(&self, sources: &[LunNumber]) -> Result<Vec<LunNumber>, String> {
        MemorySan::snapshot_luns(self, sources).map_err(|e| e.to_string())
    }
    fn copy_lun(&self, from: LunNumber, to: LunNumber) -> Result<(), String> {
        MemorySan::copy_lun(self, from, to).map_err(|e| e.to_string())
    }
    fn delete_lun(&self, lun: LunNumber) -> Result<(), String> {
        MemorySan::delete_lun(self, lun).map_err(|e| e.to_string())
    }
    fn mask(&self, lun: LunNumber, initiator: &str) -> Result<(), String> {
        MemorySan::mask(self, lun, initiator).map_err(|e| e.to_string())
    }
    fn unmask(&self, lun: LunNumber, initiator: &str) -> Result<(), String> {
        MemorySan::unmask(self, lun, initiator).map_err(|e| e.to_string())
    }
    fn is_snapshot(&self, lun: LunNumber) -> bool {
        self.luns()
            .iter()
            .any(|l| l.number == lun && l.origin.is_some())
    }
}

/// The reference provider of one host.
pub struct ReferenceProvider {
    san: Arc<dyn SanBackend>,
    initiator: String,
    state: Mutex<Vec<SetState>>,
}

impl std::fmt::Debug for ReferenceProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReferenceProvider({})", self.initiator)
    }
}

/// The id the reference provider registers under.
pub const REFERENCE_PROVIDER_ID: VssId =
    uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);

impl ReferenceProvider {
    pub fn new(san: Arc<dyn SanBackend>, initiator: &str) -> Arc<Self> {
        Arc::new(Self {
            san,
            initiator: initiator.to_string(),
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SetState>> {
        self.state.lock().expect("reference lock")
    }

    fn lun_of(&self, info: &LunInfo) -> Option<LunNumber> {
        if !is_shadowlun_vendor(info.vendor_id.as_deref()) {
            return None;
        }
        let naa = info.naa_identifiers().next()?;
        self.san.find_by_naa(naa)
    }

    fn describe(&self, number: LunNumber) -> Result<LunInfo, Hresult> {
        let id = self
            .san
            .identity(number)
            .ok_or(Hresult::VSS_E_PROVIDER_VETO)?;
        let mut info = LunInfo::from_identity(&id.scsi_identity(&[]), BusType::ISCSI)
            .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
        // The form FillInLunInfo gives arriving disks, so the two compare equal.
        info.normalize();
        Ok(info)
    }

    fn with_set<T>(
        &self,
        set_id: VssId,
        f: impl FnOnce(&mut SetState) -> Result<T, Hresult>,
    ) -> Result<T, Hresult> {
        let mut st = self.lock();
        let s = st
            .iter_mut()
            .find(|s| s.id == set_id)
            .ok_or(Hresult::VSS_E_OBJECT_NOT_FOUND)?;
        f(s)
    }

    fn step(&self, set_id: VssId, from: SnapshotState, to: SnapshotState) -> Result<(), Hresult> {
        self.with_set(set_id, |s| {
            if s.state != from {
                return Err(Hresult::VSS_E_PROVIDER_VETO);
            }
            s.state = to;
            Ok(())
        })
    }

    fn discard(&self, s: &SetState) {
        for snap in s.snapshots.values() {
            let _ = self.san.delete_lun(*snap);
        }
    }
}

/// An operation that finished before it was returned.
#[derive(Debug)]
pub struct FinishedOperation(pub Hresult);

impl AsyncOperation for FinishedOperation {
    fn wait(&self, _timeout: Option<Duration>) -> Result<(), Hresult> {
        Ok(())
    }
    fn query_status(&self) -> Result<(Hresult, i32), Hresult> {
        Ok((self.0, 100))
    }
    fn cancel(&self) -> Result<Hresult, Hresult> {
        Ok(Hresult::VSS_S_ASYNC_FINISHED)
    }
}

impl HardwareProvider for ReferenceProvider {
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        _devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        if !context.is_valid_for_creation() {
            return Ok(false);
        }
        Ok(!luns.is_empty() && luns.iter().all(|l| self.lun_of(l).is_some()))
    }

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        _snapshot_id: VssId,
        context: SnapshotContext,
        _devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        if !context.is_valid_for_creation() {
            return Err(Hresult::VSS_E_UNSUPPORTED_CONTEXT);
        }
        let mut numbers = Vec::with_capacity(luns.len());
        for l in luns.iter() {
            numbers.push(
                self.lun_of(l)
                    .ok_or(Hresult::VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER)?,
            );
        }
        let mut st = self.lock();
        // A set still preparing under another id was abandoned: clean it up.
        let (stale, keep): (Vec<SetState>, Vec<SetState>) = st
            .drain(..)
            .partition(|s| s.id != set_id && s.state == SnapshotState::Preparing);
        *st = keep;
        drop(st);
        for s in &stale {
            self.discard(s);
        }
        let mut st = self.lock();
        let s = match st.iter_mut().position(|s| s.id == set_id) {
            Some(i) => &mut st[i],
            None => {
                st.push(SetState {
                    id: set_id,
                    state: SnapshotState::Preparing,
                    sources: Vec::new(),
                    snapshots: BTreeMap::new(),
                });
                let n = st.len() - 1;
                &mut st[n]
            }
        };
        if s.state != SnapshotState::Preparing {
            return Err(Hresult::VSS_E_PROVIDER_VETO);
        }
        for n in numbers {
            if !s.sources.contains(&n) {
                s.sources.push(n);
            }
        }
        Ok(())
    }

    fn fill_in_lun_info(&self, _device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        if self.lun_of(lun).is_none() {
            return Ok(false);
        }
        lun.normalize();
        Ok(true)
    }

    fn get_target_luns(
        &self,
        _devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        if sources.len() != destinations.len() {
            return Err(Hresult::E_INVALIDARG);
        }
        let st = self.lock();
        for (src, dst) in sources.iter().zip(destinations.iter_mut()) {
            let n = self.lun_of(src).ok_or(Hresult::E_INVALIDARG)?;
            let snap = st
                .iter()
                .rev()
                .find_map(|s| s.snapshots.get(&n).copied())
                .ok_or(Hresult::E_INVALIDARG)?;
            *dst = self.describe(snap)?;
        }
        Ok(())
    }

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        for l in luns {
            let n = self.lun_of(l).ok_or(Hresult::VSS_E_PROVIDER_VETO)?;
            self.san
                .unmask(n, &self.initiator)
                .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
        }
        Ok(())
    }

    fn on_lun_empty(&self, _device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        let n = self.lun_of(lun).ok_or(Hresult::E_INVALIDARG)?;
        if !self.san.is_snapshot(n) {
            return Err(Hresult::VSS_E_PROVIDER_VETO);
        }
        self.san
            .delete_lun(n)
            .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
        for s in self.lock().iter_mut() {
            s.snapshots.retain(|_, v| *v != n);
        }
        Ok(())
    }

    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        Ok(0)
    }

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        _original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult> {
        if flags.contains(HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS) {
            for l in snapshot_luns {
                let n = self.lun_of(l).ok_or(Hresult::E_INVALIDARG)?;
                self.san
                    .mask(n, &self.initiator)
                    .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
            }
        }
        Ok(())
    }

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        if sources.len() != targets.len() {
            return Err(Hresult::VSS_E_PROVIDER_VETO);
        }
        for (s, t) in sources.iter().zip(targets) {
            let from = self.lun_of(s).ok_or(Hresult::VSS_E_PROVIDER_VETO)?;
            let to = self.lun_of(t).ok_or(Hresult::VSS_E_PROVIDER_VETO)?;
            if let Err(e) = self.san.copy_lun(from, to) {
                tracing::warn!(error = %e, "resync failed");
                return Ok(Arc::new(FinishedOperation(
                    Hresult::VSS_E_INSUFFICIENT_STORAGE,
                )));
            }
        }
        Ok(Arc::new(FinishedOperation(Hresult::VSS_S_ASYNC_FINISHED)))
    }

    fn on_reuse_luns(&self, _: &[LunInfo], _: &[LunInfo]) -> Result<(), Hresult> {
        Err(Hresult::E_NOTIMPL)
    }

    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.step(set_id, SnapshotState::Preparing, SnapshotState::Prepared)
    }

    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.step(set_id, SnapshotState::Prepared, SnapshotState::Precommitted)
    }

    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.with_set(set_id, |s| {
            if s.state != SnapshotState::Precommitted {
                return Err(Hresult::VSS_E_PROVIDER_VETO);
            }
            let snaps = self
                .san
                .snapshot_luns(&s.sources)
                .map_err(|_| Hresult::VSS_E_PROVIDER_VETO)?;
            s.snapshots = s.sources.iter().copied().zip(snaps).collect();
            s.state = SnapshotState::Committed;
            Ok(())
        })
    }

    fn post_commit_snapshots(&self, set_id: VssId, _count: i32) -> Result<(), Hresult> {
        self.step(set_id, SnapshotState::Committed, SnapshotState::Created)
    }

    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.with_set(set_id, |s| {
            if s.state != SnapshotState::Created {
                return Err(Hresult::VSS_E_PROVIDER_VETO);
            }
            Ok(())
        })
    }

    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.with_set(set_id, |s| {
            if s.state != SnapshotState::Created {
                return Err(Hresult::VSS_E_PROVIDER_VETO);
            }
            Ok(())
        })
    }

    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        let mut st = self.lock();
        let Some(i) = st.iter().position(|s| s.id == set_id) else {
            return Err(Hresult::VSS_E_OBJECT_NOT_FOUND);
        };
        let s = st.remove(i);
        drop(st);
        self.discard(&s);
        Ok(())
    }

    fn on_load(&self) -> Result<(), Hresult> {
        Ok(())
    }

    fn on_unload(&self, _force: bool) -> Result<UnloadAnswer, Hresult> {
        Ok(UnloadAnswer::Ready)
    }
}

/// The context bits the catalogue and tests build sets with.
pub fn context(bits: &[VolumeSnapshotAttributes]) -> SnapshotContext {
    bits.iter().fold(SnapshotContext::BACKUP, |c, b| c.with(*b))
}

/// The in-process lab: a [`MemorySan`] and a [`ReferenceProvider`] per host.
#[derive(Debug)]
pub struct MemoryLab {
    pub san: Arc<MemorySan>,
}

impl vss_emulator::conformance::Lab for MemoryLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        self.san
            .create_lun(bytes, &[initiator])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn lun_count(&self) -> Result<usize, String> {
        Ok(self.san.luns().len())
    }

    fn storage(&self, initiator: &str) -> Result<Arc<dyn vss_emulator::HostStorage>, String> {
        Ok(self.san.host_storage(initiator))
    }

    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        Ok(ReferenceProvider::new(self.san.clone(), initiator))
    }

    fn provider_id(&self) -> VssId {
        REFERENCE_PROVIDER_ID
    }

    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        let n = self
            .san
            .find_by_naa(naa)
            .ok_or_else(|| format!("no LUN with NAA {}", hex::encode(naa)))?;
        self.san.delete_lun(n).map_err(|e| e.to_string())
    }
}

/// Builds a fresh [`MemoryLab`] per scenario.
#[derive(Debug, Default)]
pub struct MemoryLabFactory;

impl vss_emulator::conformance::LabFactory for MemoryLabFactory {
    fn name(&self) -> String {
        "in-process SAN + reference provider".into()
    }

    fn build(&self) -> Result<Box<dyn vss_emulator::conformance::Lab>, String> {
        Ok(Box::new(MemoryLab {
            san: MemorySan::new(),
        }))
    }
}
