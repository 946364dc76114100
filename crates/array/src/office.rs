//! A gateway in office: with `[gateway]`, a daemon joins the array's gateways (its member
//! lease), waits as a standby until it takes office as leader (fencing the previous
//! leader's Ceph client), and only then opens the array from its shared state and serves.
//! When either lease ends by itself, it stops serving at once (docs/gateways.md, "Failure
//! model").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateways::{Leader, Leadership, LeadershipConfig, Lost, Member, Membership, StateStore};
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::error::ArrayError;

/// How often a standby tries to take office.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The name of array `array_id`'s state in the cluster (the same hex form its images carry).
pub(crate) fn state_name(array_id: u32) -> String {
    format!("{array_id:08x}")
}

/// What a gateway does at once when a lease of its ends by itself.
pub(crate) type OnLost = Arc<dyn Fn() + Send + Sync>;

/// This gateway in office: the leases it holds while it serves.
pub(crate) struct Office {
    pub name: String,
    pub store: StateStore,
    pub epoch: u64,
    /// Why a lease ended, once one has.
    pub lost: watch::Receiver<Option<String>>,
    // Held while serving: dropping them releases the leases.
    leader: Option<Leader>,
    member: Option<Member>,
}

impl std::fmt::Debug for Office {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Office({} at epoch {})", self.name, self.epoch)
    }
}

impl Office {
    /// Joins array `array_id`'s gateways on `pool` (the backend's own client) and waits until
    /// this gateway takes office; logs who leads meanwhile. Dropping the future stops the
    /// wait (and leaves the gateways) within a quarter of a second.
    /// `on_lost` runs on the lease's own thread the moment a lease ends by itself, before
    /// anything else hears of it (the gateway's paths stand down there).
    pub async fn take(
        config: &GatewayConfig,
        pool: Arc<rbd::Pool>,
        array_id: u32,
        on_lost: Option<OnLost>,
    ) -> Result<Office, ArrayError> {
        struct CancelOnDrop(Arc<AtomicBool>);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let config = config.clone();
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = cancel.0.clone();
        tokio::task::spawn_blocking(move || {
            Self::take_blocking(&config, pool, array_id, &flag, on_lost)
        })
        .await
        .map_err(|e| ArrayError::io("taking office", std::io::Error::other(e.to_string())))?
    }

    fn take_blocking(
        config: &GatewayConfig,
        pool: Arc<rbd::Pool>,
        array_id: u32,
        cancel: &AtomicBool,
        on_lost: Option<OnLost>,
    ) -> Result<Office, ArrayError> {
        let name = config.name.clone();
        let err = |what: &str| {
            let name = name.clone();
            let what = what.to_string();
            move |e: gateways::Error| ArrayError::Gateway {
                gateway: name,
                what,
                source: Box::new(e),
            }
        };
        let array = state_name(array_id);
        let (tx, lost) = watch::channel(None::<String>);
        let tx = Arc::new(tx);
        let report = |what: &'static str| {
            let tx = tx.clone();
            let on_lost = on_lost.clone();
            move |why: Lost| {
                if let Some(f) = &on_lost {
                    f();
                }
                tracing::error!(lease = what, %why, "a lease of this gateway ended: it stops serving");
                let _ = tx.send(Some(format!("its {what} lease ended: {why}")));
            }
        };
        let membership = Membership::new(pool.clone(), &array);
        // Starting again is how a drained gateway comes back.
        if let Err(e) = membership.clear_drain(&name) {
            tracing::warn!(error = %e, "could not clear a request that this gateway drain");
        }
        let member = membership
            .join(&name, config.lease(), report("member"))
            .map_err(err("joining the array's gateways"))?;
        let store = StateStore::open(pool, &array).map_err(err("opening the array's state"))?;
        let leadership =
            Leadership::new(store.clone(), LeadershipConfig::new(&name, config.lease()));
        let mut said = None::<Instant>;
        let mut looks = 0u32;
        let leader = loop {
            // A standby asked to drain stops without ever serving (every fourth look).
            if looks % 4 == 0 && membership.drains().is_ok_and(|d| d.contains_key(&name)) {
                tracing::info!(gateway = %name, "asked to drain while standing by: stopping");
                let _ = member.leave();
                return Err(ArrayError::Drained { gateway: name });
            }
            looks = looks.wrapping_add(1);
            if let Some(l) = leadership
                .try_acquire(report("leader"))
                .map_err(err("taking office"))?
            {
                break l;
            }
            if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                let leader = leadership.current().ok().and_then(|(_, r)| r);
                tracing::info!(
                    gateway = %name,
                    leader = leader.as_ref().map_or("-", |r| r.gateway.as_str()),
                    "standing by: another gateway serves the array"
                );
                said = Some(Instant::now());
            }
            // Often: the office is free the moment a leader resigns or its lease runs out.
            std::thread::sleep(LOOK_EVERY.min(config.lease() / 3));
            if cancel.load(Ordering::Relaxed) {
                let _ = member.leave();
                return Err(ArrayError::OutOfOffice {
                    gateway: name,
                    why: "stopped while standing by".into(),
                });
            }
            // A standby whose own lease ended cannot take office safely.
            if let Some(why) = lost.borrow().clone() {
                return Err(ArrayError::OutOfOffice { gateway: name, why });
            }
        };
        tracing::info!(gateway = %name, epoch = leader.epoch(), "in office: serving the array");
        Ok(Office {
            name,
            store,
            epoch: leader.epoch(),
            lost,
            leader: Some(leader),
            member: Some(member),
        })
    }

    /// Resolves when a lease ends by itself, with why.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the lease watch ended".into();
            }
        }
    }

    /// Leaves office and the gateways (a clean stop): the next standby need not wait for the
    /// leases to run out.
    pub fn resign(mut self) {
        if self.lost.borrow().is_some() {
            // Out of office already: whatever is left of the leases is dropped unrenewed.
            return;
        }
        if let Some(l) = self.leader.take() {
            if let Err(e) = l.resign() {
                tracing::warn!(error = %e, "resigning office failed; the lease runs out instead");
            }
        }
        if let Some(m) = self.member.take() {
            if let Err(e) = m.leave() {
                tracing::warn!(error = %e, "leaving the gateways failed; the lease runs out instead");
            }
        }
    }
}
