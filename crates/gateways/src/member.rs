//! Which gateways are live: each holds a lease, the shared lock `member` with an expiry on
//! the members object, its gateway id as the cookie. The OSD drops a lease that is not
//! renewed in time, so the holders it lists are the live gateways, by the OSD's clock alone.
//! Once a lease is gone the OSD no longer says whose address it was: a [`Roster`] remembers
//! the addresses of the gateways it saw, so that the leader can fence one that left before
//! it hands its work to another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rbd::{Pool, WriteOp};

use crate::lease::{Lease, LeaseSpec, LockKind};
use crate::{Error, Lost, Result};

/// The lock's name on the members object.
pub const MEMBER_LOCK: &str = "member";
const TAG: &str = "gateway";
/// Prefix of the members object's omap keys in which each gateway says how it is reached
/// (`port.<gateway>`, [`Membership::advertise`]).
const ADVERT: &str = "port.";
/// Prefix of the members object's omap keys naming the gateways asked to drain
/// (`drain.<gateway>`, [`Membership::request_drain`]).
const DRAIN: &str = "drain.";
/// Entries per omap read of the adverts.
const ADVERT_PAGE: u64 = 256;

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

/// What changed between two looks at the live gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RosterChange {
    /// Gateways live now that were not at the last look (or live under another client:
    /// restarted).
    pub joined: Vec<MemberInfo>,
    /// Gateways live at the last look whose lease is gone, as they were then.
    pub left: Vec<MemberInfo>,
}

impl RosterChange {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

/// The live gateways as last seen, for the leader to follow (see the module docs).
#[derive(Debug)]
pub struct Roster {
    membership: Membership,
    known: BTreeMap<String, MemberInfo>,
}

impl Roster {
    /// The gateways as last seen, sorted by id.
    pub fn live(&self) -> impl Iterator<Item = &MemberInfo> {
        self.known.values()
    }

    /// Looks again: who joined and who left since the last look (the first look: everyone
    /// live joined). A gateway that came back under a new client left and joined.
    pub fn refresh(&mut self) -> Result<RosterChange> {
        let now: BTreeMap<String, MemberInfo> = self
            .membership
            .live()?
            .into_iter()
            .map(|m| (m.gateway.clone(), m))
            .collect();
        let mut change = RosterChange::default();
        for (id, was) in &self.known {
            if now.get(id).is_none_or(|m| m.client != was.client) {
                change.left.push(was.clone());
            }
        }
        for (id, m) in &now {
            if self.known.get(id).is_none_or(|was| was.client != m.client) {
                change.joined.push(m.clone());
            }
        }
        for m in &change.left {
            tracing::info!(gateway = %m.gateway, client = %m.client, "a gateway's lease is gone");
        }
        for m in &change.joined {
            tracing::info!(gateway = %m.gateway, client = %m.client, "a gateway joined");
        }
        self.known = now;
        Ok(change)
    }
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

    /// A [`Roster`] that has not looked yet (its first `refresh` lists everyone live).
    pub fn roster(&self) -> Roster {
        Roster {
            membership: self.clone(),
            known: BTreeMap::new(),
        }
    }

    /// Blocklists a gateway's Ceph client for `duration` and waits until the OSD map says
    /// so: from then on the OSDs refuse it (its lease renewals fail as [`Lost::Fenced`]),
    /// so whatever it held can move to another gateway. It needs a new connection to come
    /// back.
    pub fn fence(&self, member: &MemberInfo, duration: Duration) -> Result<()> {
        tracing::info!(gateway = %member.gateway, client = %member.client, "fencing a gateway");
        self.pool.cluster().blocklist(&member.addr, duration)?;
        Ok(())
    }

    /// Records what `gateway` tells the others about itself (for the array: its iSCSI target
    /// port, which the others report as a target port group), as the members object's omap
    /// key `port.<gateway>`, replacing its last. Each gateway writes only its own key; an
    /// advert outlives the gateway's lease, so readers pair it with [`Membership::live`].
    pub fn advertise(&self, gateway: &str, value: &[u8]) -> Result<()> {
        self.set_keyed(ADVERT, gateway, value)
    }

    /// Sets the members object's omap key `<prefix><gateway>` to `value`.
    fn set_keyed(&self, prefix: &str, gateway: &str, value: &[u8]) -> Result<()> {
        let key = format!("{prefix}{gateway}");
        let op = WriteOp::new()
            .create(false)
            .omap_set([(key.as_str(), value)])?;
        self.pool.operate(&self.object, &op)?;
        Ok(())
    }

    /// Every gateway's last advert, by gateway id (those that left included).
    pub fn adverts(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        self.keyed(ADVERT)
    }

    /// The omap entries of the members object under `prefix`, by what follows it.
    fn keyed(&self, prefix: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut after = String::new();
        loop {
            let (page, more) =
                match self
                    .pool
                    .omap_page(&self.object, &after, prefix, ADVERT_PAGE, None)
                {
                    Ok(p) => p,
                    Err(e) if e.is_not_found() => return Ok(out),
                    Err(e) => return Err(e.into()),
                };
            for (key, value) in page {
                if let Some(g) = key.strip_prefix(prefix) {
                    out.insert(g.to_string(), value);
                }
                after = key;
            }
            if !more {
                return Ok(out);
            }
        }
    }

    /// Asks `gateway` to drain: to hand over what it serves and stop. `why` is kept with the
    /// request (who asked, when). The request stands until the gateway joins again
    /// ([`Membership::clear_drain`]).
    pub fn request_drain(&self, gateway: &str, why: &[u8]) -> Result<()> {
        self.set_keyed(DRAIN, gateway, why)
    }

    /// The gateways asked to drain that have not joined since, with why.
    pub fn drains(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        self.keyed(DRAIN)
    }

    /// Forgets a request that `gateway` drain (it is joining again).
    pub fn clear_drain(&self, gateway: &str) -> Result<()> {
        let key = format!("{DRAIN}{gateway}");
        let op = WriteOp::new().create(false).omap_rm([key.as_str()])?;
        self.pool.operate(&self.object, &op)?;
        Ok(())
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
