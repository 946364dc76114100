//! The VSS and VDS vocabulary shared by every part of shadowlun.
//!
//! This crate is pure data: no I/O, no `unsafe`, no global state. It holds
//!
//! * [`Hresult`]: every COM and VSS status code a provider or VSS may produce, with names;
//! * [`flags`]: contexts, volume snapshot attributes, hardware and recovery options, provider
//!   capabilities and snapshot states with their documented values;
//! * [`LunInfo`]: the owned mirror of `VDS_LUN_INFORMATION` and the rule VSS uses to match a
//!   LUN arriving on import against what `GetTargetLuns` promised ([`LunInfo::matches_for_import`]);
//! * [`inquiry`]: encoders and strict decoders for standard INQUIRY data and VPD pages 0x00, 0x80
//!   and 0x83, and [`LunInfo::from_scsi`], which builds what Windows builds for a disk.
//!
//! Both sides of the identity rule live here: the array encodes its LUNs' pages with [`inquiry`],
//! the provider predicts the snapshot LUN's `LunInfo` with [`LunInfo::from_scsi`] over the same
//! pages, and the emulated Windows host reads the pages over iSCSI and calls the same function.
//! So `GetTargetLuns` and `FillInLunInfo` cannot drift apart.
//!
//! Not here: anything that talks to a device, a socket or COM.
#![forbid(unsafe_code)]

pub mod contract;
pub mod flags;
pub mod hresult;
pub mod identity;
pub mod inquiry;
pub mod lun;

pub use contract::Method;
pub use flags::{
    HardwareOptions, ProviderCapabilities, ProviderType, RecoveryOptions, SnapshotContext,
    SnapshotState, VolumeSnapshotAttributes,
};
pub use hresult::Hresult;
pub use lun::{
    BusType, CodeSet, IdentifierType, Interconnect, LunInfo, ScsiIdentity, StorageIdentifier,
};

/// A VSS identifier (`VSS_ID`, a GUID): snapshot set ids, snapshot ids, provider ids.
pub type VssId = uuid::Uuid;

/// `VER_VDS_LUN_INFORMATION`: the only valid value of `LunInfo::version`.
pub const VER_VDS_LUN_INFORMATION: u32 = 1;

/// The most volumes VSS accepts in one shadow-copy set.
pub const MAX_VOLUMES_PER_SET: usize = 64;
