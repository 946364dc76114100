//! The array daemon: LUNs with fixed SCSI identity on a storage engine, hosts and their
//! mappings, the durable snapshot-set journal and its reaper, and the authenticated HTTPS
//! control API the VSS provider drives (wire format in the `api` crate).
//!
//! Layers, bottom up: the `storage` crate (what the daemon needs from a storage engine: the
//! embedded `blockstore` engine, sparse files, memory), [`journal`] (append-only, fsync'd, replayed on
//! start), [`state`] (every verb's rules, no HTTP), [`export`] (LUN mappings into the
//! `scsi::Target` behind the iSCSI server, CHAP), [`http`] (routes, auth, problem documents),
//! [`ops`] (status, sessions, the audit route, and the layer every request passes: its
//! caller's address in the log, each change in the [`audit`] trail), [`tls`] (certificate
//! generation and fingerprint pinning), [`daemon`] (start, serve, reaper, shutdown),
//! [`systemd`] (readiness, stopping and watchdog notifications for `Type=notify` units),
//! [`client`] (a small pinned blocking HTTPS client for tools and tests).
//!
//! Entry points: [`serve`] runs until a shutdown future resolves; [`start`] returns a
//! [`RunningArray`] with the bound addresses and the certificate fingerprint. The behaviour is
//! documented in `docs/array.md`.
//!
//! Not here: SCSI command semantics (`scsi`), the iSCSI wire protocol (`iscsi`), the engine's
//! on-disk format (`blockstore`), the storage engines (`storage`), or the provider's client
//! (`provider`).
#![forbid(unsafe_code)]

mod api_relay;
pub mod audit;
pub mod client;
pub mod config;
pub mod daemon;
mod drain;
pub mod error;
pub mod export;
pub mod http;
pub mod journal;
pub mod metrics;
mod office;
pub mod ops;
mod paths;
pub mod pool;
mod pr_share;
pub mod state;
pub mod systemd;
pub mod tls;

pub use config::{Config, GatewayConfig};
pub use daemon::{RunningArray, private_files, serve, start, start_with};
pub use error::{ArrayError, ConfigError, JournalError};
pub use state::{Array, ExportedLun, Exporter, Fence, NoExport, Policy, Scope, StateSource};
pub use storage::{BackendConfig, BackendError, RbdConfig};
