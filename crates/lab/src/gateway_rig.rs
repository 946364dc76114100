//! Gateway processes of one array on a Ceph cluster, for the benchmark and the demo that
//! run several (`gateways_bench.rs`, `shadowlun demo --gateways 2`): each a `shadowlun array
//! serve` child with `[gateway]`, what it prints followed on threads of its own, its
//! configuration, the identity the gateways share, and the namespace cleared at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::rbd_bench::rbd_cli;

/// Longest wait for a gateway to start, stand by or take over.
pub const WAIT: Duration = Duration::from_secs(90);

/// What a gateway process printed: its standard output's lines, and whether its log said
/// it stands by.
enum Said {
    Out(String),
    StandingBy,
}

/// A `shadowlun array serve` process with `[gateway]`; killed when dropped.
pub struct Gateway {
    pub name: String,
    pub pool_dir: PathBuf,
    pub config: PathBuf,
    pub child: Child,
    said: Receiver<Said>,
}

/// Where a gateway in office listens.
#[derive(Debug, Clone)]
pub struct Serving {
    pub api: String,
    pub fingerprint: String,
    pub portal: String,
}

impl Gateway {
    /// Starts `shadowlun array serve` (this executable, which must be the `shadowlun` CLI)
    /// as gateway `name` on `pool_dir` with the configuration file `config`.
    pub fn start(name: &str, pool_dir: &Path, config: &Path) -> anyhow::Result<Gateway> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["array", "serve", "--api", "127.0.0.1:0"])
            .args(["--portal", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--pool")
            .arg(pool_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting shadowlun array serve")?;
        let (tx, said) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let t = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = t.send(Said::Out(line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("standing by") {
                    let _ = tx.send(Said::StandingBy);
                }
            }
        });
        Ok(Gateway {
            name: name.into(),
            pool_dir: pool_dir.into(),
            config: config.into(),
            child,
            said,
        })
    }

    /// Waits until it stands by: the portal of its Standby paths.
    pub fn standing_by(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        let (mut by, mut portal) = (false, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok(Said::StandingBy) => by = true,
                Ok(Said::Out(l)) if l.starts_with("shadowlun array: API") => {
                    bail!("gateway {} served while another was in office", self.name)
                }
                Ok(Said::Out(l)) => {
                    if let Some((_, p)) = l.split_once(" standby iSCSI portal ") {
                        portal = Some(p.trim().to_string());
                    }
                }
                Err(_) => bail!("gateway {} did not stand by within {WAIT:?}", self.name),
            }
            if let (true, Some(p)) = (by, &portal) {
                return Ok(p.clone());
            }
        }
    }

    /// Waits until it serves: where it listens.
    pub fn serving(&self) -> anyhow::Result<Serving> {
        let deadline = Instant::now() + WAIT;
        let (mut api, mut fingerprint, mut portal) = (None, None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok(Said::Out(l)) => {
                    let v = |p: &str| l.strip_prefix(p).map(|v| v.trim().to_string());
                    api = api.or(v("shadowlun array: API "));
                    fingerprint =
                        fingerprint.or(v("shadowlun array: certificate SHA-256 fingerprint "));
                    portal = portal.or(v("shadowlun array: iSCSI portal "));
                }
                Ok(Said::StandingBy) => {}
                Err(_) => bail!("gateway {} did not serve within {WAIT:?}", self.name),
            }
            if let (Some(a), Some(f), Some(p)) = (&api, &fingerprint, &portal) {
                return Ok(Serving {
                    api: a.clone(),
                    fingerprint: f.clone(),
                    portal: p.clone(),
                });
            }
        }
    }

    /// Sends signal `sig` (`-KILL`, `-TERM`) to the process.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} {}", self.child.id());
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control API of the gateway in office, as the administrator: the few verbs the
/// benchmark and the demo need, each failing with what the array answered.
pub struct Admin(array::client::Client);

impl Admin {
    pub fn new(s: &Serving, token: &str) -> anyhow::Result<Admin> {
        let addr = s.api.trim_start_matches("https://").parse()?;
        Ok(Admin(array::client::Client::new(
            addr,
            &s.fingerprint,
            Some(token),
        )?))
    }

    /// A new LUN of `bytes`.
    pub fn create_lun(&mut self, name: &str, bytes: u64) -> anyhow::Result<api::LunRecord> {
        let r = self.0.post(
            api::routes::ADMIN_LUNS,
            &api::CreateLun {
                name: name.into(),
                size_bytes: bytes,
            },
        )?;
        answer(&r, "creating a LUN")
    }

    /// A new host with one initiator.
    pub fn add_host(&mut self, name: &str, initiator: &str) -> anyhow::Result<()> {
        let r = self.0.post(
            api::routes::ADMIN_HOSTS,
            &api::CreateHost {
                name: name.into(),
                initiators: vec![initiator.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )?;
        answer::<serde_json::Value>(&r, "adding a host").map(|_| ())
    }

    /// Maps LUN `lun` to `host`: the LUN number it got.
    pub fn map(&mut self, host: &str, lun: &api::LunId) -> anyhow::Result<u64> {
        let r = self.0.post(
            &api::routes::fill(api::routes::ADMIN_MAP, &[("host", host)]),
            &api::MapLun {
                lun: lun.clone(),
                lun_number: None,
                shared: false,
            },
        )?;
        let h: api::HostRecord = answer(&r, "mapping a LUN")?;
        h.luns
            .iter()
            .find(|m| &m.lun == lun)
            .map(|m| m.lun_number)
            .context("the LUN is mapped")
    }

    /// Unmaps LUN `lun` from `host`.
    pub fn unmap(&mut self, host: &str, lun: &api::LunId) -> anyhow::Result<()> {
        let path = api::routes::fill(
            api::routes::ADMIN_UNMAP,
            &[("host", host), ("lun", lun.as_str())],
        );
        let r = self.0.request("DELETE", &path, None)?;
        if r.status != 204 {
            bail!("unmapping a LUN: HTTP {}", r.status);
        }
        Ok(())
    }

    /// The array's iSCSI target name.
    pub fn target(&mut self) -> anyhow::Result<String> {
        let r = self.0.get(api::routes::HEALTH)?;
        let h: api::Health = answer(&r, "reading the health")?;
        Ok(h.target)
    }
}

/// The body of a 2xx answer, or an error with the status and what the array said.
fn answer<T: serde::de::DeserializeOwned>(
    r: &array::client::Response,
    what: &str,
) -> anyhow::Result<T> {
    if !(200..300).contains(&r.status) {
        bail!(
            "{what}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    r.json().with_context(|| format!("{what}: the answer"))
}

/// Gateway `name`'s configuration file in `dir`: the array's LUNs in RADOS namespace `ns`
/// of `pool` on the cluster `conf` names; `port` is its relative target port and portal
/// group tag (each gateway of an array has its own).
pub fn config(
    dir: &Path,
    conf: &Path,
    pool: &str,
    ns: &str,
    name: &str,
    port: u16,
    lease_secs: u64,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "iscsi_relative_port = {port}\niscsi_portal_group_tag = {port}\n[backend]\nkind = \"rbd\"\n\
         pool = \"{pool}\"\nnamespace = \"{ns}\"\nceph_conf = \"{}\"\ntimeout_secs = 10\n\
         [gateway]\nname = \"{name}\"\nlease_secs = {lease_secs}\n",
        conf.display(),
    );
    std::fs::write(&path, text).expect("writing a gateway configuration");
    path
}

/// Copies the files that make an array's identity from one gateway's pool directory into
/// another's, before its first start (docs/array.md, "Several gateways: one identity").
pub fn share_identity(from: &Path, to: &Path) -> anyhow::Result<()> {
    for f in ["array.json", "admin.token", "tls/cert.pem", "tls/key.pem"] {
        let dst = to.join(f);
        std::fs::create_dir_all(dst.parent().expect("a parent"))?;
        std::fs::copy(from.join(f), &dst).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

/// Removes everything in RADOS namespace `ns` of `pool`: images, their snapshots, objects,
/// and the namespace.
pub fn cleanup(conf: &Path, pool: &str, ns: &str) {
    let spec = format!("{pool}/{ns}");
    let limit = Duration::from_secs(60);
    if let Ok(images) = rbd_cli(conf, &["ls", &spec], limit) {
        for i in images.lines() {
            let image = format!("{spec}/{i}");
            let _ = rbd_cli(conf, &["snap", "purge", "--no-progress", &image], limit);
            let _ = rbd_cli(conf, &["rm", "--no-progress", &image], limit);
        }
    }
    let rados = |args: &[&str]| {
        Command::new("timeout")
            .args(["--foreground", "60", "rados", "-p", pool, "-N", ns])
            .args(args)
            .env("CEPH_CONF", conf)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    };
    if let Some(objects) = rados(&["ls"]) {
        for obj in objects.lines() {
            let _ = rados(&["rm", obj]);
        }
    }
    let _ = rbd_cli(conf, &["namespace", "remove", &spec], limit);
}
