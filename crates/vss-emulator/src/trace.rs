//! The record of everything the coordinator does: every provider call (method, arguments,
//! result, what VSS made of the result, duration) and the VSS-side steps between them.
//!
//! Providers are reached only through [`ProviderHandle`], which records each call and applies
//! VSS's translation of status codes (`docs/vss-contract.md` §3.1,
//! [`vss::Method::as_seen_by_vss`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provider::{AsyncOperation, HardwareProvider, UnloadAnswer};
use vss::{HardwareOptions, Hresult, LunInfo, Method, SnapshotContext, VssId};

/// One recorded step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceEntry {
    /// A call into a provider.
    Call {
        /// Microseconds since the trace started.
        at_us: u64,
        provider: String,
        method: Method,
        args: String,
        /// `S_OK`, `TRUE`/`FALSE` for support questions, or the code the provider returned.
        result: String,
        /// The code the provider returned, if it failed.
        returned: Option<Hresult>,
        /// The code VSS passes on after translation, if it differs from `returned`.
        translated: Option<Hresult>,
        duration_us: u64,
    },
    /// A step VSS takes itself (writer events, partition flags, flush-and-hold, rescans).
    Step { at_us: u64, what: String },
}

impl TraceEntry {
    /// The method name for calls, the step text otherwise.
    pub fn label(&self) -> String {
        match self {
            TraceEntry::Call { method, .. } => method.name().to_string(),
            TraceEntry::Step { what, .. } => what.clone(),
        }
    }

    pub fn method(&self) -> Option<Method> {
        match self {
            TraceEntry::Call { method, .. } => Some(*method),
            TraceEntry::Step { .. } => None,
        }
    }
}

/// A shared, append-only trace.
#[derive(Clone)]
pub struct Trace {
    start: Instant,
    entries: Arc<Mutex<Vec<TraceEntry>>>,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            entries: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trace({} entries)", self.entries().len())
    }
}

impl Trace {
    pub fn new() -> Self {
        Self::default()
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&self, e: TraceEntry) {
        self.entries.lock().expect("trace lock").push(e);
    }

    /// Records a VSS-side step.
    pub fn step(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::debug!(step = %what);
        self.push(TraceEntry::Step {
            at_us: self.now_us(),
            what,
        });
    }

    pub fn entries(&self) -> Vec<TraceEntry> {
        self.entries.lock().expect("trace lock").clone()
    }

    /// Entries recorded from position `from` on.
    pub fn since(&self, from: usize) -> Vec<TraceEntry> {
        self.entries().into_iter().skip(from).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("trace lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels of the entries from `from` on (method names and step texts).
    pub fn labels_since(&self, from: usize) -> Vec<String> {
        self.since(from).iter().map(TraceEntry::label).collect()
    }

    /// The provider methods called from position `from` on, in order.
    pub fn methods_since(&self, from: usize) -> Vec<Method> {
        self.since(from)
            .iter()
            .filter_map(TraceEntry::method)
            .collect()
    }

    /// One line per entry, for people.
    pub fn render(entries: &[TraceEntry]) -> String {
        let mut s = String::new();
        for e in entries {
            match e {
                TraceEntry::Call {
                    at_us,
                    provider,
                    method,
                    args,
                    result,
                    translated,
                    duration_us,
                    ..
                } => {
                    s += &format!(
                        "{:>9.3} ms  P {provider}: {method}({args}) -> {result}{} [{:.3} ms]\n",
                        *at_us as f64 / 1000.0,
                        translated
                            .map(|t| format!(" (VSS reports {t})"))
                            .unwrap_or_default(),
                        *duration_us as f64 / 1000.0
                    )
                }
                TraceEntry::Step { at_us, what } => {
                    s += &format!("{:>9.3} ms  {what}\n", *at_us as f64 / 1000.0)
                }
            }
        }
        s
    }
}

/// A provider call that failed, as VSS sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{method} returned {returned}; VSS reports {seen}")]
pub struct ProviderFailure {
    pub method: Method,
    pub returned: Hresult,
    /// After VSS's translation.
    pub seen: Hresult,
}

/// A registered provider, called only through this handle.
#[derive(Clone)]
pub struct ProviderHandle {
    pub id: VssId,
    pub name: String,
    inner: Arc<dyn HardwareProvider>,
    trace: Trace,
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderHandle({} {})", self.name, self.id)
    }
}

fn luns_summary(luns: &[LunInfo]) -> String {
    let v: Vec<String> = luns
        .iter()
        .map(|l| l.serial_number.as_deref().unwrap_or("-").trim().to_string())
        .collect();
    format!("[{}]", v.join(","))
}

fn short(id: &VssId) -> String {
    id.to_string()[..8].to_string()
}

impl ProviderHandle {
    pub fn new(id: VssId, name: &str, inner: Arc<dyn HardwareProvider>, trace: Trace) -> Self {
        Self {
            id,
            name: name.to_string(),
            inner,
            trace,
        }
    }

    fn call<T>(
        &self,
        method: Method,
        args: String,
        f: impl FnOnce(&dyn HardwareProvider) -> Result<T, Hresult>,
        show: impl Fn(&T) -> String,
    ) -> Result<T, ProviderFailure> {
        let at_us = self.trace.now_us();
        let t0 = Instant::now();
        let r = f(self.inner.as_ref());
        let duration = t0.elapsed();
        let (result, returned, translated, out) = match r {
            Ok(v) => (show(&v), None, None, Ok(v)),
            Err(code) => {
                // Returning a success code as a failure (S_FALSE, VSS_S_*) is outside the
                // allowed list for every translated method.
                let seen = if method.is_translated() && code.is_success() {
                    Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR
                } else {
                    method.as_seen_by_vss(code)
                };
                let translated = (seen != code).then_some(seen);
                if translated.is_some() {
                    tracing::warn!(provider = %self.name, %method, returned = %code, "provider returned a code outside the allowed list");
                }
                (
                    code.to_string(),
                    Some(code),
                    translated,
                    Err(ProviderFailure {
                        method,
                        returned: code,
                        seen,
                    }),
                )
            }
        };
        self.trace.push(TraceEntry::Call {
            at_us,
            provider: self.name.clone(),
            method,
            args,
            result,
            returned,
            translated,
            duration_us: duration.as_micros() as u64,
        });
        out
    }

    fn ok(_: &()) -> String {
        "S_OK".into()
    }

    fn bool_text(b: &bool) -> String {
        if *b { "TRUE" } else { "FALSE" }.into()
    }

    pub fn are_luns_supported(
        &self,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<bool, ProviderFailure> {
        self.call(
            Method::AreLunsSupported,
            format!("{context}, {}", luns_summary(luns)),
            |p| p.are_luns_supported(context, devices, luns),
            Self::bool_text,
        )
    }

    pub fn begin_prepare_snapshot(
        &self,
        set_id: VssId,
        snapshot_id: VssId,
        context: SnapshotContext,
        devices: &[String],
        luns: &mut [LunInfo],
    ) -> Result<(), ProviderFailure> {
        self.call(
            Method::BeginPrepareSnapshot,
            format!(
                "set {}, snapshot {}, {context}, {}",
                short(&set_id),
                short(&snapshot_id),
                luns_summary(luns)
            ),
            |p| p.begin_prepare_snapshot(set_id, snapshot_id, context, devices, luns),
            Self::ok,
        )
    }

    pub fn fill_in_lun_info(
        &self,
        device: &str,
        lun: &mut LunInfo,
    ) -> Result<bool, ProviderFailure> {
        self.call(
            Method::FillInLunInfo,
            format!("{device}, {}", luns_summary(std::slice::from_ref(lun))),
            |p| p.fill_in_lun_info(device, lun),
            Self::bool_text,
        )
    }

    pub fn get_target_luns(
        &self,
        devices: &[String],
        sources: &[LunInfo],
        destinations: &mut [LunInfo],
    ) -> Result<(), ProviderFailure> {
        self.call(
            Method::GetTargetLuns,
            luns_summary(sources),
            |p| p.get_target_luns(devices, sources, destinations),
            Self::ok,
        )
    }

    pub fn locate_luns(&self, luns: &[LunInfo]) -> Result<(), ProviderFailure> {
        self.call(
            Method::LocateLuns,
            luns_summary(luns),
            |p| p.locate_luns(luns),
            Self::ok,
        )
    }

    pub fn on_lun_empty(&self, device: &str, lun: &LunInfo) -> Result<(), ProviderFailure> {
        self.call(
            Method::OnLunEmpty,
            format!("{device}, {}", luns_summary(std::slice::from_ref(lun))),
            |p| p.on_lun_empty(device, lun),
            Self::ok,
        )
    }

    pub fn get_provider_capabilities(&self) -> Result<u64, ProviderFailure> {
        self.call(
            Method::GetProviderCapabilities,
            String::new(),
            |p| p.get_provider_capabilities(),
            |c| format!("S_OK 0x{c:X}"),
        )
    }

    pub fn on_lun_state_change(
        &self,
        snapshot_luns: &[LunInfo],
        original_luns: &[LunInfo],
        flags: HardwareOptions,
    ) -> Result<(), ProviderFailure> {
        self.call(
            Method::OnLunStateChange,
            format!("{}, {flags:?}", luns_summary(snapshot_luns)),
            |p| p.on_lun_state_change(snapshot_luns, original_luns, flags),
            Self::ok,
        )
    }

    pub fn resync_luns(
        &self,
        sources: &[LunInfo],
        targets: &[LunInfo],
    ) -> Result<Arc<dyn AsyncOperation>, ProviderFailure> {
        self.call(
            Method::ResyncLuns,
            format!("{} -> {}", luns_summary(sources), luns_summary(targets)),
            |p| p.resync_luns(sources, targets),
            |_| "S_OK".into(),
        )
    }

    pub fn end_prepare_snapshots(&self, set_id: VssId) -> Result<(), ProviderFailure> {
        self.set_call(Method::EndPrepareSnapshots, set_id, |p| {
            p.end_prepare_snapshots(set_id)
        })
    }

    pub fn pre_commit_snapshots(&self, set_id: VssId) -> Result<(), ProviderFailure> {
        self.set_call(Method::PreCommitSnapshots, set_id, |p| {
            p.pre_commit_snapshots(set_id)
        })
    }

    pub fn commit_snapshots(&self, set_id: VssId) -> Result<(), ProviderFailure> {
        self.set_call(Method::CommitSnapshots, set_id, |p| {
            p.commit_snapshots(set_id)
        })
    }

    pub fn post_commit_snapshots(&self, set_id: VssId, count: i32) -> Result<(), ProviderFailure> {
        self.call(
            Method::PostCommitSnapshots,
            format!("set {}, {count} snapshots", short(&set_id)),
            |p| p.post_commit_snapshots(set_id, count),
            Self::ok,
        )
    }

    pub fn pre_final_commit_snapshots(&self, set_id: VssId) -> Result<(), ProviderFailure> {
        self.set_call(Method::PreFinalCommitSnapshots, set_id, |p| {
            p.pre_final_commit_snapshots(set_id)
        })
    }

    pub fn post_final_commit_snapshots(&self, set_id: VssId) -> Result<(), ProviderFailure> {
        self.set_call(Method::PostFinalCommitSnapshots, set_id, |p| {
            p.post_final_commit_snapshots(set_id)
        })
    }

    pub fn abort_snapshots(&self, set_id: VssId) -> Result<(), ProviderFailure> {
        self.set_call(Method::AbortSnapshots, set_id, |p| {
            p.abort_snapshots(set_id)
        })
    }

    pub fn on_load(&self) -> Result<(), ProviderFailure> {
        self.call(Method::OnLoad, String::new(), |p| p.on_load(), Self::ok)
    }

    pub fn on_unload(&self, force: bool) -> Result<UnloadAnswer, ProviderFailure> {
        self.call(
            Method::OnUnload,
            format!("force={force}"),
            |p| p.on_unload(force),
            |a| match a {
                UnloadAnswer::Ready => "S_OK".into(),
                UnloadAnswer::Busy => "S_FALSE".into(),
            },
        )
    }

    fn set_call(
        &self,
        method: Method,
        set_id: VssId,
        f: impl FnOnce(&dyn HardwareProvider) -> Result<(), Hresult>,
    ) -> Result<(), ProviderFailure> {
        self.call(method, format!("set {}", short(&set_id)), f, Self::ok)
    }

    /// How long a call may take is measured by the caller; this is a helper for that.
    pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
        let t = Instant::now();
        let r = f();
        (r, t.elapsed())
    }
}
