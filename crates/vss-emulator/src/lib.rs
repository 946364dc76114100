//! The Windows side on Linux: a VSS coordinator that drives hardware providers in the
//! documented call order, hosts that see LUNs only through their SAN storage, writers that
//! freeze, and diskshadow-style scripts.
#![forbid(unsafe_code)]

pub mod gpt_flags;
pub mod host;
pub mod san;
pub mod storage;
pub mod trace;
pub mod writer;
