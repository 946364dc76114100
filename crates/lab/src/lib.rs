//! Test rigs and benchmarks. The product's library crates and the Windows provider never
//! depend on this crate; the `shadowlun` CLI uses it for `bench`, and tests use it as a
//! dev-dependency.
//!
//! - [`adapter`]: a provider's `ArrayControl` straight into `array::Array`'s verbs (no HTTP).
//! - [`memory_array`]: the real array on the memory engine, with call recording and injected
//!   failures in front of each host's adapter: what provider tests run against.
//! - [`shadowlun_lab`]: the emulator's memory lab, shadowlun's provider over that array.
//! - [`san`]: an in-process SAN (LUNs in memory or in files, masking per initiator), and
//!   [`reference`]: a small reference provider over it, with the lab they make.
//! - [`iscsi_lab`]: the reference provider with hosts on shadowlun's iSCSI target over loopback.
//! - [`report`]: the one report shape every benchmark prints.
//! - [`engine_bench`]: the embedded engine against the raw file and against itself.
//! - [`target_bench`]: the iSCSI target against tgt and the raw file.
//! - [`tgt`]: a `tgtd` process, the target benchmark's baseline and the initiator's referee.
//! - [`crashtest`]: the engine's crash workload (`blockstore-crashtest` kills it at random
//!   points and checks what recovery kept).
#![forbid(unsafe_code)]

pub mod adapter;
pub mod crashtest;
pub mod engine_bench;
pub mod iscsi_lab;
pub mod memory_array;
pub mod reference;
pub mod report;
pub mod san;
pub mod shadowlun_lab;
pub mod target_bench;
pub mod tgt;
