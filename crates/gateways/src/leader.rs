//! One leader at a time: the exclusive lock `leader` with an expiry on the state object, the
//! epoch in the state (`meta.epoch`) that guards every commit, and fencing of the previous
//! leader before the new one acts.
//!
//! Taking office: take the lock (its lease renewed from then on); read the epoch and the
//! record of the leader in office (`meta.leader`: gateway, client address, epoch); if one is
//! recorded with another address, blocklist that address and wait for the OSD map that says
//! so; then, guarded by the epoch read, bump it and record this gateway. Only then is the
//! [`Leader`] handed out. A predecessor that was only paused can no longer write: its
//! connection is refused by every OSD, and its epoch no longer matches. Resigning removes the
//! record (guarded by the epoch), so a successor has no one to fence.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbd::WriteOp;
use serde::{Deserialize, Serialize};

use crate::lease::{Lease, LeaseSpec, LockKind};
use crate::store::{EPOCH, LEADER};
use crate::{Change, Error, Lost, Result, StateStore};

/// The lock's name on the state object.
pub const LEADER_LOCK: &str = "leader";

/// Who holds office, as recorded in the state (`meta.leader`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The gateway's id (also the lock cookie).
    pub gateway: String,
    /// Its Ceph client's addresses (`rados_getaddrs`): what a successor blocklists.
    pub addr: String,
    /// Its Ceph client's id (`client.N`).
    pub client: u64,
    /// The epoch it took office at.
    pub epoch: u64,
}

/// How a gateway runs for leader.
#[derive(Debug, Clone)]
pub struct LeadershipConfig {
    /// This gateway's id: unique among the array's gateways, no NUL.
    pub gateway: String,
    /// The lock's expiry: how long a dead or paused leader keeps the office.
    pub ttl: Duration,
    /// How often the lock is renewed (a third of `ttl` unless set).
    pub renew_every: Duration,
    /// How long a fenced predecessor stays blocklisted (an hour unless set): longer than it
    /// can take the predecessor to notice and reconnect.
    pub blocklist_for: Duration,
}

impl LeadershipConfig {
    pub fn new(gateway: &str, ttl: Duration) -> LeadershipConfig {
        LeadershipConfig {
            gateway: gateway.into(),
            ttl,
            renew_every: ttl / 3,
            blocklist_for: Duration::from_secs(3600),
        }
    }
}

/// Runs for leader of one array.
#[derive(Debug, Clone)]
pub struct Leadership {
    store: StateStore,
    config: LeadershipConfig,
}

/// This gateway in office. Dropping it stops renewing and releases the lock (without
/// clearing the record: [`Leader::resign`] does both).
#[derive(Debug)]
pub struct Leader {
    lease: Lease,
    store: StateStore,
    record: LeaderRecord,
}

impl Leadership {
    pub fn new(store: StateStore, config: LeadershipConfig) -> Leadership {
        Leadership { store, config }
    }

    /// The epoch and the leader in office, as recorded.
    pub fn current(&self) -> Result<(u64, Option<LeaderRecord>)> {
        self.store.leader()
    }

    /// Takes office if no one holds the lock; `None` while someone does. `on_lost` runs once
    /// when the office is lost by itself (not on resign or drop).
    pub fn try_acquire(
        &self,
        on_lost: impl FnOnce(Lost) + Send + 'static,
    ) -> Result<Option<Leader>> {
        let cluster = self.store.pool().cluster();
        let addr = cluster.addrs()?;
        let client = cluster.instance_id()?;
        let gateway = &self.config.gateway;
        let spec = LeaseSpec {
            pool: self.store.pool().clone(),
            object: self.store.object().to_string(),
            lock: LEADER_LOCK.into(),
            cookie: gateway.clone(),
            desc: format!("shadowlun gateway {gateway}"),
            kind: LockKind::Exclusive,
            ttl: self.config.ttl,
            renew_every: self.config.renew_every,
        };
        let Some(lease) = Lease::take(spec, on_lost)? else {
            return Ok(None);
        };
        let (epoch, previous) = self.store.leader()?;
        if let Some(prev) = &previous {
            if prev.addr != addr {
                tracing::info!(
                    gateway = %gateway,
                    previous = %prev.gateway,
                    previous_epoch = prev.epoch,
                    "fencing the previous leader"
                );
                self.store
                    .pool()
                    .cluster()
                    .blocklist(&prev.addr, self.config.blocklist_for)?;
            }
        }
        let record = LeaderRecord {
            gateway: gateway.clone(),
            addr,
            client,
            epoch: epoch + 1,
        };
        let json = serde_json::to_vec(&record).expect("JSON encodes");
        let next = record.epoch.to_string();
        let op = WriteOp::new()
            .omap_cmp_eq(EPOCH, epoch.to_string().as_bytes())?
            .omap_set([(EPOCH, next.as_bytes()), (LEADER, json.as_slice())])?;
        self.store.guarded_epoch(&op, epoch)?;
        self.store
            .notify(serde_json::json!({ "epoch": record.epoch, "leader": gateway }));
        lease.check().map_err(Error::NotLeader)?;
        tracing::info!(gateway = %gateway, epoch = record.epoch, "took office as leader");
        Ok(Some(Leader {
            lease,
            store: self.store.clone(),
            record,
        }))
    }

    /// Tries to take office every renewal interval until it does or `within` has passed
    /// (`None`).
    pub fn acquire(
        &self,
        within: Duration,
        on_lost: impl FnOnce(Lost) + Send + 'static,
    ) -> Result<Option<Leader>> {
        let deadline = Instant::now() + within;
        let slot = Arc::new(Mutex::new(Some(on_lost)));
        loop {
            let s = slot.clone();
            let once = move |why| {
                if let Some(f) = s.lock().expect("on_lost").take() {
                    f(why)
                }
            };
            if let Some(leader) = self.try_acquire(once)? {
                return Ok(Some(leader));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(self.config.renew_every.min(deadline - now));
        }
    }
}

impl Leader {
    /// The epoch this leader holds office at.
    pub fn epoch(&self) -> u64 {
        self.record.epoch
    }

    pub fn record(&self) -> &LeaderRecord {
        &self.record
    }

    /// The state this leader commits to.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// The epoch while still in office, else why not.
    pub fn check(&self) -> Result<u64> {
        self.lease.check().map_err(Error::NotLeader)?;
        Ok(self.record.epoch)
    }

    pub fn is_leader(&self) -> bool {
        self.lease.check().is_ok()
    }

    /// [`StateStore::commit`] at this leader's epoch, refused at once when out of office.
    pub fn commit(&self, expected_version: u64, changes: &[Change]) -> Result<u64> {
        let epoch = self.check()?;
        self.store.commit(expected_version, epoch, changes)
    }

    /// [`StateStore::update`] at this leader's epoch, refused at once when out of office.
    pub fn update(
        &self,
        attempts: usize,
        f: impl FnMut(&crate::State) -> Result<Vec<Change>>,
    ) -> Result<u64> {
        let epoch = self.check()?;
        self.store.update(epoch, attempts, f)
    }

    /// Leaves office: the record removed (if the epoch is still this leader's), the lock
    /// released.
    pub fn resign(self) -> Result<()> {
        let op = WriteOp::new()
            .omap_cmp_eq(EPOCH, self.record.epoch.to_string().as_bytes())?
            .omap_rm([LEADER])?;
        match self.store.guarded_epoch(&op, self.record.epoch) {
            Ok(()) => self
                .store
                .notify(serde_json::json!({ "epoch": self.record.epoch, "leader": null })),
            Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(gateway = %self.record.gateway, epoch = self.record.epoch, "resigned as leader");
        self.lease.release()
    }
}
