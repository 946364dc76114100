//! What the lab-cluster tests of this crate share: a connection of a gateway's own, and
//! gateway processes (the test binary started again, running one of its ignored tests).
#![allow(dead_code)] // each test binary uses its own part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use rbd::lab::Lab;
use rbd::{Cluster, ClusterConfig, Pool};

/// The variable that tells a gateway process its role.
pub const ROLE: &str = "SHADOWLUN_GATEWAY_ROLE";

/// This run's RADOS namespace: the parent's, which it passes to the gateway processes.
pub fn namespace() -> String {
    std::env::var("SHADOWLUN_GATEWAY_NS").unwrap_or_else(|_| format!("gw{}", std::process::id()))
}

/// A connection of its own (a gateway's), in this run's RADOS namespace.
pub fn connect(conf: &Path) -> Arc<Pool> {
    let cluster = Cluster::connect(&ClusterConfig {
        conf_path: Some(conf.to_path_buf()),
        timeout: Duration::from_secs(10),
        // Several clients in one process or on one host: no admin socket each.
        settings: vec![("admin_socket".into(), String::new())],
        ..ClusterConfig::default()
    })
    .unwrap();
    cluster.pool("rbd", &namespace()).unwrap()
}

/// A gateway process: this test binary running `gateway_process`.
pub struct Gateway {
    pub child: Child,
    lines: Receiver<String>,
}

impl Gateway {
    /// Starts this test binary running its ignored test `entry` as a gateway process.
    pub fn start(entry: &str, lab: &Lab, role: &str, array: &str, gateway: &str) -> Gateway {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([entry, "--exact", "--ignored", "--nocapture"])
            .env(ROLE, role)
            .env("CEPH_CONF", lab.conf())
            .env("SHADOWLUN_GATEWAY_ARRAY", array)
            .env("SHADOWLUN_GATEWAY_ID", gateway)
            .env("SHADOWLUN_GATEWAY_NS", namespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(l) = line.strip_prefix("gw: ") {
                    let _ = tx.send(l.to_string());
                }
            }
        });
        Gateway { child, lines }
    }

    /// The next line the gateway prints, which must start with `prefix`: the rest of it.
    #[track_caller]
    pub fn expect(&self, prefix: &str, within: Duration) -> String {
        let line = self
            .lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no {prefix:?} from the gateway within {within:?}: {e}"));
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?} from the gateway, got {line:?}"))
            .trim()
            .to_string()
    }

    /// The next line the gateway printed, if one is waiting.
    pub fn try_line(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    pub fn signal(&self, sig: &str) {
        signal(&self.child.id().to_string(), sig);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `ceph osd blocklist ls` lists.
pub fn blocklist(lab: &Lab) -> String {
    let out = Command::new("ceph")
        .env("CEPH_CONF", lab.conf())
        .args(["osd", "blocklist", "ls"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ceph osd blocklist ls failed");
    // The listing goes to stdout or stderr depending on the release.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `ip:port/nonce` of each of a client's addresses (`[v2:127.0.0.1:0/123,...]`).
pub fn addr_cores(addrs: &str) -> Vec<String> {
    addrs
        .trim_matches(['[', ']'])
        .split(',')
        .map(|a| {
            a.split_once(':')
                .filter(|(t, _)| !t.contains('.'))
                .map_or(a, |(_, r)| r)
        })
        .map(str::to_string)
        .collect()
}

pub fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}
