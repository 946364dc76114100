//! Contexts, attribute bits, options and states with the values of `vss.h`.

use bitflags::bitflags;

bitflags! {
    /// `_VSS_VOLUME_SNAPSHOT_ATTRIBUTES`: the bits a snapshot context is built from.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct VolumeSnapshotAttributes: u32 {
        const PERSISTENT = 0x0000_0001;
        const NO_AUTORECOVERY = 0x0000_0002;
        const CLIENT_ACCESSIBLE = 0x0000_0004;
        const NO_AUTO_RELEASE = 0x0000_0008;
        const NO_WRITERS = 0x0000_0010;
        const TRANSPORTABLE = 0x0000_0020;
        const NOT_SURFACED = 0x0000_0040;
        const NOT_TRANSACTED = 0x0000_0080;
        const HARDWARE_ASSISTED = 0x0001_0000;
        const DIFFERENTIAL = 0x0002_0000;
        const PLEX = 0x0004_0000;
        const IMPORTED = 0x0008_0000;
        const EXPOSED_LOCALLY = 0x0010_0000;
        const EXPOSED_REMOTELY = 0x0020_0000;
        const AUTORECOVER = 0x0040_0000;
        const ROLLBACK_RECOVERY = 0x0080_0000;
        const DELAYED_POSTSNAPSHOT = 0x0100_0000;
        const TXF_RECOVERY = 0x0200_0000;
        const FILE_SHARE = 0x0400_0000;
    }
}

/// A snapshot context as VSS passes it to providers (`LONG lContext`): a `_VSS_SNAPSHOT_CONTEXT`
/// preset OR-ed with `_VSS_VOLUME_SNAPSHOT_ATTRIBUTES` bits.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SnapshotContext(pub u32);

impl SnapshotContext {
    /// `VSS_CTX_BACKUP`: auto-release, non-persistent, with writers.
    pub const BACKUP: Self = Self(0x0);
    /// `VSS_CTX_FILE_SHARE_BACKUP` (= NO_WRITERS).
    pub const FILE_SHARE_BACKUP: Self = Self(0x10);
    /// `VSS_CTX_NAS_ROLLBACK` (PERSISTENT | NO_AUTO_RELEASE | NO_WRITERS).
    pub const NAS_ROLLBACK: Self = Self(0x19);
    /// `VSS_CTX_APP_ROLLBACK` (PERSISTENT | NO_AUTO_RELEASE).
    pub const APP_ROLLBACK: Self = Self(0x9);
    /// `VSS_CTX_CLIENT_ACCESSIBLE`: system provider only.
    pub const CLIENT_ACCESSIBLE: Self = Self(0x1D);
    /// `VSS_CTX_CLIENT_ACCESSIBLE_WRITERS`: system provider only.
    pub const CLIENT_ACCESSIBLE_WRITERS: Self = Self(0xD);
    /// `VSS_CTX_ALL`: administrative queries only, never for creation.
    pub const ALL: Self = Self(0xFFFF_FFFF);

    /// From VSS's signed `LONG lContext`.
    pub const fn from_i32(v: i32) -> Self {
        Self(v as u32)
    }

    /// The attribute bits of this context (unknown bits dropped).
    pub const fn attributes(self) -> VolumeSnapshotAttributes {
        VolumeSnapshotAttributes::from_bits_truncate(self.0)
    }

    /// Bits set that `vss.h` does not define.
    pub const fn unknown_bits(self) -> u32 {
        self.0 & !VolumeSnapshotAttributes::all().bits()
    }

    pub const fn with(self, a: VolumeSnapshotAttributes) -> Self {
        Self(self.0 | a.bits())
    }

    pub fn contains(self, a: VolumeSnapshotAttributes) -> bool {
        self.attributes().contains(a)
    }

    pub fn is_transportable(self) -> bool {
        self.contains(VolumeSnapshotAttributes::TRANSPORTABLE)
    }

    pub fn is_persistent(self) -> bool {
        self.contains(VolumeSnapshotAttributes::PERSISTENT)
    }

    pub fn is_auto_release(self) -> bool {
        !self.contains(VolumeSnapshotAttributes::NO_AUTO_RELEASE)
    }

    /// A context a hardware provider may be asked to create: not `VSS_CTX_ALL`, not
    /// client-accessible (system provider only), not both DIFFERENTIAL and PLEX, no unknown bits.
    pub fn is_valid_for_creation(self) -> bool {
        let a = self.attributes();
        self != Self::ALL
            && self.unknown_bits() == 0
            && !a.contains(VolumeSnapshotAttributes::CLIENT_ACCESSIBLE)
            && !a.contains(VolumeSnapshotAttributes::DIFFERENTIAL | VolumeSnapshotAttributes::PLEX)
    }
}

impl std::fmt::Display for SnapshotContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let preset = match self.0 & 0x1D {
            0x0 => "BACKUP",
            0x10 => "FILE_SHARE_BACKUP",
            0x19 => "NAS_ROLLBACK",
            0x9 => "APP_ROLLBACK",
            0x1D => "CLIENT_ACCESSIBLE",
            0xD => "CLIENT_ACCESSIBLE_WRITERS",
            _ => "CUSTOM",
        };
        write!(f, "{preset} (0x{:08X})", self.0)
    }
}

bitflags! {
    /// `_VSS_HARDWARE_OPTIONS`: break flags (low byte) and OnLunStateChange flags (second byte).
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct HardwareOptions: u32 {
        const BREAKEX_FLAG_MASK_LUNS = 0x1;
        const BREAKEX_FLAG_MAKE_READ_WRITE = 0x2;
        const BREAKEX_FLAG_REVERT_IDENTITY_ALL = 0x4;
        const BREAKEX_FLAG_REVERT_IDENTITY_NONE = 0x8;
        const ONLUNSTATECHANGE_NOTIFY_READ_WRITE = 0x100;
        const ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY = 0x200;
        const ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY = 0x400;
        const ONLUNSTATECHANGE_DO_MASK_LUNS = 0x800;
    }
}

bitflags! {
    /// `VSS_RECOVERY_OPTIONS` for `RecoverSet` (LUN resync).
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct RecoveryOptions: u32 {
        const REVERT_IDENTITY_ALL = 0x100;
        const NO_VOLUME_CHECK = 0x200;
    }
}

bitflags! {
    /// `_VSS_PROVIDER_CAPABILITIES` (documented as reserved).
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct ProviderCapabilities: u64 {
        const LEGACY = 0x1;
        const COMPLIANT = 0x2;
        const LUN_REPOINT = 0x4;
        const LUN_RESYNC = 0x8;
        const OFFLINE_CREATION = 0x10;
        const MULTIPLE_IMPORT = 0x20;
        const RECYCLING = 0x40;
        const PLEX = 0x80;
        const DIFFERENTIAL = 0x100;
        const CLUSTERED = 0x200;
    }
}

/// `VSS_PROVIDER_TYPE`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum ProviderType {
    Unknown = 0,
    System = 1,
    Software = 2,
    Hardware = 3,
    FileShare = 4,
}

/// `VSS_SNAPSHOT_STATE`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum SnapshotState {
    Unknown = 0,
    Preparing = 1,
    ProcessingPrepare = 2,
    Prepared = 3,
    ProcessingPrecommit = 4,
    Precommitted = 5,
    ProcessingCommit = 6,
    Committed = 7,
    ProcessingPostcommit = 8,
    ProcessingPrefinalcommit = 9,
    Prefinalcommitted = 10,
    ProcessingPostfinalcommit = 11,
    Created = 12,
    Aborted = 13,
    Deleted = 14,
    Postcommitted = 15,
}

impl SnapshotState {
    /// The documented numeric value.
    pub const fn value(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VolumeSnapshotAttributes as A;

    #[test]
    fn presets_are_the_documented_bit_unions() {
        assert_eq!(
            SnapshotContext::FILE_SHARE_BACKUP.attributes(),
            A::NO_WRITERS
        );
        assert_eq!(
            SnapshotContext::NAS_ROLLBACK.attributes(),
            A::PERSISTENT | A::NO_AUTO_RELEASE | A::NO_WRITERS
        );
        assert_eq!(
            SnapshotContext::APP_ROLLBACK.attributes(),
            A::PERSISTENT | A::NO_AUTO_RELEASE
        );
        assert_eq!(
            SnapshotContext::CLIENT_ACCESSIBLE.attributes(),
            A::PERSISTENT | A::CLIENT_ACCESSIBLE | A::NO_AUTO_RELEASE | A::NO_WRITERS
        );
        assert_eq!(SnapshotContext::BACKUP.with(A::TRANSPORTABLE).0, 0x20);
        assert_eq!(SnapshotContext::APP_ROLLBACK.with(A::TRANSPORTABLE).0, 0x29);
    }

    #[test]
    fn creation_validity() {
        assert!(SnapshotContext::BACKUP.is_valid_for_creation());
        assert!(
            SnapshotContext::APP_ROLLBACK
                .with(A::TRANSPORTABLE | A::PLEX)
                .is_valid_for_creation()
        );
        assert!(!SnapshotContext::ALL.is_valid_for_creation());
        assert!(!SnapshotContext::CLIENT_ACCESSIBLE.is_valid_for_creation());
        assert!(
            !SnapshotContext::BACKUP
                .with(A::PLEX | A::DIFFERENTIAL)
                .is_valid_for_creation()
        );
        assert!(!SnapshotContext(0x8000_0000).is_valid_for_creation());
    }

    #[test]
    fn context_properties() {
        let c = SnapshotContext::from_i32(0x29);
        assert!(c.is_transportable() && c.is_persistent() && !c.is_auto_release());
        assert!(SnapshotContext::BACKUP.is_auto_release());
        assert_eq!(
            SnapshotContext(0x29).to_string(),
            "APP_ROLLBACK (0x00000029)"
        );
    }

    #[test]
    fn option_values() {
        assert_eq!(HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS.bits(), 0x800);
        assert_eq!(RecoveryOptions::NO_VOLUME_CHECK.bits(), 0x200);
        assert_eq!(ProviderCapabilities::CLUSTERED.bits(), 0x200);
        assert_eq!(ProviderType::Hardware as u32, 3);
        assert_eq!(SnapshotState::Created.value(), 12);
        assert_eq!(SnapshotState::Postcommitted.value(), 15);
    }
}
