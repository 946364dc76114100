//! A small blocking HTTPS/1.1 client pinned to the array's certificate fingerprint, with
//! keep-alive: for administration tools and tests. Responses must carry `Content-Length`
//! (the array always sends it); bodies above 16 MiB are refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// Why a request failed below HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

const MAX_BODY: usize = 16 << 20;

/// One pinned connection to the array, reopened when the server closes it.
pub struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    token: Option<String>,
    idempotency_key: Option<String>,
    timeout: Duration,
    conn: Option<BufReader<Stream>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish()
    }
}

impl Client {
    /// A client for `addr` accepting only the certificate with `fingerprint`.
    pub fn new(
        addr: SocketAddr,
        fingerprint: &str,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let config = api::pinning::client_config(fingerprint)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self {
            addr,
            config: Arc::new(config),
            token: token.map(str::to_string),
            idempotency_key: None,
            timeout: Duration::from_secs(30),
            conn: None,
        })
    }

    /// Waits at most `timeout` for an answer (and at most 5 s, or `timeout` if shorter, to
    /// connect); 30 s unless set.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.conn = None;
    }

    /// Opens the connection now (so a later request pays no handshake).
    pub fn connect(&mut self) -> Result<(), ClientError> {
        if self.conn.is_none() {
            let tcp =
                TcpStream::connect_timeout(&self.addr, self.timeout.min(Duration::from_secs(5)))?;
            tcp.set_nodelay(true)?;
            tcp.set_read_timeout(Some(self.timeout))?;
            let name = ServerName::IpAddress(self.addr.ip().into());
            let conn = rustls::ClientConnection::new(self.config.clone(), name)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            while s.conn.is_handshaking() {
                s.conn
                    .complete_io(&mut s.sock)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
            }
            self.conn = Some(BufReader::new(s));
        }
        Ok(())
    }

    /// The address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_token(&mut self, token: Option<&str>) {
        self.token = token.map(str::to_string);
    }

    /// Sends `Idempotency-Key: key` with every request from now on (none: no header).
    pub fn set_idempotency_key(&mut self, key: Option<&str>) {
        self.idempotency_key = key.map(str::to_string);
    }

    /// Sends a request with an optional JSON body (raw bytes, so tests can send bad JSON).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        match self.try_request(method, path, body) {
            Ok(r) => Ok(r),
            // A kept-alive connection the server closed: retry once on a fresh one.
            Err(ClientError::Io(_)) | Err(ClientError::Malformed(_)) if self.conn.is_none() => {
                self.try_request(method, path, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let fresh = self.conn.is_none();
        self.connect()?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(k) = &self.idempotency_key {
            head.push_str(&format!("Idempotency-Key: {k}\r\n"));
        }
        let body = body.unwrap_or(b"");
        if !body.is_empty() || method != "GET" {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let result = (|| {
            let conn = self.conn.as_mut().expect("connected");
            let s = conn.get_mut();
            let mut req = head.into_bytes();
            req.extend_from_slice(body);
            s.write_all(&req)?;
            s.flush()?;
            read_response(conn)
        })();
        match result {
            Ok((r, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(r)
            }
            Err(e) => {
                self.conn = None;
                if fresh {
                    // Do not retry on a connection we just opened.
                    return Err(match e {
                        ClientError::Io(e) => ClientError::Tls(e.to_string()),
                        other => other,
                    });
                }
                Err(e)
            }
        }
    }

    pub fn get(&mut self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    pub fn post<T: serde::Serialize>(
        &mut self,
        path: &str,
        body: &T,
    ) -> Result<Response, ClientError> {
        let b = serde_json::to_vec(body).map_err(|e| ClientError::Malformed(e.to_string()))?;
        self.request("POST", path, Some(&b))
    }
}

fn read_response(conn: &mut BufReader<Stream>) -> Result<(Response, bool), ClientError> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("status line {line:?}")))?;
    let mut len = 0usize;
    let mut keep = true;
    let mut content_type = None;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| ClientError::Malformed(format!("header {l:?}")))?;
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => {
                len = v
                    .parse()
                    .map_err(|_| ClientError::Malformed("content-length".into()))?;
            }
            "connection" if v.eq_ignore_ascii_case("close") => keep = false,
            "transfer-encoding" => {
                return Err(ClientError::Malformed(
                    "chunked responses unsupported".into(),
                ));
            }
            "content-type" => content_type = Some(v.to_string()),
            _ => {}
        }
    }
    if len > MAX_BODY {
        return Err(ClientError::Malformed(format!("body of {len} bytes")));
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok((
        Response {
            status,
            content_type,
            body,
        },
        keep,
    ))
}
