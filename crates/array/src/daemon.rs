//! Starting and stopping the daemon: pool directory, admin token, TLS, journal recovery, the
//! HTTPS listener, the reaper, and a clean shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ArrayError;
use crate::export::ScsiExporter;
use crate::metrics::{self, Exposition, IoStats, PoolLevel};
use crate::office::Office;
use crate::paths::{Paths, PortAdvert};
use crate::pool::{PoolIdentity, PoolLock};
use crate::state::{Array, Exporter, NoExport, Policy, StateSource, new_token, token_hash};

/// A started daemon.
#[derive(Debug)]
pub struct RunningArray {
    /// Where the HTTPS control API listens (the real port when configured with port 0).
    pub api_addr: SocketAddr,
    /// Where the Prometheus endpoint listens, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// iSCSI portals being served (empty when none is configured).
    pub iscsi_addrs: Vec<SocketAddr>,
    /// SHA-256 fingerprint of the API certificate, `AB:CD:...`, for the provider to pin.
    pub fingerprint: String,
    /// The 0600 file holding the admin token.
    pub admin_token_path: PathBuf,
    pub array: Array,
    /// Held until the daemon has stopped: no second daemon opens the pool meanwhile.
    _pool_lock: PoolLock,
    iscsi: Option<Arc<iscsi::TargetServer>>,
    /// With `[gateway]`: this gateway's office, held while it serves.
    office: Option<Office>,
    /// With `[gateway]`: the other gateways' target port groups, kept in step.
    paths: Option<Paths>,
    stop: watch::Sender<bool>,
    /// Turns true when an administrator drains this gateway (`drain.rs`).
    drain: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningArray {
    /// Stops accepting, lets in-flight requests finish (up to 5 s), stops the reaper, flushes
    /// the journal.
    pub async fn shutdown(self) -> Result<(), ArrayError> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(server) = &self.iscsi {
            // Asks initiators to log out, lets in-flight commands finish, closes sessions.
            server.shutdown_async().await;
        }
        self.array.sync()?;
        drop(self.paths);
        if let Some(office) = self.office {
            let _ = tokio::task::spawn_blocking(move || office.resign()).await;
        }
        tracing::info!("array stopped");
        Ok(())
    }

    /// For a gateway out of office: closes the hosts' sessions and the control API within a
    /// few seconds, and leaves what may wait on the cluster (flushing the volumes, closing
    /// them, the paths' and the leases' threads) to the end of the process: the cluster may
    /// not answer (the usual reason for losing office), and another gateway has fenced this
    /// one or is about to, so there is nothing to save by waiting.
    pub async fn abandon(self) {
        let _ = self.stop.send(true);
        let bound = Duration::from_secs(3);
        let _ = tokio::time::timeout(bound, self.task).await;
        if let Some(server) = &self.iscsi {
            let _ = tokio::time::timeout(bound, server.shutdown_async()).await;
        }
        tracing::info!("sessions closed; leaving the rest to the end of the process");
        std::mem::forget(self.paths);
        std::mem::forget(self.office);
        std::mem::forget(self.array);
        std::mem::forget(self.iscsi);
        std::mem::forget(self._pool_lock);
    }

    /// With `[gateway]`: resolves, with why, when this gateway's leases end by themselves
    /// (it must stop serving); never otherwise.
    pub async fn out_of_office(&self) -> String {
        match &self.office {
            Some(o) => o.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Resolves when an administrator drains this gateway (`shadowlun gateway drain`): it
    /// must stop cleanly, handing over; never otherwise.
    pub async fn drained(&self) {
        let mut rx = self.drain.clone();
        if rx.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// With `[gateway]`: this gateway's name and the leader epoch it serves at.
    pub fn office(&self) -> Option<(&str, u64)> {
        self.office.as_ref().map(|o| (o.name.as_str(), o.epoch))
    }
}

/// The backend, and with `[gateway]` this gateway in office (after waiting as a standby)
/// and its paths.
struct Opened {
    backend: Arc<dyn storage::Backend>,
    office: Option<Office>,
    paths: Option<Paths>,
    /// The control API's listener, bound while standing by (where it relayed).
    api_listener: Option<tokio::net::TcpListener>,
}

/// Opens the backend; with `[gateway]`, waits as a standby until this gateway takes
/// office, serving Standby paths through `exporter` meanwhile (when it has portals).
async fn open_storage(
    config: &Config,
    files: &PoolFiles,
    exporter: Option<&Arc<ScsiExporter>>,
) -> Result<Opened, ArrayError> {
    let bits = files.identity.array_id.bits();
    let (backend, rbd) = config.backend.open_attached(&config.pool_dir, bits)?;
    tracing::info!(kind = config.backend.kind(), "storage backend open");
    let (office, paths, api_listener) = match (&config.gateway, &rbd) {
        (None, _) => (None, None, None),
        (Some(g), Some(r)) => {
            let s = stand_by(config, files, g, r, exporter).await?;
            (Some(s.office), s.paths, s.api_listener)
        }
        (Some(_), None) => {
            return Err(ArrayError::BadRequest(
                "[gateway] needs [backend] kind = \"rbd\"".into(),
            ));
        }
    };
    // Only the gateway that serves clears what a predecessor left (breaking a lock
    // blocklists its holder): a standby must never.
    if let Some(r) = rbd {
        tokio::task::spawn_blocking(move || r.recover())
            .await
            .map_err(|e| {
                ArrayError::io(
                    "recovering the images",
                    std::io::Error::other(e.to_string()),
                )
            })??;
    }
    Ok(Opened {
        backend,
        office,
        paths,
        api_listener,
    })
}

/// What a gateway has once it takes office.
struct InOffice {
    office: Office,
    paths: Option<Paths>,
    api_listener: Option<tokio::net::TcpListener>,
}

/// A gateway's wait as a standby: with `exporter`, it serves Standby paths and relays the
/// control API to the gateway in office meanwhile; it returns once it has taken office.
async fn stand_by(
    config: &Config,
    files: &PoolFiles,
    g: &crate::config::GatewayConfig,
    r: &storage::RbdBackend,
    exporter: Option<&Arc<ScsiExporter>>,
) -> Result<InOffice, ArrayError> {
    let bits = files.identity.array_id.bits();
    let paths = match exporter {
        Some(e) => Some(start_paths(config, files, g, r, e).await?),
        None => None,
    };
    // With paths, the control API is relayed to the gateway in office meanwhile
    // (`api_relay.rs`); the same listener serves it here once this one takes office.
    let relaying = match &paths {
        Some(p) => {
            let listener = Arc::new(
                tokio::net::TcpListener::bind(config.api_listen)
                    .await
                    .map_err(|e| ArrayError::io(format!("binding {}", config.api_listen), e))?,
            );
            let addr = listener
                .local_addr()
                .map_err(|e| ArrayError::io("local address", e))?;
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(crate::api_relay::relay(
                listener.clone(),
                p.leader_api(),
                stopped,
            ));
            tracing::info!(%addr, "control API relayed to the gateway in office until this one takes office");
            println!(
                "shadowlun array: gateway {} standby API https://{addr} (relayed to the gateway in office)",
                g.name
            );
            Some((listener, stop, task))
        }
        None => None,
    };
    // When a lease ends by itself, the paths stand down on the lease's thread, at once.
    let on_lost = paths.as_ref().map(|p| p.stand_down_hook());
    let office = Office::take(g, r.pool().clone(), bits, on_lost).await?;
    if let Some(p) = &paths {
        p.take_office();
    }
    let api_listener = match relaying {
        Some((listener, stop, task)) => {
            let _ = stop.send(true);
            let _ = task.await;
            Some(Arc::try_unwrap(listener).map_err(|_| {
                ArrayError::io(
                    "taking the API listener back",
                    std::io::Error::other("still shared"),
                )
            })?)
        }
        None => None,
    };
    Ok(InOffice {
        office,
        paths,
        api_listener,
    })
}

/// Starts this gateway's paths (`paths.rs`): its target port written for the others, the
/// live gateways' groups reported, the leader's rows mirrored as Standby paths.
async fn start_paths(
    config: &Config,
    files: &PoolFiles,
    g: &crate::config::GatewayConfig,
    r: &storage::RbdBackend,
    exporter: &Arc<ScsiExporter>,
) -> Result<Paths, ArrayError> {
    let bits = files.identity.array_id.bits();
    let own = PortAdvert {
        relative_port: config.iscsi_relative_port,
        portal_group_tag: config.iscsi_portal_group_tag,
        api: None,
    };
    let ports = scsi::target_designators(
        &files.target_name(config),
        own.relative_port,
        own.portal_group_tag,
        Some(own.relative_port),
    );
    // Reservation commands through this gateway's Standby paths run on the gateway in
    // office (`pr_share.rs`), over its control API.
    let leader_api = crate::paths::LeaderApi::default();
    let token = read_or_create_admin_token(&config.admin_token_path())?;
    let (_, _, fingerprint) =
        crate::tls::load_or_create(&config.cert_path(), &config.key_path(), &config.tls_names)?;
    exporter.forward_reservations(
        crate::pr_share::Forwarder::new(leader_api.clone(), token, fingerprint).links(),
    );
    let (g2, e, pool) = (g.clone(), exporter.clone(), r.pool().clone());
    let paths = tokio::task::spawn_blocking(move || {
        Paths::start(
            &g2.name,
            own,
            e,
            pool,
            &crate::office::state_name(bits),
            g2.lease(),
            ports,
            leader_api,
        )
    })
    .await
    .map_err(|e| ArrayError::io("starting the paths", std::io::Error::other(e.to_string())))??;
    for a in exporter.portals() {
        tracing::info!(portal = %a, "serving Standby paths until this gateway takes office");
        // For whoever started the daemon: hosts may log in here already.
        println!(
            "shadowlun array: gateway {} standby iSCSI portal {a}",
            g.name
        );
    }
    Ok(paths)
}

fn read_or_create_admin_token(path: &std::path::Path) -> Result<String, ArrayError> {
    match std::fs::read_to_string(path) {
        Ok(t) => return Ok(t.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArrayError::io(format!("reading {}", path.display()), e)),
    }
    let token = new_token()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ArrayError::io(format!("creating {}", path.display()), e))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| ArrayError::io(format!("writing {}", path.display()), e))?;
    tracing::info!(path = %path.display(), "generated the admin token");
    Ok(token)
}

/// Makes every file and directory this process creates from now on private to its user
/// (umask 077), whatever the umask it was started with: the pool holds LUN data, the journal,
/// the TLS key and the admin token. Daemon entry points call it first; it is process-wide,
/// so a library caller decides for itself.
pub fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Starts the daemon: the configured engine, the iSCSI target on `iscsi_portals` (none when
/// the list is empty) and the HTTPS API.
pub async fn start(config: Config) -> Result<RunningArray, ArrayError> {
    let pool = PoolFiles::open(&config)?;
    if config.iscsi_portals.is_empty() {
        // A standby gateway without portals waits here, listening nowhere.
        let opened = open_storage(&config, &pool, None).await?;
        return start_prepared(config, pool, opened, Arc::new(NoExport), None, None).await;
    }
    let target_name = pool.target_name(&config);
    let target = Arc::new(scsi::Target::new(&target_name));
    // One gateway: its one target port is the one port of its target port group. With
    // `[gateway]`, the group is its relative port, and the other gateways' groups join it
    // (`paths.rs`).
    target
        .set_port_groups(vec![scsi::PortGroup {
            id: own_group(&config),
            ports: vec![config.iscsi_relative_port],
        }])
        .map_err(|e| {
            ArrayError::io(
                "configuring the target port group",
                std::io::Error::other(e.to_string()),
            )
        })?;
    let server = iscsi::TargetServer::bind(iscsi::TargetConfig {
        portals: config.iscsi_portals.clone(),
        relative_port: config.iscsi_relative_port,
        portal_group_tag: config.iscsi_portal_group_tag,
        ..iscsi::TargetConfig::default()
    })
    .await
    .map_err(|e| {
        ArrayError::io(
            "starting the iSCSI target",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let auth = if config.iscsi_require_chap {
        iscsi::AuthPolicy::Chap
    } else {
        iscsi::AuthPolicy::None
    };
    server
        .add_target(&target_name, Some("shadowlun"), target.clone(), auth)
        .map_err(|e| {
            ArrayError::io(
                "adding the iSCSI target",
                std::io::Error::other(e.to_string()),
            )
        })?;
    let server = Arc::new(server);
    let exporter = Arc::new(ScsiExporter::new(target, Some(server.clone())));
    // A standby gateway waits here, serving Standby paths.
    let opened = match open_storage(&config, &pool, Some(&exporter)).await {
        Ok(o) => o,
        Err(e) => {
            server.shutdown_async().await;
            return Err(e);
        }
    };
    let io = exporter.io_stats().clone();
    start_prepared(config, pool, opened, exporter, Some(server), Some(io)).await
}

/// This gateway's target port group: the array's one group, or with `[gateway]` its
/// relative target port (each gateway has its own).
fn own_group(config: &Config) -> u16 {
    if config.gateway.is_some() {
        config.iscsi_relative_port
    } else {
        crate::export::TARGET_PORT_GROUP
    }
}

/// The pool directory, held: its lock and the array's identity.
struct PoolFiles {
    lock: PoolLock,
    identity: PoolIdentity,
}

impl PoolFiles {
    /// Creates the pool directory (0700) if needed, takes its lock (a second daemon on the
    /// pool stops here) and reads or makes the array's identity.
    fn open(config: &Config) -> Result<PoolFiles, ArrayError> {
        let pool = &config.pool_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pool)
            .map_err(|e| ArrayError::io(format!("creating {}", pool.display()), e))?;
        let lock = PoolLock::acquire(pool)?;
        let identity = PoolIdentity::load_or_create(pool, &config.journal_path())?;
        Ok(PoolFiles { lock, identity })
    }

    /// The target name: the configuration's, or the pool's default.
    fn target_name(&self, config: &Config) -> String {
        config
            .target_name
            .clone()
            .unwrap_or_else(|| self.identity.target_name.clone())
    }
}

/// Starts the daemon, mapping LUNs through `exporter`; `iscsi` is the target server to stop
/// on shutdown, if any.
pub async fn start_with(
    config: Config,
    exporter: Arc<dyn Exporter>,
    iscsi: Option<Arc<iscsi::TargetServer>>,
) -> Result<RunningArray, ArrayError> {
    let pool = PoolFiles::open(&config)?;
    let opened = open_storage(&config, &pool, None).await?;
    start_prepared(config, pool, opened, exporter, iscsi, None).await
}

async fn start_prepared(
    config: Config,
    files: PoolFiles,
    opened: Opened,
    exporter: Arc<dyn Exporter>,
    iscsi: Option<Arc<iscsi::TargetServer>>,
    io: Option<Arc<IoStats>>,
) -> Result<RunningArray, ArrayError> {
    let pool = config.pool_dir.clone();
    let admin_token_path = config.admin_token_path();
    let admin = read_or_create_admin_token(&admin_token_path)?;
    let (certs, key, fingerprint) =
        crate::tls::load_or_create(&config.cert_path(), &config.key_path(), &config.tls_names)?;
    let tls = Arc::new(crate::tls::server_config(certs, key)?);
    let Opened {
        backend,
        office,
        paths,
        api_listener,
    } = opened;
    let policy = Policy {
        array_id: Some(files.identity.array_id),
        target_name: files.target_name(&config),
        relative_port: config.iscsi_relative_port,
        portal_group_tag: config.iscsi_portal_group_tag,
        target_port_group: Some(own_group(&config)),
        max_luns_per_set: config.max_luns_per_set,
        max_lun_bytes: config.max_lun_bytes,
        reaper_timeout: config.reaper_timeout(),
        transportable_retention: config.transportable_retention(),
        space: crate::state::SpacePolicy {
            dir: Some(pool.clone()),
            capped_by_file_system: config.backend.kind() != "memory",
            critical_percent: config.pool_critical_percent,
        },
    };
    let journal = config.journal_path();
    let shared = office.as_ref().map(|o| (o.store.clone(), o.epoch));
    let array = tokio::task::spawn_blocking(move || {
        let source = match shared {
            Some((store, epoch)) => StateSource::Shared { store, epoch },
            None => StateSource::File(&journal),
        };
        Array::open_from(
            source,
            backend,
            exporter,
            policy,
            token_hash(&admin),
            Box::new(crate::state::now_secs),
        )
    })
    .await
    .map_err(|e| ArrayError::io("opening the array", std::io::Error::other(e.to_string())))??;
    // The volumes are attached: this gateway's paths serve.
    if let Some(p) = &paths {
        p.serve();
    }
    let listener = match api_listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(config.api_listen)
            .await
            .map_err(|e| ArrayError::io(format!("binding {}", config.api_listen), e))?,
    };
    let api_addr = listener
        .local_addr()
        .map_err(|e| ArrayError::io("local address", e))?;
    if let Some(p) = &paths {
        // Standbys relay API connections here from now on.
        let advertise = p.api_advertiser();
        tokio::task::spawn_blocking(move || advertise(api_addr))
            .await
            .map_err(|e| {
                ArrayError::io("advertising the API", std::io::Error::other(e.to_string()))
            })??;
    }
    let (stop, stop_rx) = watch::channel(false);
    let (metrics_addr, metrics) = match config.metrics_listen {
        Some(addr) => {
            let exposition = Exposition::new(array.clone(), io, iscsi.clone())
                .with_thresholds(config.pool_warning_percent, config.pool_critical_percent);
            let (bound, task) = serve_metrics(addr, exposition, stop_rx.clone()).await?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let audit = Arc::new(
        crate::audit::AuditLog::open(&pool, crate::audit::DEFAULT_LIMIT).map_err(|e| {
            ArrayError::io(
                "opening the audit trail",
                std::io::Error::other(e.to_string()),
            )
        })?,
    );
    let ops = Arc::new(crate::ops::Ops {
        array: array.clone(),
        iscsi: iscsi.clone(),
        backend_kind: config.backend.kind().to_string(),
        pool_dir: pool.clone(),
        audit: audit.clone(),
        audit_failures: Default::default(),
        warn_percent: config.pool_warning_percent,
        critical_percent: config.pool_critical_percent,
    });
    let (drain_tx, drain) = watch::channel(false);
    let control = office.as_ref().map(|o| {
        Arc::new(crate::drain::GatewayControl {
            name: o.name.clone(),
            members: gateways::Membership::new(
                o.store.pool().clone(),
                &crate::office::state_name(files.identity.array_id.bits()),
            ),
            drain: drain_tx,
        })
    });
    let api = crate::http::router_with(array.clone(), control);
    let router = crate::ops::router(api, ops);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let reaper = tokio::spawn(reaper(
        array.clone(),
        Duration::from_secs(config.reaper_interval_secs),
        (config.pool_warning_percent, config.pool_critical_percent),
        audit,
        stop_rx.clone(),
    ));
    let task = tokio::spawn(async move {
        accept_loop(listener, acceptor, router, stop_rx).await;
        let _ = reaper.await;
        if let Some(m) = metrics {
            let _ = m.await;
        }
    });
    tracing::info!(%api_addr, %fingerprint, admin_token = %admin_token_path.display(), "array started");
    let iscsi_addrs = iscsi
        .as_ref()
        .map(|s| s.local_addrs().to_vec())
        .unwrap_or_default();
    Ok(RunningArray {
        _pool_lock: files.lock,
        api_addr,
        metrics_addr,
        iscsi_addrs,
        iscsi,
        office,
        paths,
        fingerprint,
        admin_token_path,
        array,
        stop,
        drain,
        task,
    })
}

/// The next connection on `listener`, or `None` once `stop` changes (or its sender is gone).
/// A failed accept (out of descriptors, say) is logged and retried after a pause.
pub(crate) async fn next_connection(
    listener: &tokio::net::TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    while let Some((tcp, peer)) = next_connection(&listener, &mut stop).await {
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        // The caller's address goes with each request: the log and the audit trail say
        // where a call came from.
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(crate::ops::ClientAddr(peer))),
        );
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s; closing them");
    }
}

/// Serves `GET /metrics` over plain HTTP on `addr` until `stop` changes.
async fn serve_metrics(
    addr: SocketAddr,
    exposition: Exposition,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ArrayError> {
    use axum::http::header::CONTENT_TYPE;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ArrayError::io(format!("binding the metrics endpoint {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ArrayError::io("local address", e))?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let exposition = exposition.clone();
            async move {
                // Reading the pool's accounting may touch the disk: off the reactor.
                match tokio::task::spawn_blocking(move || exposition.render()).await {
                    Ok(text) => ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
                    Err(e) => {
                        tracing::error!(error = %e, "rendering the metrics failed");
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    );
    let task = tokio::spawn(async move {
        let done = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(done)
            .await
        {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%bound, "metrics endpoint listening");
    Ok((bound, task))
}

/// Logs when the pool's use crosses a threshold, up or down; returns the new level.
fn watch_pool(array: &Array, (warn, crit): (u8, u8), last: PoolLevel) -> PoolLevel {
    let f = array.pool_figures();
    let level = f.level(warn, crit);
    if level != last {
        let (used, cap) = (f.used_bytes, f.capacity_bytes.unwrap_or(0));
        match level {
            PoolLevel::Critical => tracing::error!(
                used,
                capacity = cap,
                threshold_percent = crit,
                "the pool is critically full: delete snapshot LUNs or grow the pool"
            ),
            PoolLevel::Warning => tracing::warn!(
                used,
                capacity = cap,
                threshold_percent = warn,
                "the pool is filling up"
            ),
            PoolLevel::Ok => tracing::info!(
                used,
                capacity = cap,
                "the pool is below its warning threshold again"
            ),
        }
    }
    level
}

async fn reaper(
    array: Array,
    every: Duration,
    thresholds: (u8, u8),
    audit: Arc<crate::audit::AuditLog>,
    mut stop: watch::Receiver<bool>,
) {
    let mut level = PoolLevel::Ok;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let a = array.clone();
        if let Ok(l) = tokio::task::spawn_blocking(move || watch_pool(&a, thresholds, level)).await
        {
            level = l;
        }
        let (a, trail) = (array.clone(), audit.clone());
        let reaped = tokio::task::spawn_blocking(move || {
            let r = a.reap(false);
            for set in r.iter().flat_map(|r| &r.expired) {
                audit_expiry(&trail, *set);
            }
            r
        });
        match reaped.await {
            Ok(Ok(r)) if !r.sets.is_empty() => {
                tracing::info!(
                    sets = r.sets.len(),
                    luns = r.luns.len(),
                    "reaper removed sets"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reaper run failed"),
            Err(e) => tracing::warn!(error = %e, "reaper task failed"),
        }
    }
}

/// The audit record of a transportable set the reaper deleted under its retention: who is
/// `array`, from `reaper`, action `set expire`.
fn audit_expiry(audit: &crate::audit::AuditLog, set: vss::VssId) {
    let rec = api::AuditRecord {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        who: "array".into(),
        from: "reaper".into(),
        action: "set expire".into(),
        details: [
            (
                "set".to_string(),
                serde_json::Value::String(set.to_string()),
            ),
            (
                "reason".to_string(),
                serde_json::Value::String(
                    "transportable, not imported within transportable_retention_secs".into(),
                ),
            ),
        ]
        .into_iter()
        .collect(),
        status: 200,
    };
    if let Err(e) = audit.append(&rec) {
        tracing::error!(error = %e, %set, "recording the expiry in the audit trail failed");
    }
}

/// Runs the daemon until `shutdown` resolves. Prints the API address, the certificate
/// fingerprint and the admin token's path (never the token) on standard output, then tells
/// the service manager it is ready (when `NOTIFY_SOCKET` is set: [`crate::systemd`]). A
/// caller that stops on a signal installs its handler before calling this, so a signal that
/// comes right after the readiness notification is not lost.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ArrayError> {
    let mut shutdown = std::pin::pin!(shutdown);
    // A standby gateway waits inside `start` until it takes office; a stop meanwhile ends
    // the wait.
    let running = tokio::select! {
        r = start(config) => match r {
            Ok(r) => r,
            Err(ArrayError::Drained { gateway }) => {
                eprintln!("shadowlun array: gateway {gateway} drained while standing by; stopped");
                return Ok(());
            }
            Err(e) => return Err(e),
        },
        () = &mut shutdown => return Ok(()),
    };
    // Before the lines a reader waits for (the admin token's is the last): a reader may
    // stop reading once it has them.
    if let Some((name, epoch)) = running.office() {
        println!("shadowlun array: gateway {name} in office (epoch {epoch})");
    }
    println!("shadowlun array: API https://{}", running.api_addr);
    if let Some(m) = running.metrics_addr {
        println!("shadowlun array: metrics http://{m}/metrics");
    }
    for a in &running.iscsi_addrs {
        println!("shadowlun array: iSCSI portal {a}");
    }
    println!(
        "shadowlun array: certificate SHA-256 fingerprint {}",
        running.fingerprint
    );
    println!(
        "shadowlun array: admin token in {}",
        running.admin_token_path.display()
    );
    crate::systemd::ready(&running);
    let watchdog = crate::systemd::watchdog(running.array.clone(), running.stop.subscribe());
    let mut drained = false;
    let lost = tokio::select! {
        () = &mut shutdown => None,
        () = running.drained() => {
            drained = true;
            None
        }
        why = running.out_of_office() => Some(why),
    };
    crate::systemd::stopping();
    let gateway = running.office().map(|(n, _)| n.to_string());
    if let (Some(why), Some(gateway)) = (lost.clone(), gateway.clone()) {
        // Its paths stood down already, on the lease's thread (`stand_by`'s `on_lost`):
        // another gateway may take office once the cluster's count of the lease ends.
        tracing::error!(%why, "out of office: this gateway's paths are Standby; stopping");
        running.abandon().await;
        if let Some(w) = watchdog {
            w.abort();
        }
        return Err(ArrayError::OutOfOffice { gateway, why });
    }
    let result = running.shutdown().await;
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    if drained && result.is_ok() {
        // On stderr, as the other stopping lines: whoever read stdout may be gone.
        eprintln!(
            "shadowlun array: gateway {} drained: handed over and stopped",
            gateway.as_deref().unwrap_or("-")
        );
    }
    match (lost, gateway) {
        (Some(why), Some(gateway)) => Err(ArrayError::OutOfOffice { gateway, why }),
        _ => result,
    }
}
