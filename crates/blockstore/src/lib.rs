//! The embedded storage engine: a pool in a directory holding thin volumes, O(1) snapshots and
//! writable clones, with checksummed, crash-safe metadata.
//!
//! Not here: SCSI, networking, or any notion of VSS.
#![forbid(unsafe_code)]
