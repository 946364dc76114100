//! The Windows side on Linux: a VSS coordinator that drives hardware providers in the
//! documented call order, hosts that see LUNs only through their SAN storage, writers that
//! freeze, and diskshadow-style scripts.
//!
//! * [`coordinator`]: vssvc of one host and the requester interface ([`BackupComponents`]);
//! * [`host`]: disks from SCSI rescans, `LunInfo` via [`vss::LunInfo::from_scsi`], volumes on
//!   GPT partitions, flush-and-hold; [`gpt_flags`]: VSS's partition flags on the LUN;
//! * [`storage`]: the [`HostStorage`] trait a host reaches its SAN through;
//!   [`san`]: an in-process SAN implementing it;
//! * [`writer`]: VSS writer events and the ledger writer that proves consistency;
//! * [`bcd`]: the backup components document; [`trace`]: the record of every provider call;
//! * [`testing`]: a reference provider over the in-process SAN.
//!
//! Not here: the provider itself (crate `provider`), COM, or any real array. The emulator only
//! calls providers through [`provider::HardwareProvider`].
#![forbid(unsafe_code)]

pub mod bcd;
pub mod conformance;
pub mod coordinator;
pub mod faults;
pub mod gpt_flags;
pub mod host;
pub mod iscsi_lab;
pub mod iscsi_storage;
pub mod san;
pub mod script;
pub mod shadowlun_lab;
pub mod storage;
pub mod testing;
pub mod trace;
pub mod writer;

pub use coordinator::{BackupComponents, Config, Coordinator, DeleteTarget, VssError};
pub use host::Host;
pub use storage::HostStorage;
