//! Windows only: the COM server that exposes the portable provider core to VSS.
//!
//! What it is for: `shadowlun-provider.exe`, an out-of-process COM server (LocalServer32, or a
//! Windows service running as LocalSystem) whose provider object implements
//! `IVssHardwareSnapshotProviderEx`, `IVssProviderCreateSnapshotSet` and
//! `IVssProviderNotifications` by delegating to any [`provider::HardwareProvider`]; the
//! conversions between `VDS_LUN_INFORMATION` and [`vss::LunInfo`] under the COM memory rules of
//! the provider contract (`docs/vss-contract.md` §5); the veto event log; and `install` /
//! `uninstall` / `status`.
//!
//! What it is not for: snapshot logic (that is `provider`), talking to the array (that is the
//! `ArrayControl` implementation behind the core), or anything on non-Windows platforms, where
//! this crate is empty.
//!
//! `unsafe` lives in [`ffi`] (every raw pointer VSS hands us, and the `_Impl` traits that
//! receive them) and in the thin Win32 wrappers ([`server`], [`registry`], [`eventlog`],
//! [`dpapi`], [`service`], [`install`], [`sddl`]); every other module forbids it.

#[cfg(windows)]
pub mod cli;
#[cfg(windows)]
pub mod config;
#[cfg(windows)]
pub mod dpapi;
#[cfg(windows)]
pub mod eventlog;
#[cfg(windows)]
pub mod ffi;
#[cfg(windows)]
pub mod folders;
#[cfg(windows)]
pub mod ids;
#[cfg(windows)]
pub mod install;
#[cfg(windows)]
pub mod registry;
#[cfg(windows)]
pub mod sddl;
#[cfg(windows)]
pub mod server;
#[cfg(windows)]
pub mod service;
#[cfg(windows)]
pub mod status;
#[cfg(windows)]
pub mod veto;

#[cfg(windows)]
pub use ffi::client::ComClient;
#[cfg(windows)]
pub use ffi::{ComAsync, ComProvider, ProviderFactory};
#[cfg(windows)]
pub use veto::{EventLogWriter, VetoEntry, VetoLog};
