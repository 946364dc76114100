//! Gateways of one array on a lab Ceph cluster (`scripts/ceph-lab`), each a
//! `shadowlun array serve` process with `[gateway]`: their configuration, starting one and
//! hearing when it stands by and when it serves, and the namespace's images removed after.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;

use rbd::lab::Lab;

use super::{Daemon, Pool, share_identity, spawn_at, try_ready_seeing};

/// The gateways' lease: short, so that a takeover in a test is quick.
pub const LEASE_SECS: u64 = 3;

/// A gateway's configuration; `port` is its relative target port (its target port group)
/// and its portal group tag.
pub fn config(
    dir: &Path,
    lab: &Lab,
    namespace: &str,
    gateway: &str,
    port: u16,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{gateway}.toml"));
    std::fs::write(
        &path,
        format!(
            "iscsi_relative_port = {port}\niscsi_portal_group_tag = {port}\n\
             [backend]\nkind = \"rbd\"\npool = \"rbd\"\nnamespace = \"{namespace}\"\n\
             ceph_conf = \"{}\"\ntimeout_secs = 10\n\
             [gateway]\nname = \"{gateway}\"\nlease_secs = {LEASE_SECS}\n",
            lab.conf().display()
        ),
    )
    .unwrap();
    path
}

/// A gateway started: its process id, the portal it serves Standby paths on while it
/// stands by, and the daemon once it is in office (waited for on a thread of its own).
pub struct Starting {
    pub pid: u32,
    pub standby: mpsc::Receiver<String>,
    /// The control API it relays to the gateway in office while it stands by.
    pub standby_api: mpsc::Receiver<String>,
    pub ready: mpsc::Receiver<Daemon>,
}

pub fn start_gateway(pool: &Path, config: &Path) -> Starting {
    let child = spawn_at(pool, "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
    watch_gateway(child, pool)
}

/// A second gateway of the array whose pool directory is `from`: the identity copied into
/// `pool`, started on `config`, waited for until it stands by; with the portal it serves
/// Standby paths on.
pub fn start_standby(from: &Path, pool: &Path, config: &Path) -> (Starting, String) {
    share_identity(from, pool);
    let s = start_gateway(pool, config);
    let portal = s
        .standby
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the standby gateway listens");
    (s, portal)
}

/// Follows a gateway started some other way ([`super::spawn_wrapped`]).
pub fn watch_gateway(child: Child, pool: &Path) -> Starting {
    let (tx, ready) = mpsc::channel();
    let (standby_tx, standby) = mpsc::channel();
    let (api_tx, standby_api) = mpsc::channel();
    let pid = child.id();
    let pool = pool.to_path_buf();
    std::thread::spawn(move || {
        let seen = |line: &str| {
            if let Some((_, portal)) = line.split_once(" standby iSCSI portal ") {
                let _ = standby_tx.send(portal.trim().to_string());
            }
            if let Some((_, api)) = line.split_once(" standby API ") {
                let api = api.split_whitespace().next().unwrap_or_default();
                let _ = api_tx.send(api.to_string());
            }
        };
        if let Some(d) = try_ready_seeing(child, &pool, seen) {
            let _ = tx.send(d);
        }
    });
    Starting {
        pid,
        standby,
        standby_api,
        ready,
    }
}

pub fn sigterm(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// The images of namespace `ns`, removed when dropped (the lab cluster is shared).
pub struct Images<'a>(pub &'a Lab, pub String);

impl Drop for Images<'_> {
    fn drop(&mut self) {
        let spec = format!("rbd/{}", self.1);
        let out = Command::new("rbd")
            .env("CEPH_CONF", self.0.conf())
            .args(["ls", &spec])
            .output();
        let Ok(out) = out else { return };
        for i in String::from_utf8_lossy(&out.stdout).lines() {
            let image = format!("{spec}/{i}");
            for args in [
                vec!["snap", "purge", "--no-progress", &image],
                vec!["rm", "--no-progress", &image],
            ] {
                let _ = Command::new("rbd")
                    .env("CEPH_CONF", self.0.conf())
                    .args(&args)
                    .output();
            }
        }
    }
}

/// Where a test's two gateways of one array live: a RADOS namespace of their own in the
/// lab's pool `rbd` (its images removed when dropped), each gateway's pool directory
/// (`gw-a`, relative port 1; `gw-b`, relative port 2) and configuration file.
pub struct TwoGateways<'a> {
    pub ns: String,
    pub pools: [Pool; 2],
    pub configs: [std::path::PathBuf; 2],
    /// Where the configurations are; a test may keep logs there.
    pub dir: Pool,
    _images: Images<'a>,
}

/// [`TwoGateways`] named with `tag` (short: it names the namespace and directories).
pub fn two_gateways<'a>(lab: &'a Lab, tag: &str) -> TwoGateways<'a> {
    let ns = format!("{tag}{}", std::process::id());
    lab.rbd(&["namespace", "create", &format!("rbd/{ns}")]);
    let images = Images(lab, ns.clone());
    let pools = [
        Pool::new(&format!("{tag}-a")),
        Pool::new(&format!("{tag}-b")),
    ];
    let dir = Pool::new(&format!("{tag}-conf"));
    let configs = [
        config(&dir.0, lab, &ns, "gw-a", 1),
        config(&dir.0, lab, &ns, "gw-b", 2),
    ];
    TwoGateways {
        ns,
        pools,
        configs,
        dir,
        _images: images,
    }
}
