//! The real lab: an array daemon on loopback (embedded engine, iSCSI target, HTTPS control API),
//! hosts that see its LUNs only through the iSCSI initiator, and shadowlun's provider talking to
//! it over HTTPS with each host's own token. The emulator's conformance catalogue, its scripts
//! and the demo all run against it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use api::{CreateHost, CreateLun, CreatedHost, LunRecord, MapLun, routes};
use provider::https::{Client, ClientConfig, HttpsArray};
use provider::{HardwareProvider, ShadowlunProvider};
use vss::VssId;
use vss_emulator::HostStorage;
use vss_emulator::conformance::{Lab, LabFactory};
use vss_emulator::mpio::iscsi_host_storage;

/// A running array and what is needed to talk to it.
pub struct RealLab {
    rt: tokio::runtime::Runtime,
    running: Mutex<Option<array::RunningArray>>,
    pub dir: PathBuf,
    keep_dir: bool,
    pub api_url: String,
    pub fingerprint: String,
    pub portal: SocketAddr,
    /// Every iSCSI portal the array listens on, `portal` first; a host is given all of them
    /// (MPIO when there are several).
    pub portals: Vec<SocketAddr>,
    pub target: String,
    admin: Client,
    /// initiator → (host name, host token)
    hosts: Mutex<BTreeMap<String, (String, String)>>,
    luns: Mutex<usize>,
    /// Where the LUNs live; one outside `dir` (a Ceph pool) is emptied on drop.
    backend: array::BackendConfig,
}

impl std::fmt::Debug for RealLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealLab")
            .field("api", &self.api_url)
            .field("portal", &self.portal)
            .finish()
    }
}

impl RealLab {
    /// Starts an array with its pool in `dir` (created; removed on drop unless `keep_dir`).
    pub fn start(dir: PathBuf, keep_dir: bool) -> anyhow::Result<Self> {
        Self::start_on(dir, keep_dir, array::BackendConfig::default())
    }

    /// [`RealLab::start`] with the LUNs in `backend`.
    pub fn start_on(
        dir: PathBuf,
        keep_dir: bool,
        backend: array::BackendConfig,
    ) -> anyhow::Result<Self> {
        Self::start_with_portals(dir, keep_dir, backend, 1)
    }

    /// [`RealLab::start_on`] with the array listening on `portals` iSCSI portals (at least
    /// one); hosts reach their LUNs through every one of them with MPIO.
    pub fn start_with_portals(
        dir: PathBuf,
        keep_dir: bool,
        backend: array::BackendConfig,
        portals: usize,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let config = array::Config {
            pool_dir: dir.clone(),
            api_listen: "127.0.0.1:0".parse()?,
            iscsi_portals: vec!["127.0.0.1:0".parse()?; portals.max(1)],
            backend: backend.clone(),
            ..Default::default()
        };
        let running = rt.block_on(array::start(config))?;
        let portal = *running
            .iscsi_addrs
            .first()
            .ok_or_else(|| anyhow::anyhow!("the array serves no iSCSI portal"))?;
        let api_url = format!("https://{}", running.api_addr);
        let token = std::fs::read_to_string(&running.admin_token_path)?;
        let admin = Client::new(ClientConfig::new(
            &api_url,
            token.trim(),
            &running.fingerprint,
        ))?;
        let target = admin.health()?.target;
        let portals = running.iscsi_addrs.clone();
        Ok(Self {
            fingerprint: running.fingerprint.clone(),
            rt,
            running: Mutex::new(Some(running)),
            dir,
            keep_dir,
            api_url,
            portal,
            portals,
            target,
            admin,
            hosts: Mutex::new(BTreeMap::new()),
            luns: Mutex::new(0),
            backend,
        })
    }

    /// A lab over an array daemon that runs elsewhere (another process): the hosts, LUNs and
    /// providers of this lab go through its control API at `api_url` and its portal. Nothing
    /// is stopped or removed on drop: the daemon and `dir` are the caller's.
    pub fn attach(
        dir: PathBuf,
        api_url: &str,
        fingerprint: &str,
        admin_token: &str,
        portal: SocketAddr,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let admin = Client::new(ClientConfig::new(api_url, admin_token, fingerprint))?;
        let target = admin.health()?.target;
        Ok(Self {
            rt,
            running: Mutex::new(None),
            dir,
            keep_dir: true,
            api_url: api_url.to_string(),
            fingerprint: fingerprint.to_string(),
            portal,
            portals: vec![portal],
            target,
            admin,
            hosts: Mutex::new(BTreeMap::new()),
            luns: Mutex::new(0),
            backend: array::BackendConfig::default(),
        })
    }

    /// The administrator's client (pinned certificate, admin token).
    pub fn admin(&self) -> &Client {
        &self.admin
    }

    /// The array's id as its RBD image names carry it (eight hex digits: `sl-<id>-lun-1`).
    pub fn array_id(&self) -> anyhow::Result<String> {
        let identity: array::pool::PoolIdentity =
            serde_json::from_slice(&std::fs::read(self.dir.join("array.json"))?)?;
        Ok(format!("{:08x}", identity.array_id.bits()))
    }

    /// Deletes every volume of this array from a backend outside the lab's directory, the
    /// newest first (snapshot LUNs before their sources).
    fn empty_remote_backend(&self) -> anyhow::Result<()> {
        if !matches!(self.backend, array::BackendConfig::Rbd(_)) {
            return Ok(());
        }
        let identity: array::pool::PoolIdentity =
            serde_json::from_slice(&std::fs::read(self.dir.join("array.json"))?)?;
        let backend = self.backend.open(&self.dir, identity.array_id.bits())?;
        let mut names: Vec<String> = backend.volumes()?.into_iter().map(|v| v.name).collect();
        let number = |n: &String| -> u64 {
            n.rsplit('-')
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
        };
        names.sort_by_key(|n| std::cmp::Reverse(number(n)));
        for n in names {
            backend.delete_volume(&n)?;
        }
        Ok(())
    }

    /// The host with this initiator, created on first use; returns (name, token).
    pub fn host(&self, initiator: &str) -> Result<(String, String), String> {
        let mut hosts = self.hosts.lock().expect("lab lock");
        if let Some(h) = hosts.get(initiator) {
            return Ok(h.clone());
        }
        let name = format!("host{}", hosts.len() + 1);
        // Lab hosts trust each other: a new host may import the others' transportable sets.
        let import_from = hosts.values().map(|(n, _)| n.clone()).collect();
        let created: CreatedHost = self
            .admin
            .post(
                routes::ADMIN_HOSTS,
                &CreateHost {
                    name: name.clone(),
                    initiators: vec![initiator.into()],
                    chap_secret: None,
                    import_from,
                },
            )
            .map_err(|e| e.to_string())?;
        let entry = (name, created.token);
        hosts.insert(initiator.to_string(), entry.clone());
        Ok(entry)
    }

    /// Creates a LUN and maps it to the host with `initiator`; returns its record.
    pub fn create_mapped_lun(
        &self,
        name: &str,
        bytes: u64,
        initiator: &str,
    ) -> Result<LunRecord, String> {
        let (host, _) = self.host(initiator)?;
        let lun: LunRecord = self
            .admin
            .post(
                routes::ADMIN_LUNS,
                &CreateLun {
                    name: name.into(),
                    size_bytes: bytes,
                },
            )
            .map_err(|e| e.to_string())?;
        let _: api::HostRecord = self
            .admin
            .post(
                &routes::fill(routes::ADMIN_MAP, &[("host", &host)]),
                &MapLun {
                    lun: lun.id.clone(),
                    lun_number: None,
                    shared: false,
                },
            )
            .map_err(|e| e.to_string())?;
        Ok(lun)
    }

    /// The provider as installed on the host with `initiator` (its own token, pinned cert).
    pub fn shadowlun_provider(
        &self,
        initiator: &str,
    ) -> Result<ShadowlunProvider<HttpsArray>, String> {
        let (_, token) = self.host(initiator)?;
        let array = HttpsArray::new(ClientConfig::new(&self.api_url, &token, &self.fingerprint))
            .map_err(|e| e.to_string())?;
        Ok(ShadowlunProvider::new(array))
    }

    /// Every LUN on the array.
    pub fn luns(&self) -> Result<Vec<LunRecord>, String> {
        self.admin
            .get(routes::ADMIN_LUNS)
            .map_err(|e| e.to_string())
    }

    /// Stops the daemon (iSCSI sessions ended, journal flushed).
    pub fn shutdown(&self) -> anyhow::Result<()> {
        if let Some(r) = self.running.lock().expect("lab lock").take() {
            self.rt.block_on(r.shutdown())?;
        }
        Ok(())
    }
}

impl Drop for RealLab {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("stopping the lab array: {e}");
        }
        if let Err(e) = self.empty_remote_backend() {
            tracing::warn!("deleting the lab array's volumes: {e:#}");
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Lab for RealLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        let n = {
            let mut l = self.luns.lock().expect("lab lock");
            *l += 1;
            *l
        };
        self.create_mapped_lun(&format!("lun{n}"), bytes, initiator)
            .map(|_| ())
    }

    fn lun_count(&self) -> Result<usize, String> {
        Ok(self.luns()?.len())
    }

    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String> {
        self.host(initiator)?;
        Ok(iscsi_host_storage(&self.portals, &self.target, initiator))
    }

    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        Ok(Arc::new(self.shadowlun_provider(initiator)?))
    }

    fn provider_id(&self) -> VssId {
        crate::shadowlun_lab::SHADOWLUN_PROVIDER_ID
    }

    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        let naa = hex::encode(naa);
        let lun = self
            .luns()?
            .into_iter()
            .find(|l| l.naa == naa)
            .ok_or_else(|| format!("no LUN with NAA {naa}"))?;
        for m in &lun.mapped_to {
            self.admin
                .delete(&routes::fill(
                    routes::ADMIN_UNMAP,
                    &[("host", &m.host), ("lun", &lun.id)],
                ))
                .map_err(|e| e.to_string())?;
        }
        let path = routes::fill(routes::ADMIN_LUN, &[("lun", &lun.id)]);
        crate::retry_while_held(|| self.admin.delete(&path).map_err(|e| e.to_string()))
    }
}

/// A [`RealLab`] shared between the emulator and a caller that keeps reporting on it.
pub struct SharedLab(pub Arc<RealLab>);

impl Lab for SharedLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        self.0.create_lun(bytes, initiator)
    }
    fn lun_count(&self) -> Result<usize, String> {
        self.0.lun_count()
    }
    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String> {
        self.0.storage(initiator)
    }
    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        self.0.provider(initiator)
    }
    fn provider_id(&self) -> VssId {
        self.0.provider_id()
    }
    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        self.0.delete_lun(naa)
    }
}

/// A fresh array per scenario, each in its own temporary directory.
#[derive(Debug, Default)]
pub struct RealLabFactory {
    counter: std::sync::atomic::AtomicUsize,
    /// Where each array keeps its LUNs (default: the embedded engine in its directory).
    backend: array::BackendConfig,
    /// iSCSI portals of each array (0 or 1: one, and hosts without MPIO).
    portals: usize,
}

impl RealLabFactory {
    /// Arrays that keep their LUNs in `backend`.
    pub fn on(backend: array::BackendConfig) -> Self {
        Self {
            backend,
            ..Self::default()
        }
    }

    /// Each array listens on `portals` iSCSI portals, and hosts reach them all with MPIO.
    pub fn with_portals(self, portals: usize) -> Self {
        Self { portals, ..self }
    }

    /// A new array in a temporary directory of its own (removed when the lab is dropped).
    pub fn fresh(&self) -> Result<RealLab, String> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shadowlun-lab-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        RealLab::start_with_portals(dir, false, self.backend.clone(), self.portals)
            .map_err(|e| format!("{e:#}"))
    }
}

impl LabFactory for RealLabFactory {
    fn name(&self) -> String {
        format!(
            "shadowlun provider over HTTPS + array daemon ({} backend) + hosts over iSCSI{}",
            self.backend.kind(),
            if self.portals > 1 {
                format!(" with MPIO over {} portals", self.portals)
            } else {
                String::new()
            }
        )
    }

    fn build(&self) -> Result<Box<dyn Lab>, String> {
        self.fresh().map(|l| Box::new(l) as Box<dyn Lab>)
    }
}
