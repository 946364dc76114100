//! iSCSI (RFC 7143): a target that serves the `scsi` device model over TCP, and a small
//! blocking initiator for the emulator's hosts, tests and the benchmarks (`lab`).
//!
//! - [`pdu`]: framing only (header, AHS, data segment, CRC32C digests), with every
//!   peer-supplied length checked before allocation.
//! - [`text`], [`params`], [`chap`]: text keys, operational negotiation, CHAP-MD5.
//! - [`target`]: the async (tokio) target: portals, login, sessions, full feature phase.
//! - [`initiator`]: a blocking initiator (discovery, login, SCSI commands with queueing).
//! - [`ScsiHandler`]: the one interface to the device model; implemented for
//!   [`scsi::Target`].
//!
//! Not here: what a command does to a logical unit (see `scsi`), LUN identity (see `vss`
//! and the array), or storage (see `blockstore`). The wire behaviour is written down in
//! `docs/iscsi.md`.
#![forbid(unsafe_code)]

pub mod chap;
mod handler;
pub mod initiator;
pub mod params;
pub mod pdu;
mod scsi_target;
pub mod target;
pub mod text;

pub use handler::ScsiHandler;
pub use target::{
    AuthPolicy, PortError, RefusedLogins, SessionInfo, TargetConfig, TargetError, TargetPort,
    TargetServer,
};
