//! `shadowlun demo --backend rbd` as a user runs it, a process of its own:
//! - on a lab cluster (`scripts/ceph-lab`, the one `CEPH_CONF` names or one started here;
//!   skipped, saying why, only where Ceph is not installed): the whole demo passes with its
//!   LUNs as RBD images, and afterwards the `rbd` CLI finds none of the demo array's images
//!   in the pool and an image made before the demo by someone else still there;
//! - without `CEPH_CONF`, the demo starts a throwaway cluster of its own; interrupted with
//!   SIGINT once its array runs, it stops that cluster (no daemon of it left, its directory
//!   removed), removes the array's directory and exits 130;
//! - without Ceph installed and no cluster named, it refuses at once, saying what to run;
//! - `demo --gateways 2` on the lab cluster: two gateway processes, the serving one killed
//!   under a host's MPIO ledger writer, the writer going on through the other, every
//!   acknowledged transaction read back, and the demo's RADOS namespace gone afterwards.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbd::lab::Lab;

const BIN: &str = env!("CARGO_BIN_EXE_shadowlun");

/// The text after `label` on the first line of `out` that starts with it.
fn field<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

#[test]
fn the_demo_runs_on_rbd_and_leaves_only_what_was_not_its_own() {
    let Some(lab) = Lab::get() else { return };
    let stranger = format!("stranger-{}", std::process::id());
    lab.rbd(&["create", "--size", "4M", &format!("rbd/{stranger}")]);
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["demo", "--backend", "rbd", "--ceph-pool", "rbd"])
        .env("CEPH_CONF", lab.conf())
        .output()
        .unwrap();
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("demo finished in") && stdout.contains("all checks passed"),
        "{stdout}"
    );
    let luns = field(&stdout, "LUNs").expect("the demo names its images");
    let array_id = luns
        .strip_prefix("RBD images sl-")
        .and_then(|r| r.split('-').next())
        .unwrap_or_else(|| panic!("{luns}"));
    assert_eq!(array_id.len(), 8, "{luns}");
    let images = lab.rbd(&["ls", "rbd"]);
    let left: Vec<&str> = images
        .lines()
        .filter(|i| i.contains(&format!("-{array_id}-")))
        .collect();
    assert!(
        left.is_empty(),
        "the demo's images are still there: {left:?}"
    );
    assert!(
        images.lines().any(|i| i == stranger),
        "someone else's image is gone: {images}"
    );
    assert!(
        !images
            .lines()
            .any(|i| i.starts_with("shadowlun-demo-witness-")),
        "the demo's own witness image was not removed: {images}"
    );
    lab.rbd(&["rm", "--no-progress", &format!("rbd/{stranger}")]);
    eprintln!("  demo on rbd: {took:.1?}");
}

#[test]
fn the_two_gateway_demo_fails_over_under_writes_and_keeps_the_ledger() {
    let Some(lab) = Lab::get() else { return };
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["demo", "--gateways", "2", "--ceph-pool", "rbd"])
        .env("CEPH_CONF", lab.conf())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stdout.contains("gw-b in office"), "{stdout}");
    assert!(stdout.contains("acknowledged through gw-b"), "{stdout}");
    assert!(stdout.contains("no I/O error seen by the host"), "{stdout}");
    // Before the kill, gw-b's path was Standby; after it, Active/Optimized with the I/O.
    let standby = stdout
        .lines()
        .any(|l| l.starts_with("gw-b ") && l.contains(" Standby"));
    assert!(standby, "{stdout}");
    let serving = stdout
        .lines()
        .any(|l| l.starts_with("gw-b ") && l.contains("ActiveOptimized") && l.contains("I/O here"));
    assert!(serving, "{stdout}");
    let ns = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RADOS namespace rbd/"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{stdout}"));
    let namespaces = lab.rbd(&["namespace", "ls", "rbd"]);
    assert!(
        !namespaces.lines().any(|l| l.trim() == ns),
        "the demo's namespace {ns} is still there: {namespaces}"
    );
    eprintln!("  demo --gateways 2: {:.1?}", t.elapsed());
}

/// Processes whose command line names `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn an_interrupted_demo_stops_the_cluster_it_started() {
    // Only where a cluster can be started here (the lab is not used, only its check).
    let Some(lab) = Lab::get() else { return };
    drop(lab);
    let mut child = Command::new(BIN)
        .args(["demo", "--backend", "rbd"])
        .env_remove("CEPH_CONF")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every line is read until the demo ends: a pipe closed early would end the demo with
    // EPIPE on its next line instead of letting the interrupt end it.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut cluster_dir: Option<PathBuf> = None;
    let mut array_dir: Option<PathBuf> = None;
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(300)) {
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("Ceph        throwaway cluster in ") {
            let dir = rest.split(", ready").next().unwrap();
            cluster_dir = Some(PathBuf::from(dir));
        }
        if let Some(dir) = line.strip_prefix("pool        ") {
            array_dir = Some(PathBuf::from(dir));
        }
        // The array runs on the cluster: interrupt the demo now.
        if line.starts_with("LUNs ") {
            break;
        }
    }
    let dir = cluster_dir.unwrap_or_else(|| panic!("no throwaway cluster: {seen:#?}"));
    assert!(
        !processes_in(&dir).is_empty(),
        "the cluster's daemons run while the demo does"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the demo did not end within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: stopping the Ceph cluster"),
        "{stderr}"
    );
    assert_eq!(processes_in(&dir), Vec::<String>::new(), "daemons left");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let array_dir = array_dir.unwrap_or_else(|| panic!("no array directory: {seen:#?}"));
    assert!(
        !array_dir.exists(),
        "{} was not removed",
        array_dir.display()
    );
}

#[test]
fn without_ceph_the_rbd_demo_says_what_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--backend", "rbd"])
        .env_remove("CEPH_CONF")
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Ceph is not installed") && stderr.contains("scripts/setup --ceph"),
        "{stderr}"
    );
    // Refused before the array started.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("control API"), "{stdout}");
}
