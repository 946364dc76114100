//! Multipath I/O: one [`HostStorage`] over several iSCSI sessions to the same target, one per
//! portal, as Windows' MPIO with the Microsoft DSM sees an array of several gateways.
//!
//! * **Discovery** ([`HostStorage::report_luns`], a rescan): a login on every path, REPORT
//!   LUNS through each, then for every LUN on every path VPD 0x83: the logical unit's own
//!   designator (NAA preferred) says which disk it is, the relative target port (type 4h) and
//!   target port group (type 5h) designators say which port and group the path reaches. A
//!   LUN number that shows another logical unit through one path than through the first is a
//!   different disk: that path is not used for it, and the mismatch is logged and shown in
//!   [`MpioStorage::paths`]. REPORT TARGET PORT GROUPS then gives each group's state.
//! * **Path choice**: the path of the last command while it stays Active/Optimized, else the
//!   first Active/Optimized path, else the first Active/Non-optimized one; never a Standby,
//!   Unavailable or Transitioning path. A path whose port is in no group (no asymmetric
//!   access) counts as Active/Optimized.
//! * **State changes**: a UNIT ATTENTION 2A/06 (asymmetric access state changed), 2A/07, 3F/03,
//!   3F/0E or 29/xx seen on any path makes the states be read again with REPORT TARGET PORT
//!   GROUPS. A command refused with 02/04/0A (transitioning) is retried after a short wait;
//!   02/04/0B (standby) or 02/04/0C (unavailable) moves it to another path.
//! * **Failures**: a lost connection, or a login that fails, marks the path failed and the
//!   command that was in flight goes to another path. This is what Windows does too: a
//!   command (a WRITE included) failed by a path is issued again on another one, which is
//!   harmless because it writes the same data to the same blocks. Ordering between the two
//!   paths is kept: the old session is closed, and a command in flight on it finished or
//!   failed, before anything is sent through the new path.
//! * **Recovery**: a failed path is logged in to again on a rescan (which waits for it), and
//!   in the background, by a thread of its own, when the states are read again or no path is
//!   usable, at most once per [`MpioPolicy::reconnect_interval`]; it is used again once it
//!   logs in. A portal that does not answer costs a command nothing.
//! * **Bounds**: a command looks for a usable path for at most
//!   [`MpioPolicy::failover_timeout`] (Windows' PDORemovePeriod plays this part), then fails
//!   with [`StorageError::NoPath`] naming every path and why it was not used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use iscsi::initiator::{InitiatorConfig, InitiatorError, Sense, Session};
use scsi::AccessState;
use vss::IdentifierType;
use vss::inquiry::{Association, decode_device_identification};

use crate::iscsi_storage::storage_error;
use crate::storage::{
    Capacity, DiskAddress, HostStorage, PathTried, StorageError, check_read, check_write,
};

/// Sense key NOT READY.
const NOT_READY: u8 = 0x2;
/// Sense key ILLEGAL REQUEST.
const ILLEGAL_REQUEST: u8 = 0x5;
/// Sense key UNIT ATTENTION.
const UNIT_ATTENTION: u8 = 0x6;

/// How long MPIO waits and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpioPolicy {
    /// The pause before a command refused with "transitioning", or finding no usable path,
    /// looks again.
    pub transition_wait: Duration,
    /// How long one command may look for a usable path before it fails.
    pub failover_timeout: Duration,
    /// The least time between two logins to a failed path outside a rescan.
    pub reconnect_interval: Duration,
}

impl Default for MpioPolicy {
    fn default() -> Self {
        Self {
            transition_wait: Duration::from_millis(100),
            failover_timeout: Duration::from_secs(20),
            reconnect_interval: Duration::from_secs(1),
        }
    }
}

/// One path to one LUN, as [`MpioStorage::paths`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub portal: SocketAddr,
    pub lun: u64,
    /// Relative target port identifier (VPD 0x83 type 4h) of the port the path reaches.
    pub relative_port: Option<u16>,
    /// Target port group (VPD 0x83 type 5h) of that port.
    pub group: Option<u16>,
    /// The LUN's access state in that group; `None` until read, or a state MPIO does not use
    /// (offline, LBA dependent).
    pub state: Option<AccessState>,
    /// Why the path is failed (its connection lost, or its login failed).
    pub failed: Option<String>,
    /// Set when this LUN number is another logical unit through this path than through the
    /// others: the path is not used for it.
    pub mismatch: Option<String>,
    /// Commands for this LUN go through this path now.
    pub current: bool,
}

/// One portal's session and health.
struct Path {
    portal: SocketAddr,
    config: InitiatorConfig,
    session: Mutex<Option<Session>>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failed: Option<String>,
    /// When the last login was tried.
    last_login: Option<Instant>,
    /// A login runs in the background.
    reconnecting: bool,
    /// The last login was refused with an initiator error (class 2): the target does not
    /// admit this initiator through this path now (no LUN mapped), the path itself works.
    refused: bool,
}

/// A LUN as seen through one path.
#[derive(Debug, Clone, Default)]
struct LunPath {
    relative_port: Option<u16>,
    group: Option<u16>,
    state: Option<AccessState>,
    mismatch: Option<String>,
}

/// A LUN: its identity and every path it is seen through (by path index).
#[derive(Debug, Clone, Default)]
struct LunView {
    identity: Option<Vec<u8>>,
    paths: BTreeMap<usize, LunPath>,
    current: Option<usize>,
    block_size: Option<u32>,
}

/// Which paths a command may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Commands that report on the device (INQUIRY): any path that is logged in.
    Report,
    /// Commands that reach the medium: Active paths only.
    Medium,
}

/// What a failed command says about its path.
enum Outcome {
    /// The path is broken: fail it, use another.
    Transport,
    /// The LU is between two states on this path: wait, read the states, try again.
    Transitioning,
    /// The path is not active for this LU (or its states changed): read the states again.
    NotActive,
    /// The command's own failure: no other path would do better.
    Final,
}

/// [`HostStorage`] over several paths to one target.
pub struct MpioStorage {
    /// This storage, for the threads that log in to failed paths in the background.
    me: Weak<MpioStorage>,
    target: String,
    initiator: String,
    paths: Vec<Path>,
    luns: Mutex<BTreeMap<u64, LunView>>,
    policy: MpioPolicy,
}

impl std::fmt::Debug for MpioStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpioStorage")
            .field(
                "portals",
                &self.paths.iter().map(|p| p.portal).collect::<Vec<_>>(),
            )
            .field("target", &self.target)
            .field("initiator", &self.initiator)
            .finish()
    }
}

/// Storage for a host that reaches `target` through `portals`: one [`IscsiStorage`] session
/// for one portal, MPIO over several.
///
/// [`IscsiStorage`]: crate::iscsi_storage::IscsiStorage
pub fn iscsi_host_storage(
    portals: &[SocketAddr],
    target: &str,
    initiator: &str,
) -> Arc<dyn HostStorage> {
    match portals {
        [one] => crate::iscsi_storage::IscsiStorage::new(*one, target, initiator),
        several => MpioStorage::new(several, target, initiator),
    }
}

impl MpioStorage {
    /// MPIO over one session per portal to `target`, as initiator `initiator`. No connection
    /// is made until the first command.
    pub fn new(portals: &[SocketAddr], target: &str, initiator: &str) -> Arc<Self> {
        Self::with_config(
            portals,
            target,
            InitiatorConfig::new(initiator),
            MpioPolicy::default(),
        )
    }

    /// As [`MpioStorage::new`] with an initiator configuration (each path gets its own ISID
    /// from `config.isid`) and waits of its own.
    pub fn with_config(
        portals: &[SocketAddr],
        target: &str,
        config: InitiatorConfig,
        policy: MpioPolicy,
    ) -> Arc<Self> {
        let paths = portals
            .iter()
            .enumerate()
            .map(|(i, portal)| Path {
                portal: *portal,
                config: InitiatorConfig {
                    // Two sessions of one initiator to portals of one portal group would
                    // otherwise reinstate each other.
                    isid: (config.isid ^ ((i as u64 & 0xFFFF) << 16)) & 0xFFFF_FFFF_FFFF,
                    ..config.clone()
                },
                session: Mutex::new(None),
                health: Mutex::default(),
            })
            .collect();
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            target: target.to_string(),
            initiator: config.initiator_name.clone(),
            paths,
            luns: Mutex::default(),
            policy,
        })
    }

    fn luns(&self) -> MutexGuard<'_, BTreeMap<u64, LunView>> {
        self.luns.lock().expect("mpio luns lock")
    }

    fn health(&self, i: usize) -> MutexGuard<'_, Health> {
        self.paths[i].health.lock().expect("mpio path health lock")
    }

    fn is_failed(&self, i: usize) -> bool {
        self.health(i).failed.is_some()
    }

    /// Every path to every LUN found, with its port, group, state and health.
    pub fn paths(&self) -> Vec<PathInfo> {
        let luns = self.luns().clone();
        let mut out = Vec::new();
        for (lun, view) in luns {
            for (i, p) in view.paths {
                out.push(PathInfo {
                    portal: self.paths[i].portal,
                    lun,
                    relative_port: p.relative_port,
                    group: p.group,
                    state: p.state,
                    failed: self.health(i).failed.clone(),
                    mismatch: p.mismatch,
                    current: view.current == Some(i),
                });
            }
        }
        out
    }

    /// The portals, in order, with why each is failed (`None`: healthy or not tried yet).
    pub fn portals(&self) -> Vec<(SocketAddr, Option<String>)> {
        (0..self.paths.len())
            .map(|i| (self.paths[i].portal, self.health(i).failed.clone()))
            .collect()
    }

    fn mark_failed(&self, i: usize, why: String) {
        let mut h = self.health(i);
        if h.failed.is_none() {
            tracing::info!(portal = %self.paths[i].portal, target = %self.target, reason = %why, "MPIO path failed");
        }
        h.failed = Some(why);
    }

    /// Logs in through path `i` and keeps the session (unless one was made meanwhile). The
    /// session lock is not held during the login: a dead portal costs this caller its
    /// connect timeout, never a command waiting for that path to be idle.
    fn login(&self, i: usize) -> Result<(), InitiatorError> {
        let path = &self.paths[i];
        self.health(i).last_login = Some(Instant::now());
        match Session::login(path.portal, &self.target, &path.config) {
            Ok(s) => {
                let mut guard = path.session.lock().expect("mpio session lock");
                if guard.is_none() {
                    *guard = Some(s);
                }
                drop(guard);
                let was = self.health(i).failed.take();
                if let Some(was) = was {
                    tracing::info!(portal = %path.portal, target = %self.target, was = %was, "MPIO path back");
                }
                Ok(())
            }
            Err(e) => {
                self.health(i).refused = matches!(e, InitiatorError::LoginRefused { class: 2, .. });
                self.mark_failed(i, format!("login: {e}"));
                Err(e)
            }
        }
    }

    /// Runs `f` through path `i` (logging in first if it has no session). Returns the unit
    /// attentions the session saw on the way; a transport failure drops the session.
    fn on_path<T>(
        &self,
        i: usize,
        f: &dyn Fn(&mut Session) -> Result<T, InitiatorError>,
    ) -> Result<(T, Vec<Sense>), InitiatorError> {
        let path = &self.paths[i];
        if path.session.lock().expect("mpio session lock").is_none() {
            self.login(i)?;
        }
        let mut guard = path.session.lock().expect("mpio session lock");
        let Some(s) = guard.as_mut() else {
            // Dropped by a failure in another thread since the login.
            return Err(InitiatorError::ConnectionLost);
        };
        let r = f(s);
        let uas = s.take_unit_attentions();
        match r {
            Ok(v) if s.logout_requested() => {
                // The target is going away (a gateway stopping or drained): log out now, as
                // the Microsoft initiator does on that asynchronous event, so that it need
                // not wait for us; later commands take the other paths.
                let _ = s.logout();
                *guard = None;
                drop(guard);
                self.mark_failed(i, "the target asked to log out".into());
                Ok((v, uas))
            }
            Ok(v) => Ok((v, uas)),
            Err(e) => {
                if matches!(classify(&e), Outcome::Transport) {
                    *guard = None;
                    drop(guard);
                    self.mark_failed(i, e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Logs in to failed paths: every one, and waiting for each, on a rescan (`all`);
    /// otherwise those whose last login is older than the reconnect interval, each in a
    /// thread of its own, so that a portal that does not answer never holds a command.
    fn reconnect(&self, all: bool) {
        for i in 0..self.paths.len() {
            let due = {
                let mut h = self.health(i);
                let due = h.failed.is_some()
                    && !h.reconnecting
                    && (all
                        || h.last_login
                            .is_none_or(|t| t.elapsed() >= self.policy.reconnect_interval));
                if due && !all {
                    h.reconnecting = true;
                }
                due
            };
            if !due {
                continue;
            }
            if all {
                let _ = self.login(i);
                continue;
            }
            let Some(me) = self.me.upgrade() else {
                self.health(i).reconnecting = false;
                continue;
            };
            let spawned = std::thread::Builder::new()
                .name("mpio-reconnect".into())
                .spawn(move || {
                    let _ = me.login(i);
                    me.health(i).reconnecting = false;
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "MPIO: cannot start a reconnect thread");
                self.health(i).reconnecting = false;
            }
        }
    }

    /// Reads the LUN's identity and port designators through path `i` into `view`.
    fn identify(&self, lun: u64, i: usize, view: &mut LunView) -> Result<(), InitiatorError> {
        let (page, _) = self.on_path(i, &|s| s.inquiry(lun, Some(0x83)))?;
        let mut lp = LunPath::default();
        let designators = match decode_device_identification(&page) {
            Ok((_, d)) => d,
            Err(e) => {
                lp.mismatch = Some(format!("bad VPD 0x83: {e}"));
                view.paths.insert(i, lp);
                return Ok(());
            }
        };
        let lu: Vec<_> = designators
            .iter()
            .filter(|d| d.association == Association::LOGICAL_UNIT)
            .collect();
        let identity = lu
            .iter()
            .find(|d| d.designator_type == IdentifierType::NAA)
            .or(lu.first())
            .map(|d| d.value.clone());
        let port_value = |t: IdentifierType| {
            designators
                .iter()
                .find(|d| d.association == Association::TARGET_PORT && d.designator_type == t)
                .and_then(|d| d.value.get(2..4))
                .map(|v| u16::from_be_bytes([v[0], v[1]]))
        };
        lp.relative_port = port_value(IdentifierType::PORT_RELATIVE);
        lp.group = port_value(IdentifierType::TARGET_PORT_GROUP);
        if lp.group.is_none() {
            // No asymmetric access through this port: it is as good as any.
            lp.state = Some(AccessState::ActiveOptimized);
        }
        match (&identity, &view.identity) {
            (None, _) => lp.mismatch = Some("no logical unit designator in VPD 0x83".into()),
            (Some(id), None) => view.identity = Some(id.clone()),
            (Some(id), Some(known)) if id != known => {
                let why = format!(
                    "LUN {lun} is another disk through this path (designator {}, not {})",
                    hex(id),
                    hex(known)
                );
                tracing::warn!(portal = %self.paths[i].portal, target = %self.target, "{why}; path not used for it");
                lp.mismatch = Some(why);
            }
            _ => {}
        }
        if let Some(old) = view.paths.get(&i) {
            if lp.group.is_some() && old.group == lp.group {
                lp.state = old.state;
            }
        }
        view.paths.insert(i, lp);
        Ok(())
    }

    /// Paths of `lun` that are not failed and show the same logical unit.
    fn live_paths(&self, view: &LunView) -> Vec<usize> {
        view.paths
            .iter()
            .filter(|(i, p)| p.mismatch.is_none() && !self.is_failed(**i))
            .map(|(i, _)| *i)
            .collect()
    }

    /// Reads every group's state for `lun` with REPORT TARGET PORT GROUPS, through `via`
    /// first, then any other live path of the LUN. Failed paths due for a login are tried
    /// first, so that they come back on the next state change.
    fn refresh(&self, lun: u64, via: Option<usize>) {
        self.reconnect(false);
        let Some(view) = self.luns().get(&lun).cloned() else {
            return;
        };
        let mut order = self.live_paths(&view);
        if let Some(v) = via.filter(|v| order.contains(v)) {
            order.retain(|i| *i != v);
            order.insert(0, v);
        }
        for i in order {
            match self.on_path(i, &|s| s.report_target_port_groups(lun)) {
                Ok((groups, _)) => {
                    let mut luns = self.luns();
                    let Some(view) = luns.get_mut(&lun) else {
                        return;
                    };
                    for (j, p) in view.paths.iter_mut() {
                        let Some(g) = p.group else { continue };
                        let state = groups
                            .iter()
                            .find(|d| d.group == g)
                            .and_then(|d| AccessState::from_code(d.state));
                        if state != p.state {
                            tracing::info!(portal = %self.paths[*j].portal, lun, group = g, from = ?p.state, to = ?state, "MPIO path state");
                        }
                        p.state = state;
                    }
                    return;
                }
                Err(InitiatorError::Check(s)) if s.key == ILLEGAL_REQUEST => return,
                Err(_) => continue,
            }
        }
    }

    /// Finds every LUN through every path, as a rescan does.
    fn discover(&self) -> Result<Vec<u64>, StorageError> {
        self.reconnect(true);
        let mut found: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut answered = false;
        let mut tried = Vec::new();
        for i in 0..self.paths.len() {
            // Still failed after the login just tried: not a second connect timeout.
            let (failed, refused) = {
                let h = self.health(i);
                (h.failed.clone(), h.refused)
            };
            if let Some(why) = failed {
                if refused {
                    // A target admits an initiator only while it has LUNs mapped.
                    answered = true;
                } else {
                    tried.push(self.tried(i, why));
                }
                continue;
            }
            match self.on_path(i, &|s| s.report_luns()) {
                Ok((luns, _)) => {
                    answered = true;
                    for lun in luns {
                        found.entry(lun).or_default().push(i);
                    }
                }
                // A target admits an initiator only while it has LUNs mapped.
                Err(InitiatorError::LoginRefused { class: 2, .. }) => answered = true,
                Err(e) => tried.push(self.tried(i, e.to_string())),
            }
        }
        if !answered {
            return Err(StorageError::NoPath {
                what: format!("target {}", self.target),
                paths: tried,
            });
        }
        let old = self.luns().clone();
        let mut views = BTreeMap::new();
        for (lun, paths) in &found {
            let before = old.get(lun).cloned().unwrap_or_default();
            // The disk is what the first path that answers shows now: a LUN number given to
            // another logical unit since the last rescan is that one on every path.
            let mut view = LunView {
                identity: None,
                ..before.clone()
            };
            view.paths.retain(|i, _| paths.contains(i));
            for p in view.paths.values_mut() {
                p.mismatch = None;
            }
            for &i in paths {
                if let Err(e) = self.identify(*lun, i, &mut view) {
                    tracing::info!(portal = %self.paths[i].portal, lun, error = %e, "MPIO: no identity through this path");
                }
            }
            if before.identity.is_some() && view.identity != before.identity {
                tracing::info!(lun, target = %self.target, "MPIO: the LUN is another disk since the last rescan");
                view.current = None;
                view.block_size = None;
            }
            views.insert(*lun, view);
        }
        // LUNs seen before only through paths that are failed now stay: they may come back.
        for (lun, view) in old {
            if !views.contains_key(&lun) && view.paths.keys().all(|i| self.is_failed(*i)) {
                views.insert(lun, view);
            }
        }
        *self.luns() = views;
        for lun in found.keys() {
            self.refresh(*lun, None);
        }
        Ok(found.into_keys().collect())
    }

    /// The path a command for `lun` goes through now, if one is usable.
    fn choose(&self, lun: u64, access: Access) -> Option<usize> {
        let view = self.luns().get(&lun).cloned()?;
        let live = self.live_paths(&view);
        let state = |i: usize| view.paths.get(&i).and_then(|p| p.state);
        let usable = |i: usize, want: AccessState| state(i) == Some(want);
        if let Some(c) = view.current.filter(|c| live.contains(c)) {
            if usable(c, AccessState::ActiveOptimized) || access == Access::Report {
                return Some(c);
            }
        }
        let pick = live
            .iter()
            .copied()
            .find(|i| usable(*i, AccessState::ActiveOptimized))
            .or_else(|| {
                live.iter()
                    .copied()
                    .find(|i| usable(*i, AccessState::ActiveNonOptimized))
            });
        match access {
            Access::Medium => pick,
            Access::Report => pick.or(live.first().copied()),
        }
    }

    /// Makes `i` the current path of `lun`; when it changes, waits for the command in flight
    /// on the old path (if any) to finish or fail first.
    fn make_current(&self, lun: u64, i: usize) {
        let old = {
            let mut luns = self.luns();
            let Some(view) = luns.get_mut(&lun) else {
                return;
            };
            view.current.replace(i)
        };
        if old == Some(i) {
            return;
        }
        if let Some(o) = old {
            // The old path's session lock is held while a command is in flight on it.
            drop(self.paths[o].session.lock().expect("mpio session lock"));
            tracing::info!(lun, target = %self.target, from = %self.paths[o].portal, to = %self.paths[i].portal, "MPIO path change");
        } else {
            tracing::info!(lun, target = %self.target, portal = %self.paths[i].portal, "MPIO path chosen");
        }
    }

    fn tried(&self, i: usize, why: String) -> PathTried {
        PathTried {
            portal: self.paths[i].portal,
            why,
        }
    }

    /// Why no path of `lun` is usable: each path and its state or failure.
    fn why_not(&self, lun: u64, mut tried: Vec<PathTried>) -> Vec<PathTried> {
        let view = self.luns().get(&lun).cloned().unwrap_or_default();
        for (i, path) in self.paths.iter().enumerate() {
            let why = if let Some(f) = self.health(i).failed.clone() {
                format!("failed: {f}")
            } else {
                match view.paths.get(&i) {
                    None => "does not show the LUN".into(),
                    Some(p) => {
                        let group = p.group.map_or("no group".into(), |g| format!("group {g}"));
                        match (&p.mismatch, p.state) {
                            (Some(m), _) => m.clone(),
                            (None, Some(s)) => format!("{s:?} in {group}"),
                            (None, None) => format!("no usable state in {group}"),
                        }
                    }
                }
            };
            let why = format!("now {why}");
            match tried.iter_mut().find(|t| t.portal == path.portal) {
                Some(t) => t.why = format!("{}; {why}", t.why),
                None => tried.push(PathTried {
                    portal: path.portal,
                    why,
                }),
            }
        }
        tried
    }

    /// Runs one command for `disk` through a usable path, moving to another on failure, for
    /// at most [`MpioPolicy::failover_timeout`].
    fn run<T>(
        &self,
        disk: &DiskAddress,
        access: Access,
        f: &dyn Fn(&mut Session) -> Result<T, InitiatorError>,
        map: &dyn Fn(InitiatorError) -> StorageError,
    ) -> Result<T, StorageError> {
        if disk.target != self.target {
            return Err(StorageError::NoSuchDisk(disk.clone()));
        }
        let lun = disk.lun;
        if !self.luns().contains_key(&lun) && !self.discover()?.contains(&lun) {
            return Err(StorageError::NoSuchDisk(disk.clone()));
        }
        let deadline = Instant::now() + self.policy.failover_timeout;
        let mut tried: Vec<PathTried> = Vec::new();
        let mut last_refused: Option<usize> = None;
        loop {
            let Some(i) = self.choose(lun, access) else {
                if Instant::now() >= deadline {
                    return Err(StorageError::NoPath {
                        what: disk.to_string(),
                        paths: self.why_not(lun, tried),
                    });
                }
                std::thread::sleep(self.policy.transition_wait);
                self.refresh(lun, None);
                continue;
            };
            if last_refused == Some(i) {
                // The same path again: let the array finish its change.
                std::thread::sleep(self.policy.transition_wait);
            }
            self.make_current(lun, i);
            let e = match self.on_path(i, f) {
                Ok((v, uas)) => {
                    if uas.iter().any(states_may_have_changed) {
                        self.refresh(lun, Some(i));
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            match classify(&e) {
                Outcome::Final => return Err(map(e)),
                Outcome::Transport => {
                    tracing::info!(portal = %self.paths[i].portal, %disk, error = %e, "MPIO: command failed with its path; retrying on another");
                    last_refused = None;
                }
                Outcome::Transitioning => {
                    std::thread::sleep(self.policy.transition_wait);
                    self.refresh(lun, Some(i));
                    last_refused = Some(i);
                }
                Outcome::NotActive => {
                    self.refresh(lun, Some(i));
                    last_refused = Some(i);
                }
            }
            tried.retain(|t| t.portal != self.paths[i].portal);
            tried.push(self.tried(i, e.to_string()));
            if Instant::now() >= deadline {
                return Err(StorageError::NoPath {
                    what: disk.to_string(),
                    paths: self.why_not(lun, tried),
                });
            }
        }
    }

    fn block_size(&self, disk: &DiskAddress) -> Result<u32, StorageError> {
        if let Some(b) = self.luns().get(&disk.lun).and_then(|v| v.block_size) {
            return Ok(b);
        }
        Ok(self.read_capacity(disk)?.block_size)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A unit attention after which the access states may differ.
fn states_may_have_changed(s: &Sense) -> bool {
    s.key == UNIT_ATTENTION
        && (matches!(
            (s.asc, s.ascq),
            (0x2A, 0x06) | (0x2A, 0x07) | (0x3F, 0x03) | (0x3F, 0x0E)
        ) || s.asc == 0x29)
}

fn classify(e: &InitiatorError) -> Outcome {
    match e {
        InitiatorError::Check(s) => match (s.key, s.asc, s.ascq) {
            (NOT_READY, 0x04, 0x0A) => Outcome::Transitioning,
            (NOT_READY, 0x04, 0x0B | 0x0C) => Outcome::NotActive,
            // Unit attentions past the initiator's retries.
            (UNIT_ATTENTION, ..) => Outcome::NotActive,
            _ => Outcome::Final,
        },
        InitiatorError::Status(_) | InitiatorError::TaskManagement(_) => Outcome::Final,
        _ => Outcome::Transport,
    }
}

impl HostStorage for MpioStorage {
    fn initiator_name(&self) -> String {
        self.initiator.clone()
    }

    fn report_luns(&self) -> Result<Vec<DiskAddress>, StorageError> {
        Ok(self
            .discover()?
            .into_iter()
            .map(|lun| DiskAddress {
                target: self.target.clone(),
                lun,
            })
            .collect())
    }

    fn inquiry(&self, disk: &DiskAddress) -> Result<Vec<u8>, StorageError> {
        self.run(disk, Access::Report, &|s| s.inquiry(disk.lun, None), &|e| {
            storage_error(disk, e)
        })
    }

    fn vpd(&self, disk: &DiskAddress, page: u8) -> Result<Vec<u8>, StorageError> {
        self.run(
            disk,
            Access::Report,
            &|s| s.inquiry(disk.lun, Some(page)),
            &|e| match e {
                InitiatorError::Check(s) if s.key == ILLEGAL_REQUEST && s.asc == 0x24 => {
                    StorageError::NoSuchPage {
                        disk: disk.clone(),
                        page,
                    }
                }
                e => storage_error(disk, e),
            },
        )
    }

    fn read_capacity(&self, disk: &DiskAddress) -> Result<Capacity, StorageError> {
        let c = self.run(
            disk,
            Access::Medium,
            &|s| s.read_capacity16(disk.lun),
            &|e| storage_error(disk, e),
        )?;
        let cap = Capacity {
            block_size: c.block_size,
            blocks: c.blocks,
        };
        cap.validate()?;
        if let Some(v) = self.luns().get_mut(&disk.lun) {
            v.block_size = Some(c.block_size);
        }
        Ok(cap)
    }

    fn read(&self, disk: &DiskAddress, lba: u64, blocks: u32) -> Result<Vec<u8>, StorageError> {
        let bs = self.block_size(disk)?;
        check_read(blocks, bs)?;
        self.run(
            disk,
            Access::Medium,
            &|s| s.read16(disk.lun, lba, blocks, bs),
            &|e| storage_error(disk, e),
        )
    }

    fn write(&self, disk: &DiskAddress, lba: u64, data: &[u8]) -> Result<(), StorageError> {
        let bs = self.block_size(disk)?;
        check_write(data.len(), bs)?;
        self.run(
            disk,
            Access::Medium,
            &|s| s.write16(disk.lun, lba, data, bs, false),
            &|e| storage_error(disk, e),
        )
    }

    fn flush(&self, disk: &DiskAddress) -> Result<(), StorageError> {
        self.run(
            disk,
            Access::Medium,
            &|s| s.synchronize_cache(disk.lun),
            &|e| storage_error(disk, e),
        )
    }
}
