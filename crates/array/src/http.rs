//! The control API over HTTP: routes of `api::routes`, bearer-token auth, JSON bodies and
//! `application/problem+json` errors. Handlers run the blocking [`Array`] verbs on the blocking
//! pool; none of them holds a lock across an await.

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use api::routes as r;
use api::*;

use crate::error::ArrayError;
use crate::state::{Array, Keyed, Scope};

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub ArrayError);

impl From<ArrayError> for ApiError {
    fn from(e: ArrayError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = self.0.problem();
        if p.code == ProblemCode::Internal {
            tracing::error!(error = %self.0, "request failed");
        }
        let body = serde_json::to_vec(&p).unwrap_or_default();
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

fn bad_json(e: JsonRejection) -> ApiError {
    ApiError(ArrayError::BadRequest(format!(
        "The request body is not the expected JSON ({}); fix the body and retry.",
        e.body_text()
    )))
}

/// A route's parameters, refused as a problem document (a parameter that is not UTF-8 once
/// percent-decoded) rather than axum's plain-text answer.
#[derive(Debug)]
pub(crate) struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError(ArrayError::BadRequest(format!(
                "The path {:?} is not valid ({}); see /v1/openapi.json.",
                parts.uri.path(),
                e.body_text()
            )))),
        }
    }
}

/// A query string, refused as a problem document rather than axum's plain-text answer.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError(ArrayError::BadRequest(format!(
                "The query string is not valid ({}); see /v1/openapi.json.",
                e.body_text()
            )))),
        }
    }
}

fn body<T>(b: Result<axum::Json<T>, JsonRejection>) -> ApiResult<T> {
    b.map(|j| j.0).map_err(bad_json)
}

/// `?force=true` (or `false`, or absent) on a destructive admin call; anything else is a
/// bad request rather than a silent no.
pub(crate) fn force(q: &std::collections::HashMap<String, String>) -> ApiResult<bool> {
    match q.get("force").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError(ArrayError::BadRequest(format!(
            "force={other:?}: write force=true or leave it out."
        )))),
    }
}

fn set_id(s: &str) -> ApiResult<vss::VssId> {
    s.parse().map_err(|_| {
        ApiError(ArrayError::BadRequest(format!(
            "{s:?} is not a snapshot set GUID."
        )))
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArrayError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArrayError::io("request task", std::io::Error::other(e.to_string())))?
        .map_err(ApiError)
}

fn caller(array: &Array, headers: &HeaderMap, route: &str) -> ApiResult<Scope> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| array.authenticate(t)) {
        Some(c) => Ok(c),
        None => {
            tracing::warn!(
                route,
                presented = token.is_some(),
                "refused unauthenticated call"
            );
            Err(ApiError(ArrayError::Unauthorized(
                "Send a valid bearer token (Authorization: Bearer <token>).".into(),
            )))
        }
    }
}

fn host(array: &Array, headers: &HeaderMap, route: &str) -> ApiResult<String> {
    match caller(array, headers, route)? {
        Scope::Host(h) => Ok(h),
        Scope::Admin => {
            tracing::warn!(route, "refused admin token on a host verb");
            Err(ApiError(ArrayError::Forbidden(
                "This verb needs a host token; the admin token is for /v1/admin routes.".into(),
            )))
        }
    }
}

pub(crate) fn admin(array: &Array, headers: &HeaderMap, route: &str) -> ApiResult<()> {
    match caller(array, headers, route)? {
        Scope::Admin => Ok(()),
        Scope::Host(h) => {
            tracing::warn!(route, host = %h, "refused host token on an admin verb");
            Err(ApiError(ArrayError::Forbidden(
                "This verb needs the admin token.".into(),
            )))
        }
    }
}

/// The header a client sends with a creating request it may retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Runs a creating admin verb under the request's `Idempotency-Key`, if it carries one: a
/// repeat of a request that succeeded gets the first answer (see `state::idempotency`).
/// `what` names the request (method, route with its parameters); `req` is its body.
async fn keyed<T, R>(
    a: Array,
    headers: &HeaderMap,
    what: String,
    req: &R,
    status: StatusCode,
    f: impl FnOnce(&Array) -> Result<T, ArrayError> + Send + 'static,
) -> ApiResult<Response>
where
    T: serde::Serialize + Send + 'static,
    R: serde::Serialize,
{
    let Some(key) = headers.get(IDEMPOTENCY_KEY) else {
        let v = blocking(move || f(&a)).await?;
        return Ok(json(status, &v));
    };
    let key = key
        .to_str()
        .map_err(|_| {
            ApiError(ArrayError::BadRequest(
                "An Idempotency-Key must be 1 to 255 visible ASCII characters.".into(),
            ))
        })?
        .to_string();
    let hash = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(what.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(req).unwrap_or_default());
        hex::encode(h.finalize())
    };
    let (code, body) = blocking(move || {
        let _gate = a.idempotency_gate();
        if let Keyed::Replay { status, body } = a.idempotency_check(&key, &hash)? {
            tracing::info!(key = %key, "answered a repeated request as the first time");
            return Ok((status, body));
        }
        let v = f(&a)?;
        let body = serde_json::to_string(&v).unwrap_or_default();
        if let Err(e) = a.idempotency_store(&key, &hash, status.as_u16(), body.clone()) {
            // The change is made and durable; only a later retry would not be recognised.
            tracing::error!(error = %e, "could not journal an idempotency key's answer");
        }
        Ok((status.as_u16(), body))
    })
    .await?;
    Ok((
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The router for `array`.
pub fn router(array: Array) -> Router {
    router_with(array, None)
}

/// The router for `array`; the gateway routes (`drain.rs`) answer for `gateways`, or say
/// that one process serves the array.
pub(crate) fn router_with(
    array: Array,
    gateways: Option<std::sync::Arc<crate::drain::GatewayControl>>,
) -> Router {
    let gateway_routes = crate::drain::router(array.clone(), gateways);
    Router::new()
        .route(r::HEALTH, get(health))
        .route(r::OPENAPI, get(openapi))
        .route(r::LOOKUP, post(lookup))
        .route(r::PREPARE, post(prepare))
        .route(r::END_PREPARE, post(end_prepare))
        .route(r::COMMIT, post(commit))
        .route(r::COMPLETE, post(complete))
        .route(r::ABORT, post(abort))
        .route(r::DESCRIBE, post(describe))
        .route(r::SETS, get(sets))
        .route(r::EXPOSE, post(expose))
        .route(r::MASK, post(mask))
        .route(r::RELEASE, post(release))
        .route(r::ADMIN_RESYNC, post(admin_resync))
        .route(r::ADMIN_RESYNC_JOB, get(admin_resync_job))
        .route(r::RESYNC, post(resync))
        .route(r::RESYNC_JOB, get(resync_job))
        .route(r::RESYNC_CANCEL, post(resync_cancel))
        .route(r::ADMIN_LUNS, get(admin_luns).post(admin_create_lun))
        .route(
            r::ADMIN_LUN,
            get(admin_lun)
                .delete(admin_delete_lun)
                .patch(admin_update_lun),
        )
        .route(r::ADMIN_HOSTS, get(admin_hosts).post(admin_create_host))
        .route(
            r::ADMIN_HOST,
            get(admin_host)
                .delete(admin_delete_host)
                .patch(admin_update_host),
        )
        .route(r::ADMIN_HOST_TOKEN, post(admin_rotate_token))
        .route(r::ADMIN_MAP, post(admin_map))
        .route(r::ADMIN_UNMAP, delete(admin_unmap))
        .route(r::ADMIN_SETS, get(admin_sets).post(admin_take_set))
        .route(r::ADMIN_SET_ABORT, post(admin_set_abort))
        .route(r::ADMIN_SET, delete(admin_delete_set))
        .route(r::ADMIN_SNAPSHOTS, get(admin_snapshots))
        .route(r::ADMIN_SNAPSHOT, delete(admin_delete_snapshot))
        .route(r::ADMIN_REAP, post(admin_reap))
        .route(
            r::ADMIN_GATEWAY_RESERVATIONS,
            post(admin_gateway_reservations),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(array)
        .merge(gateway_routes)
}

async fn not_found() -> ApiError {
    ApiError(ArrayError::NotFound(
        "No such route; see /v1/openapi.json.".into(),
    ))
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError(ArrayError::BadRequest(
        "This route does not take that method; see /v1/openapi.json.".into(),
    ))
}

async fn health(State(a): State<Array>) -> Response {
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            target: a.target_name().into(),
        },
    )
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn lookup(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<LookupRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::LOOKUP)?;
    let req = body(b)?;
    let luns = blocking(move || a.lookup(&host, &req.keys)).await?;
    Ok(json(StatusCode::OK, &LookupResponse { luns }))
}

async fn prepare(
    State(a): State<Array>,
    h: HeaderMap,
    Path(set): Path<String>,
    b: Result<axum::Json<PrepareRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::PREPARE)?;
    let set = set_id(&set)?;
    let req = body(b)?;
    blocking(move || a.prepare(&host, set, req.context, &req.snapshots)).await?;
    Ok(no_content())
}

macro_rules! set_verb {
    ($name:ident, $route:expr, $method:ident) => {
        async fn $name(
            State(a): State<Array>,
            h: HeaderMap,
            Path(set): Path<String>,
        ) -> ApiResult<Response> {
            let host = host(&a, &h, $route)?;
            let set = set_id(&set)?;
            blocking(move || a.$method(&host, set)).await?;
            Ok(no_content())
        }
    };
}

set_verb!(end_prepare, r::END_PREPARE, end_prepare);
set_verb!(commit, r::COMMIT, commit);
set_verb!(complete, r::COMPLETE, complete);
set_verb!(abort, r::ABORT, abort);

async fn describe(
    State(a): State<Array>,
    h: HeaderMap,
    Path(set): Path<String>,
    b: Result<axum::Json<DescribeRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::DESCRIBE)?;
    let set = set_id(&set)?;
    let req = body(b)?;
    let snapshots = blocking(move || a.describe(&host, set, &req.sources)).await?;
    Ok(json(StatusCode::OK, &DescribeResponse { snapshots }))
}

async fn sets(State(a): State<Array>, h: HeaderMap) -> ApiResult<Response> {
    let host = host(&a, &h, r::SETS)?;
    let v = blocking(move || Ok(a.list_sets(&host))).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn expose(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<LunsRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::EXPOSE)?;
    let req = body(b)?;
    blocking(move || a.expose(&host, &req.luns)).await?;
    Ok(no_content())
}

async fn mask(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<LunsRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::MASK)?;
    let req = body(b)?;
    blocking(move || a.mask(&host, &req.luns)).await?;
    Ok(no_content())
}

async fn release(
    State(a): State<Array>,
    h: HeaderMap,
    Path(lun): Path<String>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::RELEASE)?;
    blocking(move || a.release(&host, &lun)).await?;
    Ok(no_content())
}

async fn resync(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<ResyncRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::RESYNC)?;
    let req = body(b)?;
    let job = blocking(move || a.start_resync(&Scope::Host(host), &req.pairs, false)).await?;
    Ok(json(StatusCode::OK, &ResyncResponse { job }))
}

async fn resync_job(
    State(a): State<Array>,
    h: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::RESYNC_JOB)?;
    let st = blocking(move || a.resync_status(&Scope::Host(host), &job)).await?;
    Ok(json(StatusCode::OK, &st))
}

async fn resync_cancel(
    State(a): State<Array>,
    h: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Response> {
    let host = host(&a, &h, r::RESYNC_CANCEL)?;
    blocking(move || a.cancel_resync(&Scope::Host(host), &job)).await?;
    Ok(no_content())
}

// ---- admin ----

async fn admin_resync(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<ResyncRequest>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_RESYNC)?;
    let req = body(b)?;
    let what = format!("POST {}", r::ADMIN_RESYNC);
    let r2 = req.clone();
    keyed(a, &h, what, &req, StatusCode::OK, move |a| {
        let job = a.start_resync(&Scope::Admin, &r2.pairs, r2.force)?;
        Ok(ResyncResponse { job })
    })
    .await
}

async fn admin_resync_job(
    State(a): State<Array>,
    h: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_RESYNC_JOB)?;
    let st = blocking(move || a.resync_status(&Scope::Admin, &job)).await?;
    Ok(json(StatusCode::OK, &st))
}

async fn admin_luns(State(a): State<Array>, h: HeaderMap) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_LUNS)?;
    let v = blocking(move || Ok(a.list_luns(false))).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_create_lun(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<CreateLun>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_LUNS)?;
    let req = body(b)?;
    let what = format!("POST {}", r::ADMIN_LUNS);
    let r2 = req.clone();
    keyed(a, &h, what, &req, StatusCode::CREATED, move |a| {
        a.create_lun(&r2)
    })
    .await
}

async fn admin_lun(
    State(a): State<Array>,
    h: HeaderMap,
    Path(lun): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_LUN)?;
    let v = blocking(move || a.get_lun(&lun)).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_delete_lun(
    State(a): State<Array>,
    h: HeaderMap,
    Path(lun): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_LUN)?;
    blocking(move || a.delete_lun(&lun)).await?;
    Ok(no_content())
}

async fn admin_update_lun(
    State(a): State<Array>,
    h: HeaderMap,
    Path(lun): Path<String>,
    b: Result<axum::Json<UpdateLun>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_LUN)?;
    let req = body(b)?;
    let v = blocking(move || a.update_lun(&lun, &req)).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_hosts(State(a): State<Array>, h: HeaderMap) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_HOSTS)?;
    let v = blocking(move || Ok(a.list_hosts())).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_create_host(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<CreateHost>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_HOSTS)?;
    let req = body(b)?;
    let what = format!("POST {}", r::ADMIN_HOSTS);
    let r2 = req.clone();
    keyed(a, &h, what, &req, StatusCode::CREATED, move |a| {
        a.create_host(&r2)
    })
    .await
}

async fn admin_host(
    State(a): State<Array>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_HOST)?;
    let v = blocking(move || a.get_host(&name)).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_delete_host(
    State(a): State<Array>,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_HOST)?;
    let force = force(&q)?;
    blocking(move || a.delete_host(&name, force)).await?;
    Ok(no_content())
}

async fn admin_update_host(
    State(a): State<Array>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Result<axum::Json<UpdateHost>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_HOST)?;
    let req = body(b)?;
    let v = blocking(move || a.update_host(&name, &req)).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_rotate_token(
    State(a): State<Array>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_HOST_TOKEN)?;
    let what = format!("POST {}", r::fill(r::ADMIN_HOST_TOKEN, &[("host", &name)]));
    keyed(a, &h, what, &(), StatusCode::OK, move |a| {
        a.rotate_token(&name)
    })
    .await
}

async fn admin_set_abort(
    State(a): State<Array>,
    h: HeaderMap,
    Path(set): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_SET_ABORT)?;
    let set = set_id(&set)?;
    blocking(move || a.admin_abort(set)).await?;
    Ok(no_content())
}

async fn admin_delete_set(
    State(a): State<Array>,
    h: HeaderMap,
    Path(set): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_SET)?;
    let set = set_id(&set)?;
    let force = force(&q)?;
    blocking(move || a.admin_delete_set(set, force)).await?;
    Ok(no_content())
}

async fn admin_map(
    State(a): State<Array>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Result<axum::Json<MapLun>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_MAP)?;
    let req = body(b)?;
    let what = format!("POST {}", r::fill(r::ADMIN_MAP, &[("host", &name)]));
    let r2 = req.clone();
    keyed(a, &h, what, &req, StatusCode::OK, move |a| {
        a.map_lun(&name, &r2)
    })
    .await
}

async fn admin_unmap(
    State(a): State<Array>,
    h: HeaderMap,
    Path((name, lun)): Path<(String, String)>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_UNMAP)?;
    blocking(move || a.unmap_lun(&name, &lun)).await?;
    Ok(no_content())
}

async fn admin_sets(State(a): State<Array>, h: HeaderMap) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_SETS)?;
    let v = blocking(move || Ok(a.admin_sets())).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_take_set(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<TakeSet>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_SETS)?;
    let req = body(b)?;
    let what = format!("POST {}", r::ADMIN_SETS);
    let luns = req.luns.clone();
    keyed(a, &h, what, &req, StatusCode::CREATED, move |a| {
        a.admin_take_set(&luns)
    })
    .await
}

async fn admin_snapshots(State(a): State<Array>, h: HeaderMap) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_SNAPSHOTS)?;
    let v = blocking(move || Ok(a.list_luns(true))).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn admin_delete_snapshot(
    State(a): State<Array>,
    h: HeaderMap,
    Path(lun): Path<String>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_SNAPSHOT)?;
    blocking(move || a.delete_snapshot(&lun)).await?;
    Ok(no_content())
}

async fn admin_reap(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<ReapRequest>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_REAP)?;
    let req = body(b)?;
    let v = blocking(move || a.reap(req.dry_run)).await?;
    Ok(json(StatusCode::OK, &v))
}

/// The most parameter data a forwarded reservation command carries (PERSISTENT RESERVE OUT
/// takes 24 bytes; the CDB's length field allows no more than this).
const MAX_FORWARDED_DATA: usize = 0xFFFF;

async fn admin_gateway_reservations(
    State(a): State<Array>,
    h: HeaderMap,
    b: Result<axum::Json<api::ForwardedCommand>, JsonRejection>,
) -> ApiResult<Response> {
    admin(&a, &h, r::ADMIN_GATEWAY_RESERVATIONS)?;
    let req = body(b)?;
    if req.cdb.is_empty() || req.cdb.len() > 16 || req.data.len() > MAX_FORWARDED_DATA {
        return Err(ApiError(ArrayError::BadRequest(format!(
            "a forwarded command has a CDB of 1 to 16 bytes and at most {MAX_FORWARDED_DATA} \
             bytes of data (got {} and {})",
            req.cdb.len(),
            req.data.len()
        ))));
    }
    let o = blocking(move || {
        let nexus = scsi::Nexus {
            initiator_port: req.initiator_port,
            initiator: req.initiator,
            target_port: req.target_port,
            portal_group_tag: req.portal_group_tag,
        };
        a.run_reservation(&req.lun, &nexus, &req.cdb, &req.data)
    })
    .await?;
    Ok(json(
        StatusCode::OK,
        &api::ForwardedOutcome {
            status: o.status,
            sense: o.sense,
            data: o.data_in,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let all = [
            r::HEALTH,
            r::OPENAPI,
            r::LOOKUP,
            r::PREPARE,
            r::END_PREPARE,
            r::COMMIT,
            r::COMPLETE,
            r::ABORT,
            r::DESCRIBE,
            r::SETS,
            r::EXPOSE,
            r::MASK,
            r::RELEASE,
            r::RESYNC,
            r::RESYNC_JOB,
            r::RESYNC_CANCEL,
            r::ADMIN_LUNS,
            r::ADMIN_LUN,
            r::ADMIN_HOSTS,
            r::ADMIN_HOST,
            r::ADMIN_HOST_TOKEN,
            r::ADMIN_MAP,
            r::ADMIN_UNMAP,
            r::ADMIN_SETS,
            r::ADMIN_SET_ABORT,
            r::ADMIN_SET,
            r::ADMIN_SNAPSHOTS,
            r::ADMIN_SNAPSHOT,
            r::ADMIN_REAP,
            r::ADMIN_GATEWAY_RESERVATIONS,
            r::ADMIN_GATEWAYS,
            r::ADMIN_GATEWAY_DRAIN,
            r::ADMIN_RESYNC,
            r::ADMIN_RESYNC_JOB,
            r::ADMIN_STATUS,
            r::ADMIN_SESSIONS,
            r::ADMIN_AUDIT,
        ];
        for route in all {
            assert!(
                paths.contains_key(route),
                "{route} missing from openapi.json"
            );
        }
        assert_eq!(
            paths.len(),
            all.len(),
            "openapi.json lists a route the API lacks"
        );
        let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(ops, 44, "one operation per (route, method)");
    }
}
