//! Changes an administrator makes to a live array without an outage, over the real HTTPS
//! API: a LUN renamed, LUNs named by id or by name in every admin path, and every list in
//! the order an administrator counts.

mod common;

use api::routes as r;
use api::*;
use array::client::{Client, Response};
use common::*;

const IQN_A: &str = "iqn.1991-05.com.microsoft:node-a";

fn lun(admin: &mut Client, name: &str) -> LunRecord {
    let r = admin
        .post(
            r::ADMIN_LUNS,
            &CreateLun {
                name: name.into(),
                size_bytes: 1 << 20,
            },
        )
        .unwrap();
    expect_status(&r, 201);
    r.json().unwrap()
}

fn patch(admin: &mut Client, lun: &str, req: &UpdateLun) -> Response {
    let body = serde_json::to_vec(req).unwrap();
    admin
        .request(
            "PATCH",
            &r::fill(r::ADMIN_LUN, &[("lun", lun)]),
            Some(&body),
        )
        .unwrap()
}

fn rename(admin: &mut Client, lun: &str, name: &str) -> Response {
    patch(
        admin,
        lun,
        &UpdateLun {
            size_bytes: None,
            name: Some(name.into()),
        },
    )
}

fn get_lun(admin: &mut Client, lun: &str) -> Response {
    admin.get(&r::fill(r::ADMIN_LUN, &[("lun", lun)])).unwrap()
}

#[test]
fn a_renamed_lun_keeps_its_id_identity_and_mappings_and_survives_a_restart() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let (id, _) = lun_for_host(&mut admin, "sql-data", "node-a", IQN_A);
    let before: LunRecord = get_lun(&mut admin, "sql-data").json().unwrap();
    assert_eq!(before.id, id);

    let r = rename(&mut admin, "sql-data", "sql-data-old");
    expect_status(&r, 200);
    let after: LunRecord = r.json().unwrap();
    assert_eq!(after.name, "sql-data-old");
    assert_eq!(
        (&after.id, &after.serial, &after.naa, &after.mapped_to),
        (&before.id, &before.serial, &before.naa, &before.mapped_to),
        "a rename changes the name only"
    );
    // The old name is free again and names nothing; the new name and the id both work.
    assert_eq!(
        problem(&get_lun(&mut admin, "sql-data")).code,
        ProblemCode::NotFound
    );
    expect_status(&get_lun(&mut admin, "sql-data-old"), 200);
    expect_status(&get_lun(&mut admin, &id), 200);

    // A name is unique, and never of a LUN id's form (lun-N always means LUN N).
    let other = lun(&mut admin, "other");
    let p = problem(&rename(&mut admin, &other.id, "sql-data-old"));
    assert_eq!(p.code, ProblemCode::Conflict, "{}", p.detail);
    assert!(p.detail.contains(&id), "{}", p.detail);
    let p = problem(&rename(&mut admin, "other", "lun-9"));
    assert_eq!(p.code, ProblemCode::BadRequest);
    assert!(p.detail.contains("lun-N"), "{}", p.detail);
    let p = problem(&rename(&mut admin, "other", "bad/name"));
    assert_eq!(p.code, ProblemCode::BadRequest);
    let p = problem(&patch(&mut admin, "other", &UpdateLun::default()));
    assert_eq!(p.code, ProblemCode::BadRequest);
    let created = admin.post(
        r::ADMIN_LUNS,
        &CreateLun {
            name: "lun-3".into(),
            size_bytes: 1 << 20,
        },
    );
    assert_eq!(problem(&created.unwrap()).code, ProblemCode::BadRequest);

    // Grow and rename at once, by name; a shrink is refused in sizes an admin reads.
    let r = patch(
        &mut admin,
        "sql-data-old",
        &UpdateLun {
            size_bytes: Some(2 << 20),
            name: Some("sql-data".into()),
        },
    );
    expect_status(&r, 200);
    let p = problem(&patch(
        &mut admin,
        "sql-data",
        &UpdateLun {
            size_bytes: Some(1 << 20),
            name: None,
        },
    ));
    assert_eq!(p.code, ProblemCode::BadRequest);
    assert!(p.detail.contains("2 MiB"), "{}", p.detail);

    // The journal keeps the rename across a restart.
    let dir = t.stop();
    let t = TestArray::start_in(dir, |_| {});
    let mut admin = t.admin();
    let back: LunRecord = get_lun(&mut admin, "sql-data").json().unwrap();
    assert_eq!((back.id, back.size_bytes), (id, 2 << 20));
    assert_eq!(back.serial, before.serial);
}

#[test]
fn admin_paths_take_a_lun_by_name_or_by_id() {
    let t = TestArray::start();
    let mut admin = t.admin();
    let data = lun(&mut admin, "data");
    lun(&mut admin, "spare");
    let host = admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: "node-a".into(),
                initiators: vec![IQN_A.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap();
    expect_status(&host, 201);
    let map = |admin: &mut Client, lun: &str| {
        admin
            .post(
                &r::fill(r::ADMIN_MAP, &[("host", "node-a")]),
                &MapLun {
                    lun: lun.into(),
                    lun_number: None,
                    shared: false,
                },
            )
            .unwrap()
    };
    // Mapped by name: the host record names the LUN by id.
    let h: HostRecord = map(&mut admin, "data").json().unwrap();
    assert_eq!(h.luns[0].lun, data.id);
    // Mapping it again by id is the same mapping.
    let h: HostRecord = map(&mut admin, &data.id).json().unwrap();
    assert_eq!(h.luns.len(), 1);
    // A refused delete by name names it by id and says how to go on.
    let p = problem(
        &admin
            .request("DELETE", &r::fill(r::ADMIN_LUN, &[("lun", "data")]), None)
            .unwrap(),
    );
    assert_eq!(p.code, ProblemCode::Conflict);
    assert!(p.detail.contains("shadowlun host unmap"), "{}", p.detail);
    assert!(!p.detail.contains("/v1/"), "{}", p.detail);
    // Unmapped by name, deleted by name.
    let unmap = r::fill(r::ADMIN_UNMAP, &[("host", "node-a"), ("lun", "data")]);
    expect_status(&admin.request("DELETE", &unmap, None).unwrap(), 204);
    let del = r::fill(r::ADMIN_LUN, &[("lun", "spare")]);
    expect_status(&admin.request("DELETE", &del, None).unwrap(), 204);
    let snap = r::fill(r::ADMIN_SNAPSHOT, &[("lun", "data")]);
    let p = problem(&admin.request("DELETE", &snap, None).unwrap());
    assert_eq!(p.code, ProblemCode::Conflict);
    assert!(p.detail.contains("shadowlun lun delete"), "{}", p.detail);
    let p = problem(&get_lun(&mut admin, "nothing"));
    assert_eq!(p.code, ProblemCode::NotFound);
    assert!(p.detail.contains("nothing"), "{}", p.detail);
}

#[test]
fn lists_come_in_the_order_an_administrator_counts() {
    let t = TestArray::start();
    let mut admin = t.admin();
    for i in 1..=11 {
        lun(&mut admin, &format!("vol{i}"));
    }
    let luns: Vec<LunRecord> = admin.get(r::ADMIN_LUNS).unwrap().json().unwrap();
    let ids: Vec<&str> = luns.iter().map(|l| l.id.as_str()).collect();
    let want: Vec<String> = (1..=11).map(|i| format!("lun-{i}")).collect();
    assert_eq!(ids, want, "lun-2 before lun-10");
    for (i, name) in [(10, "node-10"), (2, "node-2"), (1, "node-1")] {
        let r = admin
            .post(
                r::ADMIN_HOSTS,
                &CreateHost {
                    name: name.into(),
                    initiators: vec![format!("iqn.1991-05.com.microsoft:n{i}")],
                    chap_secret: None,
                    import_from: vec![],
                },
            )
            .unwrap();
        expect_status(&r, 201);
    }
    let hosts: Vec<HostRecord> = admin.get(r::ADMIN_HOSTS).unwrap().json().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-10"]);
}

fn add_host(admin: &mut Client, name: &str, iqn: &str) -> Response {
    admin
        .post(
            r::ADMIN_HOSTS,
            &CreateHost {
                name: name.into(),
                initiators: vec![iqn.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap()
}

/// A creating request retried with its idempotency key gets the first answer (a host's
/// one-time token included), also after a restart; the key with another request is refused.
#[test]
fn a_retried_creating_request_gets_the_first_answer() {
    let t = TestArray::start();
    let mut admin = t.admin();
    admin.set_idempotency_key(Some("k-host-1"));
    let first = add_host(&mut admin, "sql01", IQN_A);
    expect_status(&first, 201);
    let first: CreatedHost = first.json().unwrap();
    let again = add_host(&mut admin, "sql01", IQN_A);
    expect_status(&again, 201);
    assert_eq!(
        again.json::<CreatedHost>().unwrap(),
        first,
        "the same token"
    );
    let p = problem(&add_host(&mut admin, "sql02", IQN_A));
    assert_eq!(p.code, ProblemCode::Conflict);
    assert!(
        p.detail.contains("k-host-1") && p.detail.contains("new key"),
        "{}",
        p.detail
    );
    // Without a key the same request is a second attempt at creating, and refused.
    admin.set_idempotency_key(None);
    assert_eq!(
        problem(&add_host(&mut admin, "sql01", IQN_A)).code,
        ProblemCode::Conflict
    );
    // A LUN created once however often its request is repeated.
    admin.set_idempotency_key(Some("k-lun-1"));
    let l1 = lun(&mut admin, "data");
    let l2 = lun(&mut admin, "data");
    assert_eq!(l1.id, l2.id);
    admin.set_idempotency_key(None);
    let luns: Vec<LunRecord> = admin.get(r::ADMIN_LUNS).unwrap().json().unwrap();
    assert_eq!(luns.len(), 1);
    // The journal keeps the answers across a restart.
    let dir = t.stop();
    let t = TestArray::start_in(dir, |_| {});
    let mut admin = t.admin();
    admin.set_idempotency_key(Some("k-host-1"));
    let after = add_host(&mut admin, "sql01", IQN_A);
    expect_status(&after, 201);
    assert_eq!(after.json::<CreatedHost>().unwrap().token, first.token);
    admin.set_idempotency_key(Some("x y"));
    assert_eq!(
        problem(&add_host(
            &mut admin,
            "sql03",
            "iqn.1991-05.com.microsoft:c"
        ))
        .code,
        ProblemCode::BadRequest
    );
}
