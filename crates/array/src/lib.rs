//! The array daemon: pools, LUNs with fixed SCSI identity, hosts and mappings, the durable
//! snapshot-set journal and its reaper, and the authenticated control API.
#![forbid(unsafe_code)]
