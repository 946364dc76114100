//! The HTTPS implementation of [`ArrayControl`], and the blocking client the admin CLI uses.
//!
//! TLS is rustls with the array's certificate pinned by its SHA-256 fingerprint (the array
//! generates a self-signed certificate on first start and prints the fingerprint): no CA, no
//! host-name check, nothing else is trusted. Connections are kept alive in the agent's pool,
//! so the connection warmed by `EndPrepareSnapshots` is the one `CommitSnapshots` uses.
//! Every provider verb is idempotent on the array, so transport failures are retried; the
//! commit gets a short deadline of its own, well inside VSS's 10 s flush-and-hold window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{Problem, ProblemCode, routes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use vss::{SnapshotContext, VssId};

use crate::array::*;

/// Where and how to reach the array.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port`
    pub url: String,
    /// Bearer token (a host token for the provider, the admin token for the CLI).
    pub token: String,
    /// SHA-256 fingerprint of the array's certificate: 64 hex digits, `:` separators allowed.
    pub fingerprint: String,
    /// Deadline of ordinary calls.
    pub timeout: Duration,
    /// Deadline of the commit call, retries included.
    pub commit_timeout: Duration,
    /// Attempts for idempotent calls that fail in transport.
    pub attempts: u32,
}

impl ClientConfig {
    pub fn new(url: &str, token: &str, fingerprint: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            fingerprint: fingerprint.to_string(),
            timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(3),
            attempts: 3,
        }
    }
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

/// A blocking HTTPS client of the control API.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    config: Arc<ClientConfig>,
    /// Certificates refused for not matching the pin.
    mismatch: Arc<api::pinning::Mismatch>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if !config.url.starts_with("https://") || config.url.len() <= "https://".len() {
            return Err(ClientError::BadUrl(config.url.clone()));
        }
        let (tls, mismatch) =
            api::pinning::client_config_observed(&config.fingerprint).map_err(|e| match e {
                api::pinning::PinError::BadFingerprint(s) => ClientError::BadFingerprint(s),
                api::pinning::PinError::Tls(m) => ClientError::Transport(m),
            })?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .timeout_connect(Duration::from_secs(5).min(config.timeout))
            .max_idle_connections_per_host(4)
            .build();
        Ok(Self {
            agent,
            config: Arc::new(config),
            mismatch,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn once<B: Serialize>(
        &self,
        verb: &Verb,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
        key: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let url = format!("{}{path}", self.config.url);
        let req = match verb {
            Verb::Get => self.agent.get(&url),
            Verb::Post => self.agent.post(&url),
            Verb::Patch => self.agent.request("PATCH", &url),
            Verb::Delete => self.agent.delete(&url),
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
                serde_json::to_value(b).map_err(|e| ClientError::Decode(e.to_string()))?,
            ),
            None if matches!(verb, Verb::Post) => req.send_string(""),
            None => req.call(),
        };
        match res {
            Ok(r) if r.status() == 204 => Ok(None),
            Ok(r) => r
                .into_string()
                .map(Some)
                .map_err(|e| ClientError::Decode(e.to_string())),
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
                Err(ClientError::Problem(p))
            }
            Err(ureq::Error::Transport(t)) => {
                if let Some(presented) = self.mismatch.presented() {
                    return Err(ClientError::CertificateMismatch {
                        pinned: self.mismatch.pinned().to_string(),
                        presented,
                    });
                }
                let msg = t.to_string();
                if msg.contains("timed out") || msg.contains("Timeout") {
                    Err(ClientError::Timeout(timeout))
                } else {
                    Err(ClientError::Transport(msg))
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
    /// the first, so a request that timed out is retried too (with the same key), within
    /// `deadline`.
    fn send_keyed<B: Serialize>(
        &self,
        verb: Verb,
        path: &str,
        body: Option<&B>,
        deadline: Duration,
        key: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A keyed request gets the whole deadline on each of its attempts (a repeat is
            // answered, not executed again); any other shares one deadline.
            let left = match key {
                Some(_) => deadline,
                None => deadline.saturating_sub(start.elapsed()),
            };
            if left.is_zero() {
                return Err(ClientError::Timeout(deadline));
            }
            match self.once(&verb, path, body, left, key) {
                Err(ClientError::Timeout(_)) if key.is_some() && attempt < self.config.attempts => {
                    tracing::debug!("retrying {path} with its idempotency key after a timeout");
                }
                Err(ClientError::Transport(m))
                    if attempt < self.config.attempts && start.elapsed() < deadline =>
                {
                    // A pooled connection the server closed, or a daemon restarting: retry.
                    tracing::debug!("retrying {path} after transport error: {m}");
                    std::thread::sleep(Duration::from_millis(20 * attempt as u64));
                }
                other => return other,
            }
        }
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
