//! The HTTPS implementation of [`ArrayControl`], and the blocking client the admin CLI uses.
//!
//! TLS is rustls with the array's certificate pinned by its SHA-256 fingerprint (the array
//! generates a self-signed certificate on first start and prints the fingerprint): no CA, no
//! host-name check, nothing else is trusted. Connections are kept alive in the agent's pool,
//! so the connection warmed by `EndPrepareSnapshots` is the one `CommitSnapshots` uses.
//! Every provider verb is idempotent on the array, so transport failures are retried; the
//! commit gets a short deadline of its own, well inside VSS's 10 s flush-and-hold window.
//!
//! # Several gateways
//!
//! An array may be served by several gateway processes that share its identity (one array id,
//! one certificate and key, one admin token), each serving the control API. A client is given
//! every gateway's URL and one pinned fingerprint, the array's. Each call goes to the URL that
//! answered last (sticky: a client stays on one gateway and its warm connection); when that
//! gateway fails in transport, the call moves on to the next URL of the list (wrapping around)
//! and is sent there, within the call's deadline:
//!
//! * no connection could be made (refused, connect timeout, name not resolved): the request
//!   never left, so any request moves on;
//! * the connection broke (reset, closed before the answer): provider verbs are idempotent on
//!   the array and creating admin verbs carry an idempotency key, so the request is sent again
//!   elsewhere, as it was always sent again to the one array;
//! * no answer within the deadline: only a request with an idempotency key moves on (the array
//!   answers a repeat as it answered the first); any other returns the timeout, the commit's
//!   among them (its time limit is VSS's).
//!
//! Never a reason to move on: an answer (an HTTP problem is the array's answer, and another
//! gateway of the same array would give the same), and a certificate that does not match the
//! pin (something else answers at that address: the call fails with
//! [`ClientError::CertificateMismatch`], the other gateways are not tried). When every URL
//! failed, the error names each one and why it failed.
//!
//! The connect timeout is short, [`CONNECT_TIMEOUT`] (2 s): a gateway whose host is down drops
//! the connection request, and the call waits that long before it tries the next gateway,
//! once: after that the next gateway is the one calls go to. On a LAN a connection is made in
//! milliseconds, and a dead first gateway followed by a live one fits the commit's 3 s
//! deadline. Moving to another gateway is logged at debug level only: a commit runs while
//! applications are frozen, when nothing may be written.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::{Problem, ProblemCode, routes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vss::{SnapshotContext, VssId};

use crate::array::*;

/// How long making a connection to one gateway may take before the next is tried (see the
/// module documentation for why it is short).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to reach the array.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The control API of each of the array's gateways, `https://host:port`, in the order
    /// they are tried.
    pub urls: Vec<String>,
    /// Bearer token (a host token for the provider, the admin token for the CLI).
    pub token: String,
    /// SHA-256 fingerprint of the array's certificate: 64 hex digits, `:` separators allowed.
    /// Every gateway presents it.
    pub fingerprint: String,
    /// Deadline of ordinary calls.
    pub timeout: Duration,
    /// Deadline of the commit call, retries included.
    pub commit_timeout: Duration,
    /// Rounds through the gateways for idempotent calls that fail in transport (with one
    /// gateway: attempts).
    pub attempts: u32,
    /// How long a connection may take to be made ([`CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// `urls`: one URL, or several separated by commas.
    pub fn new(urls: &str, token: &str, fingerprint: &str) -> Self {
        Self::with_urls(&[urls], token, fingerprint)
    }

    /// Several URLs, each value one URL or several separated by commas ([`split_urls`]).
    pub fn with_urls<S: AsRef<str>>(urls: &[S], token: &str, fingerprint: &str) -> Self {
        Self {
            urls: split_urls(urls),
            token: token.to_string(),
            fingerprint: fingerprint.to_string(),
            timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(3),
            attempts: 3,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// The gateway URLs in `values`: each value is one URL or several separated by commas (a
/// flag given several times, a registry value, an environment variable). Spaces around a URL
/// and a trailing `/` are dropped, as are empty pieces and repeats; the order is kept.
pub fn split_urls<S: AsRef<str>>(values: &[S]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for piece in values.iter().flat_map(|v| v.as_ref().split(',')) {
        let url = piece.trim().trim_end_matches('/');
        if !url.is_empty() && !urls.iter().any(|u| u == url) {
            urls.push(url.to_string());
        }
    }
    urls
}

/// Checks that `url` is `https://host[:port]` (a path prefix is allowed): no other scheme,
/// no empty host, no spaces.
pub fn check_url(url: &str) -> Result<(), ClientError> {
    let bad = || ClientError::BadUrl(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || host.starts_with(':')
        || url.chars().any(|c| c.is_whitespace() || c == ',')
    {
        return Err(bad());
    }
    Ok(())
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid certificate fingerprint '{0}': expected 64 hex digits (':' separators allowed)"
    )]
    BadFingerprint(String),
    #[error("invalid array URL '{0}': expected https://host:port")]
    BadUrl(String),
    #[error("{}: {}", .0.title, .0.detail)]
    Problem(Problem),
    #[error(
        "the array's certificate does not match the pinned fingerprint: pinned {pinned}, the \
         array presented {presented}"
    )]
    CertificateMismatch { pinned: String, presented: String },
    /// No gateway could be reached; the text names each URL tried and why it failed.
    #[error("the array cannot be reached: {0}")]
    Transport(String),
    #[error("the array did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the array's answer could not be read: {0}")]
    Decode(String),
}

impl From<ClientError> for ControlError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Problem(p) => match p.code {
                ProblemCode::NotFound => ControlError::NotFound(p.detail),
                ProblemCode::Conflict => ControlError::Conflict(p.detail),
                ProblemCode::NoSpace => ControlError::NoSpace(p.detail),
                ProblemCode::LimitReached => ControlError::LimitReached(p.detail),
                ProblemCode::Unauthorized | ProblemCode::Forbidden => {
                    ControlError::Unauthorized(p.detail)
                }
                ProblemCode::BadRequest | ProblemCode::Internal => ControlError::Rejected {
                    code: format!("{:?}", p.code),
                    detail: p.detail,
                },
            },
            ClientError::Timeout(d) => ControlError::Timeout(format!("{d:?}")),
            ClientError::Transport(m) => ControlError::Unreachable(m),
            // To VSS the array is out of reach; the message says why.
            e @ ClientError::CertificateMismatch { .. } => ControlError::Unreachable(e.to_string()),
            e @ (ClientError::BadFingerprint(_)
            | ClientError::BadUrl(_)
            | ClientError::Decode(_)) => ControlError::Rejected {
                code: "client".into(),
                detail: e.to_string(),
            },
        }
    }
}

/// Parses a SHA-256 fingerprint in hex, with or without `:` separators.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ClientError> {
    api::pinning::parse_fingerprint(s).ok_or_else(|| ClientError::BadFingerprint(s.to_string()))
}

/// The fingerprint of a DER certificate as `AB:CD:...`.
pub use api::pinning::fingerprint as fingerprint_of;

/// One gateway: its URL, its connection pool, and the certificates its handshakes refused.
struct Gateway {
    url: String,
    agent: ureq::Agent,
    mismatch: Arc<api::pinning::Mismatch>,
}

/// A blocking HTTPS client of the control API, over every gateway of one array.
#[derive(Clone)]
pub struct Client {
    gateways: Arc<[Gateway]>,
    /// The index of the gateway that answered last: where the next call goes first.
    current: Arc<AtomicUsize>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("urls", &self.config.urls)
            .finish_non_exhaustive()
    }
}

enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

/// How one attempt on one gateway ended, when it did not end the call.
enum Failed {
    /// No connection could be made: the request never left.
    Connect(String),
    /// The connection broke before the answer: the request may have been executed.
    Broken(String),
    /// No answer within the time the attempt had.
    Timeout(Duration),
    /// An answer, or a reason not to try elsewhere: the call ends with it.
    Final(ClientError),
}

/// A transport failure in words, without the URL (the caller names the gateway).
fn reason(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.urls.is_empty() {
            return Err(ClientError::BadUrl(String::new()));
        }
        let mut gateways = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            check_url(url)?;
            // One TLS configuration per gateway, so a refused certificate is known by where
            // it was presented.
            let (tls, mismatch) = api::pinning::client_config_observed(&config.fingerprint)
                .map_err(|e| match e {
                    api::pinning::PinError::BadFingerprint(s) => ClientError::BadFingerprint(s),
                    api::pinning::PinError::Tls(m) => ClientError::Transport(m),
                })?;
            let agent = ureq::AgentBuilder::new()
                .tls_config(Arc::new(tls))
                .timeout_connect(config.connect_timeout.min(config.timeout))
                .max_idle_connections_per_host(4)
                .build();
            gateways.push(Gateway {
                url: url.clone(),
                agent,
                mismatch,
            });
        }
        Ok(Self {
            gateways: gateways.into(),
            current: Arc::new(AtomicUsize::new(0)),
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The URL calls go to first: the gateway that answered last (the first URL until one
    /// did).
    pub fn current_url(&self) -> &str {
        &self.gateways[self.current.load(Ordering::Relaxed) % self.gateways.len()].url
    }

    #[allow(clippy::too_many_arguments)]
    fn once<B: Serialize>(
        &self,
        gw: &Gateway,
        verb: &Verb,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
        key: Option<&str>,
    ) -> Result<Option<String>, Failed> {
        let url = format!("{}{path}", gw.url);
        let req = match verb {
            Verb::Get => gw.agent.get(&url),
            Verb::Post => gw.agent.post(&url),
            Verb::Patch => gw.agent.request("PATCH", &url),
            Verb::Delete => gw.agent.delete(&url),
        }
        .set("Authorization", &format!("Bearer {}", self.config.token))
        .set("Accept", "application/json, application/problem+json")
        .timeout(timeout);
        let req = match key {
            Some(k) => req.set("Idempotency-Key", k),
            None => req,
        };
        let res = match body {
            Some(b) => req.send_json(
                serde_json::to_value(b)
                    .map_err(|e| Failed::Final(ClientError::Decode(e.to_string())))?,
            ),
            None if matches!(verb, Verb::Post) => req.send_string(""),
            None => req.call(),
        };
        if !matches!(res, Err(ureq::Error::Transport(_))) {
            // The gateway answered with the pinned certificate.
            gw.mismatch.clear();
        }
        match res {
            Ok(r) if r.status() == 204 => Ok(None),
            Ok(r) => r
                .into_string()
                .map(Some)
                .map_err(|e| Failed::Final(ClientError::Decode(e.to_string()))),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let p = serde_json::from_str::<Problem>(&text).unwrap_or_else(|_| {
                    let code = match status {
                        400 => ProblemCode::BadRequest,
                        401 => ProblemCode::Unauthorized,
                        403 => ProblemCode::Forbidden,
                        404 => ProblemCode::NotFound,
                        409 => ProblemCode::Conflict,
                        507 => ProblemCode::NoSpace,
                        _ => ProblemCode::Internal,
                    };
                    Problem::new(
                        code,
                        format!(
                            "HTTP {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ),
                    )
                });
                Err(Failed::Final(ClientError::Problem(p)))
            }
            Err(ureq::Error::Transport(t)) => {
                let msg = reason(&t);
                // A plain TCP connect failure saw no certificate; anything later may have
                // been refused by the pin.
                let tcp_only = t.kind() == ureq::ErrorKind::ConnectionFailed
                    && t.message() == Some("Connect error");
                if let Some(presented) = gw.mismatch.presented().filter(|_| !tcp_only) {
                    return Err(Failed::Final(ClientError::CertificateMismatch {
                        pinned: gw.mismatch.pinned().to_string(),
                        presented,
                    }));
                }
                match t.kind() {
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                        Err(Failed::Connect(msg))
                    }
                    _ if msg.contains("timed out") || msg.contains("Timeout") => {
                        Err(Failed::Timeout(timeout))
                    }
                    _ => Err(Failed::Broken(msg)),
                }
            }
        }
    }

    /// Sends a request, retrying transport failures within `deadline`.
    fn send<B: Serialize>(
        &self,
        verb: Verb,
        path: &str,
        body: Option<&B>,
        deadline: Duration,
    ) -> Result<Option<String>, ClientError> {
        self.send_keyed(verb, path, body, deadline, None)
    }

    /// [`Client::send`] with an idempotency key: the array answers a repeat as it answered
    /// the first, so a request that timed out is retried too (with the same key, on the next
    /// gateway), within `deadline`.
    fn send_keyed<B: Serialize>(
        &self,
        verb: Verb,
        path: &str,
        body: Option<&B>,
        deadline: Duration,
        key: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let start = Instant::now();
        let n = self.gateways.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        // The last failure of each gateway tried, by index.
        let mut failures: Vec<Option<Failed>> = (0..n).map(|_| None).collect();
        'rounds: for round in 0..self.config.attempts.max(1) {
            if round > 0 {
                // Every gateway failed: a daemon restarting, a pooled connection the server
                // closed. Wait a little before the next round.
                let pause = Duration::from_millis(20 * u64::from(round));
                if key.is_none() && start.elapsed() + pause >= deadline {
                    break;
                }
                std::thread::sleep(pause);
            }
            for step in 0..n {
                let i = (first + step) % n;
                let gw = &self.gateways[i];
                // A keyed request gets the whole deadline on each of its attempts (a repeat is
                // answered, not executed again); any other shares one deadline.
                let left = match key {
                    Some(_) => deadline,
                    None => deadline.saturating_sub(start.elapsed()),
                };
                if left.is_zero() {
                    break 'rounds;
                }
                let failed = match self.once(gw, &verb, path, body, left, key) {
                    Ok(v) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(Failed::Final(e)) => {
                        if matches!(e, ClientError::Problem(_) | ClientError::Decode(_)) {
                            self.current.store(i, Ordering::Relaxed);
                        }
                        return Err(e);
                    }
                    Err(Failed::Timeout(d)) if key.is_none() => {
                        return Err(ClientError::Timeout(d));
                    }
                    Err(f) => f,
                };
                match &failed {
                    Failed::Connect(m) | Failed::Broken(m) => {
                        tracing::debug!(gateway = %gw.url, "{path} failed in transport: {m}");
                    }
                    Failed::Timeout(d) => tracing::debug!(
                        gateway = %gw.url,
                        "{path} not answered within {d:?}; sending it again with its \
                         idempotency key"
                    ),
                    Failed::Final(_) => {}
                }
                failures[i] = Some(failed);
            }
        }
        Err(self.unreachable(failures, deadline))
    }

    /// The error of a call no gateway answered: with one gateway, its failure; with several,
    /// every URL and why it failed.
    fn unreachable(&self, failures: Vec<Option<Failed>>, deadline: Duration) -> ClientError {
        if let [only] = &*self.gateways {
            return match failures.into_iter().next().flatten() {
                Some(Failed::Connect(m) | Failed::Broken(m)) => {
                    ClientError::Transport(format!("{}: {m}", only.url))
                }
                Some(Failed::Timeout(d)) => ClientError::Timeout(d),
                Some(Failed::Final(e)) => e,
                None => ClientError::Timeout(deadline),
            };
        }
        let each: Vec<String> = self
            .gateways
            .iter()
            .zip(failures)
            .map(|(gw, f)| {
                let why = match f {
                    Some(Failed::Connect(m) | Failed::Broken(m)) => m,
                    Some(Failed::Timeout(d)) => format!("no answer within {d:?}"),
                    Some(Failed::Final(e)) => e.to_string(),
                    None => format!("not tried: the call's {deadline:?} were spent"),
                };
                format!("{} ({why})", gw.url)
            })
            .collect();
        ClientError::Transport(format!(
            "none of its {} gateways answered: {}",
            each.len(),
            each.join("; ")
        ))
    }

    fn decode<T: DeserializeOwned>(text: Option<String>) -> Result<T, ClientError> {
        let t = text.ok_or_else(|| ClientError::Decode("empty answer".into()))?;
        serde_json::from_str(&t).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::decode(self.send::<()>(Verb::Get, path, None, self.config.timeout)?)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(Verb::Post, path, Some(body), self.config.timeout)?)
    }

    /// A creating POST under an idempotency key (one per operation, the same on every
    /// retry): safe to retry after a timeout or a reset connection.
    pub fn post_keyed<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        key: &str,
    ) -> Result<T, ClientError> {
        Self::decode(self.send_keyed(Verb::Post, path, body, self.config.timeout, Some(key))?)
    }

    /// POST expecting no body back.
    pub fn post_empty<B: Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
        deadline: Duration,
    ) -> Result<(), ClientError> {
        self.send(Verb::Post, path, body, deadline).map(|_| ())
    }

    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::decode(self.send(Verb::Patch, path, Some(body), self.config.timeout)?)
    }

    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send::<()>(Verb::Delete, path, None, self.config.timeout)
            .map(|_| ())
    }

    /// `GET /v1/health` (also checks the pinned certificate).
    pub fn health(&self) -> Result<api::Health, ClientError> {
        self.get(routes::HEALTH)
    }
}

/// [`ArrayControl`] over the control API.
#[derive(Debug, Clone)]
pub struct HttpsArray {
    client: Client,
}

impl HttpsArray {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        Ok(Self {
            client: Client::new(config)?,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn set_path(route: &str, set_id: VssId) -> String {
        routes::fill(route, &[("set", &set_id.to_string())])
    }

    fn post_set(&self, route: &str, set_id: VssId, deadline: Duration) -> Result<(), ControlError> {
        Ok(self
            .client
            .post_empty::<()>(&Self::set_path(route, set_id), None, deadline)?)
    }
}

impl ArrayControl for HttpsArray {
    fn lookup(&self, keys: &[LunKey]) -> Result<Vec<Option<ArrayLun>>, ControlError> {
        let r: api::LookupResponse = self.client.post(
            routes::LOOKUP,
            &api::LookupRequest {
                keys: keys.to_vec(),
            },
        )?;
        Ok(r.luns)
    }

    fn prepare(
        &self,
        set_id: VssId,
        context: SnapshotContext,
        snapshots: &[PlannedSnapshot],
    ) -> Result<(), ControlError> {
        let body = api::PrepareRequest {
            context,
            snapshots: snapshots.to_vec(),
        };
        Ok(self.client.post_empty(
            &Self::set_path(routes::PREPARE, set_id),
            Some(&body),
            self.client.config.timeout,
        )?)
    }

    fn end_prepare(&self, set_id: VssId) -> Result<(), ControlError> {
        // Also leaves a warm connection in the pool for the commit.
        self.post_set(routes::END_PREPARE, set_id, self.client.config.timeout)
    }

    fn commit(&self, set_id: VssId) -> Result<(), ControlError> {
        self.post_set(routes::COMMIT, set_id, self.client.config.commit_timeout)
    }

    fn complete(&self, set_id: VssId) -> Result<(), ControlError> {
        self.post_set(routes::COMPLETE, set_id, self.client.config.timeout)
    }

    fn abort(&self, set_id: VssId) -> Result<(), ControlError> {
        self.post_set(routes::ABORT, set_id, self.client.config.timeout)
    }

    fn describe(&self, set_id: VssId, sources: &[LunId]) -> Result<Vec<SnapshotLun>, ControlError> {
        let r: api::DescribeResponse = self.client.post(
            &Self::set_path(routes::DESCRIBE, set_id),
            &api::DescribeRequest {
                sources: sources.to_vec(),
            },
        )?;
        Ok(r.snapshots)
    }

    fn expose(&self, luns: &[LunId]) -> Result<(), ControlError> {
        let body = api::LunsRequest {
            luns: luns.to_vec(),
        };
        Ok(self
            .client
            .post_empty(routes::EXPOSE, Some(&body), self.client.config.timeout)?)
    }

    fn mask(&self, luns: &[LunId]) -> Result<(), ControlError> {
        let body = api::LunsRequest {
            luns: luns.to_vec(),
        };
        Ok(self
            .client
            .post_empty(routes::MASK, Some(&body), self.client.config.timeout)?)
    }

    fn release(&self, lun: &LunId) -> Result<(), ControlError> {
        let path = routes::fill(routes::RELEASE, &[("lun", lun)]);
        Ok(self
            .client
            .post_empty::<()>(&path, None, self.client.config.timeout)?)
    }

    fn start_resync(&self, pairs: &[ResyncPair]) -> Result<JobId, ControlError> {
        let r: api::ResyncResponse = self.client.post(
            routes::RESYNC,
            &api::ResyncRequest {
                pairs: pairs.to_vec(),
                force: false,
            },
        )?;
        Ok(r.job)
    }

    fn resync_status(&self, job: &JobId) -> Result<JobStatus, ControlError> {
        Ok(self
            .client
            .get(&routes::fill(routes::RESYNC_JOB, &[("job", job)]))?)
    }

    fn cancel_resync(&self, job: &JobId) -> Result<(), ControlError> {
        let path = routes::fill(routes::RESYNC_CANCEL, &[("job", job)]);
        Ok(self
            .client
            .post_empty::<()>(&path, None, self.client.config.timeout)?)
    }

    fn list_sets(&self) -> Result<Vec<SetSummary>, ControlError> {
        Ok(self.client.get(routes::SETS)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_come_repeated_or_comma_separated() {
        assert_eq!(
            split_urls(&["https://a:1, https://b:2/", "https://c:3"]),
            ["https://a:1", "https://b:2", "https://c:3"]
        );
        // Empty pieces and repeats are dropped, the order is kept.
        assert_eq!(
            split_urls(&["https://b:2,,https://a:1,", "https://b:2/"]),
            ["https://b:2", "https://a:1"]
        );
        assert!(split_urls(&[" , "]).is_empty());
        assert_eq!(
            ClientConfig::new("https://a:1,https://b:2", "t", "f").urls,
            ["https://a:1", "https://b:2"]
        );
    }

    #[test]
    fn every_url_is_checked() {
        let fp = "00".repeat(32);
        for good in [
            "https://a:8443",
            "https://[::1]:8443",
            "https://host/prefix",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://a:1",
            "https://",
            "https://:8443",
            "https://a b:1",
            "a:1",
        ] {
            assert_eq!(
                check_url(bad),
                Err(ClientError::BadUrl(bad.into())),
                "{bad}"
            );
        }
        match Client::new(ClientConfig::new("https://a:1,http://b:2", "t", &fp)) {
            Err(ClientError::BadUrl(u)) => assert_eq!(u, "http://b:2"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Client::new(ClientConfig::new(" ,", "t", &fp)),
            Err(ClientError::BadUrl(_))
        ));
        let c = Client::new(ClientConfig::new("https://a:1,https://b:2", "t", &fp)).unwrap();
        assert_eq!(c.current_url(), "https://a:1");
    }
}
