//! The array on rbd, against a lab cluster (`scripts/ceph-lab`; skipped, saying why, only
//! where Ceph is not installed), through its own iSCSI target and control API:
//! - the caching mode page says what librbd does: its writeback cache is on (WCE=1), a
//!   write is durable once FUA or SYNCHRONIZE CACHE made it so, and both reach librbd's
//!   flush, counted by librbd's own perf counters through the client's admin socket; with
//!   WCE set to 0 by MODE SELECT, every write is flushed;
//! - a source image deleted behind the array's back (while it was stopped) fails the commit
//!   with the reason and leaves no snapshot on the set's other source;
//! - a mapped LUN whose image is deleted with the `rbd` CLI behind the array's back (while
//!   it was stopped, or while the LUN was not mapped yet) stays in REPORT LUNS and answers
//!   TEST UNIT READY, READ and WRITE with NOT READY / MANUAL INTERVENTION REQUIRED
//!   (02/04/03), is `volume_missing` in the LUN list and a reason of the status, while
//!   another LUN of the same host still reads its bytes; once deleted it leaves REPORT LUNS;
//! - a missing pool and an unreachable cluster stop the start with the reason, within the
//!   configured timeout.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::routes as r;
use api::*;
use common::*;
use iscsi::initiator::{DataDir, InitiatorConfig, Session};
use rbd::lab::Lab;

const IQN: &str = "iqn.1991-05.com.microsoft:rbd-host";

/// The lab's configuration with an admin socket for this process's client, where librbd's
/// perf counters can be read.
fn conf_with_admin_socket(lab: &Lab, dir: &Path) -> (PathBuf, PathBuf) {
    let asok = dir.join("client.asok");
    let text = std::fs::read_to_string(lab.conf()).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim() == "admin socket =" {
                format!("admin socket = {}", asok.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    let conf = dir.join("ceph.conf");
    std::fs::write(&conf, text.join("\n") + "\n").unwrap();
    (conf, asok)
}

fn rbd_backend(conf: &Path, ns: &str, pool: &str, timeout_secs: u64) -> array::BackendConfig {
    array::BackendConfig::Rbd(storage::RbdConfig {
        pool: pool.into(),
        namespace: ns.into(),
        ceph_conf: Some(conf.to_path_buf()),
        timeout_secs,
        ..Default::default()
    })
}

fn start(dir: tempfile::TempDir, backend: &array::BackendConfig) -> TestArray {
    TestArray::start_in(dir, |c| {
        c.backend = backend.clone();
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    })
}

fn login(t: &TestArray) -> Session {
    let mut cfg = InitiatorConfig::new(IQN);
    cfg.timeout = Duration::from_secs(30);
    Session::login(
        t.running().iscsi_addrs[0],
        t.running().array.target_name(),
        &cfg,
    )
    .unwrap()
}

/// librbd's `flush` counters of every open handle of `image`, from `perf dump`, summed.
/// Each handle registers `librbd-<id>-<pool>-<image>`; one opened while another handle of the
/// image was open gets `-0x<address>` appended. Only the handle serving the LUN flushes.
fn flushes(asok: &Path, image: &str) -> u64 {
    let out = std::process::Command::new("ceph")
        .arg("--admin-daemon")
        .arg(asok)
        .args(["perf", "dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let obj = dump.as_object().unwrap();
    let plain = format!("-{image}");
    let suffixed = format!("-{image}-0x");
    let handles: Vec<_> = obj
        .iter()
        .filter(|(k, _)| k.starts_with("librbd-") && (k.ends_with(&plain) || k.contains(&suffixed)))
        .collect();
    assert!(
        !handles.is_empty(),
        "no librbd counters for {image}: {:?}",
        obj.keys()
    );
    handles
        .iter()
        .map(|(_, c)| {
            c["flush"]
                .as_u64()
                .unwrap_or_else(|| panic!("no flush counter: {c}"))
        })
        .sum()
}

/// The current caching mode page (MODE SENSE (6), no block descriptors).
fn caching_page(s: &mut Session) -> Vec<u8> {
    let data = s
        .command(0, &[0x1a, 0x08, 0x08, 0, 255, 0], DataDir::Read(255))
        .unwrap()
        .data;
    let page = &data[4..];
    assert_eq!(page[0] & 0x3f, 0x08, "{data:02x?}");
    page[..2 + page[1] as usize].to_vec()
}

/// What another client (the `rbd` CLI) reads of the image at `offset`.
fn witness(lab: &Lab, spec: &str, offset: usize, len: usize) -> Vec<u8> {
    let out = std::process::Command::new("rbd")
        .env("CEPH_CONF", lab.conf())
        .args(["export", "--no-progress", spec, "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout[offset..offset + len].to_vec()
}

#[test]
fn the_array_on_rbd() {
    let Some(lab) = Lab::get() else { return };
    let ns = format!("arr{}", std::process::id());
    lab.rbd(&["namespace", "create", &format!("rbd/{ns}")]);
    let work = tempfile::tempdir().unwrap();
    let (conf, asok) = conf_with_admin_socket(&lab, work.path());
    let backend = rbd_backend(&conf, &ns, "rbd", 20);
    let t = start(tempfile::tempdir().unwrap(), &backend);
    let token = write_cache_and_flushes(&t, &lab, &asok, &ns);
    let t = a_source_deleted_behind_the_arrays_back(t, &token, &backend, &lab, &ns);
    let t = a_mapped_lun_whose_image_is_deleted(t, &backend, &lab, &ns);
    drop(t);
    a_missing_pool_or_cluster_stops_the_start(&lab, &conf);
    let left = lab.rbd(&["ls", &format!("rbd/{ns}")]);
    for image in left.lines() {
        lab.rbd(&[
            "snap",
            "purge",
            "--no-progress",
            &format!("rbd/{ns}/{image}"),
        ]);
        lab.rbd(&["rm", "--no-progress", &format!("rbd/{ns}/{image}")]);
    }
}

/// Returns the host's token.
fn write_cache_and_flushes(t: &TestArray, lab: &Lab, asok: &Path, ns: &str) -> String {
    let mut admin = t.admin();
    let (lun, token) = lun_for_host(&mut admin, "wce", "h", IQN);
    let array_id = t.running().array.array_id().unwrap().bits();
    let image = format!("sl-{array_id:08x}-{lun}");
    let spec = format!("rbd/{ns}/{image}");
    let mut s = login(t);
    let page = caching_page(&mut s);
    assert_eq!(
        page[2] & 0x04,
        0x04,
        "WCE=1: librbd's writeback cache is on: {page:02x?}"
    );
    let f0 = flushes(asok, &image);
    s.write16(0, 0, &[0x11; 4096], 512, false).unwrap();
    assert_eq!(flushes(asok, &image), f0, "a plain write is not flushed");
    s.write16(0, 8, &[0x22; 4096], 512, true).unwrap();
    let f1 = flushes(asok, &image);
    assert_eq!(f1, f0 + 1, "WRITE with FUA flushes once");
    assert_eq!(
        witness(lab, &spec, 0, 8192),
        [[0x11u8; 4096], [0x22u8; 4096]].concat(),
        "after FUA, another client reads both writes"
    );
    s.write16(0, 16, &[0x33; 4096], 512, false).unwrap();
    s.synchronize_cache(0).unwrap();
    let f2 = flushes(asok, &image);
    assert_eq!(f2, f1 + 1, "SYNCHRONIZE CACHE flushes once");
    assert_eq!(witness(lab, &spec, 8192, 4096), [0x33u8; 4096]);

    // WCE=0 (MODE SELECT (6), the current page sent back with WCE cleared): every write is
    // made durable before it completes.
    let mut off = page.clone();
    off[0] &= 0x3f;
    off[2] &= !0x04;
    let mut param = vec![0u8; 4];
    param.extend(&off);
    let mut cdb = [0x15, 0x10, 0, 0, param.len() as u8, 0];
    s.command(0, &cdb, DataDir::Write(param.clone())).unwrap();
    assert_eq!(caching_page(&mut s)[2] & 0x04, 0, "WCE=0 reported");
    let f3 = flushes(asok, &image);
    s.write16(0, 24, &[0x44; 4096], 512, false).unwrap();
    assert_eq!(
        flushes(asok, &image),
        f3 + 1,
        "with WCE=0 a plain write is flushed"
    );
    assert_eq!(witness(lab, &spec, 12288, 4096), [0x44u8; 4096]);
    // Back on.
    param[4 + 2] |= 0x04;
    cdb[4] = param.len() as u8;
    s.command(0, &cdb, DataDir::Write(param)).unwrap();
    assert_eq!(caching_page(&mut s)[2] & 0x04, 0x04);
    drop(s);
    eprintln!("  flushes: FUA +1, SYNCHRONIZE CACHE +1, a write with WCE=0 +1, a plain write 0");
    token
}

/// A two-source set whose second source's image was removed while the array was stopped:
/// the commit is refused with the reason and takes no snapshot of the first source.
fn a_source_deleted_behind_the_arrays_back(
    t: TestArray,
    host_token: &str,
    backend: &array::BackendConfig,
    lab: &Lab,
    ns: &str,
) -> TestArray {
    let mut admin = t.admin();
    let mut ids = Vec::new();
    for name in ["keep", "lost"] {
        let rec: LunRecord = admin
            .post(
                r::ADMIN_LUNS,
                &CreateLun {
                    name: name.into(),
                    size_bytes: 1 << 20,
                },
            )
            .unwrap()
            .json()
            .unwrap();
        expect_status(
            &admin
                .post(
                    &r::fill(r::ADMIN_MAP, &[("host", "h")]),
                    &MapLun {
                        lun: rec.id.clone(),
                        lun_number: None,
                        shared: false,
                    },
                )
                .unwrap(),
            200,
        );
        ids.push(rec.id);
    }
    let array_id = t.running().array.array_id().unwrap().bits();
    let dir = t.stop();
    let lost = format!("rbd/{ns}/sl-{array_id:08x}-{}", ids[1]);
    lab.rbd(&["rm", "--no-progress", &lost]);
    let t = start(dir, backend);
    let mut h = t.client(Some(host_token));
    let set = uuid::Uuid::new_v4();
    let plan = PrepareRequest {
        context: vss::SnapshotContext(0),
        snapshots: ids
            .iter()
            .map(|src| PlannedSnapshot {
                snapshot_id: uuid::Uuid::new_v4(),
                source: src.clone(),
            })
            .collect(),
    };
    expect_status(&h.post(&set_path(r::PREPARE, set), &plan).unwrap(), 204);
    let t0 = Instant::now();
    let r = h.request("POST", &set_path(r::COMMIT, set), None).unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let p = problem(&r);
    assert!(
        p.detail.contains(&ids[1]),
        "the reason names the LUN: {}",
        p.detail
    );
    assert!(took < Duration::from_secs(20), "answered in {took:?}");
    let keep = format!("rbd/{ns}/sl-{array_id:08x}-{}", ids[0]);
    assert_eq!(
        lab.rbd(&["snap", "ls", &keep]).trim(),
        "",
        "no snapshot of the other source"
    );
    expect_status(
        &h.request("POST", &set_path(r::ABORT, set), None).unwrap(),
        204,
    );
    t
}

const GONE_IQN: &str = "iqn.1991-05.com.microsoft:rbd-gone";

/// Maps `lun` to host `g`; returns the LUN number its initiator sees.
fn map_to_g(admin: &mut array::client::Client, lun: &str) -> u64 {
    let r = admin
        .post(
            &r::fill(r::ADMIN_MAP, &[("host", "g")]),
            &MapLun {
                lun: lun.into(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap();
    expect_status(&r, 200);
    let host: HostRecord = r.json().unwrap();
    host.luns.iter().find(|m| m.lun == lun).unwrap().lun_number
}

fn login_as(t: &TestArray, iqn: &str) -> Session {
    let mut cfg = InitiatorConfig::new(iqn);
    cfg.timeout = Duration::from_secs(30);
    Session::login(
        t.running().iscsi_addrs[0],
        t.running().array.target_name(),
        &cfg,
    )
    .unwrap()
}

/// The sense a command got, or a panic if it succeeded or failed otherwise.
fn sense_of<T: std::fmt::Debug>(r: Result<T, iscsi::initiator::InitiatorError>) -> (u8, u8, u8) {
    match r {
        Err(iscsi::initiator::InitiatorError::Check(s)) => (s.key, s.asc, s.ascq),
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
}

const NOT_READY_MANUAL_INTERVENTION: (u8, u8, u8) = (0x02, 0x04, 0x03);

fn luns_of(t: &TestArray) -> Vec<LunRecord> {
    let r = t.admin().get(r::ADMIN_LUNS).unwrap();
    expect_status(&r, 200);
    r.json().unwrap()
}

/// Two LUNs of host `g` with data; the array stops, the image of one is deleted with the
/// `rbd` CLI, the array starts again: the LUN is still reported, its medium answers NOT READY
/// / MANUAL INTERVENTION REQUIRED, the other LUN reads its bytes. A third LUN whose image is
/// deleted while the array runs, before it is mapped, is mapped the same way. Deleting the
/// LUNs takes them out of REPORT LUNS.
fn a_mapped_lun_whose_image_is_deleted(
    t: TestArray,
    backend: &array::BackendConfig,
    lab: &Lab,
    ns: &str,
) -> TestArray {
    let mut admin = t.admin();
    let r = admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: "g".into(),
                initiators: vec![GONE_IQN.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap();
    expect_status(&r, 201);
    let kept = create_lun(&mut admin, "kept");
    let doomed = create_lun(&mut admin, "doomed");
    let n_kept = map_to_g(&mut admin, &kept);
    let n_doomed = map_to_g(&mut admin, &doomed);
    let mut s = login_as(&t, GONE_IQN);
    s.write16(n_kept, 0, &[0x5a; 4096], 512, true).unwrap();
    s.write16(n_doomed, 0, &[0xa5; 4096], 512, true).unwrap();
    drop(s);
    let array_id = t.running().array.array_id().unwrap().bits();
    let image = |lun: &str| format!("rbd/{ns}/sl-{array_id:08x}-{lun}");
    let dir = t.stop();
    lab.rbd(&["rm", "--no-progress", &image(&doomed)]);
    let t = start(dir, backend);
    let mut admin = t.admin();

    let mut s = login_as(&t, GONE_IQN);
    let _ = s.take_unit_attentions();
    let reported = s.report_luns().unwrap();
    assert!(
        reported.contains(&n_kept) && reported.contains(&n_doomed),
        "both LUNs reported: {reported:?}"
    );
    assert_eq!(
        sense_of(s.read16(n_doomed, 0, 8, 512)),
        NOT_READY_MANUAL_INTERVENTION,
        "READ of the LUN whose image is gone"
    );
    assert_eq!(
        sense_of(s.write16(n_doomed, 0, &[0x11; 4096], 512, false)),
        NOT_READY_MANUAL_INTERVENTION,
        "WRITE of the LUN whose image is gone"
    );
    assert_eq!(
        sense_of(s.test_unit_ready(n_doomed)),
        NOT_READY_MANUAL_INTERVENTION,
        "TEST UNIT READY of the LUN whose image is gone"
    );
    let serial = t.identity(&doomed).serial;
    let vpd80 = s.inquiry(n_doomed, Some(0x80)).unwrap();
    assert_eq!(
        &vpd80[4..],
        serial.as_bytes(),
        "its identity is still served"
    );
    assert_eq!(
        s.read16(n_kept, 0, 8, 512).unwrap(),
        vec![0x5a; 4096],
        "the other LUN reads its bytes"
    );
    s.test_unit_ready(n_kept).unwrap();

    let luns = luns_of(&t);
    let missing: Vec<&str> = luns
        .iter()
        .filter(|l| l.volume_missing)
        .map(|l| l.id.as_str())
        .collect();
    // (The source deleted in the step before is missing too.)
    assert!(
        missing.contains(&doomed.as_str()) && !missing.contains(&kept.as_str()),
        "the LUN list says which: {missing:?}"
    );
    let r = t.admin().get(r::ADMIN_STATUS).unwrap();
    expect_status(&r, 200);
    let status: serde_json::Value = r.json().unwrap();
    assert_eq!(status["health"]["state"], "critical", "{status}");
    assert!(
        status["health"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r
                .as_str()
                .unwrap()
                .contains(&format!("LUN {doomed} (doomed) lost its volume"))),
        "{status}"
    );

    // While the array runs: an image deleted before its LUN is mapped.
    let late = create_lun(&mut admin, "late");
    lab.rbd(&["rm", "--no-progress", &image(&late)]);
    let n_late = map_to_g(&mut admin, &late);
    let _ = s.take_unit_attentions();
    let reported = s.report_luns().unwrap();
    assert!(reported.contains(&n_late), "{reported:?}");
    let _ = s.take_unit_attentions();
    assert_eq!(
        sense_of(s.read16(n_late, 0, 8, 512)),
        NOT_READY_MANUAL_INTERVENTION
    );

    // The administrator deletes them: out of REPORT LUNS; the other LUN serves on.
    for lun in [&doomed, &late] {
        let r = admin
            .request(
                "DELETE",
                &r::fill(r::ADMIN_UNMAP, &[("host", "g"), ("lun", lun)]),
                None,
            )
            .unwrap();
        assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
        let r = admin
            .request("DELETE", &r::fill(r::ADMIN_LUN, &[("lun", lun)]), None)
            .unwrap();
        assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    }
    let _ = s.take_unit_attentions();
    let reported = s.report_luns().unwrap();
    assert_eq!(reported, vec![n_kept], "only the kept LUN is left");
    let _ = s.take_unit_attentions();
    assert_eq!(s.read16(n_kept, 0, 8, 512).unwrap(), vec![0x5a; 4096]);
    let luns = luns_of(&t);
    assert!(!luns.iter().any(|l| l.id == doomed || l.id == late));
    assert!(luns.iter().any(|l| l.id == kept && !l.volume_missing));
    drop(s);
    eprintln!("  image deleted behind the array's back: NOT READY 02/04/03, other LUN served");
    t
}

fn a_missing_pool_or_cluster_stops_the_start(lab: &Lab, conf: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.backend = rbd_backend(conf, "", "no-such-pool", 5);
    let Err(err) = rt.block_on(array::start(cfg)) else {
        panic!("no pool, no start")
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("opening pool no-such-pool") && text.contains("No such file or directory"),
        "{text}"
    );
    // A monitor nobody listens on: the start fails within the configured timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(lab.conf()).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("mon host") {
                format!("mon host = v2:127.0.0.1:{port}")
            } else {
                l.to_string()
            }
        })
        .collect();
    let nowhere = dir.path().join("nowhere.conf");
    std::fs::write(&nowhere, text.join("\n") + "\n").unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = config(dir2.path());
    cfg.backend = rbd_backend(&nowhere, "", "rbd", 3);
    let t0 = Instant::now();
    let Err(err) = rt.block_on(array::start(cfg)) else {
        panic!("no cluster, no start")
    };
    let took = t0.elapsed();
    let text = format!("{err:#}");
    assert!(
        text.contains("connecting to the cluster") && text.contains("timed out"),
        "{text}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    eprintln!("  unreachable cluster: {text} after {took:?}");
}
