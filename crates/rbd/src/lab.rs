//! The project's throwaway cluster (`scripts/ceph-lab`) for tests: the one `CEPH_CONF`
//! names when it is set (a cluster the caller runs, as the CI stage does), or a new one in a
//! temporary directory, stopped when the [`Lab`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ClusterConfig;

/// A cluster to test against.
#[derive(Debug)]
pub struct Lab {
    conf: PathBuf,
    /// The directory of a lab this process started (stopped and removed on drop).
    owned: Option<PathBuf>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph-lab")
}

/// Whether `SHADOWLUN_SKIP_CEPH` asks the tests to leave Ceph out (said on stderr); with
/// `SHADOWLUN_REQUIRE_CEPH` also set, the requirement wins.
fn skipped() -> bool {
    let skip = std::env::var_os("SHADOWLUN_SKIP_CEPH").is_some_and(|v| !v.is_empty())
        && std::env::var_os("SHADOWLUN_REQUIRE_CEPH").is_none();
    if skip {
        eprintln!("skipped: SHADOWLUN_SKIP_CEPH is set");
    }
    skip
}

fn installed(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

impl Lab {
    /// The cluster `CEPH_CONF` names, or a new lab; `None` (with the reason on stderr) when
    /// Ceph is not installed and `SHADOWLUN_REQUIRE_CEPH` is not set, or when
    /// `SHADOWLUN_SKIP_CEPH` is set (the unit-test stage sets it: the Ceph stage runs these
    /// tests on its own cluster). Panics when a lab cannot start on a machine that has Ceph.
    pub fn get() -> Option<Lab> {
        if skipped() {
            return None;
        }
        if let Some(conf) = std::env::var_os("CEPH_CONF") {
            return Some(Lab {
                conf: conf.into(),
                owned: None,
            });
        }
        Self::own()
    }

    /// A new lab of this process's own, whatever `CEPH_CONF` names: for a test that changes
    /// the whole cluster (fills it, say), which a shared cluster's other users must not see.
    /// `None` as for [`Lab::get`].
    pub fn own() -> Option<Lab> {
        Self::own_at("127.0.0.1")
    }

    /// [`Lab::own`] with the cluster's daemons on `addr`, one of this machine's addresses
    /// (a test that cuts a client off the cluster puts it on a link of its own).
    pub fn own_at(addr: &str) -> Option<Lab> {
        if skipped() {
            return None;
        }
        let missing: Vec<&str> = ["ceph-mon", "ceph-osd", "ceph", "rbd"]
            .into_iter()
            .filter(|t| !installed(t))
            .collect();
        if !missing.is_empty() || crate::ffi::api().is_err() {
            assert!(
                std::env::var_os("SHADOWLUN_REQUIRE_CEPH").is_none(),
                "SHADOWLUN_REQUIRE_CEPH is set but Ceph is not installed (missing: {missing:?})"
            );
            eprintln!(
                "skipped: Ceph is not installed (missing {missing:?}; `scripts/setup --ceph` installs it)"
            );
            return None;
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shadowlun-ceph-lab-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .env("CEPH_LAB_ADDR", addr)
            .output()
            .expect("running scripts/ceph-lab");
        let lab = Lab {
            conf: dir.join("ceph.conf"),
            owned: Some(dir),
        };
        assert!(
            out.status.success(),
            "scripts/ceph-lab start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(lab)
    }

    /// The cluster's configuration file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// How to connect to it (client `admin`, calls bounded at 20 s).
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            conf_path: Some(self.conf.clone()),
            timeout: std::time::Duration::from_secs(20),
            ..ClusterConfig::default()
        }
    }

    /// Runs the `rbd` CLI against the cluster (the outside witness): its stdout, or a panic
    /// with its stderr.
    pub fn rbd(&self, args: &[&str]) -> String {
        let out = Command::new("rbd")
            .env("CEPH_CONF", &self.conf)
            .args(args)
            .output()
            .expect("running rbd");
        assert!(
            out.status.success(),
            "rbd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(dir) = &self.owned {
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(dir)
                .output();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
