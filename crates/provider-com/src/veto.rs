//! Event-log entries for failures, held back while the applications are frozen.
//!
//! The contract requires that `VSS_E_PROVIDER_VETO` is accompanied by an Application event-log
//! entry telling the user how to fix the problem (`docs/vss-contract.md` §3.1). The core
//! reports its failures with a message through [`provider::EventSink`], which [`VetoLog`]
//! implements; when a call vetoes without such a report, the COM layer writes a generic entry
//! instead. Writing to the event log is not something to do between `PreCommitSnapshots` and
//! `PostCommitSnapshots`, while the applications are frozen and, during `CommitSnapshots`,
//! writes are held (§2.4), so entries raised then are buffered and written once the set leaves
//! that window.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vss::{Hresult, VssId};

/// One veto to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VetoEntry {
    /// The VSS method that vetoed (`"CommitSnapshots"`).
    pub method: &'static str,
    /// The snapshot set concerned, when the method has one.
    pub set_id: Option<VssId>,
    /// The HRESULT returned to VSS.
    pub hresult: Hresult,
    /// The core's own text (what failed and what to do), when it reported one.
    pub detail: Option<String>,
    /// The failure's class and its text without the remedy, when the core reported it.
    pub class: Option<(provider::FailureClass, String)>,
}

impl VetoEntry {
    /// The event text: what failed and what to do.
    pub fn message(&self) -> String {
        if let Some(d) = &self.detail {
            return format!(
                "The shadowlun VSS hardware provider failed {}: {d}\r\n\r\nRun \
                 `shadowlun-provider.exe status` as an administrator to check the connection \
                 to the storage array.",
                self.method
            );
        }
        let set = self
            .set_id
            .map(|s| format!(" for snapshot set {{{s}}}"))
            .unwrap_or_default();
        format!(
            "The shadowlun VSS hardware provider refused {method}{set} (HRESULT 0x{code:08X}, \
             {name}).\r\n\r\nWhat to do: run `shadowlun-provider.exe status` as an administrator \
             to check that the storage array answers and that the configured token and \
             certificate fingerprint are accepted; check the array's journal for the snapshot \
             set; then retry the backup. If the LUNs of the volume are not served by the \
             shadowlun array, choose another provider for that volume.",
            method = self.method,
            code = self.hresult.0,
            name = self.hresult.name().unwrap_or("unknown code"),
        )
    }
}

/// Where entries go: the Application event log in production, a recorder in tests.
pub trait EventLogWriter: Send + Sync {
    fn write(&self, entry: &VetoEntry);
}

#[derive(Default)]
struct State {
    frozen: bool,
    pending: Vec<VetoEntry>,
}

/// Decides when a veto entry is written: immediately, or after the freeze window closes.
pub struct VetoLog {
    sink: Arc<dyn EventLogWriter>,
    state: Mutex<State>,
    /// Entries reported by the core so far (to know whether a veto already has one).
    reported: AtomicU64,
}

impl VetoLog {
    pub fn new(sink: Arc<dyn EventLogWriter>) -> Arc<Self> {
        Arc::new(Self {
            sink,
            state: Mutex::new(State::default()),
            reported: AtomicU64::new(0),
        })
    }

    /// How many entries the core has reported; compare before and after a call.
    pub fn reported(&self) -> u64 {
        self.reported.load(Ordering::SeqCst)
    }

    /// Called when `PreCommitSnapshots` starts: from now on entries are held back.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// Called when `PostCommitSnapshots` or `AbortSnapshots` has returned (or the object is
    /// released): writes everything held back.
    pub fn thaw(&self) {
        let pending = {
            let mut s = self.lock();
            s.frozen = false;
            std::mem::take(&mut s.pending)
        };
        for e in &pending {
            self.sink.write(e);
        }
    }

    /// Records the outcome of a method whose core call did not report an entry itself: a
    /// veto is written now, or later if frozen.
    pub fn record(&self, method: &'static str, set_id: Option<VssId>, hresult: Hresult) {
        if hresult != Hresult::VSS_E_PROVIDER_VETO {
            return;
        }
        tracing::warn!(method, hresult = %format_args!("0x{:08X}", hresult.0), "provider veto");
        self.push(VetoEntry {
            method,
            set_id,
            hresult,
            detail: None,
            class: None,
        });
    }

    fn push(&self, entry: VetoEntry) {
        {
            let mut s = self.lock();
            if s.frozen {
                s.pending.push(entry);
                return;
            }
        }
        self.sink.write(&entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("veto log lock")
    }
}

impl provider::EventSink for VetoLog {
    fn report(&self, event: &provider::ProviderEvent) {
        self.reported.fetch_add(1, Ordering::SeqCst);
        self.push(VetoEntry {
            method: event.method.name(),
            set_id: None,
            hresult: event.hresult,
            detail: Some(event.message.clone()),
            class: Some((event.class, event.detail.clone())),
        });
    }
}

impl Drop for VetoLog {
    fn drop(&mut self) {
        self.thaw();
    }
}
