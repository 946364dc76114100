//! A RADOS advisory lock with an expiry, renewed by a thread: the lease under a leader and
//! under each member.
//!
//! The holder counts the lease from before it asked (the OSD counts from when it handled the
//! request, later), less a tenth for clock rates, so it stops counting on the lock before the
//! OSD lets anyone else take it. A renewal must find the lock still this holder's
//! (`MUST_RENEW`); one that finds it gone, a blocklisted connection, or no successful renewal
//! before the lease ends is reported once, at once, and ends the lease. Renewals run on one
//! thread and the lease's end is kept by another, so a renewal stuck in a call to an
//! unresponsive cluster (up to the connection's op timeout) does not delay the report.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

struct State {
    /// Until when the lock is this holder's, by its own clock.
    valid_until: Instant,
    /// Why the lease ended, once it has.
    lost: Option<Lost>,
    /// The holder let go (release or drop): the threads stop.
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when `valid_until` moves, the lease ends or the holder lets go.
    changed: Condvar,
    on_lost: Mutex<Option<OnLost>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("lease lock")
    }

    /// Ends the lease for `why` (once; later reasons are ignored) and tells the holder,
    /// unless the holder already let go.
    fn report(&self, why: Lost) {
        {
            let mut st = self.state();
            if st.lost.is_some() || st.stopping {
                return;
            }
            st.lost = Some(why);
        }
        self.changed.notify_all();
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
    timer: Option<JoinHandle<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({} on {})", self.spec.lock, self.spec.object)
    }
}

impl Lease {
    /// Takes the lock, or `None` while another holder has it. `on_lost` runs once, on one of
    /// the lease's threads (or the caller's, from [`Lease::check`]), when the lease ends by
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
            state: Mutex::new(State {
                valid_until: spec.until(asked),
                lost: None,
                stopping: false,
            }),
            changed: Condvar::new(),
            on_lost: Mutex::new(Some(Box::new(on_lost))),
        });
        // The renewer may block in a call to the cluster for as long as its op timeout. The
        // timer never blocks on the cluster: it ends the lease when its time is up, whatever
        // the renewer is waiting for.
        let renewer = std::thread::Builder::new()
            .name(format!("lease-{}", spec.lock))
            .spawn({
                let (spec, shared) = (spec.clone(), shared.clone());
                move || renew(&spec, &shared)
            })
            .expect("spawning the lease renewal thread");
        let timer = std::thread::Builder::new()
            .name(format!("lease-{}-timer", spec.lock))
            .spawn({
                let (spec, shared) = (spec.clone(), shared.clone());
                move || expire(&spec, &shared)
            })
            .expect("spawning the lease timer thread");
        Ok(Some(Lease {
            spec,
            shared,
            timer: Some(timer),
            renewer: Some(renewer),
        }))
    }

    /// Whether the lease still holds; a lease past its end is reported lost here and now.
    pub fn check(&self) -> Result<(), Lost> {
        let until = {
            let st = self.shared.state();
            if let Some(why) = st.lost {
                return Err(why);
            }
            st.valid_until
        };
        if Instant::now() >= until {
            self.shared.report(Lost::Expired);
            return Err(self.shared.state().lost.unwrap_or(Lost::Expired));
        }
        Ok(())
    }

    /// Stops both threads and waits for them; whether the lease still held. A renewal in
    /// flight is waited for (at most the connection's op timeout): a thread left inside
    /// librados could outlive the holder's process and meet the library's teardown at exit,
    /// and the unlock that follows must not race a renewal.
    fn let_go(&mut self) -> Option<Lost> {
        let lost = {
            let mut st = self.shared.state();
            st.stopping = true;
            st.lost
        };
        self.shared.changed.notify_all();
        self.shared.on_lost.lock().expect("lease lock").take();
        for t in [self.timer.take(), self.renewer.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
        lost
    }

    /// Unlocks unless the connection is fenced (the OSD refuses it) or the lock is known to
    /// be another's. An expired lease is unlocked too: a renewal may still have landed.
    fn unlock(&self, lost: Option<Lost>) -> rbd::Result<()> {
        if matches!(lost, Some(Lost::Fenced | Lost::Taken)) {
            return Ok(());
        }
        match self
            .spec
            .pool
            .unlock(&self.spec.object, &self.spec.lock, &self.spec.cookie)
        {
            Err(e) if e.is_lock_lost() => Ok(()),
            r => r,
        }
    }

    /// Stops renewing and releases the lock.
    pub fn release(mut self) -> Result<()> {
        let lost = self.let_go();
        self.unlock(lost)?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.timer.is_none() {
            return; // released
        }
        let lost = self.let_go();
        if let Err(e) = self.unlock(lost) {
            tracing::debug!(lock = %self.spec.lock, error = %e, "releasing a lease failed");
        }
    }
}

/// The renewal thread: renews every `renew_every` (sooner after a failed attempt) until the
/// holder lets go or the lease ends.
fn renew(spec: &LeaseSpec, shared: &Shared) {
    let mut wait = spec.renew_every;
    loop {
        {
            let deadline = Instant::now() + wait;
            let mut st = shared.state();
            loop {
                if st.stopping || st.lost.is_some() {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = shared
                    .changed
                    .wait_timeout(st, deadline - now)
                    .expect("lease lock")
                    .0;
            }
        }
        let asked = Instant::now();
        match spec.lock(true) {
            Ok(()) => {
                let mut st = shared.state();
                if st.lost.is_none() {
                    // Never shortens: a slow answer to an earlier request cannot.
                    st.valid_until = st.valid_until.max(spec.until(asked));
                }
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

/// The timer thread: ends the lease the moment it runs out without a renewal, even while a
/// renewal is stuck in a call to the cluster.
fn expire(spec: &LeaseSpec, shared: &Shared) {
    let mut st = shared.state();
    loop {
        if st.stopping || st.lost.is_some() {
            return;
        }
        let now = Instant::now();
        if now >= st.valid_until {
            break;
        }
        let left = st.valid_until - now;
        st = shared.changed.wait_timeout(st, left).expect("lease lock").0;
    }
    drop(st);
    tracing::warn!(lock = %spec.lock, object = %spec.object, "lease expired before a renewal succeeded");
    shared.report(Lost::Expired);
}
