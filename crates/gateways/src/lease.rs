//! A RADOS advisory lock with an expiry, renewed by a thread: the lease under a leader and
//! under each member.
//!
//! The holder counts the lease from before it asked (the OSD counts from when it handled the
//! request, later), less a tenth for clock rates, so it stops counting on the lock before the
//! OSD lets anyone else take it. A renewal must find the lock still this holder's
//! (`MUST_RENEW`); one that finds it gone, a blocklisted connection, or no successful renewal
//! before the lease ends is reported once, at once, and ends the lease.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rbd::Pool;

use crate::{Lost, Result};

pub(crate) enum LockKind {
    Exclusive,
    Shared { tag: String },
}

/// What to lock and for how long.
pub(crate) struct LeaseSpec {
    pub pool: Arc<Pool>,
    pub object: String,
    pub lock: String,
    pub cookie: String,
    pub desc: String,
    pub kind: LockKind,
    pub ttl: Duration,
    pub renew_every: Duration,
}

impl LeaseSpec {
    fn lock(&self, renew: bool) -> rbd::Result<()> {
        match &self.kind {
            LockKind::Exclusive => self.pool.lock_exclusive(
                &self.object,
                &self.lock,
                &self.cookie,
                &self.desc,
                Some(self.ttl),
                renew,
            ),
            LockKind::Shared { tag } => self.pool.lock_shared(
                &self.object,
                &self.lock,
                &self.cookie,
                tag,
                &self.desc,
                Some(self.ttl),
                renew,
            ),
        }
    }

    /// Until when a lock asked for at `asked` is this holder's.
    fn until(&self, asked: Instant) -> Instant {
        asked + self.ttl - self.ttl / 10
    }
}

type OnLost = Box<dyn FnOnce(Lost) + Send>;

struct Shared {
    valid_until: Mutex<Instant>,
    lost: Mutex<Option<Lost>>,
    on_lost: Mutex<Option<OnLost>>,
}

impl Shared {
    /// Ends the lease for `why` (once; later reasons are ignored) and tells the holder.
    fn report(&self, why: Lost) {
        {
            let mut lost = self.lost.lock().expect("lease lock");
            if lost.is_some() {
                return;
            }
            *lost = Some(why);
        }
        let f = self.on_lost.lock().expect("lease lock").take();
        if let Some(f) = f {
            f(why);
        }
    }
}

/// A held lease; renewal stops and the lock is released when it is dropped.
pub(crate) struct Lease {
    spec: Arc<LeaseSpec>,
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({} on {})", self.spec.lock, self.spec.object)
    }
}

impl Lease {
    /// Takes the lock, or `None` while another holder has it. `on_lost` runs once, on the
    /// renewal thread (or the caller's, from [`Lease::check`]), when the lease ends by
    /// itself.
    pub fn take(
        spec: LeaseSpec,
        on_lost: impl FnOnce(Lost) + Send + 'static,
    ) -> Result<Option<Lease>> {
        let asked = Instant::now();
        match spec.lock(false) {
            Ok(()) => {}
            Err(e) if e.is_busy() || e.is_exists() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let spec = Arc::new(spec);
        let shared = Arc::new(Shared {
            valid_until: Mutex::new(spec.until(asked)),
            lost: Mutex::new(None),
            on_lost: Mutex::new(Some(Box::new(on_lost))),
        });
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("lease-{}", spec.lock))
            .spawn({
                let (spec, shared) = (spec.clone(), shared.clone());
                move || renew(&spec, &shared, &stopped)
            })
            .expect("spawning the lease thread");
        Ok(Some(Lease {
            spec,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    /// Whether the lease still holds; a lease past its end is reported lost here and now.
    pub fn check(&self) -> Result<(), Lost> {
        if let Some(why) = *self.shared.lost.lock().expect("lease lock") {
            return Err(why);
        }
        if Instant::now() >= *self.shared.valid_until.lock().expect("lease lock") {
            self.shared.report(Lost::Expired);
            return Err(self
                .shared
                .lost
                .lock()
                .expect("lease lock")
                .unwrap_or(Lost::Expired));
        }
        Ok(())
    }

    fn stop_renewing(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops renewing and releases the lock.
    pub fn release(mut self) -> Result<()> {
        self.stop_renewing();
        let held = self.shared.lost.lock().expect("lease lock").is_none();
        *self.shared.lost.lock().expect("lease lock") = Some(Lost::Resigned);
        self.shared.on_lost.lock().expect("lease lock").take();
        if held {
            match self
                .spec
                .pool
                .unlock(&self.spec.object, &self.spec.lock, &self.spec.cookie)
            {
                Ok(()) => {}
                Err(e) if e.is_lock_lost() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewing();
        let held = self.shared.lost.lock().expect("lease lock").is_none();
        if held {
            if let Err(e) =
                self.spec
                    .pool
                    .unlock(&self.spec.object, &self.spec.lock, &self.spec.cookie)
            {
                tracing::debug!(lock = %self.spec.lock, error = %e, "releasing a lease failed");
            }
        }
    }
}

/// The renewal thread: renews every `renew_every` until stopped or the lease is lost.
fn renew(spec: &LeaseSpec, shared: &Shared, stopped: &mpsc::Receiver<()>) {
    let mut wait = spec.renew_every;
    loop {
        let until = *shared.valid_until.lock().expect("lease lock");
        let left = until.saturating_duration_since(Instant::now());
        match stopped.recv_timeout(wait.min(left)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if shared.lost.lock().expect("lease lock").is_some() {
            return;
        }
        if Instant::now() >= until {
            tracing::warn!(lock = %spec.lock, object = %spec.object, "lease expired before a renewal succeeded");
            shared.report(Lost::Expired);
            return;
        }
        let asked = Instant::now();
        match spec.lock(true) {
            Ok(()) => {
                *shared.valid_until.lock().expect("lease lock") = spec.until(asked);
                wait = spec.renew_every;
            }
            Err(e) if e.is_blocklisted() => {
                tracing::warn!(lock = %spec.lock, object = %spec.object, "lease lost: this connection is blocklisted");
                shared.report(Lost::Fenced);
                return;
            }
            Err(e) if e.is_lock_lost() => {
                tracing::warn!(lock = %spec.lock, object = %spec.object, "lease lost: the lock is no longer held");
                shared.report(Lost::Taken);
                return;
            }
            Err(e) => {
                tracing::warn!(lock = %spec.lock, object = %spec.object, error = %e, "renewing a lease failed; retrying");
                wait = spec.renew_every / 4;
            }
        }
    }
}
