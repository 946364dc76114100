//! A gateway cut off from the cluster while hosts still reach it: two gateways of one
//! array, the serving one in a network namespace of its own with two links, one to the
//! cluster (a lab Ceph cluster of this test's own, on the host side of that link) and one
//! to the hosts. The link to the cluster goes down: the cut-off gateway's lease renewals
//! get no answer, it stops serving I/O when its own count of the lease ends (its paths turn
//! Standby, then it exits), and only after that does the other gateway take office, once
//! the cluster's count has ended. A host reading through the cut-off gateway without pause
//! gets its last answer before the other gateway is in office.
//!
//! Needs root (network namespaces and links) and Ceph; skipped, saying why, without them,
//! unless `SHADOWLUN_REQUIRE_NETNS` is set (the Ceph stage of CI sets it).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::gateways::{two_gateways, watch_gateway};
use common::{share_identity, spawn_wrapped};
use iscsi::initiator::{InitiatorConfig, Session};
use rbd::lab::Lab;

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with two links to this one: `storage` (to the cluster) and `hosts`
/// (where hosts reach the gateway inside). Removed when dropped.
struct Netns {
    name: String,
    /// This side's end of each link.
    storage_link: String,
    hosts_link: String,
    /// Addresses: this side of the storage link (the cluster's), the inside of the hosts
    /// link (the gateway's).
    cluster_addr: String,
    gateway_addr: String,
}

impl Netns {
    fn new() -> Result<Netns, String> {
        let pid = std::process::id();
        let x = pid % 200 + 20;
        let n = Netns {
            name: format!("slp{pid}"),
            storage_link: format!("vs{pid}h"),
            hosts_link: format!("vh{pid}h"),
            cluster_addr: format!("10.213.{x}.1"),
            gateway_addr: format!("10.214.{x}.2"),
        };
        ip(&["netns", "add", &n.name])?;
        for (link, net) in [(&n.storage_link, 213), (&n.hosts_link, 214)] {
            let inside = format!("{}n", &link[..link.len() - 1]);
            ip(&["link", "add", link, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &inside, "netns", &n.name])?;
            ip(&["addr", "add", &format!("10.{net}.{x}.1/30"), "dev", link])?;
            ip(&["link", "set", link, "up"])?;
            let ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &n.name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            ns(&["addr", "add", &format!("10.{net}.{x}.2/30"), "dev", &inside])?;
            ns(&["link", "set", &inside, "up"])?;
        }
        ip(&["netns", "exec", &n.name, "ip", "link", "set", "lo", "up"])?;
        Ok(n)
    }

    /// Runs a program inside: `ip netns exec NAME`.
    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// The link to the cluster goes down (both ends lose carrier; nothing is refused, so
    /// the gateway's calls wait for answers that do not come).
    fn cut_storage(&self) {
        ip(&["link", "set", &self.storage_link, "down"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.storage_link]);
        let _ = ip(&["link", "del", &self.hosts_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The time of the first line of the log at `path` containing `what` (the log's lines begin
/// with an RFC 3339 time in UTC, microseconds, a fixed width: ordered as text).
fn logged_at(path: &Path, what: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// The last `n` lines of the log at `path`.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[test]
fn a_gateway_cut_off_from_the_cluster_stops_serving_before_another_takes_office() {
    let required = std::env::var_os("SHADOWLUN_REQUIRE_NETNS").is_some();
    let net = match Netns::new() {
        Ok(n) => n,
        Err(e) => {
            assert!(!required, "SHADOWLUN_REQUIRE_NETNS is set: {e}");
            eprintln!("skipped: cannot make a network namespace (needs root and `ip`): {e}");
            return;
        }
    };
    // The cluster on the storage link, so that cutting it cuts only the gateway inside.
    let Some(lab) = Lab::own_at(&net.cluster_addr) else {
        assert!(
            !required,
            "SHADOWLUN_REQUIRE_NETNS is set but Ceph is not installed"
        );
        return;
    };
    let place = two_gateways(&lab, "gwp");
    let ([pa, pb], [ca, cb]) = (&place.pools, &place.configs);
    let (log_a, log_b) = (place.dir.0.join("gw-a.log"), place.dir.0.join("gw-b.log"));

    // gw-a inside the namespace, serving hosts on its hosts link.
    let listen = format!("{}:0", net.gateway_addr);
    let child = spawn_wrapped(
        &net.wrapper(),
        &pa.0,
        &listen,
        &listen,
        &["--config", ca.to_str().unwrap()],
        &log_a,
    );
    let mut a = watch_gateway(child, &pa.0)
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("gw-a serves");
    let lun = a.json(&["lun", "create", "data", "16MiB"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.json(&["host", "add", "sql01", "--initiator", SQL01]);
    let number = a.json(&["host", "map", "sql01", &lun])[0]["luns"][0]["lun_number"]
        .as_u64()
        .unwrap();
    let target = a.json(&["status"])["target"].as_str().unwrap().to_string();
    let mut cfg = InitiatorConfig::new(SQL01);
    cfg.timeout = Duration::from_secs(60);
    let login = |portal: &str| Session::login(portal.parse().unwrap(), &target, &cfg).unwrap();
    let mut s = login(&a.portal);
    s.write16(number, 0, &[0x5A; 4096], 512, false).unwrap();
    s.synchronize_cache(number).unwrap();

    // gw-b outside, on the cluster's side: it stands by.
    share_identity(&pa.0, &pb.0);
    let child = spawn_wrapped(
        &[],
        &pb.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", cb.to_str().unwrap()],
        &log_b,
    );
    let b_start = watch_gateway(child, &pb.0);
    b_start
        .standby
        .recv_timeout(Duration::from_secs(60))
        .expect("gw-b stands by");

    // A host reads through gw-a without pause; each answer's time is kept.
    let answered = Arc::new(Mutex::new(Vec::<SystemTime>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (answered, stop) = (answered.clone(), stop.clone());
        std::thread::spawn(move || -> String {
            while !stop.load(Ordering::Relaxed) {
                match s.read16(number, 0, 8, 512) {
                    Ok(d) => {
                        assert!(d == vec![0x5A; 4096], "gw-a answered other bytes");
                        answered.lock().unwrap().push(SystemTime::now());
                    }
                    Err(e) => return e.to_string(),
                }
            }
            "stopped".into()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !answered.lock().unwrap().is_empty(),
        "gw-a answered no read"
    );

    let cut = SystemTime::now();
    let t0 = Instant::now();
    net.cut_storage();
    let exited = loop {
        if let Some(code) = a.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the cut-off gateway did not stop; its log ends:\n{}",
            tail(&log_a, 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let a_gone = t0.elapsed();
    assert!(!exited.success(), "losing office is an error: {exited:?}");
    let b = b_start
        .ready
        .recv_timeout(Duration::from_secs(60))
        .expect("gw-b takes office");
    stop.store(true, Ordering::Relaxed);
    let read_end = reader.join().unwrap();

    let stood_down = logged_at(&log_a, "a lease of this gateway ended: it stops serving")
        .expect("gw-a logged that it stood down");
    let b_office =
        logged_at(&log_b, "in office: serving the array").expect("gw-b logged taking office");
    let last_answer = rfc3339(*answered.lock().unwrap().last().unwrap());
    eprintln!(
        "cut at {}; gw-a stood down at {stood_down} and exited {a_gone:.1?} after the cut; \
         its last answer at {last_answer} (then: {read_end}); gw-b in office at {b_office}",
        rfc3339(cut)
    );
    assert!(
        stood_down < b_office,
        "gw-a stood down at {stood_down}, after gw-b took office at {b_office}"
    );
    assert!(
        last_answer < b_office,
        "gw-a answered a read at {last_answer}, after gw-b took office at {b_office}"
    );
    // gw-b serves the LUN with what was written through gw-a.
    let mut sb = login(&b.portal);
    assert!(sb.read16(number, 0, 8, 512).unwrap() == vec![0x5A; 4096]);
    drop(sb);
    drop(b);
}
