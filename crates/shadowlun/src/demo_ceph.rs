//! The Ceph side of `shadowlun demo --backend rbd`: the cluster the demo's array keeps its
//! LUNs in, and the `rbd` CLI as the witness that looks at the pool from outside the array.
//!
//! The cluster is the one `CEPH_CONF` (or `--ceph-conf`) names, or a throwaway single-node
//! cluster started for the demo with `scripts/ceph-lab` (embedded in the binary, so the demo
//! finds it wherever it runs from) and stopped when the demo ends: on success, on failure
//! (the guard's drop) and on Ctrl-C or SIGTERM (a watcher thread stops it, then exits 130).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// `scripts/ceph-lab`, as this binary was built with it.
const CEPH_LAB: &str = include_str!("../../../scripts/ceph-lab");

/// What a throwaway cluster needs on `PATH` (the Debian packages `scripts/setup --ceph`
/// installs: ceph-mon, ceph-osd, ceph-common, uuid-runtime).
const CLUSTER_TOOLS: &[&str] = &[
    "ceph-mon",
    "ceph-osd",
    "ceph",
    "rbd",
    "monmaptool",
    "ceph-authtool",
    "uuidgen",
    "python3",
];

fn installed(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn missing(tools: &[&'static str]) -> Vec<&'static str> {
    tools.iter().copied().filter(|t| !installed(t)).collect()
}

/// A throwaway cluster's directory and the script that runs it.
#[derive(Debug, Clone)]
struct Throwaway {
    dir: PathBuf,
    script: PathBuf,
}

/// What an interrupted demo removes on its way out: the cluster, and the array's directory.
#[derive(Debug)]
struct Interrupted {
    lab: Throwaway,
    array_dir: PathBuf,
}

impl Throwaway {
    /// Stops the two daemons `ceph-lab` started in the directory, then removes it.
    fn stop(&self) {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        if let Ok(o) = &out {
            if !o.status.success() {
                eprintln!(
                    "stopping the Ceph cluster in {}: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.script);
    }
}

/// The cluster the demo runs on; a throwaway one is stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    pub conf: PathBuf,
    pub pool: String,
    throwaway: Option<Throwaway>,
    /// An image made with the `rbd` CLI, outside the array, that must outlive the demo;
    /// removed on drop.
    witness: Option<String>,
}

impl Cluster {
    /// The cluster `conf` names (pool `pool` must exist), or, without one, a throwaway
    /// cluster with pool `pool` in `dir` (created; removed when the cluster is dropped).
    /// A demo interrupted while a throwaway cluster runs also removes `array_dir`.
    pub fn open(
        conf: Option<PathBuf>,
        pool: &str,
        dir: &Path,
        array_dir: &Path,
    ) -> anyhow::Result<Self> {
        if let Some(conf) = conf {
            let lacking = missing(&["rbd"]);
            if !lacking.is_empty() {
                bail!(
                    "the demo checks the pool with the rbd CLI, which is not installed; \
                     run `scripts/setup --ceph` (or install ceph-common) first"
                );
            }
            let c = Cluster {
                conf,
                pool: pool.to_string(),
                throwaway: None,
                witness: None,
            };
            c.images().with_context(|| {
                format!(
                    "listing pool {pool} of the cluster {} (is CEPH_CONF right, and does the \
                     pool exist?)",
                    c.conf.display()
                )
            })?;
            return Ok(c);
        }
        let lacking = missing(CLUSTER_TOOLS);
        if !lacking.is_empty() {
            bail!(
                "Ceph is not installed (missing {}): run `scripts/setup --ceph` first, or set \
                 CEPH_CONF to a cluster's configuration file",
                lacking.join(", ")
            );
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let script = dir.with_extension("ceph-lab");
        std::fs::write(&script, CEPH_LAB)
            .with_context(|| format!("writing {}", script.display()))?;
        let throwaway = Throwaway {
            dir: dir.to_path_buf(),
            script,
        };
        // From here on, an interrupted demo stops the cluster on its way out.
        stop_on_signal(Interrupted {
            lab: throwaway.clone(),
            array_dir: array_dir.to_path_buf(),
        });
        let c = Cluster {
            conf: dir.join("ceph.conf"),
            pool: pool.to_string(),
            throwaway: Some(throwaway.clone()),
            witness: None,
        };
        let out = Command::new("bash")
            .arg(&throwaway.script)
            .arg("start")
            .arg(dir)
            .env("CEPH_LAB_POOL", pool)
            .output()
            .context("running scripts/ceph-lab")?;
        if !out.status.success() {
            bail!(
                "starting a throwaway Ceph cluster failed:\n{}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(c)
    }

    /// True when the demo started this cluster (and stops it).
    pub fn is_throwaway(&self) -> bool {
        self.throwaway.is_some()
    }

    /// Runs the `rbd` CLI against the cluster: its stdout, or its stderr as the error.
    pub fn rbd(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("rbd")
            .env("CEPH_CONF", &self.conf)
            .args(args)
            .output()
            .context("running rbd")?;
        if !out.status.success() {
            bail!(
                "rbd {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The images in the pool (its default namespace), as `rbd ls` lists them.
    pub fn images(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .rbd(&["ls", &self.pool])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Makes `name` with the `rbd` CLI, as someone other than the array would; it is
    /// removed when the cluster is dropped.
    pub fn make_witness(&mut self, name: &str) -> anyhow::Result<()> {
        self.rbd(&["create", "--size", "4M", &format!("{}/{name}", self.pool)])?;
        self.witness = Some(name.to_string());
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(w) = self.witness.take() {
            if self.throwaway.is_none() {
                if let Err(e) = self.rbd(&["rm", "--no-progress", &format!("{}/{w}", self.pool)]) {
                    eprintln!("removing the witness image {w}: {e:#}");
                }
            }
        }
        if let Some(t) = self.throwaway.take() {
            t.stop();
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: stop the throwaway cluster, remove the array's directory,
/// then exit with 130.
fn stop_on_signal(what: Interrupted) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            eprintln!(
                "\ninterrupted: stopping the Ceph cluster in {}",
                what.lab.dir.display()
            );
            what.lab.stop();
            let _ = std::fs::remove_dir_all(&what.array_dir);
            std::process::exit(130);
        });
    });
}
