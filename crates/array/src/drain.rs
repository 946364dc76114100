//! The array's gateways as an administrator sees them: which are live, which serves, and
//! draining one (docs/gateways.md, "Adding, draining and removing a gateway").
//!
//! Routes (admin token, on the gateway in office; a standby relays them there):
//! `GET /v1/admin/gateways` and `POST /v1/admin/gateways/{gateway}/drain[?force=true]`.
//!
//! A drain is a request in the members object (`drain.<gateway>`,
//! `gateways::Membership::request_drain`). A standby asked to drain sees it while it waits
//! for office and stops without serving (`office.rs`). The gateway in office asked to drain
//! stops cleanly: it asks initiators to log out, lets the commands in flight finish,
//! flushes, and resigns office, so a standby takes office within a quarter of a second
//! without waiting for a lease, and hosts with MPIO carry on through it. Either way the
//! process exits with status 0 (a service manager restarting only on failure leaves it
//! stopped); starting it again clears the request and it stands by.

use std::collections::HashMap;
use std::sync::Arc;

use api::{GatewayRecord, routes as r};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use gateways::Membership;
use tokio::sync::watch;

use crate::error::ArrayError;
use crate::http::{ApiError, ApiResult, Path, Query, admin, blocking, force, json};
use crate::state::Array;

/// The gateway in office's view of the array's gateways, and its own drain switch.
pub(crate) struct GatewayControl {
    pub name: String,
    pub members: Membership,
    /// Set when this gateway is asked to drain: the daemon stops cleanly.
    pub drain: watch::Sender<bool>,
}

#[derive(Clone)]
struct Routes {
    array: Array,
    gateways: Option<Arc<GatewayControl>>,
}

/// The gateway routes; without `[gateway]` they explain that one process serves the array.
pub(crate) fn router(array: Array, gateways: Option<Arc<GatewayControl>>) -> Router {
    Router::new()
        .route(r::ADMIN_GATEWAYS, get(list))
        .route(r::ADMIN_GATEWAY_DRAIN, post(drain))
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .with_state(Routes { array, gateways })
}

fn control(routes: &Routes) -> ApiResult<Arc<GatewayControl>> {
    routes.gateways.clone().ok_or_else(|| {
        ApiError(ArrayError::Conflict(
            "this array is served by one process (no [gateway] in its configuration): it has \
             no gateways to list or drain"
                .into(),
        ))
    })
}

impl GatewayControl {
    fn err(&self, what: &'static str) -> impl Fn(gateways::Error) -> ArrayError + use<> {
        let gateway = self.name.clone();
        move |e| ArrayError::Gateway {
            gateway: gateway.clone(),
            what: what.into(),
            source: Box::new(e),
        }
    }

    /// The live gateways, sorted by name.
    fn list(&self) -> Result<Vec<GatewayRecord>, ArrayError> {
        let live = crate::paths::live_ports(&self.members)
            .map_err(self.err("reading the gateways' ports"))?;
        let drains = self
            .members
            .drains()
            .map_err(self.err("reading the drain requests"))?;
        Ok(live
            .into_iter()
            .map(|(m, advert)| GatewayRecord {
                serving: m.gateway == self.name,
                relative_port: advert.map(|a| a.relative_port),
                portal_group_tag: advert.map(|a| a.portal_group_tag),
                // Only the gateway in office serves its own API; a standby's advert names
                // none.
                api: advert.and_then(|a| a.api).map(|a| a.to_string()),
                draining: drains.contains_key(&m.gateway),
                name: m.gateway,
            })
            .collect())
    }

    /// Asks `gateway` to drain; refused when no other live gateway, not itself draining,
    /// would be left to serve, unless `force`.
    fn drain(&self, gateway: &str, force: bool) -> Result<GatewayRecord, ArrayError> {
        let all = self.list()?;
        let Some(mut record) = all.iter().find(|g| g.name == gateway).cloned() else {
            return Err(ArrayError::NotFound(format!(
                "no live gateway named {gateway:?}; `shadowlun gateway list` shows them"
            )));
        };
        let others = all
            .iter()
            .filter(|g| g.name != gateway && !g.draining)
            .count();
        if others == 0 && !force {
            return Err(ArrayError::Conflict(format!(
                "{gateway} is the array's only live gateway not draining: drained, nothing \
                 would serve the array's LUNs. Start another gateway first (it stands by), \
                 or pass --force to stop serving them"
            )));
        }
        let why = serde_json::json!({
            "by": self.name,
            "at": crate::state::now_secs(),
        })
        .to_string();
        self.members
            .request_drain(gateway, why.as_bytes())
            .map_err(self.err("asking a gateway to drain"))?;
        tracing::info!(gateway, by = %self.name, force, "gateway asked to drain");
        record.draining = true;
        if gateway == self.name {
            // After the answer has left (the request layer logs and audits it first).
            let tx = self.drain.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let _ = tx.send(true);
            });
        }
        Ok(record)
    }
}

async fn list(State(s): State<Routes>, h: HeaderMap) -> ApiResult<Response> {
    admin(&s.array, &h, r::ADMIN_GATEWAYS)?;
    let c = control(&s)?;
    let v = blocking(move || c.list()).await?;
    Ok(json(StatusCode::OK, &v))
}

async fn drain(
    State(s): State<Routes>,
    h: HeaderMap,
    Path(gateway): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    admin(&s.array, &h, r::ADMIN_GATEWAY_DRAIN)?;
    let force = force(&q)?;
    let c = control(&s)?;
    let handle = tokio::runtime::Handle::current();
    let v = blocking(move || {
        let _in_runtime = handle.enter();
        c.drain(&gateway, force)
    })
    .await?;
    Ok(json(StatusCode::ACCEPTED, &v))
}
