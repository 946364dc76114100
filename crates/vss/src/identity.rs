//! How shadowlun arrays identify their LUNs over SCSI.
//!
//! Every array has an [`ArrayId`] of its own, random, made when its pool is created, and
//! every LUN, original or snapshot, a number fixed at creation and never reused within the
//! array. From the pair come the VPD 0x80 serial and three association-0 designators: NAA
//! locally assigned (type 3), T10 vendor ID based (type 1) and a SCSI name string (type 8),
//! each unique per LUN and per array, so any of them satisfies VSS's uniqueness rule
//! (`docs/vss-contract.md` §7.2) even on a host attached to several arrays.
//!
//! The 60 bits behind all four are the array id (32 bits) above the LUN number (28 bits).
//! LUNs of pools made before arrays had ids keep the identity they were created with: the
//! LUN number alone ([`LunIdentity::for_number`], as if the array id were 0, which no array
//! id is).

use crate::inquiry::{self, Designator, StandardInquiry};
use crate::lun::{ScsiIdentity, latin1};

/// INQUIRY vendor id of shadowlun LUNs.
pub const VENDOR: &str = "SHADOWLN";
/// INQUIRY product id of shadowlun LUNs.
pub const PRODUCT: &str = "shadowlun LUN";
/// INQUIRY product revision of shadowlun LUNs.
pub const REVISION: &str = "0100";

/// Largest LUN number an array with an id can give (28 bits).
pub const MAX_LUN_NUMBER: u64 = (1 << 28) - 1;

/// An array's identity: 32 random bits, never 0, shared by the gateways of one array and
/// fixed for the life of its pool. Written as 8 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArrayId(u32);

impl ArrayId {
    /// An array id from its 32 bits; None for 0 (the identity of LUNs made before ids).
    pub fn new(bits: u32) -> Option<Self> {
        (bits != 0).then_some(Self(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for ArrayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl std::str::FromStr for ArrayId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an array id (8 hex digits, not all zero)");
        if s.len() != 8 {
            return Err(bad());
        }
        u32::from_str_radix(s, 16)
            .ok()
            .and_then(Self::new)
            .ok_or_else(bad)
    }
}

impl serde::Serialize for ArrayId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ArrayId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The identity of one shadowlun LUN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LunIdentity {
    /// The LUN's number, unique within its array forever.
    pub number: u64,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: String,
    /// Association-0 designators, in the order VPD 0x83 lists them.
    pub designators: Vec<Designator>,
}

impl LunIdentity {
    /// The identity of LUN `number` of array `array`: the array id in the upper 32 of 60
    /// bits, the number (at most [`MAX_LUN_NUMBER`], masked to it) below. Without an array
    /// id, the identity LUNs had before arrays had ids ([`LunIdentity::for_number`]).
    pub fn new(array: Option<ArrayId>, number: u64) -> Self {
        match array {
            Some(a) => {
                let n = number & MAX_LUN_NUMBER;
                Self::from_bits((u64::from(a.0) << 28) | n, n)
            }
            None => Self::for_number(number),
        }
    }

    /// The identity of LUN `number` of a pool made before arrays had ids: the number alone
    /// (masked to 60 bits). Kept so such LUNs never change identity.
    pub fn for_number(number: u64) -> Self {
        let n = number & 0x0FFF_FFFF_FFFF_FFFF;
        Self::from_bits(n, n)
    }

    /// The identity whose designators carry the 60 bits `n`, for LUN `number`.
    fn from_bits(n: u64, number: u64) -> Self {
        let naa = Designator::naa_locally_assigned(n);
        let naa_hex = crate::lun::to_hex(&naa.value);
        Self {
            number,
            vendor: VENDOR.into(),
            product: PRODUCT.into(),
            revision: REVISION.into(),
            serial: format!("SL{n:015X}"),
            designators: vec![
                naa,
                Designator::t10_vendor_id(VENDOR, format!("{n:015X}").as_bytes()),
                Designator::scsi_name_string(&format!("naa.{naa_hex}")),
            ],
        }
    }

    /// The standard INQUIRY data the LUN serves.
    pub fn inquiry(&self) -> StandardInquiry {
        StandardInquiry::block_device(&self.vendor, &self.product, &self.revision)
    }

    /// The identity pages as a host reads them. `target_ports` are extra designators
    /// (association target port / target device) the target appends to VPD 0x83. A target
    /// that serves a target port group designator reports implicit asymmetric access in
    /// standard INQUIRY (TPGS 01b), as the `scsi` crate's target does through a port in a
    /// group.
    pub fn scsi_identity(&self, target_ports: &[Designator]) -> ScsiIdentity {
        let mut inq = self.inquiry();
        if target_ports
            .iter()
            .any(|d| d.designator_type == crate::IdentifierType::TARGET_PORT_GROUP)
        {
            inq.tpgs = 0b01;
        }
        let mut ds = self.designators.clone();
        ds.extend_from_slice(target_ports);
        ScsiIdentity {
            inquiry: inq.encode(),
            unit_serial: Some(inquiry::encode_unit_serial(inq.peripheral(), &self.serial)),
            device_identification: inquiry::encode_device_identification(inq.peripheral(), &ds)
                .expect("shadowlun designators are valid by construction"),
        }
    }
}

/// True if `vendor` (as a host reports it, padded or not) is the shadowlun vendor id.
pub fn is_shadowlun_vendor(vendor: Option<&str>) -> bool {
    vendor.is_some_and(|v| v.trim_end_matches([' ', '\0']) == VENDOR)
}

/// The vendor id exactly as INQUIRY carries it (8 bytes, space padded).
pub fn padded_vendor() -> String {
    latin1(&inquiry::pad_ascii::<8>(VENDOR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BusType, IdentifierType, LunInfo};

    #[test]
    fn a_target_port_group_designator_goes_with_tpgs_01() {
        let id = LunIdentity::for_number(3);
        let port = inquiry::Designator::iscsi_target_port("iqn.2026-01.org.x:t", 1, 1).to_vec();
        assert_eq!(id.scsi_identity(&port).inquiry[5] & 0x30, 0);
        let mut grouped = port.clone();
        grouped.push(inquiry::Designator::iscsi_target_port_group(1));
        let s = id.scsi_identity(&grouped);
        assert_eq!(s.inquiry[5] & 0x30, 0x10);
        // The group designator's bytes: iSCSI, PIV, binary, target port, type 5, 4 bytes.
        let at = s.device_identification.len() - 8;
        assert_eq!(
            s.device_identification[at..],
            [0x51, 0x95, 0, 4, 0, 0, 0, 1]
        );
    }

    #[test]
    fn identities_are_unique_and_stable() {
        let a = LunIdentity::for_number(1);
        let b = LunIdentity::for_number(2);
        assert_eq!(a, LunIdentity::for_number(1));
        assert_ne!(a.serial, b.serial);
        for (x, y) in a.designators.iter().zip(&b.designators) {
            assert_ne!(x.value, y.value);
        }
        assert_eq!(a.serial, "SL000000000000001");
        assert_eq!(a.designators[2].name_string(), Some("naa.3000000000000001"));
    }

    #[test]
    fn the_same_lun_number_on_two_arrays_has_two_identities_and_legacy_luns_keep_theirs() {
        let a = ArrayId::new(0x1234_5678).unwrap();
        let b = ArrayId::new(0x1234_5679).unwrap();
        let (x, y) = (LunIdentity::new(Some(a), 1), LunIdentity::new(Some(b), 1));
        assert_ne!(x.serial, y.serial);
        for (p, q) in x.designators.iter().zip(&y.designators) {
            assert_ne!(p.value, q.value);
        }
        assert_eq!(x.serial, "SL123456780000001");
        assert_eq!(x.designators[2].name_string(), Some("naa.3123456780000001"));
        // Neither collides with the LUN of a pool made before array ids.
        let old = LunIdentity::for_number(1);
        assert_eq!(LunIdentity::new(None, 1), old);
        assert_ne!(old.serial, x.serial);
        let ids = |i: &LunIdentity| {
            LunInfo::from_identity(&i.scsi_identity(&[]), BusType::ISCSI).unwrap()
        };
        assert!(!ids(&x).matches_for_import(&ids(&y)));
        assert!(!ids(&x).matches_for_import(&ids(&old)));
        // Ids round-trip as 8 hex digits; 0 is not an id.
        assert_eq!(a.to_string(), "12345678");
        assert_eq!("12345678".parse::<ArrayId>(), Ok(a));
        assert!("00000000".parse::<ArrayId>().is_err());
        assert!("123".parse::<ArrayId>().is_err());
        assert_eq!(ArrayId::new(0), None);
    }

    #[test]
    fn host_view_has_three_unique_lu_identifiers() {
        let id = LunIdentity::for_number(0xABC);
        let ports = Designator::iscsi_target_port("iqn.2026-01.org.shadowlun:array", 1, 1);
        let l = LunInfo::from_identity(&id.scsi_identity(&ports), BusType::ISCSI).unwrap();
        assert_eq!(l.identifiers.len(), 3);
        assert_eq!(l.identifiers[0].id_type, IdentifierType::NAA);
        assert_eq!(l.identifiers[1].id_type, IdentifierType::VENDOR_ID);
        assert_eq!(l.identifiers[2].id_type, IdentifierType::SCSI_NAME_STRING);
        assert!(is_shadowlun_vendor(l.vendor_id.as_deref()));
        assert_eq!(l.vendor_id.as_deref(), Some(padded_vendor().as_str()));
        assert_eq!(l.serial_number.as_deref(), Some("SL000000000000ABC"));
        // Target-port designators do not change the LUN's identity as VSS sees it.
        let bare = LunInfo::from_identity(&id.scsi_identity(&[]), BusType::ISCSI).unwrap();
        assert!(bare.matches_for_import(&l));
    }
}
