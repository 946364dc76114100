//! A mapped LUN whose volume is deleted outside the array, on a backend that needs no
//! cluster (sparse files: the volume file removed while the daemon was stopped; on rbd the
//! same is tested with the `rbd` CLI in `rbd.rs`): after the restart the LUN is still in
//! REPORT LUNS with its identity and size, TEST UNIT READY, READ, WRITE and SYNCHRONIZE
//! CACHE get NOT READY / MANUAL INTERVENTION REQUIRED (02/04/03), the LUN list and the
//! status say so, the host's other LUN reads its bytes, and deleting the LUN takes it out of
//! REPORT LUNS.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use api::routes as r;
use api::*;
use common::*;
use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};

const IQN: &str = "iqn.1991-05.com.microsoft:gone-host";

fn start(dir: tempfile::TempDir) -> TestArray {
    TestArray::start_in(dir, |c| {
        c.backend = array::BackendConfig::with_defaults("files").unwrap();
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

fn sense_of<T: std::fmt::Debug>(r: Result<T, InitiatorError>) -> (u8, u8, u8) {
    match r {
        Err(InitiatorError::Check(s)) => (s.key, s.asc, s.ascq),
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
}

const NOT_READY_MANUAL_INTERVENTION: (u8, u8, u8) = (0x02, 0x04, 0x03);

#[test]
fn a_lun_whose_volume_is_deleted_answers_not_ready_and_stays_reported_until_deleted() {
    let t = start(tempfile::tempdir().unwrap());
    let mut admin = t.admin();
    let (kept, _) = lun_for_host(&mut admin, "kept", "h", IQN);
    let r = admin
        .post(
            r::ADMIN_LUNS,
            &CreateLun {
                name: "doomed".into(),
                size_bytes: 1 << 20,
            },
        )
        .unwrap();
    expect_status(&r, 201);
    let doomed = r.json::<LunRecord>().unwrap().id;
    let r = admin
        .post(
            &r::fill(r::ADMIN_MAP, &[("host", "h")]),
            &MapLun {
                lun: doomed.clone(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap();
    expect_status(&r, 200);
    let host: HostRecord = r.json().unwrap();
    let number = |lun: &str| host.luns.iter().find(|m| m.lun == lun).unwrap().lun_number;
    let (n_kept, n_doomed) = (number(&kept), number(&doomed));
    let mut s = login(&t);
    s.write16(n_kept, 0, &[0x5a; 4096], 512, true).unwrap();
    s.write16(n_doomed, 0, &[0xa5; 4096], 512, true).unwrap();
    drop(s);
    let serial = t.identity(&doomed).serial;

    let dir = t.stop();
    std::fs::remove_file(dir.path().join(format!("volumes/{doomed}.img"))).unwrap();
    let t = start(dir);
    let mut admin = t.admin();
    let mut s = login(&t);

    let reported = s.report_luns().unwrap();
    assert!(
        reported.contains(&n_kept) && reported.contains(&n_doomed),
        "{reported:?}"
    );
    assert_eq!(
        sense_of(s.test_unit_ready(n_doomed)),
        NOT_READY_MANUAL_INTERVENTION
    );
    assert_eq!(
        sense_of(s.read16(n_doomed, 0, 8, 512)),
        NOT_READY_MANUAL_INTERVENTION
    );
    assert_eq!(
        sense_of(s.write16(n_doomed, 0, &[1; 512], 512, false)),
        NOT_READY_MANUAL_INTERVENTION
    );
    assert_eq!(
        sense_of(s.synchronize_cache(n_doomed)),
        NOT_READY_MANUAL_INTERVENTION
    );
    let vpd80 = s.inquiry(n_doomed, Some(0x80)).unwrap();
    assert_eq!(
        &vpd80[4..],
        serial.as_bytes(),
        "its identity is still served"
    );
    let cap = s.read_capacity16(n_doomed).unwrap();
    assert_eq!(
        cap.blocks * u64::from(cap.block_size),
        1 << 20,
        "its recorded size"
    );
    assert_eq!(s.read16(n_kept, 0, 8, 512).unwrap(), vec![0x5a; 4096]);

    let r = admin.get(r::ADMIN_LUNS).unwrap();
    expect_status(&r, 200);
    let luns: Vec<LunRecord> = r.json().unwrap();
    let missing: Vec<&str> = luns
        .iter()
        .filter(|l| l.volume_missing)
        .map(|l| l.id.as_str())
        .collect();
    assert_eq!(missing, vec![doomed.as_str()]);
    let r = admin.get(r::ADMIN_STATUS).unwrap();
    expect_status(&r, 200);
    let status: serde_json::Value = r.json().unwrap();
    assert_eq!(status["health"]["state"], "critical", "{status}");
    let reasons = status["health"]["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|x| x
            .as_str()
            .unwrap()
            .contains(&format!("LUN {doomed} (doomed) lost its volume"))),
        "{status}"
    );

    for path in [
        r::fill(r::ADMIN_UNMAP, &[("host", "h"), ("lun", &doomed)]),
        r::fill(r::ADMIN_LUN, &[("lun", &doomed)]),
    ] {
        let r = admin.request("DELETE", &path, None).unwrap();
        assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    }
    let _ = s.take_unit_attentions();
    assert_eq!(s.report_luns().unwrap(), vec![n_kept]);
    assert_eq!(s.read16(n_kept, 0, 8, 512).unwrap(), vec![0x5a; 4096]);
    let r = admin.get(r::ADMIN_STATUS).unwrap();
    let status: serde_json::Value = r.json().unwrap();
    assert!(
        !status["health"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains("lost its volume")),
        "{status}"
    );
}
