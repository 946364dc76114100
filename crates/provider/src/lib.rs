//! The VSS hardware provider core, in portable Rust.
//!
//! [`HardwareProvider`] has one method per method of `IVssHardwareSnapshotProvider`,
//! `IVssHardwareSnapshotProviderEx`, `IVssProviderCreateSnapshotSet` and
//! `IVssProviderNotifications`, in Rust types. The Windows COM server (`provider-com`) and the
//! VSS emulator (`vss-emulator`) both call providers only through this trait, so the same code
//! runs under vssvc and on Linux.
//!
//! Not here: COM, pointers, or any knowledge of how the array is reached.
#![forbid(unsafe_code)]

pub mod hardware;

pub use hardware::{AsyncOperation, HardwareProvider, UnloadAnswer};
