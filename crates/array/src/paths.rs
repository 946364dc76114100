//! A gateway's paths (docs/gateways.md, "Paths"): with `[gateway]`, every gateway of the
//! array listens on its iSCSI portals, as one target port of its own, in a target port group
//! of its own (the group id is its relative target port identifier). The gateway in office
//! serves every LUN Active/Optimized through its port; the others serve the same LUNs, with
//! the same identities, as Standby: hosts log in to every gateway, group the paths by LUN
//! identity, and send I/O where REPORT TARGET PORT GROUPS says the LUN is optimized.
//!
//! Each gateway writes its target port into the members object (`port.<gateway>`,
//! `gateways::Membership::advertise`); the target port groups each reports are those of the
//! live gateways. A standby mirrors the leader's rows (mappings, host initiators, CHAP) into
//! its target without opening a volume (`export::Handover`), and reports the leader's group
//! as the active one. When it takes office, the same logical units get their volumes, its
//! own group becomes the active one, and every nexus hears ASYMMETRIC ACCESS STATE CHANGED.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::LunId;
use gateways::{Leadership, LeadershipConfig, Membership, StateStore, StateWatch};
use serde::{Deserialize, Serialize};
use vss::inquiry::Designator;

use crate::error::ArrayError;
use crate::export::ScsiExporter;
use crate::state::{Exporter, follow};

/// How often the gateways, the leader and (on a standby) the rows are looked at; a standby
/// also looks at once when a commit's notify or a new leader's epoch wakes it.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often the watch itself polls the state's version (its fallback for a lost notify;
/// the looks above poll too).
const WATCH_POLL: Duration = Duration::from_secs(5);
/// At most one warning this often about a look that failed.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What a gateway writes about itself for the others: its SCSI target port, and once it
/// serves, its control API's address (where standbys relay API connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortAdvert {
    pub relative_port: u16,
    pub portal_group_tag: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<SocketAddr>,
}

/// Where the gateway in office serves its control API, as a standby last saw it (`None`:
/// no gateway is in office, or it has not said yet).
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaderApi(Arc<Mutex<Option<SocketAddr>>>);

impl LeaderApi {
    pub fn get(&self) -> Option<SocketAddr> {
        *self.0.lock().expect("leader api lock")
    }

    fn set(&self, addr: Option<SocketAddr>) {
        let mut a = self.0.lock().expect("leader api lock");
        if *a != addr {
            tracing::info!(api = ?addr, "the control API of the gateway in office");
            *a = addr;
        }
    }
}

/// `api` as another host reaches it: an address bound to every interface (0.0.0.0, ::)
/// takes the host's address from its Ceph client's (`IP:PORT/NONCE`, maybe `v2:` first).
fn reachable(api: SocketAddr, ceph_addr: &str) -> SocketAddr {
    if !api.ip().is_unspecified() {
        return api;
    }
    let a = ceph_addr.rsplit_once('/').map_or(ceph_addr, |(a, _)| a);
    let a = a
        .strip_prefix("v2:")
        .or_else(|| a.strip_prefix("v1:"))
        .unwrap_or(a);
    match a.parse::<SocketAddr>() {
        Ok(ip) => SocketAddr::new(ip.ip(), api.port()),
        Err(_) => api,
    }
}

impl PortAdvert {
    /// The target port group of this port: its relative target port identifier.
    pub fn group(&self) -> scsi::PortGroup {
        scsi::PortGroup {
            id: self.relative_port,
            ports: vec![self.relative_port],
        }
    }
}

/// What a standby mirrored into its target last.
#[derive(Default)]
struct Mirrored {
    version: Option<u64>,
    maps: BTreeMap<(String, u64), (LunId, u64)>,
    chap: BTreeMap<String, Option<String>>,
}

struct Follower {
    gateway: String,
    own: Mutex<PortAdvert>,
    leader_api: LeaderApi,
    exporter: Arc<ScsiExporter>,
    members: Membership,
    store: StateStore,
    leadership: Leadership,
    ports: Vec<Designator>,
    /// Set once this gateway takes office: it stops mirroring and serves.
    serving: AtomicBool,
    mirrored: Mutex<Mirrored>,
    warned: Mutex<Option<Instant>>,
}

/// This gateway's paths, kept in step by a thread of their own until dropped.
pub(crate) struct Paths {
    follower: Arc<Follower>,
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    /// While standing by: the watch of the state that wakes the thread on a change.
    watch: Mutex<Option<StateWatch>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Paths({})", self.follower.gateway)
    }
}

impl Paths {
    /// Writes this gateway's target port for the others (refusing one another live gateway
    /// already uses), reports the live gateways' groups, and starts mirroring the leader's
    /// rows as Standby paths; keeps `leader_api` up to date while standing by.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        gateway: &str,
        own: PortAdvert,
        exporter: Arc<ScsiExporter>,
        pool: Arc<rbd::Pool>,
        array: &str,
        lease: Duration,
        ports: Vec<Designator>,
        leader_api: LeaderApi,
    ) -> Result<Paths, ArrayError> {
        let err = |what: &str| {
            let (gateway, what) = (gateway.to_string(), what.to_string());
            move |e: gateways::Error| ArrayError::Gateway {
                gateway,
                what,
                source: Box::new(e),
            }
        };
        let members = Membership::new(pool.clone(), array);
        let live = members.live().map_err(err("listing the gateways"))?;
        let adverts = members
            .adverts()
            .map_err(err("reading the gateways' ports"))?;
        for m in live.iter().filter(|m| m.gateway != gateway) {
            let Some(other) = adverts.get(&m.gateway).and_then(|v| parse(v)) else {
                continue;
            };
            if other.relative_port == own.relative_port
                || other.portal_group_tag == own.portal_group_tag
            {
                return Err(ArrayError::BadRequest(format!(
                    "gateway {gateway}: gateway {} serves relative target port {} with portal \
                     group tag {}; each gateway of an array needs its own \
                     iscsi_relative_port and iscsi_portal_group_tag (docs/gateways.md)",
                    m.gateway, other.relative_port, other.portal_group_tag
                )));
            }
        }
        let advert = serde_json::to_vec(&own).expect("a port advert serializes");
        members
            .advertise(gateway, &advert)
            .map_err(err("writing this gateway's port"))?;
        let store = StateStore::open(pool, array).map_err(err("opening the array's state"))?;
        let follower = Arc::new(Follower {
            gateway: gateway.to_string(),
            own: Mutex::new(own),
            leader_api,
            exporter,
            members,
            leadership: Leadership::new(store.clone(), LeadershipConfig::new(gateway, lease)),
            store,
            ports,
            serving: AtomicBool::new(false),
            mirrored: Mutex::new(Mirrored::default()),
            warned: Mutex::new(None),
        });
        follower.look();
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = mpsc::channel::<()>();
        let watch = {
            let wake = wake.clone();
            match follower.store.watch(WATCH_POLL, move |_, _| {
                let _ = wake.send(());
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "watching the array's state failed; looking every {LOOK_EVERY:?}");
                    None
                }
            }
        };
        let thread = {
            let (f, stop) = (follower.clone(), stop.clone());
            std::thread::Builder::new()
                .name("gateway-paths".into())
                .spawn(move || {
                    loop {
                        match woken.recv_timeout(LOOK_EVERY) {
                            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                        // Wakes already queued are answered by this one look.
                        while woken.try_recv().is_ok() {}
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        f.look();
                    }
                })
                .map_err(|e| ArrayError::io("starting the paths thread", e))?
        };
        Ok(Paths {
            follower,
            stop,
            wake,
            watch: Mutex::new(watch),
            thread: Some(thread),
        })
    }

    /// This gateway took office: it stops mirroring (after one last look at the rows, now
    /// that no other gateway can change them); the array it opens next attaches the
    /// volumes. Its own group still reports Standby until [`Paths::serve`].
    pub fn take_office(&self) {
        self.follower.serving.store(true, Ordering::SeqCst);
        // The leader's own commits need not wake its paths.
        drop(self.watch.lock().expect("watch lock").take());
        // Waits for a mirroring pass in progress, then brings the mirror up to date.
        let mut m = self.follower.mirrored.lock().expect("mirror lock");
        if let Err(e) = self.follower.mirror(&mut m) {
            tracing::warn!(error = %e, "reading the array's rows before taking office failed");
        }
    }

    /// For the leases' threads, run when a lease ends by itself (this gateway lost office):
    /// every group turns Standby at once, so nothing reaches the medium through its paths
    /// while it stops, and no read is answered from what it holds once another gateway may
    /// serve.
    pub fn stand_down_hook(&self) -> crate::office::OnLost {
        let exporter = self.follower.exporter.clone();
        Arc::new(move || exporter.set_active_group(None))
    }

    /// The array is open on this gateway: its group serves every LUN.
    pub fn serve(&self) {
        self.follower
            .exporter
            .set_active_group(Some(self.follower.own().relative_port));
    }

    /// Where the gateway in office serves its control API, kept up to date while this one
    /// stands by.
    pub fn leader_api(&self) -> LeaderApi {
        self.follower.leader_api.clone()
    }

    /// What tells the others where this gateway (in office) serves its control API (a
    /// write to the cluster: run it where blocking is allowed).
    pub fn api_advertiser(
        &self,
    ) -> impl FnOnce(SocketAddr) -> Result<(), ArrayError> + Send + 'static {
        let f = self.follower.clone();
        move |api| {
            let advert = {
                let mut own = f.own.lock().expect("own advert lock");
                own.api = Some(api);
                *own
            };
            let v = serde_json::to_vec(&advert).expect("a port advert serializes");
            f.members
                .advertise(&f.gateway, &v)
                .map_err(f.err("writing this gateway's API address"))
        }
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        drop(self.watch.lock().expect("watch lock").take());
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse(v: &[u8]) -> Option<PortAdvert> {
    serde_json::from_slice(v).ok()
}

/// The live gateways, each with the port it advertised (if it did), an API address bound
/// to every interface taken with the gateway's own address.
pub(crate) fn live_ports(
    members: &Membership,
) -> Result<Vec<(gateways::MemberInfo, Option<PortAdvert>)>, gateways::Error> {
    let live = members.live()?;
    let adverts = members.adverts()?;
    Ok(live
        .into_iter()
        .map(|m| {
            let p = adverts.get(&m.gateway).and_then(|v| parse(v)).map(|mut p| {
                p.api = p.api.map(|a| reachable(a, &m.addr));
                p
            });
            (m, p)
        })
        .collect())
}

impl Follower {
    fn own(&self) -> PortAdvert {
        *self.own.lock().expect("own advert lock")
    }

    /// One look: the groups of the live gateways; on a standby, which one is the leader's,
    /// and the rows.
    fn look(&self) {
        let r = self.groups().and_then(|adverts| {
            if self.serving.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.active(&adverts)?;
            let mut m = self.mirrored.lock().expect("mirror lock");
            // Checked again under the lock: taking office waits for this pass.
            if self.serving.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.mirror(&mut m)
        });
        if let Err(e) = r {
            let mut w = self.warned.lock().expect("warned lock");
            if w.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(gateway = %self.gateway, error = %e, "following the array's gateways failed; retrying");
                *w = Some(Instant::now());
            }
        }
    }

    /// Reports the groups of the live gateways (this one always); returns the live
    /// gateways' ports.
    fn groups(&self) -> Result<BTreeMap<String, PortAdvert>, ArrayError> {
        let mut ports: BTreeMap<String, PortAdvert> = live_ports(&self.members)
            .map_err(self.err("reading the gateways' ports"))?
            .into_iter()
            .filter_map(|(m, p)| Some((m.gateway, p?)))
            .collect();
        ports.insert(self.gateway.clone(), self.own());
        let mut groups: Vec<scsi::PortGroup> = Vec::new();
        for (g, p) in &ports {
            if groups.iter().any(|x| x.id == p.relative_port) {
                if *g != self.gateway {
                    tracing::error!(gateway = %g, port = p.relative_port,
                        "two live gateways serve the same relative target port; not reported");
                }
                continue;
            }
            groups.push(p.group());
        }
        // In the target's order, so that an unchanged set compares equal.
        groups.sort_by_key(|g| g.id);
        self.exporter
            .set_port_groups(groups)
            .map_err(|e| ArrayError::BadRequest(format!("target port groups: {e}")))?;
        Ok(ports)
    }

    /// Makes the leader's group the active one, or none while no live gateway leads.
    fn active(&self, live: &BTreeMap<String, PortAdvert>) -> Result<(), ArrayError> {
        let (_, leader) = self
            .leadership
            .current()
            .map_err(self.err("reading who leads"))?;
        let own = self.own().relative_port;
        let leader = leader
            .and_then(|l| live.get(&l.gateway).copied())
            .filter(|p| p.relative_port != own);
        self.exporter
            .set_active_group(leader.map(|p| p.relative_port));
        self.leader_api.set(leader.and_then(|p| p.api));
        Ok(())
    }

    /// Mirrors the rows into the target if the state moved since the last pass.
    fn mirror(&self, m: &mut Mirrored) -> Result<(), ArrayError> {
        let (version, _) = self.store.head().map_err(self.err("reading the state"))?;
        if m.version == Some(version) {
            return Ok(());
        }
        let state = self.store.read().map_err(self.err("reading the state"))?;
        let followed = follow(&state, self.store.object(), &self.ports)?;
        let chap: BTreeMap<String, Option<String>> = followed.initiators.into_iter().collect();
        for (i, secret) in &chap {
            if m.chap.get(i) != Some(secret) {
                self.exporter.set_chap(i, secret.as_deref());
            }
        }
        for i in m.chap.keys().filter(|i| !chap.contains_key(*i)) {
            self.exporter.forget_initiator(i);
        }
        let mut maps = BTreeMap::new();
        for (i, n, lun) in &followed.mappings {
            let key = (i.clone(), *n);
            let now = (lun.id.clone(), lun.size_bytes);
            if m.maps.get(&key) != Some(&now) {
                self.exporter.map_standby(i, *n, lun);
            }
            maps.insert(key, now);
        }
        for (i, n) in m.maps.keys().filter(|k| !maps.contains_key(*k)) {
            self.exporter.unmap(i, *n);
        }
        tracing::debug!(version, mappings = maps.len(), "mirrored the array's rows");
        *m = Mirrored {
            version: Some(state.version),
            maps,
            chap,
        };
        Ok(())
    }

    fn err(&self, what: &str) -> impl FnOnce(gateways::Error) -> ArrayError + use<> {
        let (gateway, what) = (self.gateway.clone(), what.to_string());
        move |e| ArrayError::Gateway {
            gateway,
            what,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_bound_to_every_interface_is_reached_at_the_ceph_client_host() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            reachable(at("0.0.0.0:8443"), "10.1.2.3:0/3736478494"),
            at("10.1.2.3:8443")
        );
        assert_eq!(
            reachable(at("0.0.0.0:8443"), "v2:10.1.2.3:6800/12"),
            at("10.1.2.3:8443")
        );
        assert_eq!(
            reachable(at("[::]:8443"), "[fd00::7]:0/99"),
            at("[fd00::7]:8443")
        );
        // A specific address is kept; an address that cannot be read leaves it as it is.
        assert_eq!(
            reachable(at("192.168.0.9:8443"), "10.1.2.3:0/1"),
            at("192.168.0.9:8443")
        );
        assert_eq!(reachable(at("0.0.0.0:8443"), "-"), at("0.0.0.0:8443"));
    }

    #[test]
    fn adverts_from_before_the_api_field_still_read() {
        let p = parse(br#"{"relative_port":2,"portal_group_tag":3}"#).unwrap();
        assert_eq!((p.relative_port, p.portal_group_tag, p.api), (2, 3, None));
        let group = p.group();
        assert_eq!((group.id, group.ports), (2, vec![2]));
    }
}
