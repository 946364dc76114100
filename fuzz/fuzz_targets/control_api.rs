//! The control API as a client reaches it: any method, path, query string, bearer token,
//! content type, idempotency key and body, through the daemon's real router (every route,
//! the request layer that audits changes, authentication in each handler) on an array with
//! LUNs, two hosts, a committed and a prepared snapshot set, on the memory engine.
//!
//! Nothing panics and nothing answers 500 (a panic in a handler's blocking task would come
//! back as one); the only 5xx is 507, the pool out of space. Every refusal is an `application/problem+json` document whose `status` is
//! the HTTP status; a success with a JSON content type carries JSON.
//!
//! Input, as text lines: `METHOD TARGET`, then who calls (`admin`, `a` or `b` for the two
//! hosts' tokens, empty for no token, anything else is sent as the token), the
//! `Content-Type` (empty: none), the `Idempotency-Key` (empty: none), then the body (the rest,
//! any bytes). The array is rebuilt every [`REBUILD`] inputs so changes do not pile up.
//! Seeds, one or more per operation of the OpenAPI document:
//! `SHADOWLUN_FUZZ_SEEDS=<dir> cargo fuzz run control_api -- -runs=0`.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use api::routes as r;
use api::*;
use array::audit::AuditLog;
use array::ops::Ops;
use array::state::{new_token, token_hash};
use array::{Array, NoExport, Policy};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use libfuzzer_sys::fuzz_target;
use shadowlun_fuzz::{seed_dir, temp_dir, write_seed};
use tower::ServiceExt;
use vss::identity::ArrayId;
use vss::{SnapshotContext, VssId};

const MIB: u64 = 1 << 20;
/// Inputs served by one array before it is rebuilt.
const REBUILD: u64 = 1000;
const IQN_A: &str = "iqn.1991-05.com.microsoft:fuzz-a";
const IQN_B: &str = "iqn.1991-05.com.microsoft:fuzz-b";
const COMMITTED: VssId = VssId::from_u128(0x0005_e7c0);
const PREPARED: VssId = VssId::from_u128(0x0005_e79e);

struct World {
    router: Router,
    admin: String,
    host_a: String,
    host_b: String,
    array: Array,
    lun_a: LunId,
    lun_b: LunId,
    snapshot: LunId,
    served: u64,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = temp_dir("control-api-");
        let backend = Arc::new(storage::MemoryBackend::new(Some(64 * MIB)));
        let policy = Policy {
            array_id: ArrayId::new(0x5eed),
            max_luns_per_set: 4,
            max_lun_bytes: 16 * MIB,
            ..Policy::default()
        };
        let admin = new_token().unwrap();
        let array = Array::open(
            &dir.path().join("journal"),
            backend,
            Arc::new(NoExport),
            policy,
            token_hash(&admin),
        )
        .unwrap();
        let lun = |name: &str| {
            array
                .create_lun(&CreateLun {
                    name: name.into(),
                    size_bytes: 4 * MIB,
                })
                .unwrap()
                .id
        };
        let (lun_a, lun_b) = (lun("la"), lun("lb"));
        let host = |name: &str, iqn: &str, lun: &LunId| {
            let h = array
                .create_host(&CreateHost {
                    name: name.into(),
                    initiators: vec![iqn.into()],
                    chap_secret: None,
                    import_from: Vec::new(),
                })
                .unwrap();
            array
                .map_lun(
                    name,
                    &MapLun {
                        lun: lun.clone(),
                        lun_number: None,
                        shared: false,
                    },
                )
                .unwrap();
            h.token
        };
        let host_a = host("a", IQN_A, &lun_a);
        let host_b = host("b", IQN_B, &lun_b);
        let plan = |source: &LunId, n: u128| {
            vec![PlannedSnapshot {
                snapshot_id: VssId::from_u128(n),
                source: source.clone(),
            }]
        };
        let ctx = SnapshotContext(0);
        array
            .prepare("a", COMMITTED, ctx, &plan(&lun_a, 1))
            .unwrap();
        array.end_prepare("a", COMMITTED).unwrap();
        array.commit("a", COMMITTED).unwrap();
        array.prepare("b", PREPARED, ctx, &plan(&lun_b, 2)).unwrap();
        let snapshot = array
            .admin_sets()
            .into_iter()
            .find(|s| s.set_id == COMMITTED)
            .and_then(|s| s.snapshots.first().map(|m| m.lun.clone()))
            .expect("the committed set has its snapshot LUN");
        let ops = Arc::new(Ops {
            array: array.clone(),
            iscsi: None,
            backend_kind: "memory".into(),
            pool_dir: dir.path().to_path_buf(),
            audit: Arc::new(AuditLog::open(dir.path(), MIB).unwrap()),
            audit_failures: AtomicU64::new(0),
            warn_percent: 80,
            critical_percent: 90,
        });
        let router = array::ops::router(array::http::router(array.clone()), ops);
        World {
            router,
            admin,
            host_a,
            host_b,
            array,
            lun_a,
            lun_b,
            snapshot,
            served: 0,
            _dir: dir,
        }
    }

    fn token<'a>(&'a self, who: &'a [u8]) -> Option<&'a [u8]> {
        match who {
            b"" => None,
            b"admin" => Some(self.admin.as_bytes()),
            b"a" => Some(self.host_a.as_bytes()),
            b"b" => Some(self.host_b.as_bytes()),
            other => Some(other),
        }
    }
}

/// Splits off the text up to the next newline.
fn line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let i = rest.iter().position(|&b| b == b'\n')?;
    let l = &rest[..i];
    *rest = &rest[i + 1..];
    Some(l)
}

/// The request the input describes, or `None` for one no HTTP server would hand a router
/// (a method or target that does not parse, a header value with bytes HTTP forbids).
fn request(w: &World, input: &[u8]) -> Option<Request<Body>> {
    let mut rest = input;
    let start = line(&mut rest)?;
    let who = line(&mut rest)?;
    let content_type = line(&mut rest)?;
    let key = line(&mut rest)?;
    let sp = start.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&start[..sp]).ok()?;
    let target = &start[sp + 1..];
    if target.first() != Some(&b'/') {
        return None;
    }
    let uri = Uri::try_from(target).ok()?;
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = w.token(who) {
        let mut v = b"Bearer ".to_vec();
        v.extend_from_slice(t);
        b = b.header(header::AUTHORIZATION, HeaderValue::from_bytes(&v).ok()?);
    }
    if !content_type.is_empty() {
        b = b.header(
            header::CONTENT_TYPE,
            HeaderValue::from_bytes(content_type).ok()?,
        );
    }
    if !key.is_empty() {
        b = b.header("idempotency-key", HeaderValue::from_bytes(key).ok()?);
    }
    b.body(Body::from(rest.to_vec())).ok()
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn serve(input: &[u8]) {
    WORLD.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|w| w.served >= REBUILD) {
            *slot = None;
            *slot = Some(World::new());
        }
        let w = slot.as_mut().unwrap();
        w.served += 1;
        let Some(req) = request(w, input) else { return };
        let head = req.method() == Method::HEAD;
        let shown = format!("{} {}", req.method(), req.uri());
        let router = w.router.clone();
        let (status, content_type, body) = RT.with(|rt| {
            rt.block_on(async move {
                let res = router.oneshot(req).await.unwrap();
                let status = res.status();
                let ct = res.headers().get(header::CONTENT_TYPE).cloned();
                let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                    .await
                    .expect("the answer's body reads");
                (status, ct, body)
            })
        });
        let text = String::from_utf8_lossy(&body);
        // 507 is the pool out of space (a 64 MiB pool fills); any other 5xx is a failure.
        assert!(
            !status.is_server_error() || status == StatusCode::INSUFFICIENT_STORAGE,
            "{shown}: {status} {text}"
        );
        let ct = content_type.as_ref().map(|v| v.as_bytes());
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                ct,
                Some(&b"application/problem+json"[..]),
                "{shown}: {status} {text}"
            );
            if !head {
                let p: Problem = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("{shown}: {status} {text}: {e}"));
                assert_eq!(p.status, status.as_u16(), "{shown}: {text}");
            }
        } else if status.is_success()
            && !head
            && ct.is_some_and(|c| c.starts_with(b"application/json"))
        {
            serde_json::from_slice::<serde_json::Value>(&body)
                .unwrap_or_else(|e| panic!("{shown}: {status} {text}: {e}"));
        }
    });
}

/// One seed per operation of the OpenAPI document (a valid call on the world's objects),
/// and a few refused ones.
fn write_seeds() {
    let Some(dir) = seed_dir() else { return };
    let w = World::new();
    let doc: serde_json::Value = serde_json::from_str(array::http::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().expect("openapi paths");
    let pages = w.array.lun_identity_pages(&w.lun_a).unwrap();
    let key = LunKey::of(&vss::LunInfo::from_identity(&pages, vss::BusType::ISCSI).unwrap());
    let mut n = 0;
    for (route, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let set = if route == r::PREPARE {
                VssId::from_u128(0x0005_e7ee).to_string()
            } else if route == r::ADMIN_SET_ABORT {
                PREPARED.to_string()
            } else {
                COMMITTED.to_string()
            };
            let lun = if [r::RELEASE, r::ADMIN_SNAPSHOT].contains(&route.as_str()) {
                w.snapshot.clone()
            } else {
                w.lun_a.clone()
            };
            let mut target = r::fill(
                route,
                &[
                    ("set", &set),
                    ("lun", &lun),
                    ("host", "a"),
                    ("job", "job-1"),
                    ("gateway", "gw-a"),
                ],
            );
            let body: Option<String> = match (method.as_str(), route.as_str()) {
                ("POST", r::LOOKUP) => Some(json(&LookupRequest {
                    keys: vec![key.clone()],
                })),
                ("POST", r::PREPARE) => Some(json(&PrepareRequest {
                    context: SnapshotContext(0),
                    snapshots: vec![PlannedSnapshot {
                        snapshot_id: VssId::from_u128(3),
                        source: w.lun_a.clone(),
                    }],
                })),
                ("POST", r::DESCRIBE) => Some(json(&DescribeRequest {
                    sources: vec![w.lun_a.clone()],
                })),
                ("POST", r::EXPOSE | r::MASK) => Some(json(&LunsRequest {
                    luns: vec![w.snapshot.clone()],
                })),
                ("POST", r::RESYNC | r::ADMIN_RESYNC) => Some(json(&ResyncRequest {
                    pairs: vec![ResyncPair {
                        snapshot: w.snapshot.clone(),
                        destination: w.lun_a.clone(),
                    }],
                    force: route == r::ADMIN_RESYNC,
                })),
                ("POST", r::ADMIN_LUNS) => Some(json(&CreateLun {
                    name: "new".into(),
                    size_bytes: MIB,
                })),
                ("PATCH", r::ADMIN_LUN) => Some(json(&UpdateLun {
                    size_bytes: Some(8 * MIB),
                    name: Some("renamed".into()),
                })),
                ("POST", r::ADMIN_HOSTS) => Some(json(&CreateHost {
                    name: "c".into(),
                    initiators: vec!["iqn.1991-05.com.microsoft:fuzz-c".into()],
                    chap_secret: Some("secret-of-c-12".into()),
                    import_from: vec!["a".into()],
                })),
                ("PATCH", r::ADMIN_HOST) => Some(json(&UpdateHost {
                    add_initiators: vec!["iqn.1991-05.com.microsoft:fuzz-a2".into()],
                    remove_initiators: vec![IQN_A.into()],
                    chap_secret: Some("secret-of-a-12".into()),
                    clear_chap: false,
                })),
                ("POST", r::ADMIN_MAP) => Some(json(&MapLun {
                    lun: w.lun_b.clone(),
                    lun_number: Some(7),
                    shared: true,
                })),
                ("POST", r::ADMIN_REAP) => Some(json(&ReapRequest { dry_run: true })),
                ("POST", r::ADMIN_GATEWAY_RESERVATIONS) => Some(json(&ForwardedCommand {
                    lun: w.lun_a.clone(),
                    initiator: IQN_A.into(),
                    initiator_port: format!("{IQN_A},i,0x400001370000"),
                    target_port: 2,
                    portal_group_tag: 2,
                    // PERSISTENT RESERVE IN, READ KEYS.
                    cdb: vec![0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0],
                    data: Vec::new(),
                })),
                ("POST", r::ADMIN_SETS) => Some(json(&TakeSet {
                    luns: vec!["la".into()],
                })),
                _ => None,
            };
            if method == "DELETE" && route == r::ADMIN_HOST {
                target.push_str("?force=true");
            }
            if route == r::ADMIN_AUDIT {
                target.push_str("?since=0");
            }
            let who = if route.starts_with("/v1/admin") {
                "admin"
            } else if [r::HEALTH, r::OPENAPI].contains(&route.as_str()) {
                ""
            } else {
                "a"
            };
            let ct = if body.is_some() {
                "application/json"
            } else {
                ""
            };
            let body = body.unwrap_or_default();
            let seed = format!("{method} {target}\n{who}\n{ct}\n\n{body}");
            write_seed(&dir, &format!("op-{n:02}"), seed.as_bytes());
            n += 1;
            if method == "POST" && route == r::ADMIN_LUNS {
                let keyed = format!("{method} {target}\n{who}\n{ct}\nkey-1\n{body}");
                write_seed(&dir, "keyed-create", keyed.as_bytes());
            }
        }
    }
    // A new operation lands here with no body: give it one above if it takes one, then
    // count it.
    assert_eq!(n, 44, "one seed per operation of the OpenAPI document");
    for (name, seed) in [
        ("no-token", format!("GET {}\n\n\n\n", r::ADMIN_LUNS)),
        ("host-on-admin", format!("GET {}\nb\n\n\n", r::ADMIN_HOSTS)),
        ("bad-token", format!("GET {}\nnot-a-token\n\n\n", r::SETS)),
        (
            "bad-json",
            format!(
                "POST {}\nadmin\napplication/json\n\n{{\"name\":",
                r::ADMIN_LUNS
            ),
        ),
        (
            "bad-query",
            format!(
                "DELETE {}?force=maybe\nadmin\n\n\n",
                r::fill(r::ADMIN_HOST, &[("host", "b")])
            ),
        ),
        ("no-route", "GET /v1/nothing\nadmin\n\n\n".to_string()),
        ("bad-method", format!("PUT {}\nadmin\n\n\n", r::ADMIN_LUNS)),
    ] {
        write_seed(&dir, name, seed.as_bytes());
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

fuzz_target!(init: write_seeds(), |input: &[u8]| serve(input));
