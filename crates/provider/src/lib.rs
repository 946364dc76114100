//! The VSS hardware provider core, in portable Rust.
//!
//! * [`HardwareProvider`]: one method per method of `IVssHardwareSnapshotProvider`,
//!   `IVssHardwareSnapshotProviderEx`, `IVssProviderCreateSnapshotSet` and
//!   `IVssProviderNotifications`, in Rust types. The Windows COM server (`provider-com`) and the
//!   VSS emulator (`vss-emulator`) call providers only through it.
//! * [`ShadowlunProvider`]: the contract's state machine over an [`ArrayControl`].
//! * [`ArrayControl`]: the private channel to the array; [`https::HttpsArray`] reaches it
//!   over its control API.
//! * [`ProviderError`]: the one place internal failures become the HRESULTs each method may
//!   return, with the message a veto writes to the event log.
//!
//! Not here: COM, pointers, or knowledge of how the array stores data.
#![forbid(unsafe_code)]

pub mod array;
pub mod core;
pub mod error;
pub mod hardware;
pub mod https;
pub mod resync;

pub use array::{ArrayControl, ArrayLun, ControlError, LunId, LunKey};
pub use core::{ProviderConfig, ShadowlunProvider};
pub use error::{EventSink, FailureClass, ProviderError, ProviderEvent, TracingEvents};
pub use hardware::{AsyncOperation, HardwareProvider, UnloadAnswer};
