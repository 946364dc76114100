//! The iSCSI target: portals, targets, sessions.
//!
//! Layout: this file holds the server (portals, target registry, CHAP secrets, session
//! table); `ports.rs` the SCSI target ports it serves, each an iSCSI target portal group
//! with its portals; `login.rs` runs the login phase of one connection; `conn/` runs the
//! full feature phase. A session has exactly one connection (MaxConnections=1, ERL 0).

mod conn;
mod login;
mod ports;

pub(crate) use ports::ServedPort;
pub use ports::{PortError, TargetPort};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::chap::ChapSecret;
use crate::handler::ScsiHandler;
use crate::params::TargetLimits;

/// Errors starting or running the target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no portal configured")]
    NoPortal,
    #[error("target ports: {0}")]
    Ports(#[from] PortError),
    #[error("invalid iSCSI name {0:?} (expected iqn., eui. or naa. form)")]
    BadName(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Listening addresses of the one target port of a server that leaves
    /// [`TargetConfig::target_ports`] empty; port 0 picks a free port (see
    /// [`TargetServer::local_addrs`]).
    pub portals: Vec<SocketAddr>,
    /// The SCSI target ports this server serves, each its own iSCSI target portal group
    /// with its portals (RFC 7143 TargetPortalGroupTag) and its own relative target port
    /// identifier. Empty: one port, [`TargetConfig::relative_port`] and
    /// [`TargetConfig::portal_group_tag`], on every address of [`TargetConfig::portals`].
    pub target_ports: Vec<TargetPort>,
    pub limits: TargetLimits,
    /// Commands an initiator may have outstanding (CmdSN window).
    pub queue_depth: u32,
    /// Idle time after which the target pings the initiator with a NOP-In; `None` disables.
    pub nop_interval: Option<Duration>,
    /// How long a ping may stay unanswered before the connection is dropped.
    pub nop_timeout: Duration,
    /// Relative target port identifier of the one target port (SCSI) of a server that
    /// leaves [`TargetConfig::target_ports`] empty. Unique among the target ports of one
    /// array: each gateway of an array has its own.
    pub relative_port: u16,
    /// iSCSI target portal group tag of that port's portals (TargetPortalGroupTag at login;
    /// with the target name it names the target port).
    pub portal_group_tag: u16,
    /// Largest Expected Data Transfer Length accepted for one command.
    pub max_transfer: u32,
    /// CHAP required for discovery sessions.
    pub discovery_auth: AuthPolicy,
    /// How long initiators get to log out after an Async logout request on shutdown.
    pub logout_grace: Duration,
    /// Connections open at once (each has a thread of its own, from accept on); one more is
    /// closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            portals: vec![SocketAddr::from(([127, 0, 0, 1], 3260))],
            target_ports: Vec::new(),
            limits: TargetLimits::default(),
            queue_depth: 128,
            nop_interval: Some(Duration::from_secs(10)),
            nop_timeout: Duration::from_secs(30),
            relative_port: 1,
            portal_group_tag: 1,
            max_transfer: 32 * 1024 * 1024,
            discovery_auth: AuthPolicy::None,
            logout_grace: Duration::from_secs(2),
            max_connections: 1024,
        }
    }
}

/// Authentication a target requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthPolicy {
    /// AuthMethod=None is accepted; an initiator that offers only CHAP and has a secret
    /// configured still gets CHAP.
    #[default]
    None,
    /// CHAP is required (one-way, or mutual when the initiator asks and a mutual secret is
    /// configured).
    Chap,
}

/// One target name served by the server.
pub(crate) struct TargetEntry {
    pub name: String,
    pub alias: Option<String>,
    pub handler: Arc<dyn ScsiHandler>,
    pub auth: AuthPolicy,
    /// Initiators allowed to log in even with no LUN mapped.
    pub allow: RwLock<BTreeSet<String>>,
}

impl TargetEntry {
    /// Masking at login: an initiator may log in when it has at least one LUN mapped or is
    /// explicitly allowed.
    pub fn admits(&self, initiator: &str) -> bool {
        self.allow.read().expect("allow lock").contains(initiator)
            || !self.handler.luns_for(initiator).is_empty()
    }
}

/// What names a session (RFC 7143 4.4.3: the initiator, its ISID and the target portal
/// group's tag, for one target name): a login with the same key reinstates the session,
/// one through another portal group is a session of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    pub initiator: String,
    pub isid: u64,
    pub target: String,
    pub portal_group_tag: u16,
}

/// A running session, as seen by the server.
pub(crate) struct SessionSlot {
    pub tsih: u16,
    /// Ends the session's connection.
    pub kill: Arc<Notify>,
    /// Becomes true when the connection has fully ended (tasks drained, nexus released).
    pub ended: watch::Receiver<bool>,
    pub peer: SocketAddr,
    /// The portal the connection came in on.
    pub portal: Option<SocketAddr>,
    /// The target port the portal belongs to.
    pub port: ServedPort,
    pub since: std::time::SystemTime,
    pub chap: bool,
}

/// An open normal session, as [`TargetServer::sessions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub initiator: String,
    pub target: String,
    pub isid: u64,
    pub tsih: u16,
    /// The initiator's address.
    pub peer: SocketAddr,
    /// The portal (local address) the session's connection came in on.
    pub portal: Option<SocketAddr>,
    /// Relative target port identifier of the target port that portal belongs to.
    pub relative_port: u16,
    /// Target portal group tag of that port.
    pub portal_group_tag: u16,
    /// When the login completed.
    pub since: std::time::SystemTime,
    /// The initiator proved a CHAP secret at login.
    pub chap: bool,
}

pub(crate) struct Shared {
    pub config: TargetConfig,
    pub targets: RwLock<BTreeMap<String, Arc<TargetEntry>>>,
    pub chap: RwLock<HashMap<String, ChapSecret>>,
    pub sessions: Mutex<HashMap<SessionKey, SessionSlot>>,
    next_tsih: AtomicU16,
    pub shutdown: watch::Receiver<bool>,
    /// Every portal listened on, in the order of the ports and their portals.
    pub local_addrs: Vec<SocketAddr>,
    /// The target ports served, with the portals actually listened on.
    pub ports: Vec<TargetPort>,
    /// Connections whose thread is alive, from accept until the thread has been joined.
    live: AtomicUsize,
    /// Logins refused, by reason.
    pub refused: RefusalCounters,
    /// The server's runtime: its blocking pool executes commands that are not quick and
    /// task management, so that a connection's own thread owns nothing that outlives it.
    pub pool: tokio::runtime::Handle,
}

impl Shared {
    pub fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }
    pub fn target(&self, name: &str) -> Option<Arc<TargetEntry>> {
        self.targets
            .read()
            .expect("targets lock")
            .get(name)
            .cloned()
    }
}

/// Counts of refused logins, kept with atomics.
#[derive(Debug, Default)]
pub(crate) struct RefusalCounters {
    authentication: AtomicU64,
    authorization: AtomicU64,
    not_found: AtomicU64,
    other: AtomicU64,
}

impl RefusalCounters {
    /// Counts a login refused with status class and detail (RFC 7143 §11.13.5).
    pub fn count(&self, class: u8, detail: u8) {
        let c = match (class, detail) {
            (2, 1) => &self.authentication,
            (2, 2) => &self.authorization,
            (2, 3) => &self.not_found,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RefusedLogins {
        RefusedLogins {
            authentication: self.authentication.load(Ordering::Relaxed),
            authorization: self.authorization.load(Ordering::Relaxed),
            not_found: self.not_found.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

/// Logins a target server refused, by the reason the initiator was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusedLogins {
    /// Authentication failed (CHAP missing or wrong): status 0x0201.
    pub authentication: u64,
    /// The initiator may not reach the target (masking): 0x0202.
    pub authorization: u64,
    /// No such target: 0x0203.
    pub not_found: u64,
    /// Anything else: a malformed login, an unsupported version or session type, shutdown.
    pub other: u64,
}

impl RefusedLogins {
    /// Each reason with its count: `authentication`, `authorization`, `not_found`, `other`.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("authentication", self.authentication),
            ("authorization", self.authorization),
            ("not_found", self.not_found),
            ("other", self.other),
        ]
    }
}

/// Checks the form of an iSCSI name (RFC 7143 §4.2.7, loosely: type prefix and no spaces).
pub fn valid_iscsi_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa."))
        && name.len() <= 223
        && !name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == 0 || b == b',')
}

/// A running target server.
pub struct TargetServer {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for TargetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetServer")
            .field("portals", &self.shared.local_addrs)
            .finish()
    }
}

impl TargetServer {
    /// Binds every portal and starts accepting connections on the current tokio runtime.
    pub async fn bind(config: TargetConfig) -> Result<TargetServer, TargetError> {
        let mut ports = config.served_ports()?;
        let mut listeners = Vec::new();
        let mut local = Vec::new();
        for port in ports.iter_mut() {
            let served = ServedPort::of(port);
            for addr in port.portals.iter_mut() {
                let l = TcpListener::bind(*addr)
                    .await
                    .map_err(|source| TargetError::Bind {
                        addr: *addr,
                        source,
                    })?;
                *addr = l.local_addr().map_err(|source| TargetError::Bind {
                    addr: *addr,
                    source,
                })?;
                local.push(*addr);
                listeners.push((l, served));
            }
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            targets: RwLock::new(BTreeMap::new()),
            chap: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_tsih: AtomicU16::new(1),
            shutdown: shutdown_rx,
            local_addrs: local,
            ports,
            live: AtomicUsize::new(0),
            refused: RefusalCounters::default(),
            pool: tokio::runtime::Handle::current(),
        });
        let acc_shared = shared.clone();
        let accept = tokio::spawn(async move { accept_loop(acc_shared, listeners).await });
        for p in &shared.ports {
            tracing::info!(
                portals = ?p.portals,
                relative_port = p.relative_port,
                portal_group_tag = p.portal_group_tag,
                "iSCSI target port listening"
            );
        }
        Ok(TargetServer {
            shared,
            shutdown_tx,
            accept_tasks: Mutex::new(Some(accept)),
            runtime: None,
        })
    }

    /// Starts the server on its own multi-threaded runtime, for callers without one.
    pub fn spawn(config: TargetConfig) -> Result<TargetServer, TargetError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(64)
            // Blocking threads (slow commands, task management) stay once started instead
            // of retiring after 10 s idle: at most 64, and no thread comes and goes around
            // each burst of slow commands.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .thread_name("iscsi-target")
            .enable_all()
            .build()
            .map_err(TargetError::Runtime)?;
        let mut server = rt.block_on(Self::bind(config))?;
        server.runtime = Some(rt);
        Ok(server)
    }

    /// The addresses actually listened on, every port's portals in order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.shared.local_addrs
    }

    /// The target ports served, each with the addresses its portals actually listen on.
    pub fn ports(&self) -> &[TargetPort] {
        &self.shared.ports
    }

    /// Adds (or replaces) a target name served by `handler`.
    pub fn add_target(
        &self,
        name: &str,
        alias: Option<&str>,
        handler: Arc<dyn ScsiHandler>,
        auth: AuthPolicy,
    ) -> Result<(), TargetError> {
        if !valid_iscsi_name(name) {
            return Err(TargetError::BadName(name.into()));
        }
        let entry = Arc::new(TargetEntry {
            name: name.to_string(),
            alias: alias.map(str::to_string),
            handler,
            auth,
            allow: RwLock::new(BTreeSet::new()),
        });
        self.shared
            .targets
            .write()
            .expect("targets lock")
            .insert(name.to_string(), entry);
        Ok(())
    }

    /// Removes a target; its open sessions are ended.
    pub fn remove_target(&self, name: &str) {
        self.shared
            .targets
            .write()
            .expect("targets lock")
            .remove(name);
        let sessions = self.shared.sessions.lock().expect("sessions lock");
        for (k, s) in sessions.iter() {
            if k.target == name {
                s.kill.notify_one();
            }
        }
    }

    /// Lets `initiator` log in to `target` even while no LUN is mapped to it.
    pub fn allow_initiator(&self, target: &str, initiator: &str) -> bool {
        match self.shared.target(target) {
            Some(t) => {
                t.allow
                    .write()
                    .expect("allow lock")
                    .insert(initiator.to_string());
                true
            }
            None => false,
        }
    }

    /// Takes back [`TargetServer::allow_initiator`]: `initiator` logs in to `target` only
    /// while a LUN is mapped to it.
    pub fn disallow_initiator(&self, target: &str, initiator: &str) {
        if let Some(t) = self.shared.target(target) {
            t.allow.write().expect("allow lock").remove(initiator);
        }
    }

    /// Ends every session `initiator` has open, on every target; answers how many. The
    /// connections close at once (commands in flight finish first, as at any disconnect).
    pub fn end_sessions(&self, initiator: &str) -> usize {
        let sessions = self.shared.sessions.lock().expect("sessions lock");
        let mut n = 0;
        for (k, s) in sessions.iter() {
            if k.initiator == initiator {
                s.kill.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Sets the CHAP secret an initiator must prove (CHAP_N = `user`), and optionally the
    /// name and secret the target proves back for mutual CHAP.
    pub fn set_chap(
        &self,
        initiator: &str,
        user: &str,
        secret: &[u8],
        mutual: Option<(&str, &[u8])>,
    ) {
        self.shared.chap.write().expect("chap lock").insert(
            initiator.to_string(),
            ChapSecret {
                user: user.to_string(),
                secret: secret.to_vec(),
                mutual: mutual.map(|(n, s)| (n.to_string(), s.to_vec())),
            },
        );
    }

    pub fn clear_chap(&self, initiator: &str) {
        self.shared
            .chap
            .write()
            .expect("chap lock")
            .remove(initiator);
    }

    /// Number of open normal sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().expect("sessions lock").len()
    }

    /// The open normal sessions, by initiator name.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let sessions = self.shared.sessions.lock().expect("sessions lock");
        let mut v: Vec<SessionInfo> = sessions
            .iter()
            .map(|(k, s)| SessionInfo {
                initiator: k.initiator.clone(),
                target: k.target.clone(),
                isid: k.isid,
                tsih: s.tsih,
                peer: s.peer,
                portal: s.portal,
                relative_port: s.port.relative_port,
                portal_group_tag: s.port.portal_group_tag,
                since: s.since,
                chap: s.chap,
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.initiator, a.isid, a.portal_group_tag).cmp(&(
                &b.initiator,
                b.isid,
                b.portal_group_tag,
            ))
        });
        v
    }

    /// Logins this server refused since it started, by reason.
    pub fn refused_logins(&self) -> RefusedLogins {
        self.shared.refused.snapshot()
    }

    /// Number of connections whose thread is still alive (login phase, full feature phase,
    /// or tearing down). It returns to its former value once a closed connection's thread
    /// has ended, released its buffers and been joined. Commands of a closed connection
    /// that are still executing on the blocking pool are not counted: they finish there.
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Stops accepting, asks every initiator to log out (Async Message, event 1), lets
    /// in-flight commands finish and closes every connection.
    pub async fn shutdown_async(&self) {
        let _ = self.shutdown_tx.send(true);
        let accept = self.accept_tasks.lock().expect("accept lock").take();
        if let Some(h) = accept {
            let _ = h.await;
        }
    }

    /// Blocking form of [`TargetServer::shutdown_async`] for servers made by `spawn`.
    pub fn shutdown(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.block_on(self.shutdown_async());
            rt.shutdown_timeout(Duration::from_secs(5));
        } else {
            let _ = self.shutdown_tx.send(true);
        }
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listeners: Vec<(TcpListener, ServedPort)>) {
    let mut conns = JoinSet::new();
    let mut accepts = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(TcpStream, SocketAddr, ServedPort)>(64);
    for (l, port) in listeners {
        let tx = tx.clone();
        let mut stop = shared.shutdown.clone();
        accepts.spawn(async move {
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((c, peer)) => { if tx.send((c, peer, port)).await.is_err() { break; } }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = stopped(&mut stop) => break,
                }
            }
        });
    }
    drop(tx);
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            c = rx.recv() => match c {
                Some((stream, peer, port)) => {
                    if shared.live.load(Ordering::Acquire) >= shared.config.max_connections {
                        tracing::warn!(
                            %peer,
                            limit = shared.config.max_connections,
                            "too many connections; closing the new one"
                        );
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let live = Live::enter(shared.clone());
                    match connection_thread(shared.clone(), stream, peer, port) {
                        Ok((thread, done)) => {
                            conns.spawn(async move {
                                let _ = done.await;
                                // Sending `done` is the thread's last act: it is exiting,
                                // so the join is over in microseconds and is not worth a
                                // hop to the blocking pool (which may start a thread).
                                let _ = thread.join();
                                drop(live);
                            });
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "cannot start a connection thread"),
                    }
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    accepts.shutdown().await;
    // Connections see the shutdown flag themselves; wait for them to finish.
    let limit = shared.config.logout_grace + Duration::from_secs(5);
    let _ = tokio::time::timeout(limit, async { while conns.join_next().await.is_some() {} }).await;
    conns.shutdown().await;
}

/// Runs one connection on a thread of its own with a single-threaded runtime: the session
/// loop, its writer and the commands it executes in line hand work to each other without
/// waking another thread. The receiver resolves when the connection has ended; the thread
/// then exits at once.
fn connection_thread(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    port: ServedPort,
) -> std::io::Result<(
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let stream = stream.into_std()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("iscsi-conn-{peer}"))
        .spawn(move || {
            rt.block_on(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => conn::run(shared, stream, peer, port).await,
                    Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection"),
                }
            });
            // Nothing of the connection runs on this runtime any more: commands still
            // executing are on the server's blocking pool (the last of them releases the
            // nexus), and the runtime has no blocking threads of its own (were there one,
            // it would get a bounded wait).
            rt.shutdown_timeout(Duration::from_secs(1));
            let _ = done_tx.send(());
        })?;
    Ok((thread, done_rx))
}

/// One count in [`Shared::live`], held from accept until the connection's thread has been
/// joined.
struct Live(Arc<Shared>);

impl Live {
    fn enter(shared: Arc<Shared>) -> Live {
        shared.live.fetch_add(1, Ordering::AcqRel);
        Live(shared)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
