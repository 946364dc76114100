//! `shadowlun array serve` under a service manager (systemd's `Type=notify`): the real
//! daemon with `NOTIFY_SOCKET` pointing at a datagram socket this test binds. `READY=1`
//! comes only once the iSCSI portal, the control API and the metrics endpoint answer,
//! `STOPPING=1` on SIGTERM, watchdog pings when asked for, and no `READY=1` from a start
//! that fails.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Pool};

/// The service manager's end: a bound datagram socket.
struct Manager {
    sock: UnixDatagram,
}

impl Manager {
    fn bind(dir: &Path) -> (Manager, std::path::PathBuf) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        (Manager { sock }, path)
    }

    /// The next notification, or None after `wait`.
    fn next(&self, wait: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("receiving a notification: {e}"),
        }
    }

    /// Notifications until one holds `line` (a whole line), within `wait`; all of them.
    fn until(&self, line: &str, wait: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < wait {
            if let Some(m) = self.next(Duration::from_millis(200)) {
                let done = m.lines().any(|l| l == line);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
        panic!("no {line} within {wait:?}; got {seen:?}");
    }
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message.lines().find_map(|l| l.strip_prefix(key))
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

/// `GET /metrics` over plain HTTP: the status line.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines().next().unwrap_or_default().to_string()
}

#[test]
fn ready_only_once_everything_serves_then_stopping_on_sigterm() {
    let pool = Pool::new("notify-ready");
    std::fs::create_dir_all(&pool.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (manager, socket) = Manager::bind(dir.path());
    let config = dir.path().join("array.toml");
    std::fs::write(
        &config,
        format!(
            "pool_dir = {:?}\napi_listen = \"127.0.0.1:0\"\niscsi_portals = [\"127.0.0.1:0\"]\n\
             metrics_listen = \"127.0.0.1:0\"\n",
            pool.0.join("pool")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["array", "serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        // A watchdog of 2 s: pings every second.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    // The first notification is READY=1, with the daemon's pid and where it serves.
    let first = manager
        .next(Duration::from_secs(60))
        .expect("a notification within 60 s");
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert_eq!(
        field(&first, "MAINPID="),
        Some(child.id().to_string().as_str())
    );
    let status = field(&first, "STATUS=").expect("a STATUS line");
    let (api, rest) = status
        .strip_prefix("serving: API https://")
        .and_then(|s| s.split_once(", iSCSI "))
        .unwrap_or_else(|| panic!("status {status:?}"));
    let (portal, rest) = rest.split_once(", metrics http://").unwrap();
    let (metrics, fingerprint) = rest.split_once("/metrics, fingerprint ").unwrap();
    let api: SocketAddr = api.parse().unwrap();
    let portal: SocketAddr = portal.parse().unwrap();
    let metrics: SocketAddr = metrics.parse().unwrap();
    assert_eq!(
        fingerprint.len(),
        95,
        "SHA-256 as AB:CD:..., got {fingerprint}"
    );

    // At once, with no retry: every listener answers its own protocol.
    let cfg = iscsi::initiator::InitiatorConfig::new("iqn.2026-01.org.shadowlun:notify-test");
    let targets = iscsi::initiator::discover(portal, &cfg);
    assert!(
        targets.is_ok(),
        "iSCSI discovery right after READY=1: {targets:?}"
    );
    assert_eq!(scrape(metrics), "HTTP/1.1 200 OK");
    let out = Command::new(BIN)
        .args(["status", "--json", "--array", &format!("https://{api}")])
        .args(["--fingerprint", fingerprint, "--token-file"])
        .arg(pool.0.join("pool/admin.token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shadowlun status right after READY=1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["portals"][0], portal.to_string(), "{st}");

    // The watchdog is pinged while the array's state answers.
    let pings = manager.until("WATCHDOG=1", Duration::from_secs(5));
    assert!(
        pings.iter().all(|m| !m.contains("READY=1")),
        "READY=1 twice: {pings:?}"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    sigterm(&child);
    let stopping = manager.until("STOPPING=1", Duration::from_secs(20));
    assert!(stopping.iter().all(|m| !m.contains("READY=1")));
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(status.success(), "exit {status} on SIGTERM: {log}");
    assert!(log.contains("array stopped"), "{log}");
}

#[test]
fn a_start_that_fails_never_says_ready() {
    let pool = Pool::new("notify-fail");
    std::fs::create_dir_all(&pool.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (manager, socket) = Manager::bind(dir.path());
    // The API's address is taken: the daemon opens its pool, then cannot listen.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(BIN)
        .args(["array", "serve", "--portal", "127.0.0.1:0", "--api"])
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--pool")
        .arg(pool.0.join("pool"))
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "started on a taken address: {err}");
    assert!(err.contains("binding"), "{err}");
    let mut got = Vec::new();
    while let Some(m) = manager.next(Duration::from_millis(100)) {
        got.push(m);
    }
    assert!(
        got.iter().all(|m| !m.contains("READY=1")),
        "READY=1 from a daemon that failed to start: {got:?}"
    );
}
