//! Write fences: a logical unit whose new writes wait while a snapshot is taken of it.
//!
//! A snapshot set that VSS drives needs nothing from the target: Windows itself holds the
//! applications' writes between PrepareForSnapshot and CommitSnapshots. A set the array takes
//! by itself (an administrator's command) has no one holding writes upstream, and the group
//! commit of some backends (parallel `rbd_snap_create2`, one image after another) is not one
//! instant. So the target holds them: [`LogicalUnit::fence_writes`] waits until the writes in
//! flight are done (each of them was, or is about to be, acknowledged) and makes every new
//! write wait until the fence is dropped. With every member fenced before the commit and
//! released after it, the set holds, on every LUN, exactly the writes acknowledged before the
//! fence: one point in time across the set, as VSS's flush-and-hold gives.
//!
//! Reads are not held. A fence is bounded by its holder: the drain has a deadline
//! ([`FenceError::Drain`] when a write does not finish in time, and nothing stays fenced), and
//! the hold ends when the [`WriteFence`] is dropped.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::LogicalUnit;

/// The gate every write of a logical unit passes.
#[derive(Debug, Default)]
pub(crate) struct WriteGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Fences held (several holders may fence one LU: two sets naming it).
    fences: u32,
    /// Writes past the gate and not yet done.
    writing: u32,
}

impl WriteGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().expect("write gate lock")
    }

    /// Waits while the LU is fenced, then counts the caller as a write in flight until the
    /// pass is dropped.
    pub(crate) fn pass(&self) -> WritePass<'_> {
        let mut s = self.lock();
        while s.fences > 0 {
            s = self.changed.wait(s).expect("write gate lock");
        }
        s.writing += 1;
        WritePass(self)
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.lock().fences > 0
    }
}

/// A write in flight; dropping it lets a waiting fence finish its drain.
#[must_use]
pub(crate) struct WritePass<'a>(&'a WriteGate);

impl Drop for WritePass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.writing -= 1;
        if s.writing == 0 {
            self.0.changed.notify_all();
        }
    }
}

/// A fence could not be put up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// Writes in flight did not finish within the drain time; the LU was not left fenced.
    #[error("{writing} write(s) in flight did not finish within {waited:?}")]
    Drain { writing: u32, waited: Duration },
}

/// New writes of the logical unit wait while this is held; dropping it lets them go on.
#[must_use = "the fence ends when this is dropped"]
#[derive(Debug)]
pub struct WriteFence {
    lu: Arc<LogicalUnit>,
}

impl Drop for WriteFence {
    fn drop(&mut self) {
        let gate = self.lu.write_gate();
        let mut s = gate.lock();
        s.fences -= 1;
        if s.fences == 0 {
            gate.changed.notify_all();
        }
    }
}

impl LogicalUnit {
    /// Fences the logical unit's writes: from now on new writes wait; returns once every
    /// write already in flight is done, or [`FenceError::Drain`] (and no fence) when they are
    /// not done within `drain`.
    pub fn fence_writes(self: &Arc<Self>, drain: Duration) -> Result<WriteFence, FenceError> {
        let gate = self.write_gate();
        let deadline = Instant::now() + drain;
        let mut s = gate.lock();
        s.fences += 1;
        while s.writing > 0 {
            let now = Instant::now();
            if now >= deadline {
                let writing = s.writing;
                s.fences -= 1;
                if s.fences == 0 {
                    gate.changed.notify_all();
                }
                return Err(FenceError::Drain {
                    writing,
                    waited: drain,
                });
            }
            s = gate
                .changed
                .wait_timeout(s, deadline - now)
                .expect("write gate lock")
                .0;
        }
        drop(s);
        tracing::debug!(serial = %self.identity().serial, "writes fenced");
        Ok(WriteFence { lu: self.clone() })
    }

    /// Whether a [`WriteFence`] holds the logical unit's writes now.
    pub fn writes_fenced(&self) -> bool {
        self.write_gate().is_fenced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LuIdentity, MemDevice};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn lu() -> Arc<LogicalUnit> {
        let identity = LuIdentity {
            vendor: "SHADOWLN".into(),
            product: "fence".into(),
            revision: "0001".into(),
            serial: "FENCE1".into(),
            designators: vec![vss::inquiry::Designator::naa_locally_assigned(0xfe)],
        };
        Arc::new(LogicalUnit::new(
            Arc::new(MemDevice::new(512, 64)),
            identity,
        ))
    }

    #[test]
    fn a_fence_holds_new_writes_until_dropped() {
        let lu = lu();
        let fence = lu.fence_writes(Duration::from_secs(1)).unwrap();
        assert!(lu.writes_fenced());
        let passed = Arc::new(AtomicBool::new(false));
        let t = {
            let (lu, passed) = (lu.clone(), passed.clone());
            std::thread::spawn(move || {
                let _p = lu.write_gate().pass();
                passed.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !passed.load(Ordering::SeqCst),
            "a write went past the fence"
        );
        drop(fence);
        t.join().unwrap();
        assert!(passed.load(Ordering::SeqCst));
        assert!(!lu.writes_fenced());
    }

    #[test]
    fn a_fence_waits_for_the_writes_in_flight() {
        let lu = lu();
        let pass = lu.write_gate().pass();
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (lu, done) = (lu.clone(), done.clone());
            std::thread::spawn(move || {
                let f = lu.fence_writes(Duration::from_secs(10)).unwrap();
                done.store(true, Ordering::SeqCst);
                drop(f);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !done.load(Ordering::SeqCst),
            "fenced with a write in flight"
        );
        drop(pass);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }

    #[test]
    fn a_drain_past_its_deadline_leaves_no_fence() {
        let lu = lu();
        let pass = lu.write_gate().pass();
        let err = lu.fence_writes(Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            err,
            FenceError::Drain {
                writing: 1,
                waited: Duration::from_millis(50)
            }
        );
        assert!(!lu.writes_fenced());
        drop(pass);
        // Writes go on.
        drop(lu.write_gate().pass());
    }

    #[test]
    fn two_fences_hold_until_both_are_dropped() {
        let lu = lu();
        let a = lu.fence_writes(Duration::from_secs(1)).unwrap();
        let b = lu.fence_writes(Duration::from_secs(1)).unwrap();
        drop(a);
        assert!(lu.writes_fenced());
        drop(b);
        assert!(!lu.writes_fenced());
    }
}
