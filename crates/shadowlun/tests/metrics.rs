//! The Prometheus endpoint of the real daemon, scraped by a real Prometheus server: after I/O
//! to a LUN over iSCSI, a PromQL query through Prometheus's HTTP API sees that LUN's
//! operations, and `promtool check metrics` finds nothing to fix in what the daemon serves.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on PATH). Without it the
//! test says so and passes, unless `SHADOWLUN_REQUIRE_PROMETHEUS` is set (the CI stage sets
//! it), in which case it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iscsi::initiator::{InitiatorConfig, Session};

const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");
const HOST: &str = "iqn.1991-05.com.microsoft:sql01";
const TARGET: &str = "iqn.2026-01.org.shadowlun:metrics-test";
/// The memory pool: 300 KiB, so that four 64 KiB writes fill it past the 80 % warning and
/// short of the 90 % critical threshold.
const POOL_BYTES: u64 = 300 << 10;

/// Kills and reaps a child process when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon {
    _child: Reaped,
    api: String,
    fingerprint: String,
    token_file: PathBuf,
    portal: SocketAddr,
    metrics: SocketAddr,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn start_daemon(dir: &Path) -> Daemon {
    let config = dir.join("array.toml");
    std::fs::write(
        &config,
        format!(
            "pool_dir = {pool:?}\napi_listen = \"127.0.0.1:0\"\niscsi_portals = [\"127.0.0.1:0\"]\n\
             metrics_listen = \"127.0.0.1:0\"\ntarget_name = {TARGET:?}\nreaper_interval_secs = 1\n\
             [backend]\nkind = \"memory\"\ncapacity_bytes = {POOL_BYTES}\n",
            pool = dir.join("pool").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["array", "serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .expect("starting shadowlun array serve");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut api, mut fingerprint, mut token_file, mut portal, mut metrics) =
        (None, None, None, None, None);
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("shadowlun array: API ") {
            api = Some(v.trim().to_string());
        } else if let Some(v) =
            line.strip_prefix("shadowlun array: certificate SHA-256 fingerprint ")
        {
            fingerprint = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("shadowlun array: admin token in ") {
            token_file = Some(PathBuf::from(v.trim()));
        } else if let Some(v) = line.strip_prefix("shadowlun array: iSCSI portal ") {
            portal = Some(v.trim().parse().unwrap());
        } else if let Some(v) = line.strip_prefix("shadowlun array: metrics http://") {
            metrics = Some(v.trim().trim_end_matches("/metrics").parse().unwrap());
        }
        if token_file.is_some() {
            break; // the last line the daemon prints when it is ready
        }
    }
    Daemon {
        _child: Reaped(child),
        api: api.expect("the daemon printed its API address"),
        fingerprint: fingerprint.expect("the daemon printed its fingerprint"),
        token_file: token_file.expect("the daemon printed the admin token path"),
        portal: portal.expect("the daemon printed its iSCSI portal"),
        metrics: metrics.expect("the daemon printed its metrics address"),
    }
}

fn cli(d: &Daemon, args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .args([
            "--array",
            &d.api,
            "--fingerprint",
            &d.fingerprint,
            "--token-file",
        ])
        .arg(&d.token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shadowlun {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn free_loopback_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of a sample in the exposition text, by its full series name.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_sees_a_luns_operations() {
    let (Some(prometheus), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) else {
        assert!(
            std::env::var_os("SHADOWLUN_REQUIRE_PROMETHEUS").is_none(),
            "prometheus or promtool is not on PATH (apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED: prometheus and promtool are not installed (Debian package `prometheus`); \
             scripts/ci.d/55-metrics.sh installs them and runs this test"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path());
    cli(&d, &["lun", "create", "data", "8MiB"]);
    cli(&d, &["host", "add", "sql01", "--initiator", HOST]);
    cli(&d, &["host", "map", "sql01", "lun-1"]);

    // An initiator that belongs to no host is refused at login (masking).
    let stranger = InitiatorConfig::new("iqn.1991-05.com.microsoft:stranger");
    assert!(Session::login(d.portal, TARGET, &stranger).is_err());

    // Four writes of 64 KiB and three reads of 4 KiB on the host's LUN (LUN number 0).
    let mut s = Session::login(d.portal, TARGET, &InitiatorConfig::new(HOST)).unwrap();
    let data = vec![0xa5u8; 64 << 10];
    for i in 0..4u64 {
        s.write16(0, i * 128, &data, 512, false).unwrap();
    }
    for i in 0..3u64 {
        let back = s.read16(0, i * 128, 8, 512).unwrap();
        assert_eq!(back, vec![0xa5u8; 4096]);
    }

    // The endpoint itself, as Prometheus will see it.
    let (status, text) = http_get(d.metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    let lun = r#"{lun="lun-1",name="data"}"#;
    assert_eq!(
        sample(&text, &format!("shadowlun_lun_write_ops_total{lun}")),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("shadowlun_lun_written_bytes_total{lun}")),
        Some(4.0 * 65536.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("shadowlun_lun_read_ops_total{lun}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("shadowlun_lun_write_latency_seconds_count{lun}")
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sample(&text, "shadowlun_iscsi_sessions"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"shadowlun_iscsi_login_refusals_total{reason="authorization"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "shadowlun_pool_provisioned_bytes"),
        Some(8.0 * 1024.0 * 1024.0),
        "{text}"
    );
    assert!(sample(&text, "shadowlun_pool_used_bytes").is_some_and(|u| u >= 65536.0));
    assert_eq!(
        sample(&text, "shadowlun_pool_capacity_bytes"),
        Some(POOL_BYTES as f64)
    );
    assert_eq!(
        sample(&text, "shadowlun_pool_used_bytes"),
        Some(4.0 * 65536.0)
    );
    assert_eq!(sample(&text, "shadowlun_pool_warning_ratio"), Some(0.8));
    assert_eq!(sample(&text, "shadowlun_pool_critical_ratio"), Some(0.9));
    assert!(
        sample(&text, "shadowlun_journal_fsync_duration_seconds_count").is_some_and(|n| n >= 3.0),
        "{text}"
    );

    // The pool is past its warning threshold: the daemon says so at its next reaper tick.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
        if log.contains("the pool is filling up") {
            assert!(!log.contains("critically full"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning about the pool: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // promtool's linter: nothing to fix.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );

    // A real Prometheus on loopback, scraping the daemon every second.
    let web = free_loopback_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: shadowlun\n    static_configs:\n      - targets: ['{}']\n",
            d.metrics
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Reaped(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus"),
    );
    let query = format!(
        "/api/v1/query?query={}",
        percent_encode(r#"shadowlun_lun_write_ops_total{lun="lun-1",job="shadowlun"}"#)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        if TcpStream::connect_timeout(&web, Duration::from_secs(1)).is_ok() {
            let (status, body) = http_get(web, &query);
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["status"], "success", "{body}");
                if let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first()) {
                    break r.clone();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see the LUN's writes within 60 s; its log: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(seen["metric"]["name"], "data", "{seen}");
    assert_eq!(seen["value"][1], "4", "{seen}");
    s.logout().unwrap();
}
