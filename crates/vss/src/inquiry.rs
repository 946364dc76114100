//! SCSI identity pages (SPC-4): standard INQUIRY data and VPD pages 0x00, 0x80 and 0x83.
//!
//! Encoders produce exactly the bytes a device returns; decoders are strict about lengths and
//! structure (a malformed page is a typed [`InquiryError`], never a panic) but keep reserved code
//! values as they are, so a foreign device's identity survives unchanged.

use thiserror::Error;

use crate::lun::{CodeSet, IdentifierType};

/// Page code of the Supported VPD Pages page.
pub const VPD_SUPPORTED_PAGES: u8 = 0x00;
/// Page code of the Unit Serial Number page.
pub const VPD_UNIT_SERIAL_NUMBER: u8 = 0x80;
/// Page code of the Device Identification page.
pub const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;

/// Protocol identifier of iSCSI (SPC-4 table "PROTOCOL IDENTIFIER values").
pub const PROTOCOL_ISCSI: u8 = 0x5;

/// Why identity data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InquiryError {
    #[error("{what} is {got} bytes, at least {need} are required")]
    TooShort {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("expected VPD page 0x{expected:02X}, the data is page 0x{got:02X}")]
    WrongPage { expected: u8, got: u8 },
    #[error("{what} declares {declared} bytes but only {available} are present")]
    Truncated {
        what: &'static str,
        declared: usize,
        available: usize,
    },
    #[error("designator at offset {offset} runs past the end of the page")]
    DesignatorOverrun { offset: usize },
    #[error("designator type {designator_type} cannot be {len} bytes long")]
    BadDesignatorLength { designator_type: u32, len: usize },
    #[error("NAA designator of format {naa} cannot be {len} bytes long")]
    BadNaa { naa: u8, len: usize },
    #[error("SCSI name string designator is not NUL-terminated")]
    NameNotTerminated,
    #[error("SCSI name string designator length {len} is not a multiple of 4")]
    NameNotPadded { len: usize },
    #[error("{what} is {len} bytes, the most is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("supported VPD page list is not in ascending order")]
    PagesNotAscending,
}

/// Standard INQUIRY data (SPC-4 6.6.2), the fields that matter for identity and for hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardInquiry {
    /// PERIPHERAL QUALIFIER (3 bits): 0 connected, 1 not connected, 3 no LU at this number.
    pub peripheral_qualifier: u8,
    /// PERIPHERAL DEVICE TYPE (5 bits): 0 for a direct-access block device.
    pub device_type: u8,
    pub removable: bool,
    /// VERSION: 6 for SPC-4.
    pub version: u8,
    pub normaca: bool,
    pub hisup: bool,
    /// TPGS (2 bits): asymmetric logical unit access support.
    pub tpgs: u8,
    pub third_party_copy: bool,
    pub protect: bool,
    pub multip: bool,
    pub cmdque: bool,
    /// T10 VENDOR IDENTIFICATION, 8 bytes, space padded.
    pub vendor: [u8; 8],
    /// PRODUCT IDENTIFICATION, 16 bytes, space padded.
    pub product: [u8; 16],
    /// PRODUCT REVISION LEVEL, 4 bytes, space padded.
    pub revision: [u8; 4],
    /// VERSION DESCRIPTORs (at most 8), e.g. 0x0460 SPC-4, 0x04C0 SBC-3, 0x0960 iSCSI.
    pub version_descriptors: Vec<u16>,
}

/// Copies `s` into a space-padded fixed field, cutting it at the field width.
pub fn pad_ascii<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

impl StandardInquiry {
    /// A connected direct-access block device with command queueing, SPC-4.
    pub fn block_device(vendor: &str, product: &str, revision: &str) -> Self {
        Self {
            peripheral_qualifier: 0,
            device_type: 0,
            removable: false,
            version: 6,
            normaca: false,
            hisup: true,
            tpgs: 0,
            third_party_copy: false,
            protect: false,
            multip: false,
            cmdque: true,
            vendor: pad_ascii(vendor),
            product: pad_ascii(product),
            revision: pad_ascii(revision),
            version_descriptors: vec![0x0460, 0x04C0, 0x0960],
        }
    }

    /// The INQUIRY data as a device returns it: 36 bytes, or 74 with version descriptors.
    pub fn encode(&self) -> Vec<u8> {
        let len = if self.version_descriptors.is_empty() {
            36
        } else {
            74
        };
        let mut b = vec![0u8; len];
        b[0] = (self.peripheral_qualifier & 0x7) << 5 | (self.device_type & 0x1F);
        b[1] = if self.removable { 0x80 } else { 0 };
        b[2] = self.version;
        b[3] = (self.normaca as u8) << 5 | (self.hisup as u8) << 4 | 0x2;
        b[4] = (len - 5) as u8;
        b[5] = (self.tpgs & 0x3) << 4 | (self.third_party_copy as u8) << 3 | self.protect as u8;
        b[6] = (self.multip as u8) << 4;
        b[7] = (self.cmdque as u8) << 1;
        b[8..16].copy_from_slice(&self.vendor);
        b[16..32].copy_from_slice(&self.product);
        b[32..36].copy_from_slice(&self.revision);
        for (i, v) in self.version_descriptors.iter().take(8).enumerate() {
            b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// Decodes INQUIRY data. At least 36 bytes are required; data cut short by the allocation
    /// length is accepted as long as the fixed fields are complete.
    pub fn decode(b: &[u8]) -> Result<Self, InquiryError> {
        if b.len() < 36 {
            return Err(InquiryError::TooShort {
                what: "standard INQUIRY data",
                need: 36,
                got: b.len(),
            });
        }
        let declared = b[4] as usize + 5;
        if declared < 36 {
            return Err(InquiryError::TooShort {
                what: "standard INQUIRY additional length",
                need: 36,
                got: declared,
            });
        }
        let end = declared.min(b.len());
        let mut version_descriptors = Vec::new();
        let mut off = 58;
        while off + 2 <= end.min(74) {
            let v = u16::from_be_bytes([b[off], b[off + 1]]);
            if v != 0 {
                version_descriptors.push(v);
            }
            off += 2;
        }
        Ok(Self {
            peripheral_qualifier: b[0] >> 5,
            device_type: b[0] & 0x1F,
            removable: b[1] & 0x80 != 0,
            version: b[2],
            normaca: b[3] & 0x20 != 0,
            hisup: b[3] & 0x10 != 0,
            tpgs: (b[5] >> 4) & 0x3,
            third_party_copy: b[5] & 0x08 != 0,
            protect: b[5] & 0x01 != 0,
            multip: b[6] & 0x10 != 0,
            cmdque: b[7] & 0x02 != 0,
            vendor: b[8..16].try_into().expect("fixed slice"),
            product: b[16..32].try_into().expect("fixed slice"),
            revision: b[32..36].try_into().expect("fixed slice"),
            version_descriptors,
        })
    }

    /// The peripheral byte (qualifier and device type) that starts every VPD page.
    pub fn peripheral(&self) -> u8 {
        (self.peripheral_qualifier & 0x7) << 5 | (self.device_type & 0x1F)
    }
}

/// ASSOCIATION of a designator: what it identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Association(pub u8);

impl Association {
    pub const LOGICAL_UNIT: Self = Self(0);
    pub const TARGET_PORT: Self = Self(1);
    pub const TARGET_DEVICE: Self = Self(2);
}

/// One designation descriptor of VPD page 0x83.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Designator {
    /// PROTOCOL IDENTIFIER (4 bits), meaningful only when `piv` is set.
    pub protocol_identifier: u8,
    pub code_set: CodeSet,
    /// PROTOCOL IDENTIFIER VALID.
    pub piv: bool,
    pub association: Association,
    pub designator_type: IdentifierType,
    /// The DESIGNATOR field (without the 4-byte descriptor header).
    pub value: Vec<u8>,
}

impl Designator {
    fn lu(code_set: CodeSet, designator_type: IdentifierType, value: Vec<u8>) -> Self {
        Self {
            protocol_identifier: 0,
            code_set,
            piv: false,
            association: Association::LOGICAL_UNIT,
            designator_type,
            value,
        }
    }

    /// NAA locally assigned (NAA 3): 60 bits chosen by the array, 8 bytes.
    pub fn naa_locally_assigned(id: u64) -> Self {
        let v = (0x3u64 << 60) | (id & 0x0FFF_FFFF_FFFF_FFFF);
        Self::lu(
            CodeSet::BINARY,
            IdentifierType::NAA,
            v.to_be_bytes().to_vec(),
        )
    }

    /// NAA IEEE registered extended (NAA 6): a 24-bit OUI, 36 bits of vendor-specific id and a
    /// 64-bit extension, 16 bytes.
    pub fn naa_registered_extended(oui: u32, vendor_specific: u64, extension: u64) -> Self {
        let hi =
            (0x6u64 << 60) | ((oui as u64 & 0xFF_FFFF) << 36) | (vendor_specific & 0xF_FFFF_FFFF);
        let mut v = hi.to_be_bytes().to_vec();
        v.extend_from_slice(&extension.to_be_bytes());
        Self::lu(CodeSet::BINARY, IdentifierType::NAA, v)
    }

    /// T10 vendor ID based: the 8-byte vendor id (space padded) then vendor-specific data.
    pub fn t10_vendor_id(vendor: &str, specific: &[u8]) -> Self {
        let mut v = pad_ascii::<8>(vendor).to_vec();
        v.extend_from_slice(specific);
        Self::lu(CodeSet::ASCII, IdentifierType::VENDOR_ID, v)
    }

    /// EUI-64 based, 8, 12 or 16 bytes.
    pub fn eui64(bytes: &[u8]) -> Self {
        Self::lu(CodeSet::BINARY, IdentifierType::EUI64, bytes.to_vec())
    }

    /// SCSI name string for a logical unit: UTF-8, NUL-terminated, padded with NULs to a
    /// multiple of 4 bytes (SPC-4 7.8.6.11).
    pub fn scsi_name_string(name: &str) -> Self {
        Self::lu(
            CodeSet::UTF8,
            IdentifierType::SCSI_NAME_STRING,
            name_string_bytes(name),
        )
    }

    /// iSCSI target port designators: relative target port (binary) and the port's SCSI name
    /// string `<target>,t,0x<tpgt>`, both with association TARGET_PORT and PIV for iSCSI.
    pub fn iscsi_target_port(target_name: &str, relative_port: u16, tpgt: u16) -> [Self; 2] {
        let mut rel = vec![0, 0];
        rel.extend_from_slice(&relative_port.to_be_bytes());
        let port = |code_set, designator_type, value| Self {
            protocol_identifier: PROTOCOL_ISCSI,
            code_set,
            piv: true,
            association: Association::TARGET_PORT,
            designator_type,
            value,
        };
        [
            port(CodeSet::BINARY, IdentifierType::PORT_RELATIVE, rel),
            port(
                CodeSet::UTF8,
                IdentifierType::SCSI_NAME_STRING,
                name_string_bytes(&format!("{target_name},t,0x{tpgt:04x}")),
            ),
        ]
    }

    /// Target port group designator (SPC-4 7.8.6.8): the asymmetric access group of the port
    /// the page was read through, 4 bytes (2 reserved, then the group), association
    /// TARGET_PORT and PIV for iSCSI, as the relative target port designator.
    pub fn iscsi_target_port_group(group: u16) -> Self {
        let mut value = vec![0, 0];
        value.extend_from_slice(&group.to_be_bytes());
        Self {
            protocol_identifier: PROTOCOL_ISCSI,
            code_set: CodeSet::BINARY,
            piv: true,
            association: Association::TARGET_PORT,
            designator_type: IdentifierType::TARGET_PORT_GROUP,
            value,
        }
    }

    /// iSCSI target device designator: the target's SCSI name string, association TARGET_DEVICE.
    pub fn iscsi_target_device(target_name: &str) -> Self {
        Self {
            protocol_identifier: PROTOCOL_ISCSI,
            code_set: CodeSet::UTF8,
            piv: true,
            association: Association::TARGET_DEVICE,
            designator_type: IdentifierType::SCSI_NAME_STRING,
            value: name_string_bytes(target_name),
        }
    }

    /// Checks the designator's length against the rules of its type.
    pub fn validate(&self) -> Result<(), InquiryError> {
        let len = self.value.len();
        let bad = || InquiryError::BadDesignatorLength {
            designator_type: self.designator_type.0,
            len,
        };
        if len > 255 {
            return Err(InquiryError::TooLong {
                what: "designator",
                len,
                max: 255,
            });
        }
        match self.designator_type {
            IdentifierType::VENDOR_ID if len < 8 => Err(bad()),
            IdentifierType::EUI64 if !matches!(len, 8 | 12 | 16) => Err(bad()),
            IdentifierType::NAA => {
                let naa = self.value.first().map_or(0, |b| b >> 4);
                let ok = match naa {
                    0x2 | 0x3 | 0x5 => len == 8,
                    0x6 => len == 16,
                    _ => len == 8 || len == 16,
                };
                if ok {
                    Ok(())
                } else {
                    Err(InquiryError::BadNaa { naa, len })
                }
            }
            IdentifierType::PORT_RELATIVE
            | IdentifierType::TARGET_PORT_GROUP
            | IdentifierType::LOGICAL_UNIT_GROUP
                if len != 4 =>
            {
                Err(bad())
            }
            IdentifierType::MD5_LOGICAL_UNIT_IDENTIFIER if len != 16 => Err(bad()),
            IdentifierType::SCSI_NAME_STRING => {
                if len == 0 || len % 4 != 0 {
                    Err(InquiryError::NameNotPadded { len })
                } else if !self.value.contains(&0) {
                    Err(InquiryError::NameNotTerminated)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The NAA format nibble, for NAA designators.
    pub fn naa_format(&self) -> Option<u8> {
        (self.designator_type == IdentifierType::NAA)
            .then(|| self.value.first().map(|b| b >> 4))
            .flatten()
    }

    /// The text of a SCSI name string designator, without its NUL padding.
    pub fn name_string(&self) -> Option<&str> {
        if self.designator_type != IdentifierType::SCSI_NAME_STRING {
            return None;
        }
        let end = self
            .value
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.value.len());
        std::str::from_utf8(&self.value[..end]).ok()
    }
}

fn name_string_bytes(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn vpd_header(peripheral: u8, page: u8, body_len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body_len);
    v.push(peripheral);
    v.push(page);
    v.extend_from_slice(&(body_len as u16).to_be_bytes());
    v
}

/// Checks the header of a VPD page and returns (peripheral byte, body).
fn vpd_body<'a>(b: &'a [u8], page: u8, what: &'static str) -> Result<(u8, &'a [u8]), InquiryError> {
    if b.len() < 4 {
        return Err(InquiryError::TooShort {
            what,
            need: 4,
            got: b.len(),
        });
    }
    if b[1] != page {
        return Err(InquiryError::WrongPage {
            expected: page,
            got: b[1],
        });
    }
    let declared = u16::from_be_bytes([b[2], b[3]]) as usize;
    if 4 + declared > b.len() {
        return Err(InquiryError::Truncated {
            what,
            declared,
            available: b.len() - 4,
        });
    }
    Ok((b[0], &b[4..4 + declared]))
}

/// VPD page 0x00: the list of supported page codes (ascending).
pub fn encode_supported_pages(peripheral: u8, pages: &[u8]) -> Vec<u8> {
    let mut v = vpd_header(peripheral, VPD_SUPPORTED_PAGES, pages.len());
    v.extend_from_slice(pages);
    v
}

/// Decodes VPD page 0x00 into (peripheral byte, page codes).
pub fn decode_supported_pages(b: &[u8]) -> Result<(u8, Vec<u8>), InquiryError> {
    let (p, body) = vpd_body(b, VPD_SUPPORTED_PAGES, "supported VPD pages page")?;
    if body.windows(2).any(|w| w[0] >= w[1]) {
        return Err(InquiryError::PagesNotAscending);
    }
    Ok((p, body.to_vec()))
}

/// VPD page 0x80: the unit serial number (ASCII).
pub fn encode_unit_serial(peripheral: u8, serial: &str) -> Vec<u8> {
    let s = &serial.as_bytes()[..serial.len().min(u16::MAX as usize - 4)];
    let mut v = vpd_header(peripheral, VPD_UNIT_SERIAL_NUMBER, s.len());
    v.extend_from_slice(s);
    v
}

/// Decodes VPD page 0x80 into (peripheral byte, serial bytes).
pub fn decode_unit_serial(b: &[u8]) -> Result<(u8, Vec<u8>), InquiryError> {
    let (p, body) = vpd_body(b, VPD_UNIT_SERIAL_NUMBER, "unit serial number page")?;
    Ok((p, body.to_vec()))
}

/// VPD page 0x83: designation descriptors. Fails if a designator breaks its type's rules.
pub fn encode_device_identification(
    peripheral: u8,
    designators: &[Designator],
) -> Result<Vec<u8>, InquiryError> {
    let mut body = Vec::new();
    for d in designators {
        d.validate()?;
        body.push((d.protocol_identifier & 0xF) << 4 | (d.code_set.0 as u8 & 0xF));
        body.push(
            (d.piv as u8) << 7 | (d.association.0 & 0x3) << 4 | (d.designator_type.0 as u8 & 0xF),
        );
        body.push(0);
        body.push(d.value.len() as u8);
        body.extend_from_slice(&d.value);
    }
    if body.len() > u16::MAX as usize {
        return Err(InquiryError::TooLong {
            what: "device identification page",
            len: body.len(),
            max: 65535,
        });
    }
    let mut v = vpd_header(peripheral, VPD_DEVICE_IDENTIFICATION, body.len());
    v.extend_from_slice(&body);
    Ok(v)
}

/// Decodes VPD page 0x83 into (peripheral byte, designators in page order).
pub fn decode_device_identification(b: &[u8]) -> Result<(u8, Vec<Designator>), InquiryError> {
    let (p, body) = vpd_body(b, VPD_DEVICE_IDENTIFICATION, "device identification page")?;
    let mut out = Vec::new();
    let mut off = 0;
    while off < body.len() {
        if off + 4 > body.len() {
            return Err(InquiryError::DesignatorOverrun { offset: off + 4 });
        }
        let len = body[off + 3] as usize;
        if off + 4 + len > body.len() {
            return Err(InquiryError::DesignatorOverrun { offset: off + 4 });
        }
        let d = Designator {
            protocol_identifier: body[off] >> 4,
            code_set: CodeSet((body[off] & 0xF) as u32),
            piv: body[off + 1] & 0x80 != 0,
            association: Association((body[off + 1] >> 4) & 0x3),
            designator_type: IdentifierType((body[off + 1] & 0xF) as u32),
            value: body[off + 4..off + 4 + len].to_vec(),
        };
        d.validate()?;
        out.push(d);
        off += 4 + len;
    }
    Ok((p, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn inquiry_layout() {
        let inq = StandardInquiry::block_device("SHADOWLN", "shadowlun volume", "0100");
        let b = inq.encode();
        assert_eq!(b.len(), 74);
        assert_eq!(b[0], 0x00);
        assert_eq!(b[2], 6);
        assert_eq!(b[3], 0x12); // HISUP + response data format 2
        assert_eq!(b[4], 69);
        assert_eq!(b[7], 0x02); // CMDQUE
        assert_eq!(&b[8..16], b"SHADOWLN");
        assert_eq!(&b[16..32], b"shadowlun volume");
        assert_eq!(&b[32..36], b"0100");
        assert_eq!(&b[58..60], &[0x04, 0x60]);
        assert_eq!(StandardInquiry::decode(&b).unwrap(), inq);
    }

    #[test]
    fn inquiry_short_is_an_error() {
        let b = StandardInquiry::block_device("A", "B", "C").encode();
        assert_eq!(
            StandardInquiry::decode(&b[..35]),
            Err(InquiryError::TooShort {
                what: "standard INQUIRY data",
                need: 36,
                got: 35
            })
        );
        // Cut by allocation length after the fixed fields: accepted, descriptors partly lost.
        let d = StandardInquiry::decode(&b[..61]).unwrap();
        assert_eq!(d.version_descriptors, vec![0x0460]);
    }

    #[test]
    fn naa_formats() {
        let d = Designator::naa_locally_assigned(0xFFFF_0123_4567_89AB);
        assert_eq!(
            d.value,
            vec![0x3F, 0xFF, 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB]
        );
        assert_eq!(d.naa_format(), Some(3));
        let d6 = Designator::naa_registered_extended(0x001405, 0x1_2345_6789, 42);
        assert_eq!(d6.value.len(), 16);
        assert_eq!(&d6.value[..4], &[0x60, 0x01, 0x40, 0x51]);
        assert!(d6.validate().is_ok());
        let mut bad = d.clone();
        bad.value[0] = 0x6F;
        assert_eq!(bad.validate(), Err(InquiryError::BadNaa { naa: 6, len: 8 }));
    }

    #[test]
    fn name_string_padding() {
        let d = Designator::scsi_name_string("naa.1234");
        assert_eq!(d.value.len(), 12); // 8 chars + NUL, padded to 12
        assert_eq!(d.name_string(), Some("naa.1234"));
        let d = Designator::scsi_name_string("abc");
        assert_eq!(d.value, b"abc\0");
        let [rel, port] = Designator::iscsi_target_port("iqn.2026-01.org.shadowlun:array", 1, 1);
        assert_eq!(rel.value, vec![0, 0, 0, 1]);
        assert_eq!(
            port.name_string(),
            Some("iqn.2026-01.org.shadowlun:array,t,0x0001")
        );
        assert_eq!(port.association, Association::TARGET_PORT);
    }

    #[test]
    fn vpd83_layout_and_round_trip() {
        let ds = vec![
            Designator::naa_locally_assigned(0x123),
            Designator::t10_vendor_id("SHADOWLN", b"lun-1"),
            Designator::scsi_name_string("naa.3000000000000123"),
        ];
        let b = encode_device_identification(0, &ds).unwrap();
        assert_eq!(&b[..4], &[0, 0x83, 0, (12 + 17 + 4 + 24) as u8]);
        assert_eq!(&b[4..8], &[0x01, 0x03, 0x00, 0x08]);
        let (p, back) = decode_device_identification(&b).unwrap();
        assert_eq!(p, 0);
        assert_eq!(back, ds);
    }

    #[test]
    fn vpd83_malformed() {
        let b = encode_device_identification(0, &[Designator::naa_locally_assigned(1)]).unwrap();
        let mut long = b.clone();
        long[3] += 1; // declares one byte more than present
        assert!(matches!(
            decode_device_identification(&long),
            Err(InquiryError::Truncated { .. })
        ));
        let mut over = b.clone();
        over[7] = 9; // designator longer than the page
        assert!(matches!(
            decode_device_identification(&over),
            Err(InquiryError::DesignatorOverrun { .. })
        ));
        let mut page = b.clone();
        page[1] = 0x80;
        assert_eq!(
            decode_device_identification(&page),
            Err(InquiryError::WrongPage {
                expected: 0x83,
                got: 0x80
            })
        );
    }

    #[test]
    fn vpd80_and_vpd00() {
        let b = encode_unit_serial(0, "SL0000000001");
        assert_eq!(&b[..4], &[0, 0x80, 0, 12]);
        assert_eq!(decode_unit_serial(&b).unwrap().1, b"SL0000000001");
        let b = encode_supported_pages(0, &[0x00, 0x80, 0x83, 0xB0]);
        assert_eq!(
            decode_supported_pages(&b).unwrap().1,
            vec![0x00, 0x80, 0x83, 0xB0]
        );
        let bad = encode_supported_pages(0, &[0x80, 0x00]);
        assert_eq!(
            decode_supported_pages(&bad),
            Err(InquiryError::PagesNotAscending)
        );
    }

    fn designator() -> impl Strategy<Value = Designator> {
        prop_oneof![
            any::<u64>().prop_map(Designator::naa_locally_assigned),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(o, v, e)| Designator::naa_registered_extended(o, v, e)),
            ("[A-Z ]{0,8}", proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(v, s)| Designator::t10_vendor_id(&v, &s)),
            prop_oneof![Just(8usize), Just(12), Just(16)]
                .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n))
                .prop_map(|b| Designator::eui64(&b)),
            "[a-z0-9.:-]{1,200}".prop_map(|s| Designator::scsi_name_string(&s)),
            ("[a-z0-9.:-]{1,100}", any::<u16>(), any::<u16>())
                .prop_map(|(t, r, g)| Designator::iscsi_target_port(&t, r, g)[1].clone()),
            "[a-z0-9.:-]{1,100}".prop_map(|t| Designator::iscsi_target_device(&t)),
        ]
    }

    proptest! {
        #[test]
        fn vpd83_round_trips(p in any::<u8>(), ds in proptest::collection::vec(designator(), 0..8)) {
            let b = encode_device_identification(p, &ds).unwrap();
            let (p2, back) = decode_device_identification(&b).unwrap();
            prop_assert_eq!(p2, p);
            prop_assert_eq!(back, ds);
        }

        #[test]
        fn inquiry_round_trips(
            q in 0u8..8, t in 0u8..32, rmb: bool, cmdque: bool, hisup: bool, tpgs in 0u8..4,
            v in "[ -~]{0,8}", pr in "[ -~]{0,16}", r in "[ -~]{0,4}",
            vd in proptest::collection::vec(1u16.., 0..8),
        ) {
            let mut inq = StandardInquiry::block_device(&v, &pr, &r);
            inq.peripheral_qualifier = q; inq.device_type = t; inq.removable = rmb;
            inq.cmdque = cmdque; inq.hisup = hisup; inq.tpgs = tpgs; inq.version_descriptors = vd;
            prop_assert_eq!(StandardInquiry::decode(&inq.encode()).unwrap(), inq);
        }

        #[test]
        fn serial_round_trips(p: u8, s in "[ -~]{0,300}") {
            let (p2, back) = decode_unit_serial(&encode_unit_serial(p, &s)).unwrap();
            prop_assert_eq!(p2, p);
            prop_assert_eq!(back, s.as_bytes());
        }

        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StandardInquiry::decode(&b);
            let _ = decode_device_identification(&b);
            let _ = decode_unit_serial(&b);
            let _ = decode_supported_pages(&b);
        }

        #[test]
        fn vpd83_decoder_never_panics_on_near_valid(
            ds in proptest::collection::vec(designator(), 1..4), i: usize, x: u8,
        ) {
            let mut b = encode_device_identification(0, &ds).unwrap();
            let i = i % b.len();
            b[i] = x;
            let _ = decode_device_identification(&b);
            let _ = decode_device_identification(&b[..i]);
        }
    }
}
