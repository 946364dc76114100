//! The daemon as a real child process, killed with SIGKILL between (and during) steps, then
//! restarted on the same pool: the provider can retry, commit or abort and nothing is lost.
//!
//! The child is this test binary re-executed with `ARRAY_CRASH_CHILD=<pool dir>` running the
//! ignored `daemon_child` test.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use api::routes as r;
use api::*;
use array::client::Client;
use common::{expect_status, set_path};

#[derive(serde::Serialize, serde::Deserialize)]
struct Ready {
    addr: SocketAddr,
    fingerprint: String,
}

#[test]
#[ignore = "child process of the kill -9 tests; run by them"]
fn daemon_child() {
    let Ok(dir) = std::env::var("ARRAY_CRASH_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let running = rt.block_on(array::start(common::config(&dir))).unwrap();
    let ready = Ready {
        addr: running.api_addr,
        fingerprint: running.fingerprint.clone(),
    };
    let tmp = dir.join("ready.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&ready).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join("ready.json")).unwrap();
    // Serve until killed; a forgotten child stops by itself.
    std::thread::sleep(Duration::from_secs(120));
}

/// Kills (SIGKILL) and reaps the child when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon {
    child: ChildGuard,
    ready: Ready,
}

fn spawn(dir: &Path) -> (Daemon, Duration) {
    let _ = std::fs::remove_file(dir.join("ready.json"));
    let t0 = Instant::now();
    let child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args(["daemon_child", "--exact", "--ignored", "--nocapture"])
            .env("ARRAY_CRASH_CHILD", dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(b) = std::fs::read(dir.join("ready.json")) {
            let ready: Ready = serde_json::from_slice(&b).unwrap();
            return (Daemon { child, ready }, t0.elapsed());
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Daemon {
    fn client(&self, token: &str) -> Client {
        Client::new(self.ready.addr, &self.ready.fingerprint, Some(token)).unwrap()
    }

    /// SIGKILL, no chance to flush anything.
    fn kill9(mut self) {
        self.child.0.kill().unwrap();
        self.child.0.wait().unwrap();
    }
}

fn post(c: &mut Client, path: &str) -> u16 {
    c.request("POST", path, None).unwrap().status
}

fn sets(c: &mut Client) -> Vec<SetSummary> {
    c.get(r::SETS).unwrap().json().unwrap()
}

fn setup(d: &Daemon, admin: &str) -> (String, String) {
    let mut a = d.client(admin);
    let lun: LunRecord = a
        .post(
            r::ADMIN_LUNS,
            &CreateLun {
                name: "data".into(),
                size_bytes: 4 << 20,
            },
        )
        .unwrap()
        .json()
        .unwrap();
    let host: CreatedHost = a
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: "h".into(),
                initiators: vec!["iqn.1991-05.com.microsoft:h".into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap()
        .json()
        .unwrap();
    expect_status(
        &a.post(
            &r::fill(r::ADMIN_MAP, &[("host", "h")]),
            &MapLun {
                lun: lun.id.clone(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap(),
        200,
    );
    (lun.id, host.token)
}

fn plan(src: &str) -> PrepareRequest {
    PrepareRequest {
        context: vss::SnapshotContext(0),
        snapshots: vec![PlannedSnapshot {
            snapshot_id: uuid::Uuid::new_v4(),
            source: src.into(),
        }],
    }
}

/// Opens the engine pool while no daemon runs (it holds the pool lock while alive).
fn engine(dir: &Path) -> blockstore::Pool {
    blockstore::Pool::open(dir.join("engine")).unwrap()
}

fn write_lun(dir: &Path, lun: &str, byte: u8) {
    let pool = engine(dir);
    let v = pool.open_volume(lun).unwrap();
    v.write_at(8192, &[byte; 4096], true).unwrap();
    pool.flush().unwrap();
}

fn read_lun(dir: &Path, lun: &str) -> u8 {
    let mut b = [0u8; 1];
    let pool = engine(dir);
    // A snapshot LUN whose clone was not created before the kill is still its base.
    let vol = pool
        .open_volume(lun)
        .or_else(|_| pool.open_volume(&format!("{lun}.base")))
        .unwrap();
    vol.read_at(8192, &mut b).unwrap();
    b[0]
}

/// LUN volumes in the engine: a snapshot LUN is its clone and/or its `.base`.
fn engine_luns(dir: &Path) -> usize {
    engine(dir)
        .list()
        .unwrap()
        .iter()
        .map(|v| v.name.trim_end_matches(".base").to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

#[test]
fn kill9_between_every_step_loses_nothing_and_allows_retry_commit_and_abort() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (d, first) = spawn(p);
    let admin = std::fs::read_to_string(p.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let fp = d.ready.fingerprint.clone();
    let (lun, tok) = setup(&d, &admin);
    d.kill9();
    write_lun(p, &lun, 0x11);

    // Restart: same certificate, same tokens, same LUN.
    let (d, restart) = spawn(p);
    eprintln!("first start {first:?}, restart on an existing pool {restart:?}");
    assert_eq!(d.ready.fingerprint, fp, "the pinned certificate survives");
    let mut h = d.client(&tok);
    let set = uuid::Uuid::new_v4();
    assert_eq!(
        h.post(&set_path(r::PREPARE, set), &plan(&lun))
            .unwrap()
            .status,
        204
    );
    d.kill9();

    let (d, _) = spawn(p);
    let mut h = d.client(&tok);
    let s = sets(&mut h);
    assert_eq!(
        (s.len(), s[0].state),
        (1, SetState::Prepared),
        "prepare survived"
    );
    assert_eq!(post(&mut h, &set_path(r::END_PREPARE, set)), 204);
    assert_eq!(post(&mut h, &set_path(r::COMMIT, set)), 204);
    d.kill9();
    write_lun(p, &lun, 0x22); // written after the snapshot instant

    let (d, _) = spawn(p);
    let mut h = d.client(&tok);
    assert_eq!(
        sets(&mut h)[0].state,
        SetState::Committed,
        "commit survived"
    );
    assert_eq!(
        post(&mut h, &set_path(r::COMMIT, set)),
        204,
        "a retried commit succeeds"
    );
    let desc: DescribeResponse = h
        .post(
            &set_path(r::DESCRIBE, set),
            &DescribeRequest {
                sources: vec![lun.clone()],
            },
        )
        .unwrap()
        .json()
        .unwrap();
    let snap = desc.snapshots[0].lun.clone();
    let mut a = d.client(&admin);
    let snaps: Vec<LunRecord> = a.get(r::ADMIN_SNAPSHOTS).unwrap().json().unwrap();
    assert_eq!(snaps.len(), 1);
    // A second set, prepared then the daemon dies: the provider aborts after restart.
    let s2 = uuid::Uuid::new_v4();
    assert_eq!(
        h.post(&set_path(r::PREPARE, s2), &plan(&lun))
            .unwrap()
            .status,
        204
    );
    assert_eq!(post(&mut h, &set_path(r::COMMIT, s2)), 204);
    d.kill9();
    assert_eq!(
        read_lun(p, &snap),
        0x11,
        "the snapshot holds the commit instant's data"
    );
    assert_eq!(read_lun(p, &lun), 0x22);

    let (d, _) = spawn(p);
    let mut h = d.client(&tok);
    assert_eq!(post(&mut h, &set_path(r::ABORT, s2)), 204);
    assert_eq!(post(&mut h, &set_path(r::COMPLETE, set)), 204);
    d.kill9();

    let (d, _) = spawn(p);
    let mut h = d.client(&tok);
    let mut by_id: Vec<(uuid::Uuid, SetState)> = sets(&mut h)
        .into_iter()
        .map(|s| (s.set_id, s.state))
        .collect();
    by_id.sort_by_key(|x| x.0);
    let mut want = vec![(set, SetState::Completed), (s2, SetState::Aborted)];
    want.sort_by_key(|x| x.0);
    assert_eq!(by_id, want);
    let mut a = d.client(&admin);
    let snaps: Vec<LunRecord> = a.get(r::ADMIN_SNAPSHOTS).unwrap().json().unwrap();
    assert_eq!(
        snaps.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![snap]
    );
    d.kill9();
    assert_eq!(
        engine_luns(p),
        2,
        "the original and the one kept snapshot; the aborted set left nothing"
    );
}

#[test]
fn kill9_during_a_commit_burst_leaves_every_set_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (d, _) = spawn(p);
    let admin = std::fs::read_to_string(p.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let (lun, tok) = setup(&d, &admin);
    let (addr, fp) = (d.ready.addr, d.ready.fingerprint.clone());
    let tok2 = tok.clone();
    let lun2 = lun.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    // A bounded burst of prepare+commit; the daemon is killed part way through.
    let worker = std::thread::spawn(move || {
        let mut h = Client::new(addr, &fp, Some(&tok2)).unwrap();
        let mut acked = Vec::new();
        for _ in 0..200 {
            let set = uuid::Uuid::new_v4();
            match h.post(&set_path(r::PREPARE, set), &plan(&lun2)) {
                Ok(r) if r.status == 204 => {}
                other => {
                    eprintln!("burst stopped at prepare: {:?}", other.map(|r| r.status));
                    break;
                }
            }
            match h.request("POST", &set_path(r::COMMIT, set), None) {
                Ok(r) if r.status == 204 => {
                    acked.push(set);
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => break,
            }
        }
        acked
    });
    // Kill once a few commits went through, in the middle of the stream of requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(7));
    d.kill9();
    let acked = worker.join().unwrap();
    assert!(
        !acked.is_empty(),
        "some commits were acknowledged before the kill"
    );

    let (d, _) = spawn(p);
    let mut h = d.client(&tok);
    let all = sets(&mut h);
    for s in &acked {
        let st = all.iter().find(|x| x.set_id == *s).map(|x| x.state);
        assert_eq!(
            st,
            Some(SetState::Committed),
            "acknowledged commit {s} was lost"
        );
    }
    // Whatever was in flight can be finished by a retry.
    for s in all.iter().filter(|s| s.state == SetState::Prepared) {
        assert_eq!(post(&mut h, &set_path(r::COMMIT, s.set_id)), 204);
    }
    let mut a = d.client(&admin);
    let snaps: Vec<LunRecord> = a.get(r::ADMIN_SNAPSHOTS).unwrap().json().unwrap();
    assert_eq!(snaps.len(), all.len(), "one snapshot LUN per set");
    d.kill9();
    assert_eq!(
        engine_luns(p),
        snaps.len() + 1,
        "no orphan volume after recovery"
    );
}
