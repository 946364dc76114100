//! `LunInfo`, the owned mirror of `VDS_LUN_INFORMATION`, and the identity rules VSS applies.

use crate::VER_VDS_LUN_INFORMATION;
use crate::inquiry::{self, Association, Designator, InquiryError, StandardInquiry};

/// `VDS_STORAGE_IDENTIFIER_CODE_SET` (same values as the SCSI CODE SET field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CodeSet(pub u32);

impl CodeSet {
    pub const RESERVED: Self = Self(0);
    pub const BINARY: Self = Self(1);
    pub const ASCII: Self = Self(2);
    pub const UTF8: Self = Self(3);
}

/// `VDS_STORAGE_IDENTIFIER_TYPE` (same values as the SCSI DESIGNATOR TYPE field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct IdentifierType(pub u32);

impl IdentifierType {
    pub const VENDOR_SPECIFIC: Self = Self(0);
    /// T10 vendor ID based.
    pub const VENDOR_ID: Self = Self(1);
    pub const EUI64: Self = Self(2);
    /// NAA (`VDSStorageIdTypeFCPHName` in vdslun.h; the name is a historical mislabel).
    pub const NAA: Self = Self(3);
    pub const PORT_RELATIVE: Self = Self(4);
    pub const TARGET_PORT_GROUP: Self = Self(5);
    pub const LOGICAL_UNIT_GROUP: Self = Self(6);
    pub const MD5_LOGICAL_UNIT_IDENTIFIER: Self = Self(7);
    pub const SCSI_NAME_STRING: Self = Self(8);
}

/// `VDS_STORAGE_BUS_TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BusType(pub u32);

impl BusType {
    pub const UNKNOWN: Self = Self(0);
    pub const SCSI: Self = Self(1);
    pub const FIBRE: Self = Self(6);
    pub const ISCSI: Self = Self(9);
    pub const SAS: Self = Self(0xA);
}

/// `VDS_STORAGE_IDENTIFIER`: one association-0 designator of VPD page 0x83.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StorageIdentifier {
    pub code_set: CodeSet,
    pub id_type: IdentifierType,
    /// The raw designator bytes, without the 4-byte descriptor header.
    #[serde(with = "hex_bytes")]
    pub identifier: Vec<u8>,
}

impl From<&Designator> for StorageIdentifier {
    fn from(d: &Designator) -> Self {
        Self {
            code_set: d.code_set,
            id_type: d.designator_type,
            identifier: d.value.clone(),
        }
    }
}

/// `VDS_INTERCONNECT`: a port/address through which the LUN is reachable. Owned by VSS;
/// providers never change it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Interconnect {
    /// `VDS_INTERCONNECT_ADDRESS_TYPE`: 0 unknown, 1 FCFS, 2 FCPH, 3 FCPH3, 4 MAC, 5 SCSI.
    pub address_type: u32,
    #[serde(with = "hex_bytes")]
    pub port: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub address: Vec<u8>,
}

/// The owned mirror of `VDS_LUN_INFORMATION`.
///
/// Strings are the `char*` fields of the C structure; `None` is a NULL pointer. They are kept as
/// Rust strings whose chars are the C bytes one for one (Latin-1), so that any byte sequence
/// survives a round trip through this type unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LunInfo {
    /// `m_version`: must be [`VER_VDS_LUN_INFORMATION`].
    pub version: u32,
    pub device_type: u8,
    pub device_type_modifier: u8,
    pub command_queueing: bool,
    pub bus_type: BusType,
    pub vendor_id: Option<String>,
    pub product_id: Option<String>,
    pub product_revision: Option<String>,
    pub serial_number: Option<String>,
    /// MBR signature in the first 4 bytes, or the GPT disk GUID; nil when unknown.
    pub disk_signature: uuid::Uuid,
    /// `m_deviceIdDescriptor.m_version`.
    pub id_descriptor_version: u32,
    /// `m_deviceIdDescriptor.m_rgIdentifiers`: association-0 designators in page order.
    pub identifiers: Vec<StorageIdentifier>,
    /// `m_rgInterconnects`.
    pub interconnects: Vec<Interconnect>,
}

impl Default for LunInfo {
    /// The zeroed structure VSS hands to `GetTargetLuns`.
    fn default() -> Self {
        Self {
            version: 0,
            device_type: 0,
            device_type_modifier: 0,
            command_queueing: false,
            bus_type: BusType::UNKNOWN,
            vendor_id: None,
            product_id: None,
            product_revision: None,
            serial_number: None,
            disk_signature: uuid::Uuid::nil(),
            id_descriptor_version: 0,
            identifiers: Vec::new(),
            interconnects: Vec::new(),
        }
    }
}

/// Bytes as one char each (Latin-1): lossless for any byte string.
pub fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

/// The inverse of [`latin1`]; chars above U+00FF (which `latin1` never produces) become `?`.
pub fn latin1_bytes(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
        .collect()
}

/// The raw identity pages of a logical unit, as the array stores them and a host reads them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ScsiIdentity {
    #[serde(with = "hex_bytes")]
    pub inquiry: Vec<u8>,
    /// VPD page 0x80, if the device has one.
    #[serde(with = "hex_bytes_opt", default)]
    pub unit_serial: Option<Vec<u8>>,
    /// VPD page 0x83.
    #[serde(with = "hex_bytes")]
    pub device_identification: Vec<u8>,
}

impl LunInfo {
    /// Builds the `LunInfo` Windows builds for a disk from what the disk says over SCSI:
    /// INQUIRY strings as reported (space padded), the VPD 0x80 serial, the association-0
    /// designators of VPD 0x83 in page order, no disk signature, no interconnects.
    pub fn from_scsi(
        inquiry: &[u8],
        unit_serial: Option<&[u8]>,
        device_identification: &[u8],
        bus_type: BusType,
    ) -> Result<Self, InquiryError> {
        let inq = StandardInquiry::decode(inquiry)?;
        let serial = unit_serial.map(inquiry::decode_unit_serial).transpose()?;
        let (_, designators) = inquiry::decode_device_identification(device_identification)?;
        Ok(Self {
            version: VER_VDS_LUN_INFORMATION,
            device_type: inq.device_type,
            device_type_modifier: 0,
            command_queueing: inq.cmdque,
            bus_type,
            vendor_id: Some(latin1(&inq.vendor)),
            product_id: Some(latin1(&inq.product)),
            product_revision: Some(latin1(&inq.revision)),
            serial_number: serial.map(|(_, s)| latin1(&s)),
            disk_signature: uuid::Uuid::nil(),
            id_descriptor_version: 1,
            identifiers: designators
                .iter()
                .filter(|d| d.association == Association::LOGICAL_UNIT)
                .map(StorageIdentifier::from)
                .collect(),
            interconnects: Vec::new(),
        })
    }

    /// [`LunInfo::from_scsi`] over a stored [`ScsiIdentity`].
    pub fn from_identity(id: &ScsiIdentity, bus_type: BusType) -> Result<Self, InquiryError> {
        Self::from_scsi(
            &id.inquiry,
            id.unit_serial.as_deref(),
            &id.device_identification,
            bus_type,
        )
    }

    /// The import matching rule (`docs/vss-contract.md` §7.4): every field takes part except
    /// the bus type, the disk signature and the interconnects. Identifiers compare as a set,
    /// since a host may list them in another order.
    pub fn matches_for_import(&self, other: &LunInfo) -> bool {
        let mut a: Vec<_> = self.identifiers.iter().collect();
        let mut b: Vec<_> = other.identifiers.iter().collect();
        a.sort_by(|x, y| {
            (x.code_set.0, x.id_type.0, &x.identifier).cmp(&(
                y.code_set.0,
                y.id_type.0,
                &y.identifier,
            ))
        });
        b.sort_by(|x, y| {
            (x.code_set.0, x.id_type.0, &x.identifier).cmp(&(
                y.code_set.0,
                y.id_type.0,
                &y.identifier,
            ))
        });
        self.version == other.version
            && self.device_type == other.device_type
            && self.device_type_modifier == other.device_type_modifier
            && self.command_queueing == other.command_queueing
            && self.vendor_id == other.vendor_id
            && self.product_id == other.product_id
            && self.product_revision == other.product_revision
            && self.serial_number == other.serial_number
            && self.id_descriptor_version == other.id_descriptor_version
            && a == b
    }

    /// Brings fields a host may report in more than one form (INQUIRY strings space padded
    /// to their SCSI widths or trimmed, a serial with or without surrounding blanks) into one
    /// canonical form: without trailing spaces or NULs, the serial without surrounding ones;
    /// version fields set; the disk signature cleared, as providers must report GUID_NULL.
    /// Interconnects, bus type and identifiers are left alone.
    ///
    /// It never lengthens a field: across a process boundary the RPC layer can only return a
    /// string VSS passed in if it did not grow (a longer one would overrun VSS's buffer).
    pub fn normalize(&mut self) {
        fn trim(s: &mut Option<String>) {
            if let Some(v) = s {
                let t = v.trim_end_matches([' ', '\0']).len();
                v.truncate(t);
            }
        }
        self.version = VER_VDS_LUN_INFORMATION;
        self.id_descriptor_version = 1;
        trim(&mut self.vendor_id);
        trim(&mut self.product_id);
        trim(&mut self.product_revision);
        if let Some(s) = &mut self.serial_number {
            *s = s.trim_matches([' ', '\0']).to_string();
        }
        self.disk_signature = uuid::Uuid::nil();
    }

    /// The NAA designators of the logical unit: the identity arrays key LUNs on.
    pub fn naa_identifiers(&self) -> impl Iterator<Item = &[u8]> {
        self.identifiers
            .iter()
            .filter(|i| i.id_type == IdentifierType::NAA)
            .map(|i| i.identifier.as_slice())
    }

    /// True if the LUN carries at least one identifier VSS accepts as unique: association 0,
    /// type T10 vendor id, EUI-64, NAA or SCSI name string (`docs/vss-contract.md` §7.2).
    pub fn has_unique_identifier(&self) -> bool {
        self.identifiers.iter().any(|i| {
            matches!(
                i.id_type,
                IdentifierType::VENDOR_ID
                    | IdentifierType::EUI64
                    | IdentifierType::NAA
                    | IdentifierType::SCSI_NAME_STRING
            ) && !i.identifier.is_empty()
        })
    }

    /// `vendor/product/serial` trimmed, for messages and logs.
    pub fn describe(&self) -> String {
        let t = |s: &Option<String>| s.as_deref().unwrap_or("-").trim().to_string();
        format!(
            "{} {} serial {}",
            t(&self.vendor_id),
            t(&self.product_id),
            t(&self.serial_number)
        )
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected an even-length hex string"))
    }
}

mod hex_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&super::to_hex(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::from_hex(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("expected an even-length hex string")),
        }
    }
}

/// Lower-case hex of a byte string.
pub fn to_hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses even-length hex (either case).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inquiry::*;
    use proptest::prelude::*;

    fn identity(n: u64) -> ScsiIdentity {
        let inq = StandardInquiry::block_device("SHADOWLN", "shadowlun", "0100");
        let mut ds = vec![
            Designator::naa_locally_assigned(n),
            Designator::t10_vendor_id("SHADOWLN", format!("{n:016x}").as_bytes()),
        ];
        ds.extend(Designator::iscsi_target_port("iqn.x:t", 1, 1));
        ScsiIdentity {
            inquiry: inq.encode(),
            unit_serial: Some(encode_unit_serial(0, &format!("SL{n:014X}"))),
            device_identification: encode_device_identification(0, &ds).unwrap(),
        }
    }

    #[test]
    fn from_scsi_builds_what_windows_builds() {
        let l = LunInfo::from_identity(&identity(7), BusType::ISCSI).unwrap();
        assert_eq!(l.version, 1);
        assert_eq!(l.device_type, 0);
        assert!(l.command_queueing);
        assert_eq!(l.vendor_id.as_deref(), Some("SHADOWLN"));
        assert_eq!(l.product_id.as_deref(), Some("shadowlun       "));
        assert_eq!(l.product_revision.as_deref(), Some("0100"));
        assert_eq!(l.serial_number.as_deref(), Some("SL00000000000007"));
        // Only association-0 designators; the target-port ones are dropped.
        assert_eq!(l.identifiers.len(), 2);
        assert_eq!(l.identifiers[0].id_type, IdentifierType::NAA);
        assert_eq!(l.identifiers[0].identifier, vec![0x30, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(l.identifiers[1].code_set, CodeSet::ASCII);
        assert!(l.has_unique_identifier());
        assert!(l.interconnects.is_empty());
    }

    #[test]
    fn matching_ignores_bus_signature_and_interconnects_only() {
        let a = LunInfo::from_identity(&identity(7), BusType::ISCSI).unwrap();
        let mut b = a.clone();
        b.bus_type = BusType::SCSI;
        b.disk_signature = uuid::Uuid::from_u128(0x1234);
        b.interconnects.push(Interconnect {
            address_type: 5,
            port: vec![1],
            address: vec![2],
        });
        b.identifiers.reverse();
        assert!(a.matches_for_import(&b));

        let other = LunInfo::from_identity(&identity(8), BusType::ISCSI).unwrap();
        assert!(!a.matches_for_import(&other));
        let mut c = a.clone();
        c.serial_number = Some("X".into());
        assert!(!a.matches_for_import(&c));
        let mut c = a.clone();
        c.product_revision = Some("0101".into());
        assert!(!a.matches_for_import(&c));
    }

    #[test]
    fn normalize_gives_one_form_and_never_lengthens() {
        let padded = LunInfo::from_identity(&identity(9), BusType::ISCSI).unwrap();
        let mut trimmed = padded.clone();
        trimmed.product_id = Some("shadowlun".into());
        trimmed.serial_number = Some("  SL00000000000009 ".into());
        trimmed.disk_signature = uuid::Uuid::from_u128(5);
        assert!(!padded.matches_for_import(&trimmed));
        let mut a = padded.clone();
        a.normalize();
        trimmed.normalize();
        assert!(a.matches_for_import(&trimmed));
        assert!(trimmed.disk_signature.is_nil());
        assert_eq!(a.product_id.as_deref(), Some("shadowlun"));
        for (before, after) in [
            (&padded.vendor_id, &a.vendor_id),
            (&padded.product_id, &a.product_id),
            (&padded.product_revision, &a.product_revision),
            (&padded.serial_number, &a.serial_number),
        ] {
            assert!(after.as_ref().unwrap().len() <= before.as_ref().unwrap().len());
        }
    }

    #[test]
    fn latin1_is_lossless() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(latin1_bytes(&latin1(&all)), all);
    }

    #[test]
    fn serde_uses_hex() {
        let l = LunInfo::from_identity(&identity(1), BusType::ISCSI).unwrap();
        let j = serde_json::to_string(&l).unwrap();
        assert!(j.contains("\"identifier\":\"3000000000000001\""), "{j}");
        let back: LunInfo = serde_json::from_str(&j).unwrap();
        assert_eq!(back, l);
        let id = identity(3);
        let back: ScsiIdentity =
            serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back, id);
    }

    proptest! {
        #[test]
        fn hex_round_trips(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(from_hex(&to_hex(&v)), Some(v));
        }

        #[test]
        fn from_scsi_never_panics(
            a in proptest::collection::vec(any::<u8>(), 0..100),
            b in proptest::collection::vec(any::<u8>(), 0..100),
            c in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let _ = LunInfo::from_scsi(&a, Some(&b), &c, BusType::ISCSI);
        }
    }
}
