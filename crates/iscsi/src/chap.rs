//! CHAP (RFC 1994 with the iSCSI rules of RFC 7143 §12.1.3): MD5 only (CHAP_A=5).

use md5::{Digest, Md5};

/// CHAP algorithm number for MD5.
pub const CHAP_MD5: u8 = 5;

/// Secrets for one initiator.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecret {
    /// The CHAP_N the initiator must present.
    pub user: String,
    pub secret: Vec<u8>,
    /// For mutual CHAP: the name and secret the target answers with.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecret")
            .field("user", &self.user)
            .field("mutual", &self.mutual.as_ref().map(|m| &m.0))
            .finish_non_exhaustive()
    }
}

/// CHAP response: MD5(identifier || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Fresh random bytes for a challenge.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: fall back to a time-seeded mix so the target still works; a
        // predictable challenge weakens CHAP, so say so.
        tracing::warn!("no OS random source; CHAP challenge is weak");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let digest: [u8; 16] = Md5::digest(t.to_le_bytes()).into();
        for (i, x) in b.iter_mut().enumerate() {
            *x = digest[i % 16];
        }
    }
    b
}

/// Constant-time comparison of two digests.
pub fn digest_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_matches_rfc1994_construction() {
        // MD5 of 0x01 || "secret" || 0x0203 computed independently:
        // printf '\x01secret\x02\x03' | md5sum
        let r = response(1, b"secret", &[2, 3]);
        let want = [
            0xf5, 0x06, 0xc2, 0x4f, 0x35, 0xd1, 0xc7, 0x0e, 0x45, 0x0e, 0xdb, 0x8f, 0xdf, 0x93,
            0x34, 0x78,
        ];
        assert_eq!(r, want);
        assert_ne!(response(2, b"secret", &[2, 3]), want);
    }

    #[test]
    fn digest_compare_detects_any_difference() {
        assert!(digest_eq(&[1, 2, 3], &[1, 2, 3]));
        assert!(!digest_eq(&[1, 2, 3], &[1, 2, 4]));
        assert!(!digest_eq(&[1, 2], &[1, 2, 3]));
    }
}
