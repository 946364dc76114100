//! COM and VSS status codes.
//!
//! [`Hresult`] is a plain 32-bit value so that codes outside the known table (a misbehaving
//! provider may return anything) survive unchanged; [`Hresult::name`] knows every code of the
//! VSS provider contract.

use std::fmt;

/// A COM `HRESULT`: bit 31 set means failure.
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Hresult(pub u32);

macro_rules! codes {
    ($($name:ident = $value:expr),* $(,)?) => {
        impl Hresult {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Hresult = Hresult($value);
            )*

            /// Every named code, in declaration order.
            pub const ALL: &'static [(&'static str, Hresult)] = &[
                $((stringify!($name), Hresult($value)),)*
            ];
        }
    };
}

codes! {
    S_OK = 0x0000_0000,
    S_FALSE = 0x0000_0001,
    E_NOTIMPL = 0x8000_4001,
    E_NOINTERFACE = 0x8000_4002,
    E_POINTER = 0x8000_4003,
    E_ABORT = 0x8000_4004,
    E_FAIL = 0x8000_4005,
    E_UNEXPECTED = 0x8000_FFFF,
    E_ACCESSDENIED = 0x8007_0005,
    E_OUTOFMEMORY = 0x8007_000E,
    E_INVALIDARG = 0x8007_0057,
    VSS_E_BAD_STATE = 0x8004_2301,
    VSS_E_UNEXPECTED = 0x8004_2302,
    VSS_E_PROVIDER_ALREADY_REGISTERED = 0x8004_2303,
    VSS_E_PROVIDER_NOT_REGISTERED = 0x8004_2304,
    VSS_E_PROVIDER_VETO = 0x8004_2306,
    VSS_E_PROVIDER_IN_USE = 0x8004_2307,
    VSS_E_OBJECT_NOT_FOUND = 0x8004_2308,
    VSS_S_ASYNC_PENDING = 0x0004_2309,
    VSS_S_ASYNC_FINISHED = 0x0004_230A,
    VSS_S_ASYNC_CANCELLED = 0x0004_230B,
    VSS_E_VOLUME_NOT_SUPPORTED = 0x8004_230C,
    VSS_E_OBJECT_ALREADY_EXISTS = 0x8004_230D,
    VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER = 0x8004_230E,
    VSS_E_UNEXPECTED_PROVIDER_ERROR = 0x8004_230F,
    VSS_E_CORRUPT_XML_DOCUMENT = 0x8004_2310,
    VSS_E_INVALID_XML_DOCUMENT = 0x8004_2311,
    VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED = 0x8004_2312,
    VSS_E_FLUSH_WRITES_TIMEOUT = 0x8004_2313,
    VSS_E_HOLD_WRITES_TIMEOUT = 0x8004_2314,
    VSS_E_UNEXPECTED_WRITER_ERROR = 0x8004_2315,
    VSS_E_SNAPSHOT_SET_IN_PROGRESS = 0x8004_2316,
    VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED = 0x8004_2317,
    VSS_E_WRITER_INFRASTRUCTURE = 0x8004_2318,
    VSS_E_WRITER_NOT_RESPONDING = 0x8004_2319,
    VSS_E_WRITER_ALREADY_SUBSCRIBED = 0x8004_231A,
    VSS_E_UNSUPPORTED_CONTEXT = 0x8004_231B,
    VSS_E_VOLUME_IN_USE = 0x8004_231D,
    VSS_E_MAXIMUM_DIFFAREA_ASSOCIATIONS_REACHED = 0x8004_231E,
    VSS_E_INSUFFICIENT_STORAGE = 0x8004_231F,
    VSS_E_NO_SNAPSHOTS_IMPORTED = 0x8004_2320,
    VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED = 0x0004_2321,
    VSS_E_SOME_SNAPSHOTS_NOT_IMPORTED = 0x8004_2321,
    VSS_E_MAXIMUM_NUMBER_OF_REMOTE_MACHINES_REACHED = 0x8004_2322,
    VSS_E_REMOTE_SERVER_UNAVAILABLE = 0x8004_2323,
    VSS_E_REMOTE_SERVER_UNSUPPORTED = 0x8004_2324,
    VSS_E_REVERT_IN_PROGRESS = 0x8004_2325,
    VSS_E_REVERT_VOLUME_LOST = 0x8004_2326,
    VSS_E_REBOOT_REQUIRED = 0x8004_2327,
    VSS_E_TRANSACTION_FREEZE_TIMEOUT = 0x8004_2328,
    VSS_E_TRANSACTION_THAW_TIMEOUT = 0x8004_2329,
    VSS_E_UNSELECTED_VOLUME = 0x8004_232A,
    VSS_E_SNAPSHOT_NOT_IN_SET = 0x8004_232B,
    VSS_E_NESTED_VOLUME_LIMIT = 0x8004_232C,
    VSS_E_VOLUME_NOT_LOCAL = 0x8004_232D,
    VSS_E_CLUSTER_TIMEOUT = 0x8004_232E,
    VSS_E_NOT_SUPPORTED = 0x8004_232F,
    VSS_E_WRITERERROR_PARTIAL_FAILURE = 0x8004_2336,
    VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT = 0x8004_23F0,
    VSS_E_WRITERERROR_OUTOFRESOURCES = 0x8004_23F1,
    VSS_E_WRITERERROR_TIMEOUT = 0x8004_23F2,
    VSS_E_WRITERERROR_RETRYABLE = 0x8004_23F3,
    VSS_E_WRITERERROR_NONRETRYABLE = 0x8004_23F4,
    VSS_E_WRITERERROR_RECOVERY_FAILED = 0x8004_23F5,
    VSS_E_BREAK_REVERT_ID_FAILED = 0x8004_23F6,
    VSS_E_LEGACY_PROVIDER = 0x8004_23F7,
    VSS_E_MISSING_DISK = 0x8004_23F8,
    VSS_E_MISSING_HIDDEN_VOLUME = 0x8004_23F9,
    VSS_E_MISSING_VOLUME = 0x8004_23FA,
    VSS_E_AUTORECOVERY_FAILED = 0x8004_23FB,
    VSS_E_DYNAMIC_DISK_ERROR = 0x8004_23FC,
    VSS_E_NONTRANSPORTABLE_BCD = 0x8004_23FD,
    VSS_E_CANNOT_REVERT_DISKID = 0x8004_23FE,
    VSS_E_RESYNC_IN_PROGRESS = 0x8004_23FF,
    VSS_E_CLUSTER_ERROR = 0x8004_2400,
}

impl Hresult {
    /// True for success codes (bit 31 clear), including `S_FALSE` and the `VSS_S_*` codes.
    pub const fn is_success(self) -> bool {
        self.0 & 0x8000_0000 == 0
    }

    /// True for failure codes (bit 31 set).
    pub const fn is_failure(self) -> bool {
        !self.is_success()
    }

    /// The value as COM's signed `HRESULT`.
    pub const fn as_i32(self) -> i32 {
        self.0 as i32
    }

    /// From COM's signed `HRESULT`.
    pub const fn from_i32(v: i32) -> Self {
        Hresult(v as u32)
    }

    /// The symbolic name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Self::ALL.iter().find(|(_, h)| *h == self).map(|(n, _)| *n)
    }

    /// Looks a code up by its symbolic name (`"VSS_E_PROVIDER_VETO"`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
    }
}

impl fmt::Display for Hresult {
    /// `VSS_E_PROVIDER_VETO (0x80042306)`, or just the hex value for unknown codes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:08X})", self.0),
            None => write!(f, "0x{:08X}", self.0),
        }
    }
}

impl fmt::Debug for Hresult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Hresult {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_and_values() {
        assert_eq!(
            Hresult::VSS_E_PROVIDER_VETO.to_string(),
            "VSS_E_PROVIDER_VETO (0x80042306)"
        );
        assert_eq!(Hresult(0x8004_2399).to_string(), "0x80042399");
        assert_eq!(Hresult::S_OK.to_string(), "S_OK (0x00000000)");
    }

    #[test]
    fn success_and_failure() {
        for ok in [
            Hresult::S_OK,
            Hresult::S_FALSE,
            Hresult::VSS_S_ASYNC_PENDING,
            Hresult::VSS_S_ASYNC_FINISHED,
            Hresult::VSS_S_ASYNC_CANCELLED,
            Hresult::VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED,
        ] {
            assert!(ok.is_success(), "{ok}");
        }
        for bad in [
            Hresult::E_FAIL,
            Hresult::E_INVALIDARG,
            Hresult::VSS_E_PROVIDER_VETO,
            Hresult::VSS_E_SOME_SNAPSHOTS_NOT_IMPORTED,
            Hresult::VSS_E_CLUSTER_ERROR,
        ] {
            assert!(bad.is_failure(), "{bad}");
        }
    }

    #[test]
    fn documented_values() {
        assert_eq!(Hresult::E_NOTIMPL.0, 0x8000_4001);
        assert_eq!(Hresult::E_ACCESSDENIED.0, 0x8007_0005);
        assert_eq!(Hresult::VSS_E_SNAPSHOT_SET_IN_PROGRESS.0, 0x8004_2316);
        assert_eq!(Hresult::VSS_E_UNEXPECTED_PROVIDER_ERROR.0, 0x8004_230F);
        assert_eq!(Hresult::VSS_E_HOLD_WRITES_TIMEOUT.0, 0x8004_2314);
        assert_eq!(Hresult::VSS_E_LEGACY_PROVIDER.0, 0x8004_23F7);
        assert_eq!(Hresult::from_i32(-2147212538), Hresult::VSS_E_PROVIDER_VETO);
        assert_eq!(Hresult::VSS_E_PROVIDER_VETO.as_i32(), -2147212538);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for (name, code) in Hresult::ALL {
            assert!(seen.insert(code.0), "duplicate value for {name}");
            assert_eq!(Hresult::from_name(name), Some(*code));
            assert_eq!(code.name(), Some(*name));
        }
    }
}
