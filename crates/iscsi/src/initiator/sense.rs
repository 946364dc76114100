//! Sense data decoding (fixed and descriptor formats).

/// Sense key UNIT ATTENTION.
pub const SENSE_UNIT_ATTENTION: u8 = 0x06;

/// Decoded sense data (fixed or descriptor format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub raw: Vec<u8>,
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sense key {:#x}, ASC/ASCQ {:02x}/{:02x}",
            self.key, self.asc, self.ascq
        )
    }
}

impl Sense {
    pub fn parse(raw: &[u8]) -> Option<Sense> {
        let code = raw.first()? & 0x7f;
        let (key, asc, ascq) = match code {
            0x70 | 0x71 => (
                raw.get(2)? & 0x0f,
                *raw.get(12).unwrap_or(&0),
                *raw.get(13).unwrap_or(&0),
            ),
            0x72 | 0x73 => (raw.get(1)? & 0x0f, *raw.get(2)?, *raw.get(3)?),
            _ => return None,
        };
        Some(Sense {
            key,
            asc,
            ascq,
            raw: raw.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_sense_decode() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[12] = 0x3f;
        fixed[13] = 0x0e;
        let s = Sense::parse(&fixed).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (6, 0x3f, 0x0e));
        let s = Sense::parse(&[0x72, 0x05, 0x24, 0x00]).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (5, 0x24, 0));
        assert_eq!(Sense::parse(&[0x00]), None);
    }
}
