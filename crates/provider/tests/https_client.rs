//! The HTTPS client against a real TLS server on loopback: certificate pinning, bearer
//! token, problem+json mapping, deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provider::ControlError;
use provider::array::ArrayControl;
use provider::https::{ClientConfig, ClientError, HttpsArray, fingerprint_of};
use vss::VssId;

type Handler = Arc<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

struct Server {
    url: String,
    fingerprint: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

/// A one-purpose HTTPS server: answers each request with `handler(method+path, body)`.
fn serve(handler: Handler) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
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
