//! Which gateways are live: each holds a lease, the shared lock `member` with an expiry on
//! the members object, its gateway id as the cookie. The OSD drops a lease that is not
//! renewed in time, so the holders it lists are the live gateways, by the OSD's clock alone.

use std::sync::Arc;
use std::time::Duration;

use rbd::Pool;

use crate::lease::{Lease, LeaseSpec, LockKind};
use crate::{Error, Lost, Result};

/// The lock's name on the members object.
pub const MEMBER_LOCK: &str = "member";
const TAG: &str = "gateway";

/// A live gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub gateway: String,
    /// Its Ceph client (`client.N`).
    pub client: String,
    /// Its Ceph client's address (what fencing it would blocklist).
    pub addr: String,
}

/// The gateways of one array.
#[derive(Debug, Clone)]
pub struct Membership {
    pool: Arc<Pool>,
    object: String,
}

/// This gateway's lease; it leaves when dropped.
#[derive(Debug)]
pub struct Member {
    lease: Lease,
    gateway: String,
}

impl Membership {
    pub fn new(pool: Arc<Pool>, array_id: &str) -> Membership {
        Membership {
            pool,
            object: crate::members_object(array_id),
        }
    }

    /// Joins as `gateway` with a lease of `ttl`, renewed every third of it. `on_lost` runs
    /// once if the lease ends by itself.
    pub fn join(
        &self,
        gateway: &str,
        ttl: Duration,
        on_lost: impl FnOnce(Lost) + Send + 'static,
    ) -> Result<Member> {
        let spec = LeaseSpec {
            pool: self.pool.clone(),
            object: self.object.clone(),
            lock: MEMBER_LOCK.into(),
            cookie: gateway.into(),
            desc: format!("shadowlun gateway {gateway}"),
            kind: LockKind::Shared { tag: TAG.into() },
            ttl,
            renew_every: ttl / 3,
        };
        let lease =
            Lease::take(spec, on_lost)?.ok_or_else(|| Error::AlreadyJoined(gateway.into()))?;
        tracing::info!(gateway, "joined the array's gateways");
        Ok(Member {
            lease,
            gateway: gateway.into(),
        })
    }

    /// The gateways whose lease holds now, sorted by id.
    pub fn live(&self) -> Result<Vec<MemberInfo>> {
        let lockers = self.pool.lockers(&self.object, MEMBER_LOCK)?;
        let mut live: Vec<MemberInfo> = lockers
            .holders
            .into_iter()
            .map(|l| MemberInfo {
                gateway: l.cookie,
                client: l.client,
                addr: l.addr,
            })
            .collect();
        live.sort_by(|a, b| a.gateway.cmp(&b.gateway));
        Ok(live)
    }
}

impl Member {
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Whether the lease still holds, else why not.
    pub fn check(&self) -> Result<(), Lost> {
        self.lease.check()
    }

    /// Leaves: stops renewing and releases the lease.
    pub fn leave(self) -> Result<()> {
        self.lease.release()
    }
}
