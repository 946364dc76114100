//! TLS for the control API: a self-signed certificate generated on first start, its SHA-256
//! fingerprint (what the provider pins), and a client-side verifier that accepts exactly the
//! pinned certificate.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

use crate::error::ArrayError;

/// The ring crypto provider (no aws-lc on this platform).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate in `openssl x509 -fingerprint -sha256` form (`AB:CD:...`).
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Normalises a fingerprint written with or without colons, any case, to raw bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let v = hex::decode(hex).ok()?;
    v.try_into().ok()
}

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

/// Accepts exactly the server certificate whose SHA-256 is the pin; signatures are still
/// verified, so only the holder of the pinned certificate's key passes.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedVerifier {
    pub fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: provider(),
        }
    }

    /// A client configuration pinned to `fingerprint` (any [`fingerprint`] format).
    pub fn client_config(fingerprint: &str) -> Result<rustls::ClientConfig, ArrayError> {
        let pin = parse_fingerprint(fingerprint)
            .ok_or_else(|| tls_err("fingerprint", "not 32 hex bytes"))?;
        let verifier = Arc::new(Self::new(pin));
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("protocol versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
