//! TLS for the control API: a self-signed certificate generated on first start and its SHA-256
//! fingerprint (what clients pin; the pinning rule itself is `api::pinning`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ArrayError;

/// The ring crypto provider (no aws-lc on this platform).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub use api::pinning::{fingerprint, parse_fingerprint};

fn tls_err(what: &str, e: impl std::fmt::Display) -> ArrayError {
    ArrayError::Tls(format!("{what}: {e}"))
}

/// Loads the certificate and key, generating both (key file 0600) if the certificate is
/// missing. Returns the chain, the key and the leaf's fingerprint.
pub fn load_or_create(
    cert_path: &Path,
    key_path: &Path,
    extra_names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), ArrayError> {
    if !cert_path.exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra_names.iter().cloned());
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| tls_err("rcgen", e))?;
        for (path, text, mode) in [
            (key_path, ck.key_pair.serialize_pem(), 0o600),
            (cert_path, ck.cert.pem(), 0o644),
        ] {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ArrayError::io(format!("creating {}", dir.display()), e))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)
                .map_err(|e| ArrayError::io(format!("writing {}", path.display()), e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| ArrayError::io(format!("writing {}", path.display()), e))?;
        }
        tracing::info!(cert = %cert_path.display(), "generated a new TLS certificate");
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| ArrayError::io(format!("reading {}", p.display()), e))
    };
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut read(cert_path)?.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err("parsing the certificate", e))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tls_err("certificate file", "holds no certificate"))?;
    let fp = fingerprint(leaf);
    let key = rustls_pemfile::private_key(&mut read(key_path)?.as_slice())
        .map_err(|e| tls_err("parsing the key", e))?
        .ok_or_else(|| tls_err("key file", "holds no private key"))?;
    Ok((certs, key, fp))
}

/// The server configuration (TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, ArrayError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate and key", e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_is_generated_once_and_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (
            dir.path().join("tls/cert.pem"),
            dir.path().join("tls/key.pem"),
        );
        let (_, _, fp1) = load_or_create(&c, &k, &[]).unwrap();
        let (_, _, fp2) = load_or_create(&c, &k, &[]).unwrap();
        assert_eq!(fp1, fp2, "a restart keeps the pinned certificate");
        assert_eq!(fp1.len(), 32 * 3 - 1);
        assert_eq!(
            parse_fingerprint(&fp1.to_lowercase().replace(':', ""))
                .unwrap()
                .len(),
            32
        );
        let mode = std::fs::metadata(&k).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
