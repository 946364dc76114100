//! iSCSI (RFC 7143): a target that serves the `scsi` device model over TCP, and a small
//! initiator for the emulator's hosts and for tests.
//!
//! Not here: what a command does to a logical unit (see `scsi`).
#![forbid(unsafe_code)]
