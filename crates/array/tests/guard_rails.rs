//! Guard rails on destructive admin calls, over the real HTTPS API: each refusal names what
//! is in the way and how to proceed, and the explicit way through works.

mod common;

use api::routes as r;
use api::*;
use array::client::{Client, Response};
use common::*;

const IQN_A: &str = "iqn.1991-05.com.microsoft:node-a";
const IQN_B: &str = "iqn.1991-05.com.microsoft:node-b";

fn host(admin: &mut Client, name: &str, iqn: &str, import_from: &[&str]) -> Response {
    admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: name.into(),
                initiators: vec![iqn.into()],
                chap_secret: None,
                import_from: import_from.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap()
}

fn map(admin: &mut Client, host: &str, lun: &str, shared: bool) -> Response {
    admin
        .post(
            &r::fill(r::ADMIN_MAP, &[("host", host)]),
            &MapLun {
                lun: lun.into(),
                lun_number: None,
                shared,
            },
        )
        .unwrap()
}

fn lun(admin: &mut Client, name: &str, size_bytes: u64) -> String {
    let r = admin
        .post(
            r::ADMIN_LUNS,
            &CreateLun {
                name: name.into(),
                size_bytes,
            },
        )
        .unwrap();
    expect_status(&r, 201);
    r.json::<LunRecord>().unwrap().id
}

/// A set the host with token `tok` prepared with one snapshot of `src`.
fn prepared_set(t: &TestArray, tok: &str, src: &str) -> (Client, uuid::Uuid) {
    let mut h = t.client(Some(tok));
    let set = uuid::Uuid::new_v4();
    let plan = PrepareRequest {
        context: vss::SnapshotContext(0),
        snapshots: vec![PlannedSnapshot {
            snapshot_id: uuid::Uuid::new_v4(),
            source: src.into(),
        }],
    };
    expect_status(&h.post(&set_path(r::PREPARE, set), &plan).unwrap(), 204);
    (h, set)
}

#[track_caller]
fn conflict_saying(r: &Response, words: &[&str]) {
    let p = problem(r);
    assert_eq!(p.code, ProblemCode::Conflict, "{}", p.detail);
    for w in words {
        assert!(p.detail.contains(w), "{:?} lacks {w:?}", p.detail);
    }
}

#[test]
fn a_second_host_maps_a_lun_only_when_shared_and_a_host_with_luns_is_removed_only_with_force() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (data, _) = lun_for_host(&mut admin, "data", "node-a", IQN_A);
    expect_status(&host(&mut admin, "node-b", IQN_B, &["node-a"]), 201);
    conflict_saying(
        &map(&mut admin, "node-b", &data, false),
        &["node-a", "--shared"],
    );
    expect_status(&map(&mut admin, "node-b", &data, true), 200);

    // A host with LUNs mapped stays unless forced; the refusal names its LUNs.
    let path = r::fill(r::ADMIN_HOST, &[("host", "node-a")]);
    conflict_saying(
        &admin.request("DELETE", &path, None).unwrap(),
        &[&data, "--force"],
    );
    let p = problem(
        &admin
            .request("DELETE", &format!("{path}?force=yes"), None)
            .unwrap(),
    );
    assert_eq!(p.code, ProblemCode::BadRequest);
    expect_status(
        &admin
            .request("DELETE", &format!("{path}?force=true"), None)
            .unwrap(),
        204,
    );
    // The grant naming the removed host went with it: a new host of that name inherits
    // nothing from node-b's past.
    let b: HostRecord = admin
        .get(&r::fill(r::ADMIN_HOST, &[("host", "node-b")]))
        .unwrap()
        .json()
        .unwrap();
    assert!(b.import_from.is_empty(), "{:?}", b.import_from);
    // A LUN mapped to a host cannot be deleted; the refusal names the host and the way.
    conflict_saying(
        &admin
            .request("DELETE", &r::fill(r::ADMIN_LUN, &[("lun", &data)]), None)
            .unwrap(),
        &["node-b", "unmap"],
    );
}

#[test]
fn hosts_name_existing_hosts_and_valid_distinct_initiators() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let p = problem(&host(&mut admin, "h1", IQN_A, &["nobody"]));
    assert_eq!(p.code, ProblemCode::NotFound);
    assert!(p.detail.contains("nobody"), "{}", p.detail);
    for (bad, why) in [
        ("iqn.1991-5.com.microsoft:x", "yyyy-mm"),
        ("iqn.1991-13.com.microsoft:x", "yyyy-mm"),
        ("iqn.1991-05:x", "reversed domain"),
        ("iqn.1991-05.Com.microsoft:x", "lower-case"),
        ("eui.0123", "16 hex digits"),
        ("naa.0123456789abcdef0", "16 or 32 hex digits"),
        ("host-a", "iqn., eui. or naa."),
    ] {
        let p = problem(&host(&mut admin, "h1", bad, &[]));
        assert_eq!(p.code, ProblemCode::BadRequest, "{bad}");
        assert!(p.detail.contains(why), "{bad}: {}", p.detail);
    }
    for (i, good) in [
        "iqn.1991-05.com.microsoft:sql01.example.com",
        "eui.02004567A425678D",
        "naa.52004567BA64678D",
        "naa.62004567BA64678D0123456789ABCDEF",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("good{i}");
        expect_status(&host(&mut admin, &name, good, &[]), 201);
    }
    let twice = admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: "twice".into(),
                initiators: vec![IQN_B.into(), IQN_B.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap();
    let p = problem(&twice);
    assert_eq!(p.code, ProblemCode::BadRequest);
    assert!(p.detail.contains("twice"), "{}", p.detail);
    // The same initiator on a second host is refused.
    expect_status(&host(&mut admin, "first", IQN_B, &[]), 201);
    conflict_saying(&host(&mut admin, "second", IQN_B, &[]), &["first"]);
}

#[test]
fn an_admin_resync_is_forced_onto_a_mapped_or_foreign_lun_and_never_shrinks() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (src, tok) = lun_for_host(&mut admin, "src", "node-a", IQN_A);
    let other = lun(&mut admin, "other", 1 << 20);
    let big = lun(&mut admin, "big", 4 << 20);
    // A committed snapshot of src, taken by its host.
    let (mut h, set) = prepared_set(&t, &tok, &src);
    expect_status(
        &h.request("POST", &set_path(r::COMMIT, set), None).unwrap(),
        204,
    );
    let sets: Vec<SetRecord> = admin.get(r::ADMIN_SETS).unwrap().json().unwrap();
    let snap = sets[0].snapshots[0].lun.clone();
    let resync = |admin: &mut Client, dst: &str, force: bool| {
        admin
            .post(
                r::ADMIN_RESYNC,
                &ResyncRequest {
                    pairs: vec![ResyncPair {
                        snapshot: snap.clone(),
                        destination: dst.into(),
                    }],
                    force,
                },
            )
            .unwrap()
    };
    conflict_saying(&resync(&mut admin, &src, false), &["node-a", "--force"]);
    conflict_saying(&resync(&mut admin, &other, false), &[&src, "--force"]);
    conflict_saying(
        &resync(&mut admin, &big, true),
        &["never shrinks", "4 MiB", "1 MiB"],
    );
    expect_status(&resync(&mut admin, &other, true), 200);
}

#[test]
fn an_admin_aborts_a_set_left_prepared_and_set_lists_show_deleted_luns() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (src, tok) = lun_for_host(&mut admin, "src", "node-a", IQN_A);
    let (_, set) = prepared_set(&t, &tok, &src);
    let abort = r::fill(r::ADMIN_SET_ABORT, &[("set", &set.to_string())]);
    expect_status(&admin.request("POST", &abort, None).unwrap(), 204);
    let sets: Vec<SetRecord> = admin.get(r::ADMIN_SETS).unwrap().json().unwrap();
    assert_eq!(sets[0].state, SetState::Aborted);
    assert!(
        sets[0].snapshots.iter().all(|m| m.deleted),
        "an aborted set's LUNs are gone and say so: {:?}",
        sets[0].snapshots
    );
    let luns: Vec<LunRecord> = admin.get(r::ADMIN_LUNS).unwrap().json().unwrap();
    assert_eq!(luns.len(), 1, "only the original is left");
    let unknown = r::fill(
        r::ADMIN_SET_ABORT,
        &[("set", &uuid::Uuid::new_v4().to_string())],
    );
    assert_eq!(
        problem(&admin.request("POST", &unknown, None).unwrap()).code,
        ProblemCode::NotFound
    );
}
