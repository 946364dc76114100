//! `ShadowlunProvider`: the VSS hardware provider contract (`docs/vss-contract.md` §2 to §4)
//! over an [`ArrayControl`].
//!
//! State machine of the set in progress (values of `VSS_SNAPSHOT_STATE`):
//!
//! ```text
//! (none) -BeginPrepare-> Preparing -EndPrepare-> Prepared -PreCommit-> Precommitted
//!   -Commit-> Committed -PostCommit-> Created -PreFinalCommit-> Prefinalcommitted
//!   -PostFinalCommit-> (finished: kept for GetTargetLuns)
//! any state -Abort / out-of-order call-> aborted on the array, (none)
//! ```
//!
//! Between PreCommit and PostCommit the provider neither logs nor touches files: messages
//! and event-log entries are buffered and emitted after PostCommit (or Abort).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vss::identity::is_shadowlun_vendor;
use vss::{
    BusType, HardwareOptions, Hresult, LunInfo, Method, SnapshotContext, SnapshotState,
    VolumeSnapshotAttributes, VssId,
};

use crate::array::{ArrayControl, ArrayLun, LunId, LunKey, PlannedSnapshot, ResyncPair};
use crate::error::{EventSink, ProviderError, ProviderEvent, TracingEvents};
use crate::hardware::{AsyncOperation, HardwareProvider, UnloadAnswer};
use crate::resync::ResyncJob;

/// Tunables of the provider core.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Most snapshots (volumes) in one set; VSS's own limit is 64.
    pub max_volumes_per_set: usize,
    /// How many finished sets are remembered for a late `GetTargetLuns`.
    pub remembered_sets: usize,
    /// How often a resync job is polled while waiting.
    pub resync_poll: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            max_volumes_per_set: vss::MAX_VOLUMES_PER_SET,
            remembered_sets: 16,
            resync_poll: Duration::from_millis(50),
        }
    }
}

/// The provider. Cheap to share: wrap it in an `Arc` and call from any thread.
pub struct ShadowlunProvider<A: ArrayControl> {
    array: Arc<A>,
    events: Arc<dyn EventSink>,
    config: ProviderConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<SetInProgress>,
    finished: VecDeque<SetInProgress>,
    /// Between PreCommit and PostCommit: no logging, no event log.
    frozen: bool,
    deferred: Vec<Deferred>,
}

enum Deferred {
    Log(String),
    Event(ProviderEvent),
}

struct SetInProgress {
    id: VssId,
    context: SnapshotContext,
    state: SnapshotState,
    /// Snapshot ids (volumes) added to the set.
    volumes: Vec<VssId>,
    /// One entry per distinct source LUN.
    snapshots: Vec<PlannedSnapshot>,
    /// Identity of each source LUN as VSS gave it, to resolve GetTargetLuns without a lookup.
    sources: Vec<(LunKey, LunId)>,
    commit_time: Option<Duration>,
}

impl SetInProgress {
    fn source_for(&self, key: &LunKey) -> Option<&LunId> {
        self.sources
            .iter()
            .find(|(k, _)| same_lun(k, key))
            .map(|(_, id)| id)
    }
}

/// Two keys name the same LUN when they share a designator.
fn same_lun(a: &LunKey, b: &LunKey) -> bool {
    a.identifiers.iter().any(|x| b.identifiers.contains(x))
}

type Step<T> = Result<T, ProviderError>;

impl<A: ArrayControl> ShadowlunProvider<A> {
    pub fn new(array: A) -> Self {
        Self::with_config(array, ProviderConfig::default(), Arc::new(TracingEvents))
    }

    pub fn with_config(array: A, config: ProviderConfig, events: Arc<dyn EventSink>) -> Self {
        Self {
            array: Arc::new(array),
            events,
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The array this provider talks to.
    pub fn array(&self) -> &A {
        &self.array
    }

    /// How long the last CommitSnapshots' array call took.
    pub fn last_commit_time(&self) -> Option<Duration> {
        let st = self.lock();
        st.current
            .as_ref()
            .or(st.finished.back())
            .and_then(|s| s.commit_time)
    }

    /// The state of the set in progress, if any.
    pub fn current_set(&self) -> Option<(VssId, SnapshotState)> {
        self.lock().current.as_ref().map(|s| (s.id, s.state))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("provider state lock")
    }

    /// Runs one provider method with the state locked; failures become events and codes.
    fn run<T>(
        &self,
        method: Method,
        f: impl FnOnce(&Self, &mut State) -> Step<T>,
    ) -> Result<T, Hresult> {
        let mut st = self.lock();
        let out = f(self, &mut st);
        out.map_err(|e| {
            let ev = ProviderEvent::new(method, &e);
            let code = ev.hresult;
            if st.frozen {
                st.deferred.push(Deferred::Event(ev));
            } else {
                self.events.report(&ev);
            }
            code
        })
    }

    fn note(&self, st: &mut State, msg: impl FnOnce() -> String) {
        if st.frozen {
            st.deferred.push(Deferred::Log(msg()));
        } else {
            self.events.log(&msg());
        }
    }

    /// Ends the no-logging window and emits what was buffered.
    fn thaw(&self, st: &mut State) {
        st.frozen = false;
        for d in std::mem::take(&mut st.deferred) {
            match d {
                Deferred::Log(m) => self.events.log(&m),
                Deferred::Event(e) => self.events.report(&e),
            }
        }
    }

    fn lookup(&self, luns: &[LunInfo]) -> Step<Vec<Option<ArrayLun>>> {
        let keys: Vec<LunKey> = luns.iter().map(LunKey::of).collect();
        let found = self.array.lookup(&keys)?;
        if found.len() != keys.len() {
            return Err(ProviderError::InvalidArgument(format!(
                "the array answered {} lookups for {} LUNs",
                found.len(),
                keys.len()
            )));
        }
        Ok(found)
    }

    /// Looks LUNs up and requires every one to be ours.
    fn lookup_owned(&self, luns: &[LunInfo]) -> Step<Vec<ArrayLun>> {
        self.lookup(luns)?
            .into_iter()
            .zip(luns)
            .map(|(f, l)| {
                f.ok_or_else(|| {
                    // A LUN with our identity the array does not know was ours once: a
                    // snapshot deleted on the array, not another vendor's LUN.
                    if is_shadowlun_vendor(l.vendor_id.as_deref()) {
                        ProviderError::DeletedSnapshot(l.describe())
                    } else {
                        ProviderError::NotOurLun(l.describe())
                    }
                })
            })
            .collect()
    }

    /// Discards a set on the array (best effort when the set is being replaced).
    fn discard(&self, st: &mut State, set: SetInProgress, why: &str) -> Step<()> {
        let id = set.id;
        self.note(st, || format!("discarding snapshot set {id}: {why}"));
        match self.array.abort(id) {
            Ok(()) | Err(crate::ControlError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks that `set_id` is the set in progress and in `expected` state; an out-of-order
    /// call discards the set (VSS will not commit it now) and vetoes.
    fn expect(
        &self,
        st: &mut State,
        method: Method,
        set_id: VssId,
        expected: SnapshotState,
    ) -> Step<()> {
        match &st.current {
            Some(s) if s.id == set_id && s.state == expected => Ok(()),
            Some(s) if s.id == set_id => {
                let state = s.state;
                let set = st.current.take().expect("checked above");
                let _ = self.discard(st, set, "call out of order");
                Err(ProviderError::OutOfOrder {
                    method,
                    set: set_id,
                    state,
                })
            }
            _ => Err(ProviderError::UnknownSet(set_id)),
        }
    }

    fn advance(st: &mut State, to: SnapshotState) {
        if let Some(s) = &mut st.current {
            s.state = to;
        }
    }

    fn finish(&self, st: &mut State) {
        if let Some(s) = st.current.take() {
            st.finished.push_back(s);
            while st.finished.len() > self.config.remembered_sets {
                st.finished.pop_front();
            }
        }
    }

    fn check_context(context: SnapshotContext) -> Step<()> {
        if !context.is_valid_for_creation() {
            return Err(ProviderError::UnsupportedContext(context));
        }
        Ok(())
    }

    /// A plex copy is asked: every LUN must be on storage that makes one.
    fn check_plex(context: SnapshotContext, found: &[&ArrayLun]) -> Step<()> {
        if !context.contains(VolumeSnapshotAttributes::PLEX) {
            return Ok(());
        }
        match found.iter().find(|l| !l.plex) {
            Some(l) => Err(ProviderError::PlexUnsupported(l.id.clone())),
            None => Ok(()),
        }
    }
}

impl<A: ArrayControl + 'static> HardwareProvider for ShadowlunProvider<A> {
    fn are_luns_supported(
        &self,
        context: SnapshotContext,
        _devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, Hresult> {
        // Fast, idempotent, side-effect free: no state lock, no change to `luns`.
        if luns.is_empty() || Self::check_context(context).is_err() {
            return Ok(false);
        }
        if !luns
            .iter()
            .all(|l| is_shadowlun_vendor(l.vendor_id.as_deref()))
        {
            return Ok(false);
        }
        match self.lookup(luns) {
            Ok(found) => {
                let found: Option<Vec<&ArrayLun>> = found.iter().map(Option::as_ref).collect();
                Ok(found.is_some_and(|f| Self::check_plex(context, &f).is_ok()))
            }
            Err(e) => {
                tracing::warn!("AreLunsSupported answers FALSE: {e}");
                Ok(false)
            }
        }
    }

    fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        _devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), Hresult> {
        self.run(Method::BeginPrepareSnapshot, |p, st| {
            Self::check_context(context)?;
            if luns.is_empty() {
                return Err(ProviderError::InvalidArgument("no LUNs given".into()));
            }
            // A new set id while another set is unfinished: VSS abandoned that set and will
            // never abort it (docs/vss-contract.md §2.5). Clean it up and start afresh.
            if let Some(old) = st.current.take_if(|s| s.id != set_id) {
                let state = old.state;
                p.discard(
                    st,
                    old,
                    &format!("abandoned in state {state:?}; a new set begins"),
                )?;
            }
            if let Some(cur) = &st.current {
                if cur.state != SnapshotState::Preparing {
                    let state = cur.state;
                    let set = st.current.take().expect("checked above");
                    let _ = p.discard(st, set, "BeginPrepareSnapshot out of order");
                    return Err(ProviderError::OutOfOrder {
                        method: Method::BeginPrepareSnapshot,
                        set: set_id,
                        state,
                    });
                }
                if cur.context != context {
                    return Err(ProviderError::InvalidArgument(format!(
                        "context {context} differs from the set's {}",
                        cur.context
                    )));
                }
            }
            let owned = p.lookup_owned(luns)?;
            Self::check_plex(context, &owned.iter().collect::<Vec<_>>())?;
            let set = st.current.get_or_insert_with(|| SetInProgress {
                id: set_id,
                context,
                state: SnapshotState::Preparing,
                volumes: Vec::new(),
                snapshots: Vec::new(),
                sources: Vec::new(),
                commit_time: None,
            });
            if !set.volumes.contains(&snapshot_id)
                && set.volumes.len() >= p.config.max_volumes_per_set
            {
                return Err(ProviderError::TooManyVolumes {
                    max: p.config.max_volumes_per_set,
                });
            }
            // The same LUN may back several volumes: snapshot it once per set. Nothing is
            // recorded until the array has accepted the additions, so a retry starts clean.
            let mut sources = Vec::new();
            let mut added: Vec<PlannedSnapshot> = Vec::new();
            for (lun, info) in owned.iter().zip(luns.iter()) {
                let key = LunKey::of(info);
                if set.source_for(&key).is_some() {
                    continue;
                }
                if !set
                    .snapshots
                    .iter()
                    .chain(&added)
                    .any(|a| a.source == lun.id)
                {
                    added.push(PlannedSnapshot {
                        snapshot_id,
                        source: lun.id.clone(),
                    });
                }
                sources.push((key, lun.id.clone()));
            }
            if !added.is_empty() {
                p.array.prepare(set_id, context, &added)?;
            }
            set.sources.extend(sources);
            set.snapshots.extend(added);
            if !set.volumes.contains(&snapshot_id) {
                set.volumes.push(snapshot_id);
            }
            let n = set.snapshots.len();
            p.note(st, || {
                format!("set {set_id}: snapshot {snapshot_id} prepared, {n} LUN(s) in the set")
            });
            Ok(())
        })
    }

    fn fill_in_lun_info(&self, _device: &str, lun: &mut LunInfo) -> Result<bool, Hresult> {
        // Recognise our LUNs by identity alone (works offline, on any host) and bring the
        // fields into the exact form GetTargetLuns produced.
        if !is_shadowlun_vendor(lun.vendor_id.as_deref()) || lun.naa_identifiers().next().is_none()
        {
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
        self.run(Method::GetTargetLuns, |p, st| {
            if sources.len() != destinations.len() {
                return Err(ProviderError::InvalidArgument(format!(
                    "{} source LUNs but {} destinations",
                    sources.len(),
                    destinations.len()
                )));
            }
            let keys: Vec<LunKey> = sources.iter().map(LunKey::of).collect();
            // The set in progress, or a recently finished one (VSS may call this after
            // PostFinalCommitSnapshots), that holds every source.
            let set = st
                .current
                .iter()
                .chain(st.finished.iter().rev())
                .find(|s| keys.iter().all(|k| s.source_for(k).is_some()))
                .ok_or_else(|| {
                    ProviderError::InvalidArgument(
                        "no snapshot set of this provider holds these LUNs".into(),
                    )
                })?;
            let ids: Vec<LunId> = keys
                .iter()
                .map(|k| set.source_for(k).expect("found").clone())
                .collect();
            let described = p.array.describe(set.id, &ids)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                let snap = described.iter().find(|d| &d.source == id).ok_or_else(|| {
                    ProviderError::Array(crate::ControlError::NotFound(format!(
                        "snapshot of LUN {id}"
                    )))
                })?;
                let mut info =
                    LunInfo::from_identity(&snap.identity, BusType::ISCSI).map_err(|e| {
                        ProviderError::Array(crate::ControlError::Rejected {
                            code: "bad-identity".into(),
                            detail: format!("snapshot LUN {} identity: {e}", snap.lun),
                        })
                    })?;
                info.normalize();
                out.push(info);
            }
            // Only write when every destination is ready: on failure they stay as given.
            for (d, info) in destinations.iter_mut().zip(out) {
                *d = info;
            }
            Ok(())
        })
    }

    fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), Hresult> {
        self.run(Method::LocateLuns, |p, _st| {
            let owned = p.lookup_owned(luns)?;
            let ids: Vec<LunId> = owned.into_iter().map(|l| l.id).collect();
            // Map to this host only; VSS rescans by itself right after we return.
            p.array.expose(&ids)?;
            Ok(())
        })
    }

    fn on_lun_empty(&self, _device: &str, lun: &LunInfo) -> Result<(), Hresult> {
        self.run(Method::OnLunEmpty, |p, st| {
            let found = p.lookup(std::slice::from_ref(lun))?;
            match found.into_iter().next().flatten() {
                // Already gone: releasing twice is not an error.
                None => {
                    p.note(st, || {
                        format!("OnLunEmpty: {} is already released", lun.describe())
                    });
                    Ok(())
                }
                Some(l) if l.snapshot_of.is_none() => {
                    Err(ProviderError::NotASnapshot(lun.describe()))
                }
                Some(l) => {
                    p.array.release(&l.id)?;
                    p.note(st, || format!("snapshot LUN {} released", l.id));
                    Ok(())
                }
            }
        })
    }

    fn get_provider_capabilities(&self) -> Result<u64, Hresult> {
        // Documented as reserved (docs/vss-contract.md §4.13); 0 claims no capability.
        Ok(0)
    }

    fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), Hresult> {
        self.run(Method::OnLunStateChange, |p, st| {
            if snapshot_luns.len() != original_luns.len() {
                return Err(ProviderError::InvalidArgument(
                    "snapshot and original arrays differ in length".into(),
                ));
            }
            if flags.contains(HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS) {
                let owned = p.lookup_owned(snapshot_luns)?;
                let ids: Vec<LunId> = owned.into_iter().map(|l| l.id).collect();
                p.array.mask(&ids)?;
                p.note(st, || {
                    format!("masked {} snapshot LUN(s) from this host", ids.len())
                });
            } else {
                p.note(st, || {
                    format!(
                        "LUN state change {flags:?} for {} LUN(s): no action",
                        snapshot_luns.len()
                    )
                });
            }
            Ok(())
        })
    }

    fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, Hresult> {
        self.run(Method::ResyncLuns, |p, st| {
            if sources.len() != targets.len() || sources.is_empty() {
                return Err(ProviderError::InvalidArgument(
                    "source and target arrays differ in length".into(),
                ));
            }
            let snaps = p.lookup_owned(sources)?;
            if let Some((_, l)) = snaps
                .iter()
                .zip(sources)
                .find(|(s, _)| s.snapshot_of.is_none())
            {
                return Err(ProviderError::NotASnapshot(l.describe()));
            }
            let dests = p.lookup_owned(targets)?;
            let pairs: Vec<ResyncPair> = snaps
                .into_iter()
                .zip(dests)
                .map(|(s, d)| ResyncPair {
                    snapshot: s.id,
                    destination: d.id,
                })
                .collect();
            let job = p.array.start_resync(&pairs)?;
            p.note(st, || {
                format!("resync job {job} started for {} LUN(s)", pairs.len())
            });
            Ok(
                Arc::new(ResyncJob::new(p.array.clone(), job, p.config.resync_poll))
                    as Arc<dyn AsyncOperation>,
            )
        })
    }

    fn on_reuse_luns(
        &self,
        _snapshot_luns: &[LunInfo],
        _original_luns: &[LunInfo],
    ) -> Result<(), Hresult> {
        // Reserved by VSS; nothing to do.
        Ok(())
    }

    fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.run(Method::EndPrepareSnapshots, |p, st| {
            p.expect(
                st,
                Method::EndPrepareSnapshots,
                set_id,
                SnapshotState::Preparing,
            )?;
            if let Err(e) = p.array.end_prepare(set_id) {
                let set = st.current.take().expect("checked");
                let _ = p.discard(st, set, "preparation failed");
                return Err(e.into());
            }
            Self::advance(st, SnapshotState::Prepared);
            Ok(())
        })
    }

    fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.run(Method::PreCommitSnapshots, |p, st| {
            p.expect(
                st,
                Method::PreCommitSnapshots,
                set_id,
                SnapshotState::Prepared,
            )?;
            Self::advance(st, SnapshotState::Precommitted);
            // Applications are frozen from here: stop logging until PostCommit.
            st.frozen = true;
            Ok(())
        })
    }

    fn commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.run(Method::CommitSnapshots, |p, st| {
            p.expect(
                st,
                Method::CommitSnapshots,
                set_id,
                SnapshotState::Precommitted,
            )?;
            // Inside the flush-and-hold window: exactly one array call, nothing else.
            let start = Instant::now();
            let result = p.array.commit(set_id);
            let took = start.elapsed();
            if let Some(s) = &mut st.current {
                s.commit_time = Some(took);
            }
            match result {
                Ok(()) => {
                    Self::advance(st, SnapshotState::Committed);
                    p.note(st, || format!("set {set_id} committed in {took:?}"));
                    Ok(())
                }
                Err(e) => {
                    // The array left nothing committed; VSS will abort the set.
                    Self::advance(st, SnapshotState::Aborted);
                    Err(e.into())
                }
            }
        })
    }

    fn post_commit_snapshots(&self, set_id: VssId, snapshot_count: i32) -> Result<(), Hresult> {
        self.run(Method::PostCommitSnapshots, |p, st| {
            let r = p.expect(
                st,
                Method::PostCommitSnapshots,
                set_id,
                SnapshotState::Committed,
            );
            // Writes are released: whatever happens, logging may resume now.
            p.thaw(st);
            r?;
            Self::advance(st, SnapshotState::Created);
            p.note(st, || {
                format!("set {set_id} created ({snapshot_count} snapshot(s) in the whole set)")
            });
            Ok(())
        })
    }

    fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.run(Method::PreFinalCommitSnapshots, |p, st| {
            p.expect(
                st,
                Method::PreFinalCommitSnapshots,
                set_id,
                SnapshotState::Created,
            )?;
            Self::advance(st, SnapshotState::Prefinalcommitted);
            Ok(())
        })
    }

    fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.run(Method::PostFinalCommitSnapshots, |p, st| {
            p.expect(
                st,
                Method::PostFinalCommitSnapshots,
                set_id,
                SnapshotState::Prefinalcommitted,
            )?;
            if let Err(e) = p.array.complete(set_id) {
                let set = st.current.take().expect("checked");
                let _ = p.discard(st, set, "the array could not complete the set");
                return Err(e.into());
            }
            p.finish(st);
            p.note(st, || format!("set {set_id} complete"));
            Ok(())
        })
    }

    fn abort_snapshots(&self, set_id: VssId) -> Result<(), Hresult> {
        self.run(Method::AbortSnapshots, |p, st| {
            p.thaw(st);
            if st.finished.iter().any(|s| s.id == set_id) {
                // After successful creation an abort has nothing to discard.
                return Ok(());
            }
            match st.current.take_if(|s| s.id == set_id) {
                Some(set) => p.discard(st, set, "AbortSnapshots"),
                // Not in memory (the provider may have been reloaded): the array's journal
                // still knows the set.
                None => {
                    p.array.abort(set_id)?;
                    p.note(st, || format!("set {set_id} aborted on the array"));
                    Ok(())
                }
            }
        })
    }

    fn on_load(&self) -> Result<(), Hresult> {
        Ok(())
    }

    fn on_unload(&self, force: bool) -> Result<UnloadAnswer, Hresult> {
        let mut st = self.lock();
        if st.current.is_none() {
            return Ok(UnloadAnswer::Ready);
        }
        if !force {
            return Ok(UnloadAnswer::Busy);
        }
        // Forced while a set is in flight: treat as an abort.
        self.thaw(&mut st);
        let set = st.current.take().expect("checked");
        if let Err(e) = self.discard(&mut st, set, "forced unload") {
            tracing::warn!("forced unload could not discard the set: {e}");
        }
        Ok(UnloadAnswer::Ready)
    }
}
