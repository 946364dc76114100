//! The Windows side on Linux: a VSS coordinator that drives hardware providers in the
//! documented call order, hosts that see LUNs only through their SAN storage, writers that
//! freeze, and diskshadow-style scripts.
//!
//! * [`coordinator`]: vssvc of one host and the requester interface ([`BackupComponents`]);
//! * [`host`]: disks from SCSI rescans, `LunInfo` via [`vss::LunInfo::from_scsi`], volumes on
//!   GPT partitions, flush-and-hold; [`gpt_flags`]: VSS's partition flags on the LUN;
//! * [`storage`]: the [`HostStorage`] trait a host reaches its SAN through;
//!   [`iscsi_storage`]: the same over shadowlun's iSCSI initiator; [`mpio`]: over several
//!   paths to one target, with asymmetric access and failover as Windows' MPIO does it;
//! * [`writer`]: VSS writer events and the ledger writer that proves consistency;
//! * [`bcd`]: the backup components document; [`trace`]: the record of every provider call;
//! * [`conformance`]: the `docs/vss-contract.md` §10 catalogue, generic over a [`conformance::Lab`]
//!   (a SAN with a provider); [`faults`]: the misbehaviours its scenarios inject.
//!
//! Not here: the provider itself (crate `provider`), COM, any array, or the labs the catalogue
//! runs against (an in-process SAN, a reference provider, the array in memory or as a daemon:
//! crate `lab`). The emulator only calls providers through [`provider::HardwareProvider`].
#![forbid(unsafe_code)]

pub mod bcd;
pub mod conformance;
pub mod coordinator;
pub mod faults;
pub mod gpt_flags;
pub mod host;
pub mod iscsi_storage;
pub mod mpio;
pub mod script;
pub mod storage;
pub mod trace;
pub mod writer;

pub use coordinator::{BackupComponents, Config, Coordinator, DeleteTarget, VssError};
pub use host::Host;
pub use storage::HostStorage;
