//! One array identity served by two daemons on loopback, and the clients given every gateway's
//! URL: the provider's HTTPS client and the CLI pass over a dead URL, stay with the gateway
//! that answered, move to the next when it is killed, refuse a gateway with another
//! certificate, and name every URL when none answers.
//!
//! The two daemons share the identity (array id, certificate and key, admin token) but not
//! their state, so which one served a call shows in its own LUN list.

mod common;

use std::process::Command;

use api::{CreateLun, LunRecord, routes};
use common::{BIN, Daemon, Pool, share_identity, start, start_at};
use provider::https::{Client, ClientConfig, ClientError};

/// A URL where nothing listens: a port bound, then closed.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("https://{addr}")
}

fn token(d: &Daemon) -> String {
    std::fs::read_to_string(&d.token_file)
        .unwrap()
        .trim()
        .to_string()
}

/// The names of the LUNs `d` holds, asked of it alone.
fn luns_of(d: &Daemon) -> Vec<String> {
    let c = Client::new(ClientConfig::new(&d.api, &token(d), &d.fingerprint)).unwrap();
    let luns: Vec<LunRecord> = c.get(routes::ADMIN_LUNS).unwrap();
    luns.into_iter().map(|l| l.name).collect()
}

fn create(c: &Client, name: &str, key: &str) -> Result<LunRecord, ClientError> {
    c.post_keyed(
        routes::ADMIN_LUNS,
        Some(&CreateLun {
            name: name.into(),
            size_bytes: 4 << 20,
        }),
        key,
    )
}

/// The CLI with `args`, its standard output as JSON on success, else its exit code and
/// standard error.
fn cli(
    d: &Daemon,
    array: &[&str],
    env: Option<&str>,
    args: &[&str],
) -> Result<String, (i32, String)> {
    let mut c = Command::new(BIN);
    c.args(args).arg("--json");
    for a in array {
        c.args(["--array", a]);
    }
    if let Some(v) = env {
        c.env("SHADOWLUN_ARRAY", v);
    } else {
        c.env_remove("SHADOWLUN_ARRAY");
    }
    let out = c
        .args(["--fingerprint", &d.fingerprint, "--token-file"])
        .arg(&d.token_file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stderr).unwrap(),
        ))
    }
}

fn names(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn clients_of_several_gateways_fail_over_and_stay() {
    let (pool_a, pool_b, pool_c) = (
        Pool::new("failover-a"),
        Pool::new("failover-b"),
        Pool::new("failover-c"),
    );
    let mut a = start(&pool_a.0);
    share_identity(&pool_a.0, &pool_b.0);
    let mut b = start(&pool_b.0);
    assert_eq!(
        a.fingerprint, b.fingerprint,
        "one identity, one certificate"
    );
    assert_eq!(token(&a), token(&b));
    let dead = dead_url();
    let urls = [dead.clone(), a.api.clone(), b.api.clone()];
    let client = Client::new(ClientConfig::with_urls(&urls, &token(&a), &a.fingerprint)).unwrap();

    // The dead URL is passed over; A answers, and every call stays with A.
    for i in 0..3 {
        create(&client, &format!("on-a-{i}"), &format!("key-a-{i}")).unwrap();
    }
    assert_eq!(client.current_url(), a.api);
    assert_eq!(luns_of(&a), ["on-a-0", "on-a-1", "on-a-2"]);
    assert!(luns_of(&b).is_empty());

    // The CLI: URLs comma-separated, repeated, or in SHADOWLUN_ARRAY; each run starts with
    // the first URL and passes over the dead one.
    let both = format!("{dead},{},{}", a.api, b.api);
    assert_eq!(
        names(&cli(&a, &[&both], None, &["lun", "list"]).unwrap()),
        ["on-a-0", "on-a-1", "on-a-2"]
    );
    assert!(names(&cli(&a, &[&dead, &b.api], None, &["lun", "list"]).unwrap()).is_empty());
    assert!(
        names(
            &cli(
                &a,
                &[],
                Some(&format!("{dead}, {}", b.api)),
                &["lun", "list"]
            )
            .unwrap()
        )
        .is_empty()
    );

    // `status` names the gateway that answered and asks each of the others on its own.
    let st: serde_json::Value =
        serde_json::from_str(&cli(&a, &[&both], None, &["status"]).unwrap()).unwrap();
    assert_eq!(st["gateway"], a.api.as_str(), "{st}");
    let seen: Vec<(&str, bool)> = st["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["url"].as_str().unwrap(), g["answers"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            (dead.as_str(), false),
            (a.api.as_str(), true),
            (b.api.as_str(), true)
        ]
    );
    assert!(
        st["gateways"][0]["error"]
            .as_str()
            .unwrap()
            .contains(dead.as_str()),
        "{st}"
    );

    // A problem is an answer: a name A already has is refused by A, not created on B.
    match create(&client, "on-a-0", "key-again") {
        Err(ClientError::Problem(p)) => assert_eq!(p.code, api::ProblemCode::Conflict),
        other => panic!("expected A's conflict, got {other:?}"),
    }
    assert!(luns_of(&b).is_empty());

    // A is killed: the next call goes to B.
    let a_addr = a.api.strip_prefix("https://").unwrap().to_string();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    create(&client, "on-b-0", "key-b-0").unwrap();
    assert_eq!(client.current_url(), b.api);
    assert_eq!(luns_of(&b), ["on-b-0"]);

    // A is back on its address: calls stay with B, the gateway that answered last.
    let a = start_at(&pool_a.0, &a_addr, &[]);
    assert_eq!(a.api, urls[1]);
    for i in 1..3 {
        create(&client, &format!("on-b-{i}"), &format!("key-b-{i}")).unwrap();
    }
    assert_eq!(client.current_url(), b.api);
    assert_eq!(luns_of(&b), ["on-b-0", "on-b-1", "on-b-2"]);
    assert_eq!(luns_of(&a), ["on-a-0", "on-a-1", "on-a-2"]);

    // A gateway presenting another certificate is refused with the mismatch, not passed
    // over: A, after it, is not called.
    let c = start(&pool_c.0);
    assert_ne!(c.fingerprint, a.fingerprint);
    let with_impostor = Client::new(ClientConfig::with_urls(
        &[dead.clone(), c.api.clone(), a.api.clone()],
        &token(&a),
        &a.fingerprint,
    ))
    .unwrap();
    match create(&with_impostor, "through-c", "key-c") {
        Err(ClientError::CertificateMismatch { pinned, presented }) => {
            assert_eq!(pinned, a.fingerprint);
            assert_eq!(presented, c.fingerprint);
        }
        other => panic!("expected the certificate mismatch, got {other:?}"),
    }
    assert!(!luns_of(&a).contains(&"through-c".to_string()));
    let (code, err) = cli(
        &a,
        &[&format!("{},{}", c.api, a.api)],
        None,
        &["lun", "list"],
    )
    .unwrap_err();
    assert_eq!(code, 7, "{err}");
    assert!(err.contains(&c.fingerprint), "{err}");
    drop(c);

    // Every gateway dead: the error names each URL.
    drop(a);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    match client.health() {
        Err(ClientError::Transport(m)) => {
            assert!(m.contains("none of its 3 gateways answered"), "{m}");
            for u in &urls {
                assert!(m.contains(&format!("{u} (")), "{u} is not named: {m}");
            }
        }
        other => panic!("expected every gateway to fail, got {other:?}"),
    }
    let (code, err) = cli(&b, &[&urls.join(",")], None, &["lun", "list"]).unwrap_err();
    assert_eq!(code, 6, "{err}");
    for u in &urls {
        assert!(err.contains(u.as_str()), "{u} is not named: {err}");
    }
}
