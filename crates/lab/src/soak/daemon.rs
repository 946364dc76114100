//! The array daemon as a child process of the soak: `shadowlun array serve` on fixed loopback
//! ports (so hosts and clients find it again after a restart), killed with SIGKILL or
//! stopped with SIGTERM, and its file descriptors, threads and resident memory read from
//! `/proc`.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

/// How to start the daemon, and where.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The `shadowlun` executable; the daemon is `PROGRAM array serve --config FILE`.
    pub program: PathBuf,
    /// The soak's directory: the pool is `pool/`, the configuration `array.toml`, the
    /// daemon's standard output of its last start `daemon.out`, its log `daemon.log`.
    pub dir: PathBuf,
    pub api: SocketAddr,
    pub portal: SocketAddr,
}

/// What a started daemon said about itself.
#[derive(Debug, Clone)]
pub struct Ready {
    pub fingerprint: String,
    pub admin_token_path: PathBuf,
    /// From spawn to "listening".
    pub start_time: Duration,
}

/// A running daemon, killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub ready: Ready,
}

/// A process's resources as `/proc` tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Resources {
    pub fds: usize,
    /// Of which sockets (iSCSI sessions, API connections, listeners).
    pub sockets: usize,
    pub threads: usize,
    pub rss_bytes: u64,
}

/// Two free ports on 127.0.0.1 (bound, read, released).
pub fn free_loopback_addrs() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

impl DaemonSpec {
    pub fn pool(&self) -> PathBuf {
        self.dir.join("pool")
    }

    /// Writes the daemon's configuration: the pool, the two addresses, and a reaper that
    /// runs every 5 s and removes sets left prepared for 30 s, so it runs in the mix.
    pub fn write_config(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("array.toml");
        let text = format!(
            "pool_dir = {:?}\napi_listen = \"{}\"\niscsi_portals = [\"{}\"]\n\
             reaper_timeout_secs = 30\nreaper_interval_secs = 5\n\n[backend]\nkind = \"engine\"\n",
            self.pool().display().to_string(),
            self.api,
            self.portal
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the daemon and waits (at most 30 s) until it prints its API address.
    pub fn start(&self) -> anyhow::Result<Daemon> {
        let config = self.dir.join("array.toml");
        let out_path = self.dir.join("daemon.out");
        let out = std::fs::File::create(&out_path)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let t0 = Instant::now();
        let child = Command::new(&self.program)
            .args(["array", "serve", "--config"])
            .arg(&config)
            .env("SHADOWLUN_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} array serve", self.program.display()))?;
        let mut daemon = Daemon {
            child,
            ready: Ready {
                fingerprint: String::new(),
                admin_token_path: PathBuf::new(),
                start_time: Duration::ZERO,
            },
        };
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "the daemon exited at start ({status}); its log: {}",
                    self.dir.join("daemon.log").display()
                );
            }
            if let Some(r) = parse_ready(&out_path)? {
                daemon.ready = Ready {
                    start_time: t0.elapsed(),
                    ..r
                };
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not say it was listening within 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The fingerprint and token path from the daemon's standard output, once it printed its
/// API address (the last of its start-up lines).
fn parse_ready(path: &Path) -> anyhow::Result<Option<Ready>> {
    let mut text = String::new();
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    let (mut api, mut fingerprint, mut token) = (false, None, None);
    for line in text.lines() {
        if line.starts_with("shadowlun array: API ") {
            api = true;
        } else if let Some(v) =
            line.strip_prefix("shadowlun array: certificate SHA-256 fingerprint ")
        {
            fingerprint = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: admin token in ") {
            token = Some(PathBuf::from(v.trim()));
        }
    }
    Ok(match (api, fingerprint, token) {
        (true, Some(fingerprint), Some(admin_token_path)) => Some(Ready {
            fingerprint,
            admin_token_path,
            start_time: Duration::ZERO,
        }),
        _ => None,
    })
}

fn pid_of(raw: u32) -> anyhow::Result<Pid> {
    Pid::from_raw(raw as i32).context("the daemon has no valid pid")
}

/// SIGKILL to `pid`: no chance to flush or finish anything.
pub fn kill9(pid: u32) -> anyhow::Result<()> {
    kill_process(pid_of(pid)?, Signal::KILL).context("SIGKILL")
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reaps a daemon that was killed (waits for it).
    pub fn reap(mut self) -> anyhow::Result<()> {
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits up to 20 s for a clean exit (status 0).
    pub fn stop(mut self) -> anyhow::Result<()> {
        kill_process(pid_of(self.child.id())?, Signal::TERM).context("SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon stopped with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its open file descriptors, threads and resident memory now.
    pub fn resources(&self) -> anyhow::Result<Resources> {
        resources(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `/proc/PID/fd` and `/proc/PID/status` (`Threads`, `VmRSS`).
pub fn resources(pid: u32) -> anyhow::Result<Resources> {
    let (mut fds, mut sockets) = (0, 0);
    for e in
        std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("/proc/{pid}/fd"))?
    {
        fds += 1;
        // An fd closed between the listing and the read is simply not a socket.
        if e.and_then(|e| std::fs::read_link(e.path()))
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(Resources {
        fds,
        sockets,
        threads: field("Threads:").context("no Threads in /proc status")? as usize,
        rss_bytes: field("VmRSS:").context("no VmRSS in /proc status")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_of_this_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = resources(std::process::id()).unwrap();
        assert!(r.fds >= 4 && r.threads >= 1 && r.rss_bytes > 0, "{r:?}");
        assert!(r.sockets >= 1 && r.sockets < r.fds, "{r:?}");
        drop(listener);
    }

    #[test]
    fn ready_only_after_the_api_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        std::fs::write(
            &p,
            "shadowlun array: certificate SHA-256 fingerprint AB:CD\n\
             shadowlun array: admin token in /x/admin.token\n",
        )
        .unwrap();
        assert!(parse_ready(&p).unwrap().is_none());
        std::fs::write(
            &p,
            "shadowlun array: certificate SHA-256 fingerprint AB:CD\n\
             shadowlun array: admin token in /x/admin.token\n\
             shadowlun array: API https://127.0.0.1:1\n",
        )
        .unwrap();
        let r = parse_ready(&p).unwrap().unwrap();
        assert_eq!(r.fingerprint, "AB:CD");
        assert_eq!(r.admin_token_path, PathBuf::from("/x/admin.token"));
    }
}
