//! What an administrator asks the array every day, and what every API request goes through.
//!
//! Routes (admin token): `GET /v1/admin/status` (backend, identity, portals, pool space,
//! sessions, sets in flight, health with reasons), `GET /v1/admin/sessions` (open iSCSI
//! sessions), `GET /v1/admin/audit` (the audit trail).
//!
//! The [`observe`] layer wraps every route: each request runs inside a span carrying the
//! caller's address (so the log says where a refused call came from), and each change
//! (any method but GET, except the read-only `lookup` and `describe`) made with a valid token
//! is logged at info ("admin change": who, what, from where, the answer's status) and
//! appended to the audit trail ([`crate::audit`]) before the answer leaves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::Instrument;

use api::routes as r;
use api::*;

use crate::audit::AuditLog;
use crate::error::ArrayError;
use crate::http::{ApiError, ApiResult, Query, admin, blocking, json};
use crate::state::{Array, Scope};

/// The caller's address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Pool fullness (percent) at which health turns to warning, and to critical.
pub const WARN_PERCENT: u8 = 80;
pub const CRITICAL_PERCENT: u8 = 90;

/// How long the storage backend gets to answer a status check.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request body read to audit it (what the JSON extractor accepts).
const MAX_BODY: usize = 2 << 20;

/// What the operations routes and the request layer need.
pub struct Ops {
    pub array: Array,
    pub iscsi: Option<Arc<iscsi::TargetServer>>,
    /// The storage engine kind.
    pub backend_kind: String,
    pub pool_dir: PathBuf,
    pub audit: Arc<AuditLog>,
    /// Audit records that could not be written since start.
    pub audit_failures: AtomicU64,
    pub warn_percent: u8,
    pub critical_percent: u8,
}

/// `api` plus the operations routes, every route wrapped in [`observe`].
pub fn router(api: Router, ops: Arc<Ops>) -> Router {
    let own = Router::new()
        .route(r::ADMIN_STATUS, get(status))
        .route(r::ADMIN_SESSIONS, get(sessions))
        .route(r::ADMIN_AUDIT, get(audit))
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .with_state(ops.clone());
    api.merge(own)
        .layer(axum::middleware::from_fn_with_state(ops, observe))
}

/// The change a request asks for, in an administrator's words; `None` for a read.
fn action(method: &Method, route: &str) -> Option<String> {
    if *method == Method::GET
        || *method == Method::HEAD
        || route == r::LOOKUP
        || route == r::DESCRIBE
        // SCSI commands a standby hands over: the data path, not an administrator's change.
        || route == r::ADMIN_GATEWAY_RESERVATIONS
    {
        return None;
    }
    let named = match (method.as_str(), route) {
        ("POST", r::ADMIN_LUNS) => "lun create",
        ("PATCH", r::ADMIN_LUN) => "lun change",
        ("DELETE", r::ADMIN_LUN) => "lun delete",
        ("POST", r::ADMIN_HOSTS) => "host add",
        ("DELETE", r::ADMIN_HOST) => "host remove",
        ("PATCH", r::ADMIN_HOST) => "host change",
        ("POST", r::ADMIN_HOST_TOKEN) => "host rotate-token",
        ("POST", r::ADMIN_MAP) => "host map",
        ("DELETE", r::ADMIN_UNMAP) => "host unmap",
        ("POST", r::ADMIN_SET_ABORT) => "set abort",
        ("DELETE", r::ADMIN_SET) => "set delete",
        ("POST", r::ADMIN_REAP) => "set reap",
        ("DELETE", r::ADMIN_SNAPSHOT) => "snapshot delete",
        ("POST", r::ADMIN_RESYNC) => "snapshot resync",
        ("POST", r::PREPARE) => "set prepare",
        ("POST", r::END_PREPARE) => "set end-prepare",
        ("POST", r::COMMIT) => "set commit",
        ("POST", r::COMPLETE) => "set complete",
        ("POST", r::ABORT) => "set abort",
        ("POST", r::EXPOSE) => "lun expose",
        ("POST", r::MASK) => "lun mask",
        ("POST", r::RELEASE) => "snapshot release",
        ("POST", r::RESYNC) => "snapshot resync",
        ("POST", r::RESYNC_CANCEL) => "resync cancel",
        ("POST", r::ADMIN_GATEWAY_DRAIN) => "gateway drain",
        _ => return Some(format!("{method} {route}")),
    };
    Some(named.to_string())
}

/// Body fields copied into the audit trail as they are.
const KEPT: [&str; 16] = [
    "add_initiators",
    "remove_initiators",
    "clear_chap",
    "name",
    "size_bytes",
    "initiators",
    "import_from",
    "lun",
    "lun_number",
    "shared",
    "force",
    "dry_run",
    "pairs",
    "luns",
    "sources",
    "context",
];

/// What a change names: the route's parameters, `force` from the query, and the body's
/// fields chosen one by one. A secret or a token never goes in: a field whose name says
/// secret or token is written as `"set"` (or `null` when cleared); lists of planned
/// snapshots as their count.
fn details(
    route: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> BTreeMap<String, serde_json::Value> {
    let mut d = BTreeMap::new();
    for (t, v) in route.split('/').zip(path.split('/')) {
        if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            d.insert(name.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("force=") {
            d.insert("force".into(), serde_json::Value::String(v.to_string()));
        }
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) {
        for (k, v) in m {
            let lower = k.to_ascii_lowercase();
            if lower.contains("secret") || lower.contains("token") || lower.contains("password") {
                let shown = if v.is_null() { v } else { "set".into() };
                d.insert(k, shown);
            } else if k == "snapshots" {
                let n = v.as_array().map_or(0, Vec::len);
                d.insert(k, n.into());
            } else if KEPT.contains(&k.as_str()) {
                d.insert(k, v);
            }
        }
    }
    d
}

/// The layer every request passes: a span with the caller's address, and for a change made
/// with a valid token, the "admin change" log line and its audit record.
pub async fn observe(State(ops): State<Arc<Ops>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ClientAddr>()
        .map_or_else(|| "-".to_string(), |c| c.0.to_string());
    let span = tracing::info_span!("api", peer = %peer);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some((route, action)) = route.and_then(|r| action(req.method(), &r).map(|a| (r, a))) else {
        return next.run(req).instrument(span).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let who = match token.and_then(|t| ops.array.authenticate(t)) {
        Some(Scope::Admin) => "admin".to_string(),
        Some(Scope::Host(h)) => format!("host {h}"),
        // Refused (and logged with the caller's address) by the route itself.
        None => return next.run(req).instrument(span).await,
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError(ArrayError::BadRequest(format!(
                "The request body is larger than {} or could not be read.",
                human_size(MAX_BODY as u64)
            )))
            .into_response();
        }
    };
    let mut details = details(&route, parts.uri.path(), parts.uri.query(), &bytes);
    // A retry answered as the first time is a second record with the same key.
    if let Some(k) = parts
        .headers
        .get(crate::http::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
    {
        details.insert("idempotency_key".into(), k.into());
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    let res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    let shown = serde_json::to_string(&details).unwrap_or_default();
    span.in_scope(|| {
        tracing::info!(
            who = %who,
            action = %action,
            from = %peer,
            details = %shown,
            status,
            "admin change"
        );
    });
    let rec = AuditRecord {
        time: std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        who,
        from: peer,
        action,
        details,
        status,
    };
    let log = ops.audit.clone();
    let written = tokio::task::spawn_blocking(move || log.append(&rec)).await;
    let failed = match written {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = failed {
        ops.audit_failures.fetch_add(1, Ordering::Relaxed);
        span.in_scope(|| tracing::error!(error = %e, "audit record not written"));
    }
    res
}

async fn status(State(ops): State<Arc<Ops>>, h: HeaderMap) -> ApiResult<Response> {
    admin(&ops.array, &h, r::ADMIN_STATUS)?;
    let mut reasons: Vec<(HealthState, String)> = Vec::new();
    let array = ops.array.clone();
    let space = tokio::time::timeout(
        BACKEND_TIMEOUT,
        tokio::task::spawn_blocking(move || array.pool_space()),
    )
    .await;
    let space = match space {
        Ok(Ok(Ok(u))) => Some(u),
        Ok(Ok(Err(e))) => {
            reasons.push((
                HealthState::Critical,
                format!("The storage backend failed to report its space: {e}."),
            ));
            None
        }
        Ok(Err(e)) => {
            reasons.push((
                HealthState::Critical,
                format!("The storage backend check failed: {e}."),
            ));
            None
        }
        Err(_) => {
            reasons.push((
                HealthState::Critical,
                format!(
                    "The storage backend did not answer within {} s.",
                    BACKEND_TIMEOUT.as_secs()
                ),
            ));
            None
        }
    };
    let o = ops.clone();
    let (luns, sets, journal_failed) = blocking(move || {
        Ok((
            o.array.list_luns(false),
            o.array.admin_sets(),
            o.array.journal_failed(),
        ))
    })
    .await?;
    for l in luns.iter().filter(|l| l.volume_missing) {
        reasons.push((
            HealthState::Critical,
            format!(
                "LUN {} ({}) lost its volume: it is gone from the pool, deleted outside the \
                 array. Its hosts get NOT READY for its I/O until it is deleted (shadowlun lun \
                 delete {}).",
                l.id, l.name, l.id
            ),
        ));
    }
    if journal_failed {
        reasons.push((
            HealthState::Critical,
            "A journal write failed: the array refuses changes until the daemon is restarted \
             (the log says why)."
                .into(),
        ));
    }
    let audit_failures = ops.audit_failures.load(Ordering::Relaxed);
    if audit_failures > 0 {
        reasons.push((
            HealthState::Critical,
            format!(
                "{audit_failures} audit record(s) could not be written to {} (the log says why).",
                ops.audit.path().display()
            ),
        ));
    }
    let (capacity, used, free, reserved) = space.map_or((0, 0, 0, 0), |s| {
        (
            s.capacity_bytes,
            s.used_bytes,
            s.free_bytes,
            s.reserved_bytes,
        )
    });
    let provisioned: u64 = luns.iter().map(|l| l.size_bytes).sum();
    if space.is_some() && capacity > 0 {
        let full = 100.0 - (free as f64 * 100.0 / capacity as f64);
        let (state, limit, what) = if full >= f64::from(ops.critical_percent) {
            (HealthState::Critical, ops.critical_percent, "critical")
        } else {
            (HealthState::Warning, ops.warn_percent, "warning")
        };
        if full >= f64::from(limit) {
            let sets = if state == HealthState::Critical {
                " New snapshot sets are refused until it is below."
            } else {
                ""
            };
            reasons.push((
                state,
                format!(
                    "The pool is {full:.0}% full ({what} at {limit}%): {} free of {}.{sets}",
                    human_size(free),
                    human_size(capacity)
                ),
            ));
        }
    }
    let state = reasons
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(HealthState::Ok);
    let st = ArrayStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        backend: ops.backend_kind.clone(),
        array_id: ops.array.array_id().map(|a| a.to_string()),
        target: ops.array.target_name().to_string(),
        portals: ops
            .iscsi
            .as_ref()
            .map(|s| s.local_addrs().iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        pool: PoolStatus {
            capacity_bytes: capacity,
            used_bytes: used,
            free_bytes: free,
            reserved_bytes: reserved,
            provisioned_bytes: provisioned,
            provisioned_ratio: if capacity > 0 {
                provisioned as f64 / capacity as f64
            } else {
                0.0
            },
        },
        sessions: ops.iscsi.as_ref().map_or(0, |s| s.session_count()),
        sets_in_flight: sets
            .iter()
            .filter(|s| matches!(s.state, SetState::Prepared | SetState::Committed))
            .count(),
        health: HealthReport {
            state,
            reasons: reasons.into_iter().map(|(_, r)| r).collect(),
        },
    };
    Ok(json(StatusCode::OK, &st))
}

async fn sessions(State(ops): State<Arc<Ops>>, h: HeaderMap) -> ApiResult<Response> {
    admin(&ops.array, &h, r::ADMIN_SESSIONS)?;
    let o = ops.clone();
    let v = blocking(move || Ok(session_records(&o))).await?;
    Ok(json(StatusCode::OK, &v))
}

fn session_records(ops: &Ops) -> Vec<SessionRecord> {
    let Some(server) = &ops.iscsi else {
        return Vec::new();
    };
    let hosts = ops.array.list_hosts();
    server
        .sessions()
        .into_iter()
        .map(|s| {
            let host = hosts.iter().find(|h| {
                h.initiators
                    .iter()
                    .any(|i| i.eq_ignore_ascii_case(&s.initiator))
            });
            SessionRecord {
                host: host.map(|h| h.name.clone()),
                luns: host.map(|h| h.luns.clone()).unwrap_or_default(),
                peer: s.peer.to_string(),
                portal: s.portal.map(|p| p.to_string()),
                target: s.target,
                chap: s.chap,
                connected_since: s
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                isid: format!("{:012x}", s.isid),
                tsih: s.tsih,
                initiator: s.initiator,
            }
        })
        .collect()
}

async fn audit(
    State(ops): State<Arc<Ops>>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Response> {
    admin(&ops.array, &h, r::ADMIN_AUDIT)?;
    let since = match q.get("since") {
        None => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError(ArrayError::BadRequest(format!(
                "since={s:?}: give seconds since the Unix epoch."
            )))
        })?,
    };
    let log = ops.audit.clone();
    let v = blocking(move || {
        log.read(since).map_err(|e| {
            ArrayError::io(
                "reading the audit trail",
                std::io::Error::other(e.to_string()),
            )
        })
    })
    .await?;
    Ok(json(StatusCode::OK, &v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_and_reads_are_not_audited() {
        assert_eq!(
            action(&Method::POST, r::ADMIN_LUNS).as_deref(),
            Some("lun create")
        );
        assert_eq!(
            action(&Method::DELETE, r::ADMIN_HOST).as_deref(),
            Some("host remove")
        );
        assert_eq!(action(&Method::GET, r::ADMIN_LUNS), None);
        assert_eq!(action(&Method::POST, r::LOOKUP), None);
        assert_eq!(action(&Method::POST, r::DESCRIBE), None);
        assert_eq!(
            action(&Method::PATCH, r::ADMIN_HOST).as_deref(),
            Some("host change")
        );
        // A change the table does not name yet is still audited.
        assert_eq!(
            action(&Method::PUT, "/v1/admin/things/{thing}").as_deref(),
            Some("PUT /v1/admin/things/{thing}")
        );
    }

    #[test]
    fn details_keep_names_and_never_secrets() {
        let body = br#"{"name":"sql01","initiators":["iqn.1991-05.com.microsoft:sql01"],
            "chap_secret":"averysecret1","token":"tok","import_from":[],"other":"x"}"#;
        let d = details(r::ADMIN_HOSTS, "/v1/admin/hosts", None, body);
        assert_eq!(d["name"], "sql01");
        assert_eq!(d["chap_secret"], "set");
        assert_eq!(d["token"], "set");
        assert!(!d.contains_key("other"));
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("averysecret1") && !text.contains("tok\""));

        let d = details(
            r::ADMIN_HOST,
            "/v1/admin/hosts/sql01",
            Some("force=true"),
            b"",
        );
        assert_eq!(d["host"], "sql01");
        assert_eq!(d["force"], "true");
    }
}
