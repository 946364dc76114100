//! Sense data: the one place that builds it (fixed format, SPC-4 4.5.3).
//!
//! Every failure of a command is a [`Sense`] value; [`Sense::encode`] turns it into the 18
//! bytes sent with CHECK CONDITION or returned by REQUEST SENSE.

use crate::DeviceError;

/// SENSE KEY values (SPC-4 table 27).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// An additional sense code and qualifier (ASC, ASCQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Self = Self(0x00, 0x00);
    pub const LUN_NOT_READY_MANUAL_INTERVENTION_REQUIRED: Self = Self(0x04, 0x03);
    pub const LUN_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_TRANSITION: Self = Self(0x04, 0x0A);
    pub const LUN_NOT_ACCESSIBLE_TARGET_PORT_IN_STANDBY: Self = Self(0x04, 0x0B);
    pub const LUN_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE: Self = Self(0x04, 0x0C);
    pub const WRITE_ERROR: Self = Self(0x0C, 0x00);
    pub const UNRECOVERED_READ_ERROR: Self = Self(0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Self = Self(0x1D, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self(0x1A, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Self = Self(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Self = Self(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Self = Self(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Self = Self(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self = Self(0x26, 0x00);
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Self = Self(0x26, 0x04);
    pub const WRITE_PROTECTED: Self = Self(0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Self = Self(0x27, 0x07);
    pub const POWER_ON_RESET: Self = Self(0x29, 0x00);
    pub const SCSI_BUS_RESET_OCCURRED: Self = Self(0x29, 0x02);
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Self = Self(0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Self = Self(0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Self = Self(0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Self = Self(0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Self = Self(0x2A, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Self = Self(0x2A, 0x06);
    pub const CAPACITY_DATA_HAS_CHANGED: Self = Self(0x2A, 0x09);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self = Self(0x39, 0x00);
    pub const INQUIRY_DATA_HAS_CHANGED: Self = Self(0x3F, 0x03);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Self = Self(0x3F, 0x0E);
    pub const INTERNAL_TARGET_FAILURE: Self = Self(0x44, 0x00);
    pub const DATA_PHASE_ERROR: Self = Self(0x4B, 0x00);
}

/// Where in the CDB or parameter list an invalid field is (sense-key specific field pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True if the field is in the CDB, false if in the parameter list.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field's most significant bit within the byte, if it is not the whole byte.
    pub bit: Option<u8>,
}

/// One sense condition. Build with the constructors, send with [`Sense::encode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sense key {key:#x}, ASC/ASCQ {:02X}/{:02X}", asc.0, asc.1)]
pub struct Sense {
    pub key: u8,
    pub asc: Asc,
    /// INFORMATION field (sets VALID): the failing LBA, or the miscompare offset.
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data as built here.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: u8, asc: Asc) -> Self {
        Self {
            key,
            asc,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`, if given).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        Self {
            key: key::ILLEGAL_REQUEST,
            asc: Asc::INVALID_FIELD_IN_CDB,
            information: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`).
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Self {
        Self {
            key: key::ILLEGAL_REQUEST,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            information: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    pub const fn invalid_opcode() -> Self {
        Self::invalid_cdb(0, None)
            .with_asc(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE)
    }

    pub const fn lba_out_of_range() -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE)
    }

    pub const fn parameter_list_length() -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    pub const fn lun_not_supported() -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED)
    }

    /// HARDWARE ERROR / INTERNAL TARGET FAILURE: the target itself failed the command.
    pub const fn internal_target_failure() -> Self {
        Self::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE)
    }

    /// NOT READY / LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED (02/04/03): the
    /// storage behind the LU is gone (its RBD image or volume was deleted outside the array).
    ///
    /// Why this sense and not another:
    /// - NOT READY is SPC-4's key for "the logical unit is not accessible", the whole unit
    ///   rather than some blocks; ASCQ 03 says the condition does not clear by itself: an
    ///   administrator has to restore or delete the LUN.
    /// - MEDIUM ERROR (03/11/00, 03/0C/00), what tcmu-runner answers when a librbd call
    ///   fails, names bad blocks: Windows' class driver logs a bad block (event 7) for each,
    ///   and a file system may mark its clusters bad for good.
    /// - ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED (05/25/00) is for a LUN the target
    ///   does not have, yet the LUN stays in REPORT LUNS until it is deleted.
    /// - BUSY, what tcmu-runner answers while it cannot open an image, is retried by hosts
    ///   for as long as it lasts: here, forever.
    /// - Among the other LOGICAL UNIT NOT READY qualifiers, "cause not reportable" (04/00)
    ///   says nothing of why, "becoming ready" (04/01) is retried, and "initializing command
    ///   required" (04/02) makes Windows' class driver send START STOP UNIT.
    ///
    /// Windows' class driver (classpnp, ClassInterpretSenseInfo) fails a request with 04/03
    /// at once, without retries and without START STOP UNIT, as STATUS_NO_MEDIA_IN_DEVICE;
    /// Linux's SCSI midlayer fails it at once too.
    pub const fn storage_gone() -> Self {
        Self::new(
            key::NOT_READY,
            Asc::LUN_NOT_READY_MANUAL_INTERVENTION_REQUIRED,
        )
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB with no field pointer: the command as a whole
    /// asks for more than the target allows (a transfer longer than its maximum).
    pub const fn invalid_cdb_field() -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
    }

    /// ABORTED COMMAND / DATA PHASE ERROR: the transport lost part of the command's data.
    pub const fn data_phase_error() -> Self {
        Self::new(key::ABORTED_COMMAND, Asc::DATA_PHASE_ERROR)
    }

    pub const fn write_protected() -> Self {
        Self::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED)
    }

    pub const fn unit_attention(asc: Asc) -> Self {
        Self::new(key::UNIT_ATTENTION, asc)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the offset of the first
    /// differing byte in INFORMATION.
    pub const fn miscompare(offset: u64) -> Self {
        Self {
            key: key::MISCOMPARE,
            asc: Asc::MISCOMPARE_DURING_VERIFY,
            information: Some(offset),
            field: None,
        }
    }

    const fn with_asc(mut self, key: u8, asc: Asc) -> Self {
        self.key = key;
        self.asc = asc;
        self
    }

    /// The sense for a device failure. `block_size` turns a byte offset into an LBA for the
    /// INFORMATION field of medium errors.
    pub fn from_device(e: &DeviceError, block_size: u32) -> Self {
        match e {
            DeviceError::NoSpace => Self::new(
                key::DATA_PROTECT,
                Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            ),
            DeviceError::ReadOnly => Self::write_protected(),
            DeviceError::OutOfRange => Self::lba_out_of_range(),
            DeviceError::Medium { offset, write } => Self {
                key: key::MEDIUM_ERROR,
                asc: if *write {
                    Asc::WRITE_ERROR
                } else {
                    Asc::UNRECOVERED_READ_ERROR
                },
                information: Some(offset / u64::from(block_size.max(1))),
                field: None,
            },
            DeviceError::Io(_) => Self::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
            DeviceError::Gone(_) => Self::storage_gone(),
        }
    }

    /// Fixed-format sense data (response code 0x70, current error), 18 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key & 0x0F;
        if let Some(info) = self.information {
            // The fixed format holds 32 bits; a larger value cannot be reported as valid.
            if let Ok(v) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc.0;
        b[13] = self.asc.1;
        if let Some(f) = self.field {
            b[15] = 0x80 | if f.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = f.bit {
                b[15] |= 0x08 | (bit & 0x7);
            }
            b[16..18].copy_from_slice(&f.byte.to_be_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_in_cdb_has_field_pointer() {
        let b = Sense::invalid_cdb(1, Some(5)).encode();
        assert_eq!(
            b,
            vec![
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCD, 0x00, 0x01
            ]
        );
        let b = Sense::invalid_param(300, None).encode();
        assert_eq!(&b[12..18], &[0x26, 0x00, 0, 0x80, 0x01, 0x2C]);
    }

    #[test]
    fn medium_errors_carry_the_lba() {
        let s = Sense::from_device(
            &DeviceError::Medium {
                offset: 4096 * 7,
                write: false,
            },
            4096,
        );
        let b = s.encode();
        assert_eq!(b[0], 0xF0);
        assert_eq!(b[2], key::MEDIUM_ERROR);
        assert_eq!(&b[3..7], &[0, 0, 0, 7]);
        assert_eq!(&b[12..14], &[0x11, 0x00]);
        let w = Sense::from_device(
            &DeviceError::Medium {
                offset: 512,
                write: true,
            },
            512,
        );
        assert_eq!(&w.encode()[12..14], &[0x0C, 0x00]);
    }

    #[test]
    fn device_errors_map_to_documented_sense() {
        let pairs = [
            (DeviceError::NoSpace, key::DATA_PROTECT, Asc(0x27, 0x07)),
            (DeviceError::ReadOnly, key::DATA_PROTECT, Asc(0x27, 0x00)),
            (
                DeviceError::Gone("image deleted".into()),
                key::NOT_READY,
                Asc(0x04, 0x03),
            ),
            (
                DeviceError::OutOfRange,
                key::ILLEGAL_REQUEST,
                Asc(0x21, 0x00),
            ),
            (
                DeviceError::Io("x".into()),
                key::HARDWARE_ERROR,
                Asc(0x44, 0x00),
            ),
        ];
        for (e, k, a) in pairs {
            let s = Sense::from_device(&e, 512);
            assert_eq!((s.key, s.asc), (k, a), "{e}");
        }
    }

    #[test]
    fn information_beyond_32_bits_is_not_marked_valid() {
        let mut s = Sense::lba_out_of_range();
        s.information = Some(1 << 40);
        let b = s.encode();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }
}
