//! Byte-level encoding of the metadata files: primitives, log records, log frames and file
//! headers. Every decoder is bounds-checked and returns [`DecodeError`]; nothing here panics
//! or allocates more than the input it was given. The layout is described in
//! `docs/blockstore-format.md`.

use crate::state::Entry;

/// Magic at the start of the checkpoint file.
pub(crate) const CHECKPOINT_MAGIC: [u8; 8] = *b"SLBSCKP1";
/// Magic at the start of the log file.
pub(crate) const LOG_MAGIC: [u8; 8] = *b"SLBSLOG1";
/// Magic at the start of the data file (chunk 0 is reserved for it).
pub(crate) const DATA_MAGIC: [u8; 8] = *b"SLBSDAT1";
/// Format version written in every header.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Size of the checkpoint and log headers.
pub(crate) const HEADER_LEN: usize = 32;
/// Largest log frame accepted (a frame is one commit).
pub(crate) const MAX_FRAME: u32 = 64 << 20;
/// Largest name.
pub(crate) const MAX_NAME: usize = 255;

/// A structural problem found while decoding, at a byte offset of the decoded buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    pub offset: u64,
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn new(offset: usize, reason: impl Into<String>) -> Self {
        DecodeError {
            offset: offset as u64,
            reason: reason.into(),
        }
    }
}

/// Little-endian writer.
#[derive(Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(MAX_NAME)];
        self.u8(b.len() as u8);
        self.buf.extend_from_slice(b);
    }
    pub fn entry(&mut self, e: &Entry) {
        self.u32(e.phys);
        self.u32(e.under);
        self.u16(e.mask);
    }
}

/// Little-endian, bounds-checked reader.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::new(self.pos, reason)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err(format!(
                "truncated: need {n} bytes, have {}",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u8()? as usize;
        let at = self.pos;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::new(at, "name is not UTF-8"))
    }
    pub fn entry(&mut self) -> Result<Entry, DecodeError> {
        let at = self.pos;
        let e = Entry {
            phys: self.u32()?,
            under: self.u32()?,
            mask: self.u16()?,
        };
        if !e.is_valid() {
            return Err(DecodeError::new(at, format!("invalid mapping entry {e:?}")));
        }
        Ok(e)
    }
}

/// Kind tag of a volume in records and checkpoints.
pub(crate) fn kind_to_u8(k: crate::VolumeKind) -> u8 {
    match k {
        crate::VolumeKind::Volume => 0,
        crate::VolumeKind::Snapshot => 1,
        crate::VolumeKind::Clone => 2,
    }
}

pub(crate) fn kind_from_u8(v: u8) -> Option<crate::VolumeKind> {
    match v {
        0 => Some(crate::VolumeKind::Volume),
        1 => Some(crate::VolumeKind::Snapshot),
        2 => Some(crate::VolumeKind::Clone),
        _ => None,
    }
}

/// One metadata change. A commit is a frame holding a sequence of records, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A new, empty thin volume.
    CreateVolume {
        id: u64,
        size: u64,
        created: u64,
        name: String,
    },
    /// A snapshot (read-only) or clone (writable) sharing `src`'s mapping at this instant.
    Snapshot {
        src: u64,
        id: u64,
        kind: crate::VolumeKind,
        created: u64,
        name: String,
    },
    /// Removes a volume; its dependents are re-parented to its parent.
    Delete { id: u64 },
    /// New size; a shrink drops the mappings beyond it.
    Resize { id: u64, size: u64 },
    /// Sets one chunk's mapping entry.
    SetEntry { vol: u64, idx: u32, entry: Entry },
    /// New pool size limit in chunks.
    SetLimit { chunks: u32 },
}

const TAG_CREATE: u8 = 1;
const TAG_SNAPSHOT: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_RESIZE: u8 = 4;
const TAG_SET_ENTRY: u8 = 5;
const TAG_SET_LIMIT: u8 = 6;

impl Record {
    pub(crate) fn encode(&self, e: &mut Enc) {
        match self {
            Record::CreateVolume {
                id,
                size,
                created,
                name,
            } => {
                e.u8(TAG_CREATE);
                e.u64(*id);
                e.u64(*size);
                e.u64(*created);
                e.str(name);
            }
            Record::Snapshot {
                src,
                id,
                kind,
                created,
                name,
            } => {
                e.u8(TAG_SNAPSHOT);
                e.u64(*src);
                e.u64(*id);
                e.u8(kind_to_u8(*kind));
                e.u64(*created);
                e.str(name);
            }
            Record::Delete { id } => {
                e.u8(TAG_DELETE);
                e.u64(*id);
            }
            Record::Resize { id, size } => {
                e.u8(TAG_RESIZE);
                e.u64(*id);
                e.u64(*size);
            }
            Record::SetEntry { vol, idx, entry } => {
                e.u8(TAG_SET_ENTRY);
                e.u64(*vol);
                e.u32(*idx);
                e.entry(entry);
            }
            Record::SetLimit { chunks } => {
                e.u8(TAG_SET_LIMIT);
                e.u32(*chunks);
            }
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<Record, DecodeError> {
        let at = d.pos();
        Ok(match d.u8()? {
            TAG_CREATE => Record::CreateVolume {
                id: d.u64()?,
                size: d.u64()?,
                created: d.u64()?,
                name: d.str()?,
            },
            TAG_SNAPSHOT => {
                let src = d.u64()?;
                let id = d.u64()?;
                let k = d.u8()?;
                let kind = kind_from_u8(k)
                    .filter(|k| *k != crate::VolumeKind::Volume)
                    .ok_or_else(|| d.err(format!("bad snapshot kind {k}")))?;
                Record::Snapshot {
                    src,
                    id,
                    kind,
                    created: d.u64()?,
                    name: d.str()?,
                }
            }
            TAG_DELETE => Record::Delete { id: d.u64()? },
            TAG_RESIZE => Record::Resize {
                id: d.u64()?,
                size: d.u64()?,
            },
            TAG_SET_ENTRY => Record::SetEntry {
                vol: d.u64()?,
                idx: d.u32()?,
                entry: d.entry()?,
            },
            TAG_SET_LIMIT => Record::SetLimit { chunks: d.u32()? },
            t => return Err(DecodeError::new(at, format!("unknown record tag {t}"))),
        })
    }
}

/// Encodes one commit frame: `len u32 | crc32c u32 | seq u64 | records...` where `len` counts
/// the bytes after the crc and the crc covers `len` and everything after it.
pub(crate) fn encode_frame(seq: u64, records: &[u8]) -> Vec<u8> {
    let len = (8 + records.len()) as u32;
    let mut out = Vec::with_capacity(8 + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(records);
    let crc = frame_crc(&out[..4], &out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

fn frame_crc(len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), body)
}

/// Result of looking at the bytes at one offset of the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole frame with a good checksum: its sequence number, records, and total length.
    Good {
        seq: u64,
        records: &'a [u8],
        len: usize,
    },
    /// Bytes that are not a whole, valid frame (a torn tail or damage).
    Bad { reason: String },
    /// No bytes left.
    End,
}

/// Parses the frame at the start of `buf`.
pub(crate) fn parse_frame(buf: &[u8]) -> Frame<'_> {
    if buf.is_empty() {
        return Frame::End;
    }
    if buf.len() < 16 {
        return Frame::Bad {
            reason: format!("{} stray bytes", buf.len()),
        };
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_FRAME).contains(&len) {
        return Frame::Bad {
            reason: format!("frame length {len} out of bounds"),
        };
    }
    let total = 8 + len as usize;
    if buf.len() < total {
        return Frame::Bad {
            reason: format!("frame of {total} bytes truncated to {}", buf.len()),
        };
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if frame_crc(&buf[..4], &buf[8..total]) != crc {
        return Frame::Bad {
            reason: "frame checksum mismatch".into(),
        };
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&buf[8..16]);
    Frame::Good {
        seq: u64::from_le_bytes(s),
        records: &buf[16..total],
        len: total,
    }
}

/// Decodes every record of a frame body.
pub(crate) fn decode_records(body: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let mut d = Dec::new(body);
    let mut out = Vec::new();
    while d.remaining() > 0 {
        out.push(Record::decode(&mut d)?);
    }
    Ok(out)
}

/// A checkpoint or log header: `magic[8] | version u32 | flags u32 | generation u64 | body_len u32 |
/// crc32c u32` where the crc covers the first 28 bytes. For the checkpoint, `body_len` is the
/// length of the state that follows and its crc32c is stored in the 4 bytes after the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub generation: u64,
    pub body_len: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..28].copy_from_slice(&self.body_len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(buf: &[u8], magic: [u8; 8]) -> Result<Header, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::new(
                0,
                format!("header truncated to {} bytes", buf.len()),
            ));
        }
        if buf[..8] != magic {
            return Err(DecodeError::new(0, "bad magic"));
        }
        let crc = u32::from_le_bytes([buf[28], buf[29], buf[30], buf[31]]);
        if crc32c::crc32c(&buf[..28]) != crc {
            return Err(DecodeError::new(28, "header checksum mismatch"));
        }
        let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::new(
                8,
                format!("unsupported format version {version}"),
            ));
        }
        let mut g = [0u8; 8];
        g.copy_from_slice(&buf[16..24]);
        Ok(Header {
            magic,
            generation: u64::from_le_bytes(g),
            body_len: u32::from_le_bytes([buf[24], buf[25], buf[26], buf[27]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_records() -> Vec<Record> {
        vec![
            Record::CreateVolume {
                id: 1,
                size: 1 << 30,
                created: 7,
                name: "vol".into(),
            },
            Record::Snapshot {
                src: 1,
                id: 2,
                kind: crate::VolumeKind::Clone,
                created: 8,
                name: "c".into(),
            },
            Record::SetEntry {
                vol: 2,
                idx: 9,
                entry: Entry {
                    phys: 4,
                    under: 3,
                    mask: 1,
                },
            },
            Record::Resize {
                id: 1,
                size: 2 << 30,
            },
            Record::SetLimit { chunks: 100 },
            Record::Delete { id: 2 },
        ]
    }

    #[test]
    fn records_round_trip_through_a_frame() {
        let mut e = Enc::default();
        for r in sample_records() {
            r.encode(&mut e);
        }
        let frame = encode_frame(42, &e.buf);
        match parse_frame(&frame) {
            Frame::Good { seq, records, len } => {
                assert_eq!(seq, 42);
                assert_eq!(len, frame.len());
                assert_eq!(decode_records(records).unwrap(), sample_records());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flipped_bit_in_a_frame_is_detected() {
        let mut e = Enc::default();
        sample_records()[0].encode(&mut e);
        let frame = encode_frame(1, &e.buf);
        for i in 0..frame.len() * 8 {
            let mut f = frame.clone();
            f[i / 8] ^= 1 << (i % 8);
            assert!(
                !matches!(parse_frame(&f), Frame::Good { .. }),
                "bit {i} undetected"
            );
        }
    }

    #[test]
    fn header_rejects_wrong_magic_version_and_checksum() {
        let h = Header {
            magic: LOG_MAGIC,
            generation: 5,
            body_len: 0,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b, LOG_MAGIC).unwrap(), h);
        assert!(Header::decode(&b, CHECKPOINT_MAGIC).is_err());
        let mut v = b;
        v[8] = 2;
        assert!(Header::decode(&v, LOG_MAGIC).is_err());
        assert!(Header::decode(&b[..20], LOG_MAGIC).is_err());
    }

    proptest! {
        #[test]
        fn record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_records(&bytes);
        }

        #[test]
        fn frame_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_frame(&bytes);
        }

        #[test]
        fn header_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Header::decode(&bytes, LOG_MAGIC);
        }
    }
}
