//! How a client trusts the array: exactly one certificate, named by the SHA-256 of its DER.
//!
//! The array generates a self-signed certificate on first start and prints its fingerprint in
//! `openssl x509 -fingerprint -sha256` form; clients trust that certificate and nothing else
//! (no CA, no host-name check). Handshake signatures are still verified, so only the holder of
//! the pinned certificate's key passes.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

/// The fingerprint of a DER certificate as `AB:CD:...` (64 hex digits, `:`-separated).
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a fingerprint written with or without `:` separators, in either case.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    vss::lun::from_hex(&hex)?.try_into().ok()
}

/// Why a pinned client configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinError {
    /// Not 64 hex digits.
    BadFingerprint(String),
    Tls(String),
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinError::BadFingerprint(s) => write!(
                f,
                "invalid certificate fingerprint '{s}': expected 64 hex digits (':' separators allowed)"
            ),
            PinError::Tls(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for PinError {}

/// A rustls client configuration (ring provider) that trusts only the certificate whose
/// fingerprint is `fingerprint`.
pub fn client_config(fingerprint: &str) -> Result<rustls::ClientConfig, PinError> {
    client_config_observed(fingerprint).map(|(c, _)| c)
}

/// What a pinned configuration saw: the fingerprint of the last certificate it refused, so a
/// client can say "the array's certificate does not match" instead of "cannot be reached".
#[derive(Debug, Default)]
pub struct Mismatch {
    pinned: String,
    presented: Mutex<Option<String>>,
}

impl Mismatch {
    /// The pinned fingerprint, `AB:CD:...`.
    pub fn pinned(&self) -> &str {
        &self.pinned
    }

    /// The fingerprint of the last certificate refused for not matching the pin, if any.
    pub fn presented(&self) -> Option<String> {
        self.presented.lock().expect("mismatch lock").clone()
    }

    /// Forgets the refused certificate: the server answered with the pinned one since.
    pub fn clear(&self) {
        *self.presented.lock().expect("mismatch lock") = None;
    }
}

/// [`client_config`], and what its verifier refuses.
pub fn client_config_observed(
    fingerprint: &str,
) -> Result<(rustls::ClientConfig, Arc<Mismatch>), PinError> {
    let pin = parse_fingerprint(fingerprint)
        .ok_or_else(|| PinError::BadFingerprint(fingerprint.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mismatch {
        pinned: pin
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        presented: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PinError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            pin,
            provider,
            seen: seen.clone(),
        }))
        .with_no_client_auth();
    Ok((config, seen))
}

/// Trusts exactly one certificate, identified by its SHA-256.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<Mismatch>,
}

impl ServerCertVerifier for PinnedCert {
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
            *self.seen.presented.lock().expect("mismatch lock") =
                Some(fingerprint(end_entity.as_ref()));
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
    fn fingerprints_round_trip_in_any_form() {
        let fp = fingerprint(b"certificate bytes");
        assert_eq!(fp.len(), 64 + 31);
        let raw = parse_fingerprint(&fp).unwrap();
        assert_eq!(
            parse_fingerprint(&fp.to_lowercase().replace(':', "")),
            Some(raw)
        );
        assert_eq!(parse_fingerprint("abc"), None);
        assert!(matches!(
            client_config("xyz"),
            Err(PinError::BadFingerprint(_))
        ));
        assert!(client_config(&fp).is_ok());
    }
}
