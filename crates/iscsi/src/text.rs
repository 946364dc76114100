//! Text keys (RFC 7143 §6): `key=value` pairs separated by NUL, and the value encodings
//! (decimal, hex `0x`, base64 `0b`) used by CHAP.

/// The longest text (login or text negotiation, all continuation PDUs together) accepted
/// from a peer. Real logins are below 2 KiB.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// The longest key name (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// The most pairs accepted in one text.
pub const MAX_PAIRS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text of {0} bytes exceeds the maximum of {MAX_TEXT_LEN}")]
    TooLong(usize),
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    #[error("pair without '=': {0:?}")]
    MissingEquals(String),
    #[error("key name invalid or longer than {MAX_KEY_LEN} bytes: {0:?}")]
    BadKey(String),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("key {0} sent twice")]
    Duplicate(String),
    #[error("bad binary value: {0:?}")]
    BadBinary(String),
}

/// An ordered list of key=value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    /// Parses `key=value\0key=value\0`. A missing final NUL is tolerated; a key sent twice
    /// is an error (negotiation text).
    pub fn parse(data: &[u8]) -> Result<Self, TextError> {
        Self::parse_inner(data, false)
    }

    /// Like [`TextPairs::parse`] but keys may repeat, as in a SendTargets answer (one
    /// `TargetName` and several `TargetAddress` per target).
    pub fn parse_list(data: &[u8]) -> Result<Self, TextError> {
        Self::parse_inner(data, true)
    }

    fn parse_inner(data: &[u8], repeats: bool) -> Result<Self, TextError> {
        if data.len() > MAX_TEXT_LEN {
            return Err(TextError::TooLong(data.len()));
        }
        let mut out: Vec<(String, String)> = Vec::new();
        for raw in data.split(|b| *b == 0) {
            if raw.is_empty() {
                continue;
            }
            if out.len() >= MAX_PAIRS {
                return Err(TextError::TooManyPairs);
            }
            let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| TextError::MissingEquals(s.into()))?;
            if k.is_empty()
                || k.len() > MAX_KEY_LEN
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.+@_".contains(&b))
            {
                return Err(TextError::BadKey(k.into()));
            }
            if !repeats && out.iter().any(|(ek, _)| ek == k) {
                return Err(TextError::Duplicate(k.into()));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(TextPairs(out))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value.into();
        } else {
            self.0.push((key.to_string(), value.into()));
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// Decodes a binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn decode_binary(v: &str) -> Result<Vec<u8>, TextError> {
    let bad = || TextError::BadBinary(v.chars().take(32).collect());
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let h = h.as_bytes();
        if h.is_empty() || h.len() > 2048 {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(h.len().div_ceil(2));
        // An odd number of digits is allowed: the first digit stands alone.
        let (first, rest) = if h.len() % 2 == 1 {
            (&h[..1], &h[1..])
        } else {
            (&h[..0], h)
        };
        if let Some(&c) = first.first() {
            out.push(hex_digit(c).ok_or_else(bad)?);
        }
        for pair in rest.chunks(2) {
            let hi = hex_digit(pair[0]).ok_or_else(bad)?;
            let lo = hex_digit(pair[1]).ok_or_else(bad)?;
            out.push(hi << 4 | lo);
        }
        Ok(out)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        if b.is_empty() || b.len() > 4096 {
            return Err(bad());
        }
        base64_decode(b).ok_or_else(bad)
    } else {
        Err(bad())
    }
}

pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Parses a numeric value (decimal or `0x` hex).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nul_separated_pairs_and_keeps_order() {
        let t = TextPairs::parse(b"InitiatorName=iqn.x\0SessionType=Normal\0").unwrap();
        assert_eq!(t.get("InitiatorName"), Some("iqn.x"));
        assert_eq!(t.0[1].0, "SessionType");
        assert_eq!(t.encode(), b"InitiatorName=iqn.x\0SessionType=Normal\0");
    }

    #[test]
    fn rejects_duplicates_missing_equals_and_oversize_text() {
        assert_eq!(
            TextPairs::parse(b"A=1\0A=2\0"),
            Err(TextError::Duplicate("A".into()))
        );
        assert!(matches!(
            TextPairs::parse(b"novalue\0"),
            Err(TextError::MissingEquals(_))
        ));
        assert_eq!(
            TextPairs::parse(&vec![b'a'; MAX_TEXT_LEN + 1]),
            Err(TextError::TooLong(MAX_TEXT_LEN + 1))
        );
    }

    #[test]
    fn binary_values_decode_from_hex_and_base64() {
        assert_eq!(decode_binary("0x0a0B").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("12").is_err());
        assert_eq!(encode_hex(&[0, 255]), "0x00ff");
    }
}
