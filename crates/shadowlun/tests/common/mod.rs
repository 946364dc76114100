//! The daemon as a child process on 127.0.0.1, and the CLI run against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub mod gateways;

pub const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");

pub struct Daemon {
    pub child: Child,
    pub api: String,
    pub fingerprint: String,
    pub token_file: PathBuf,
    /// The iSCSI portal the daemon listens on.
    pub portal: String,
    pub pool: PathBuf,
    /// The Prometheus endpoint's address, when the configuration opens one.
    pub metrics: Option<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `shadowlun array serve` on `pool` and waits until it says where it listens.
pub fn start(pool: &Path) -> Daemon {
    start_with(pool, &[])
}

/// [`start`] with more arguments for `array serve` (`--config FILE`).
pub fn start_with(pool: &Path, extra: &[&str]) -> Daemon {
    start_at(pool, "127.0.0.1:0", extra)
}

/// [`start_with`] with the control API on `api` (`127.0.0.1:PORT`).
pub fn start_at(pool: &Path, api: &str, extra: &[&str]) -> Daemon {
    ready(spawn_at(pool, api, extra), pool)
}

/// `shadowlun array serve` on `pool` started, not yet waited for: [`ready`] does.
pub fn spawn_at(pool: &Path, api: &str, extra: &[&str]) -> Child {
    serve_command(&[], pool, api, "127.0.0.1:0", extra)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting shadowlun array serve")
}

/// [`spawn_at`] run through `wrapper` (`ip netns exec NS`, say: the program and its first
/// arguments), serving iSCSI on `portal`, its log (standard error) written to `log`.
pub fn spawn_wrapped(
    wrapper: &[&str],
    pool: &Path,
    api: &str,
    portal: &str,
    extra: &[&str],
    log: &Path,
) -> Child {
    let log = std::fs::File::create(log).expect("the daemon's log file");
    serve_command(wrapper, pool, api, portal, extra)
        .stderr(log)
        .spawn()
        .expect("starting shadowlun array serve")
}

fn serve_command(
    wrapper: &[&str],
    pool: &Path,
    api: &str,
    portal: &str,
    extra: &[&str],
) -> Command {
    let mut c = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.args(["array", "serve", "--api", api, "--portal", portal, "--pool"])
        .arg(pool)
        .args(extra)
        .stdout(Stdio::piped());
    c
}

/// Waits until a daemon [`spawn_at`] started says where it listens.
pub fn ready(child: Child, pool: &Path) -> Daemon {
    try_ready(child, pool).expect("the daemon printed its API address")
}

/// [`ready`], or `None` when the daemon exits before it says where it listens.
pub fn try_ready(child: Child, pool: &Path) -> Option<Daemon> {
    try_ready_seeing(child, pool, |_| {})
}

/// [`try_ready`], showing `seen` every line the daemon prints before it is ready.
pub fn try_ready_seeing(
    mut child: Child,
    pool: &Path,
    mut seen: impl FnMut(&str),
) -> Option<Daemon> {
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut fingerprint, mut token_file, mut portal) = (None, None, None, None);
    let mut metrics = None;
    for line in out.lines() {
        let line = line.unwrap();
        seen(&line);
        if let Some(v) = line.strip_prefix("shadowlun array: API ") {
            api = Some(v.trim().to_string());
        } else if let Some(v) =
            line.strip_prefix("shadowlun array: certificate SHA-256 fingerprint ")
        {
            fingerprint = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: admin token in ") {
            token_file = Some(PathBuf::from(v.trim()));
        } else if let Some(v) = line.strip_prefix("shadowlun array: metrics http://") {
            metrics = v.trim().strip_suffix("/metrics").map(str::to_string);
        } else if let Some(v) = line.strip_prefix("shadowlun array: iSCSI portal ") {
            portal = Some(v.trim().to_string());
        }
        if api.is_some() && fingerprint.is_some() && token_file.is_some() {
            break;
        }
    }
    let Some(api) = api else {
        let _ = child.wait();
        return None;
    };
    Some(Daemon {
        child,
        api,
        fingerprint: fingerprint.expect("the daemon printed its fingerprint"),
        token_file: token_file.expect("the daemon printed the admin token path"),
        portal: portal.unwrap_or_default(),
        pool: pool.to_path_buf(),
        metrics,
    })
}

impl Daemon {
    /// `GET /metrics` from the daemon's Prometheus endpoint: the exposition text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.metrics.as_ref().expect("metrics_listen is configured");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    /// The value of the sample named exactly `name` (labels included) in `text`.
    pub fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The CLI against this daemon, as a command to add to.
    pub fn command(&self, args: &[&str], json: bool) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .args([
                "--array",
                &self.api,
                "--fingerprint",
                &self.fingerprint,
                "--token-file",
            ])
            .arg(&self.token_file)
            .args(json.then_some("--json"));
        c
    }

    pub fn run(&self, args: &[&str], json: bool) -> Output {
        self.command(args, json).output().unwrap()
    }

    /// Runs the CLI with `--json`, expecting success; its standard output as JSON.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args, true);
        assert!(
            out.status.success(),
            "shadowlun {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs the CLI for its table, expecting success.
    #[track_caller]
    pub fn text(&self, args: &[&str]) -> String {
        let out = self.run(args, false);
        assert!(
            out.status.success(),
            "shadowlun {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI expecting it to fail; its exit code and what it said on stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args, false);
        assert!(!out.status.success(), "shadowlun {args:?} succeeded");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

/// A fresh directory for a pool, removed when dropped.
pub struct Pool(pub PathBuf);

impl Pool {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shadowlun-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Pool(dir)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files that make a pool's array identity, copied into another pool before its first
/// start (docs/array.md, "Several gateways").
pub fn share_identity(from: &Path, to: &Path) {
    for f in ["array.json", "admin.token", "tls/cert.pem", "tls/key.pem"] {
        let dst = to.join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(f), &dst).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
}
