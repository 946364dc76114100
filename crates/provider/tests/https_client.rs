//! The HTTPS client against a real TLS server on loopback: certificate pinning, bearer
//! token, problem+json mapping, deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provider::ControlError;
use provider::array::ArrayControl;
use provider::https::{
    CONNECT_TIMEOUT, Client, ClientConfig, ClientError, HttpsArray, fingerprint_of,
};
use vss::VssId;

type Handler = Arc<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

struct Server {
    url: String,
    fingerprint: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

/// A certificate and its key: what the gateways of one array share.
struct Identity {
    der: Vec<u8>,
    key: Vec<u8>,
}

fn identity() -> Identity {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Identity {
        der: cert.cert.der().to_vec(),
        key: cert.signing_key.serialize_der(),
    }
}

/// A one-purpose HTTPS server: answers each request with `handler(method+path, body)`.
fn serve(handler: Handler) -> Server {
    serve_as(&identity(), handler)
}

/// [`serve`] presenting `id`'s certificate.
fn serve_as(id: &Identity, handler: Handler) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let der = id.der.clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(id.key.clone().into());
    let cfg = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone().into()], key)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(s) = s else { continue };
            let cfg = cfg.clone();
            let handler = handler.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut r = BufReader::new(&mut tls);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let req = line.trim().split(' ').take(2).collect::<Vec<_>>().join(" ");
                    let (mut len, mut auth) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim();
                        if h.is_empty() {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if lower.starts_with("authorization:") {
                            auth = h["authorization:".len()..].trim().to_string();
                        }
                    }
                    let mut body = vec![0; len.min(1 << 20)];
                    r.read_exact(&mut body).unwrap();
                    let body = String::from_utf8(body).unwrap();
                    seen.lock().unwrap().push((req.clone(), auth, body.clone()));
                    let (status, text) = handler(&req, &body);
                    let ctype = if status >= 400 {
                        "application/problem+json"
                    } else {
                        "application/json"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    let w = r.get_mut();
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    let _ = w.flush();
                }
            });
        }
    });
    Server {
        url,
        fingerprint: fingerprint_of(&der),
        seen,
    }
}

fn client(s: &Server) -> HttpsArray {
    HttpsArray::new(ClientConfig::new(&s.url, "host-token-123", &s.fingerprint)).unwrap()
}

#[test]
fn pinned_certificate_token_and_verbs() {
    let set = VssId::from_u128(7);
    let s = serve(Arc::new(|req, _| match req {
        "POST /v1/luns/lookup" => (200, r#"{"luns":[null]}"#.into()),
        _ => (204, String::new()),
    }));
    let a = client(&s);
    assert_eq!(
        a.lookup(&[provider::LunKey {
            identifiers: vec![]
        }])
        .unwrap(),
        vec![None]
    );
    a.end_prepare(set).unwrap();
    a.commit(set).unwrap();
    let seen = s.seen.lock().unwrap();
    assert_eq!(seen[0].0, "POST /v1/luns/lookup");
    assert_eq!(seen[0].2, r#"{"keys":[{"identifiers":[]}]}"#);
    assert_eq!(seen[2].0, format!("POST /v1/sets/{set}/commit"));
    assert!(
        seen.iter()
            .all(|(_, auth, _)| auth == "Bearer host-token-123")
    );
}

#[test]
fn a_different_certificate_is_refused() {
    let s = serve(Arc::new(|_, _| (204, String::new())));
    let mut fp = s.fingerprint.clone();
    fp.replace_range(0..2, if fp.starts_with("00") { "11" } else { "00" });
    let a = HttpsArray::new(ClientConfig::new(&s.url, "t", &fp)).unwrap();
    match a.commit(VssId::nil()) {
        Err(ControlError::Unreachable(m)) => {
            assert!(m.contains("does not match the pinned fingerprint"), "{m}");
            assert!(
                m.contains(&s.fingerprint),
                "the presented fingerprint is named: {m}"
            );
        }
        other => panic!("expected a certificate failure, got {other:?}"),
    }
    assert!(
        s.seen.lock().unwrap().is_empty(),
        "a request reached an unpinned server"
    );
}

#[test]
fn problems_map_to_control_errors() {
    let s = serve(Arc::new(|req, _| {
        let (status, code) = match req {
            r if r.ends_with("/commit") => (507, "no-space"),
            r if r.ends_with("/abort") => (404, "not-found"),
            r if r.ends_with("/end-prepare") => (409, "conflict"),
            _ => (401, "unauthorized"),
        };
        let p = api::Problem::new(
            serde_json::from_value(serde_json::json!(code)).unwrap(),
            "detail here",
        );
        (status, serde_json::to_string(&p).unwrap())
    }));
    let a = client(&s);
    let set = VssId::nil();
    assert_eq!(
        a.commit(set),
        Err(ControlError::NoSpace("detail here".into()))
    );
    assert_eq!(
        a.abort(set),
        Err(ControlError::NotFound("detail here".into()))
    );
    assert_eq!(
        a.end_prepare(set),
        Err(ControlError::Conflict("detail here".into()))
    );
    assert_eq!(
        a.complete(set),
        Err(ControlError::Unauthorized("detail here".into()))
    );
}

#[test]
fn commit_fails_fast_when_the_array_hangs() {
    let s = serve(Arc::new(|_, _| {
        std::thread::sleep(Duration::from_secs(5));
        (204, String::new())
    }));
    let mut cfg = ClientConfig::new(&s.url, "t", &s.fingerprint);
    cfg.commit_timeout = Duration::from_millis(500);
    let a = HttpsArray::new(cfg).unwrap();
    let start = Instant::now();
    let r = a.commit(VssId::nil());
    assert!(matches!(r, Err(ControlError::Timeout(_))), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn bad_configuration_is_a_clear_error() {
    assert!(matches!(
        HttpsArray::new(ClientConfig::new("https://127.0.0.1:1", "t", "abc")),
        Err(ClientError::BadFingerprint(_))
    ));
    assert!(matches!(
        HttpsArray::new(ClientConfig::new("http://x", "t", &"00".repeat(32))),
        Err(ClientError::BadUrl(_))
    ));
    let a = HttpsArray::new(ClientConfig::new(
        "https://127.0.0.1:1",
        "secret-token",
        &"00".repeat(32),
    ))
    .unwrap();
    assert!(!format!("{:?}", a).contains("secret-token"));
    assert!(matches!(
        a.commit(VssId::nil()),
        Err(ControlError::Unreachable(_))
    ));
}

/// A URL where nothing listens: a port bound, then closed.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("https://{addr}")
}

fn requests(s: &Server) -> usize {
    s.seen.lock().unwrap().len()
}

fn answers(_: &str, _: &str) -> (u16, String) {
    (200, r#"{"luns":[]}"#.into())
}

#[test]
fn a_dead_gateway_is_passed_over_and_the_one_that_answered_is_kept() {
    let id = identity();
    let a = serve_as(&id, Arc::new(answers));
    let b = serve_as(&id, Arc::new(answers));
    let dead = dead_url();
    let arr = HttpsArray::new(ClientConfig::with_urls(
        &[format!("{dead},{}", a.url), b.url.clone()],
        "t",
        &a.fingerprint,
    ))
    .unwrap();
    assert_eq!(arr.client().current_url(), dead);
    for _ in 0..4 {
        assert_eq!(arr.lookup(&[]).unwrap(), vec![]);
    }
    assert_eq!(arr.client().current_url(), a.url);
    assert_eq!((requests(&a), requests(&b)), (4, 0));
}

#[test]
fn a_gateway_that_drops_the_connection_is_passed_over() {
    let id = identity();
    // Accepts, then closes without a TLS handshake.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let closing = format!("https://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            drop(s);
        }
    });
    let b = serve_as(&id, Arc::new(answers));
    let arr = HttpsArray::new(ClientConfig::with_urls(
        &[&closing, &b.url],
        "t",
        &b.fingerprint,
    ))
    .unwrap();
    assert_eq!(arr.lookup(&[]).unwrap(), vec![]);
    assert_eq!(requests(&b), 1);
    assert_eq!(arr.client().current_url(), b.url);
}

#[test]
fn an_answer_ends_the_call_on_the_gateway_that_gave_it() {
    let id = identity();
    let a = serve_as(
        &id,
        Arc::new(|req, _| {
            let (status, code) = if req.ends_with("/end-prepare") {
                (409, "conflict")
            } else {
                (500, "internal")
            };
            let p = api::Problem::new(
                serde_json::from_value(serde_json::json!(code)).unwrap(),
                "no",
            );
            (status, serde_json::to_string(&p).unwrap())
        }),
    );
    let b = serve_as(&id, Arc::new(|_, _| (204, String::new())));
    let arr = HttpsArray::new(ClientConfig::with_urls(
        &[&a.url, &b.url],
        "t",
        &a.fingerprint,
    ))
    .unwrap();
    let set = VssId::from_u128(9);
    assert_eq!(
        arr.end_prepare(set),
        Err(ControlError::Conflict("no".into()))
    );
    assert!(matches!(
        arr.complete(set),
        Err(ControlError::Rejected { .. })
    ));
    assert_eq!(
        (requests(&a), requests(&b)),
        (2, 0),
        "a problem is an answer"
    );
}

#[test]
fn a_timeout_moves_on_only_with_an_idempotency_key() {
    let id = identity();
    let a = serve_as(
        &id,
        Arc::new(|_, _| {
            std::thread::sleep(Duration::from_secs(3));
            (204, String::new())
        }),
    );
    let b = serve_as(&id, Arc::new(answers));
    let mut cfg = ClientConfig::with_urls(&[&a.url, &b.url], "t", &a.fingerprint);
    cfg.timeout = Duration::from_millis(500);
    cfg.commit_timeout = Duration::from_millis(500);
    let arr = HttpsArray::new(cfg).unwrap();
    // A commit that timed out may have been executed: it is not sent elsewhere.
    assert!(matches!(
        arr.commit(VssId::nil()),
        Err(ControlError::Timeout(_))
    ));
    assert_eq!((requests(&a), requests(&b)), (1, 0));
    // A keyed request is answered as the first was: it moves on.
    let client: &Client = arr.client();
    let v: serde_json::Value = client
        .post_keyed("/v1/admin/luns", Some(&serde_json::json!({})), "key-1")
        .unwrap();
    assert_eq!(v, serde_json::json!({"luns": []}));
    assert_eq!((requests(&a), requests(&b)), (2, 1));
    assert_eq!(client.current_url(), b.url);
    // And the next call goes where the last answer came from.
    arr.lookup(&[]).unwrap();
    assert_eq!((requests(&a), requests(&b)), (2, 2));
}

#[test]
fn a_gateway_with_another_certificate_is_reported_not_passed_over() {
    let id = identity();
    let impostor = serve(Arc::new(answers));
    let real = serve_as(&id, Arc::new(answers));
    let client = Client::new(ClientConfig::with_urls(
        &[dead_url(), impostor.url.clone(), real.url.clone()],
        "t",
        &real.fingerprint,
    ))
    .unwrap();
    match client.health() {
        Err(ClientError::CertificateMismatch { pinned, presented }) => {
            assert_eq!(pinned, real.fingerprint);
            assert_eq!(presented, impostor.fingerprint);
        }
        other => panic!("expected the mismatch, got {other:?}"),
    }
    assert_eq!((requests(&impostor), requests(&real)), (0, 0));
    // Through the provider's mapping too: to VSS the array is out of reach, and says why.
    let arr = HttpsArray::new(client.config().clone()).unwrap();
    match arr.lookup(&[]) {
        Err(ControlError::Unreachable(m)) => {
            assert!(m.contains("does not match the pinned fingerprint"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(requests(&real), 0);
}

#[test]
fn when_no_gateway_answers_the_error_names_each() {
    let (d1, d2) = (dead_url(), dead_url());
    let client = Client::new(ClientConfig::with_urls(&[&d1, &d2], "t", &"00".repeat(32))).unwrap();
    match client.health() {
        Err(ClientError::Transport(m)) => {
            assert!(m.starts_with("none of its 2 gateways answered: "), "{m}");
            assert!(m.contains(&format!("{d1} (")), "{m}");
            assert!(m.contains(&format!("{d2} (")), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // One gateway: its own failure, named.
    let one = Client::new(ClientConfig::new(&d1, "t", &"00".repeat(32))).unwrap();
    match one.health() {
        Err(ClientError::Transport(m)) => assert!(m.starts_with(&format!("{d1}: ")), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_gateway_whose_host_is_down_costs_the_commit_one_connect_timeout_not_its_deadline() {
    let id = identity();
    // A host that is down: connection requests dropped.
    let hole = lab::unreachable::black_hole().unwrap();
    let b = serve_as(&id, Arc::new(|_, _| (204, String::new())));
    let cfg = ClientConfig::with_urls(&[&hole.url, &b.url], "t", &b.fingerprint);
    // The defaults the provider runs with: a connect timeout well inside the commit's.
    assert_eq!(cfg.connect_timeout, CONNECT_TIMEOUT);
    assert!(cfg.connect_timeout < cfg.commit_timeout);
    let arr = HttpsArray::new(cfg).unwrap();
    // The first commit waits out one connect timeout, then B commits it.
    arr.commit(VssId::from_u128(1)).unwrap();
    assert_eq!(requests(&b), 1);
    assert_eq!(arr.client().current_url(), b.url);
    // The next goes to B, the gateway that answered.
    arr.commit(VssId::from_u128(2)).unwrap();
    assert_eq!(requests(&b), 2);
    let seen = b.seen.lock().unwrap();
    assert!(
        seen.iter().all(|(req, _, _)| req.ends_with("/commit")),
        "{seen:?}"
    );
}
