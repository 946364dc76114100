//! How shadowlun arrays identify their LUNs over SCSI.
//!
//! Every LUN, original or snapshot, gets a 60-bit number fixed at creation and never reused.
//! From it come the VPD 0x80 serial and three association-0 designators: NAA locally assigned
//! (type 3), T10 vendor ID based (type 1) and a SCSI name string (type 8), each unique per LUN,
//! so any of them satisfies VSS's uniqueness rule (`docs/vss-contract.md` §7.2).

use crate::inquiry::{self, Designator, StandardInquiry};
use crate::lun::{ScsiIdentity, latin1};

/// INQUIRY vendor id of shadowlun LUNs.
pub const VENDOR: &str = "SHADOWLN";
/// INQUIRY product id of shadowlun LUNs.
pub const PRODUCT: &str = "shadowlun LUN";
/// INQUIRY product revision of shadowlun LUNs.
pub const REVISION: &str = "0100";

/// The identity of one shadowlun LUN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LunIdentity {
    /// The LUN's number, unique within the array forever (60 bits are used).
    pub number: u64,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: String,
    /// Association-0 designators, in the order VPD 0x83 lists them.
    pub designators: Vec<Designator>,
}

impl LunIdentity {
    /// The identity of LUN `number` (masked to 60 bits).
    pub fn for_number(number: u64) -> Self {
        let n = number & 0x0FFF_FFFF_FFFF_FFFF;
        let naa = Designator::naa_locally_assigned(n);
        let naa_hex = crate::lun::to_hex(&naa.value);
        Self {
            number: n,
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
    /// (association target port / target device) the target appends to VPD 0x83.
    pub fn scsi_identity(&self, target_ports: &[Designator]) -> ScsiIdentity {
        let inq = self.inquiry();
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
