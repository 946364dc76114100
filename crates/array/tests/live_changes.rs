//! A host changed while its initiators are logged in, over the real HTTPS API and real iSCSI
//! sessions on 127.0.0.1 (the project's initiator): nothing is unmapped, a removed initiator
//! is cut off at once, an added one sees the host's LUNs, a CHAP change applies from the next
//! login, a rotated token is refused at once, and all of it survives a restart.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use api::routes as r;
use api::*;
use array::client::{Client, Response};
use common::*;
use iscsi::initiator::{ChapCredentials, InitiatorConfig, InitiatorError, Session};

const IQN_A: &str = "iqn.1991-05.com.microsoft:node-a";
const IQN_B: &str = "iqn.1991-05.com.microsoft:node-a-new-hba";
const IQN_C: &str = "iqn.1991-05.com.microsoft:node-c";
const SECRET: &str = "correct-horse1";

fn with_iscsi() -> TestArray {
    TestArray::start_with(|c| c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))])
}

fn login(t: &TestArray, iqn: &str, secret: Option<&str>) -> Result<Session, InitiatorError> {
    let mut cfg = InitiatorConfig::new(iqn);
    cfg.timeout = Duration::from_secs(10);
    cfg.chap = secret.map(|s| ChapCredentials {
        user: iqn.into(),
        secret: s.as_bytes().to_vec(),
        mutual: None,
    });
    Session::login(
        t.running().iscsi_addrs[0],
        t.running().array.target_name(),
        &cfg,
    )
}

fn update(admin: &mut Client, host: &str, req: &UpdateHost) -> Response {
    let body = serde_json::to_vec(req).unwrap();
    admin
        .request(
            "PATCH",
            &r::fill(r::ADMIN_HOST, &[("host", host)]),
            Some(&body),
        )
        .unwrap()
}

fn host(admin: &mut Client, name: &str) -> HostRecord {
    admin
        .get(&r::fill(r::ADMIN_HOST, &[("host", name)]))
        .unwrap()
        .json()
        .unwrap()
}

/// The session has been ended by the target: its next command fails (within a bound).
#[track_caller]
fn ended(s: &mut Session) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if s.report_luns().is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the removed initiator's session is still answered");
}

#[test]
fn initiators_change_under_live_sessions_without_unmapping_anything() {
    let t = with_iscsi();
    let mut admin = t.admin();
    let (lun, _) = lun_for_host(&mut admin, "data", "node-a", IQN_A);
    let mut a = login(&t, IQN_A, None).unwrap();
    a.write16(0, 0, &[0x42u8; 512], 512, false).unwrap();
    assert!(
        login(&t, IQN_B, None).is_err(),
        "not the host's initiator yet"
    );

    // Added: the new initiator logs in and sees the host's LUN and its data; the old
    // session carries on untouched.
    let r = update(
        &mut admin,
        "node-a",
        &UpdateHost {
            add_initiators: vec![IQN_B.into()],
            ..UpdateHost::default()
        },
    );
    expect_status(&r, 200);
    let mut b = login(&t, IQN_B, None).unwrap();
    assert_eq!(b.report_luns().unwrap(), vec![0]);
    assert_eq!(b.read16(0, 0, 1, 512).unwrap(), vec![0x42u8; 512]);
    assert_eq!(a.report_luns().unwrap(), vec![0]);

    // Removed: its session ends now and it cannot log in again; the host keeps its LUN.
    let r = update(
        &mut admin,
        "node-a",
        &UpdateHost {
            remove_initiators: vec![IQN_A.into()],
            ..UpdateHost::default()
        },
    );
    expect_status(&r, 200);
    let rec: HostRecord = r.json().unwrap();
    assert_eq!(rec.initiators, vec![IQN_B.to_string()]);
    assert_eq!(rec.luns.len(), 1, "nothing is unmapped");
    ended(&mut a);
    match login(&t, IQN_A, None) {
        Err(InitiatorError::LoginRefused { class: 2, .. }) => {}
        other => panic!("a removed initiator must be refused, got {other:?}"),
    }
    assert_eq!(b.read16(0, 0, 1, 512).unwrap(), vec![0x42u8; 512]);

    // Refusals say what is wrong: the last initiator, one that is not the host's, one of
    // another host, and a malformed name.
    let p = problem(&update(
        &mut admin,
        "node-a",
        &UpdateHost {
            remove_initiators: vec![IQN_B.into()],
            ..UpdateHost::default()
        },
    ));
    assert_eq!(p.code, ProblemCode::BadRequest);
    assert!(p.detail.contains("--add NEW"), "{}", p.detail);
    let p = problem(&update(
        &mut admin,
        "node-a",
        &UpdateHost {
            remove_initiators: vec![IQN_C.into()],
            ..UpdateHost::default()
        },
    ));
    assert_eq!(p.code, ProblemCode::NotFound);
    assert!(p.detail.contains(IQN_B), "{}", p.detail);
    let c = admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: "node-c".into(),
                initiators: vec![IQN_C.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap();
    expect_status(&c, 201);
    let p = problem(&update(
        &mut admin,
        "node-a",
        &UpdateHost {
            add_initiators: vec![IQN_C.into()],
            ..UpdateHost::default()
        },
    ));
    assert_eq!(p.code, ProblemCode::Conflict);
    assert!(p.detail.contains("node-c"), "{}", p.detail);
    let p = problem(&update(
        &mut admin,
        "node-a",
        &UpdateHost {
            add_initiators: vec!["iqn.2025-1.bad".into()],
            ..UpdateHost::default()
        },
    ));
    assert_eq!(p.code, ProblemCode::BadRequest);

    // Replacing (remove the old, add the new) is one change; it and the rest survive a
    // restart, and the daemon serves what the journal says.
    let r = update(
        &mut admin,
        "node-a",
        &UpdateHost {
            add_initiators: vec![IQN_A.into()],
            remove_initiators: vec![IQN_B.into()],
            ..UpdateHost::default()
        },
    );
    expect_status(&r, 200);
    ended(&mut b);
    let dir = t.stop();
    let t = TestArray::start_in(dir, |c| {
        c.iscsi_portals = vec![SocketAddr::from(([127, 0, 0, 1], 0))]
    });
    let mut admin = t.admin();
    let rec = host(&mut admin, "node-a");
    assert_eq!(rec.initiators, vec![IQN_A.to_string()]);
    assert_eq!(rec.luns[0].lun, lun);
    assert!(
        login(&t, IQN_B, None).is_err(),
        "removed before the restart"
    );
    let mut a = login(&t, IQN_A, None).unwrap();
    assert_eq!(a.read16(0, 0, 1, 512).unwrap(), vec![0x42u8; 512]);
    let _ = a.logout();
}

#[test]
fn a_chap_secret_set_or_cleared_applies_from_the_next_login() {
    let t = with_iscsi();
    let mut admin = t.admin();
    lun_for_host(&mut admin, "data", "node-a", IQN_A);
    let mut open = login(&t, IQN_A, None).unwrap();
    let set = update(
        &mut admin,
        "node-a",
        &UpdateHost {
            chap_secret: Some(SECRET.into()),
            ..UpdateHost::default()
        },
    );
    expect_status(&set, 200);
    assert!(set.json::<HostRecord>().unwrap().chap);
    // The open session stays; the next login needs the secret.
    assert_eq!(open.report_luns().unwrap(), vec![0]);
    assert!(login(&t, IQN_A, None).is_err(), "no CHAP, no login");
    assert!(login(&t, IQN_A, Some("wrong-secret12")).is_err());
    let mut s = login(&t, IQN_A, Some(SECRET)).unwrap();
    assert_eq!(s.report_luns().unwrap(), vec![0]);
    let _ = s.logout();
    // A short secret is refused with its rule; setting and clearing at once is refused.
    let p = problem(&update(
        &mut admin,
        "node-a",
        &UpdateHost {
            chap_secret: Some("short".into()),
            ..UpdateHost::default()
        },
    ));
    assert!(p.detail.contains("12 to 16"), "{}", p.detail);
    let p = problem(&update(
        &mut admin,
        "node-a",
        &UpdateHost {
            chap_secret: Some(SECRET.into()),
            clear_chap: true,
            ..UpdateHost::default()
        },
    ));
    assert_eq!(p.code, ProblemCode::BadRequest);
    // Cleared: the next login goes without CHAP.
    let clear = update(
        &mut admin,
        "node-a",
        &UpdateHost {
            clear_chap: true,
            ..UpdateHost::default()
        },
    );
    expect_status(&clear, 200);
    assert!(!clear.json::<HostRecord>().unwrap().chap);
    let mut s = login(&t, IQN_A, None).unwrap();
    assert_eq!(s.report_luns().unwrap(), vec![0]);
    let _ = s.logout();
    let _ = open.logout();
}

#[test]
fn a_rotated_token_is_refused_at_once_and_the_new_one_works() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (lun, old) = lun_for_host(&mut admin, "data", "node-a", IQN_A);
    let lookup = |tok: &str| {
        t.client(Some(tok))
            .post(r::LOOKUP, &LookupRequest { keys: vec![] })
            .unwrap()
    };
    expect_status(&lookup(&old), 200);
    let rot = admin
        .request(
            "POST",
            &r::fill(r::ADMIN_HOST_TOKEN, &[("host", "node-a")]),
            None,
        )
        .unwrap();
    expect_status(&rot, 200);
    let created: CreatedHost = rot.json().unwrap();
    assert_ne!(created.token, old);
    assert_eq!(created.host.luns[0].lun, lun, "nothing is unmapped");
    assert_eq!(problem(&lookup(&old)).code, ProblemCode::Unauthorized);
    expect_status(&lookup(&created.token), 200);
    // The rotation is journaled: after a restart the old token is still refused.
    let dir = t.stop();
    let t = TestArray::start_in(dir, |_| {});
    let lookup = |tok: &str| {
        t.client(Some(tok))
            .post(r::LOOKUP, &LookupRequest { keys: vec![] })
            .unwrap()
    };
    assert_eq!(problem(&lookup(&old)).code, ProblemCode::Unauthorized);
    expect_status(&lookup(&created.token), 200);
    let missing = t
        .admin()
        .request(
            "POST",
            &r::fill(r::ADMIN_HOST_TOKEN, &[("host", "nobody")]),
            None,
        )
        .unwrap();
    assert_eq!(problem(&missing).code, ProblemCode::NotFound);
}
