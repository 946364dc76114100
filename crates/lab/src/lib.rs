//! Test rigs and benchmarks, outside the product: no library crate and not the Windows
//! provider depend on this crate. The `shadowlun` CLI uses it for `bench`, `demo` and
//! `vss run|conformance`; tests use it as a dev-dependency.
//!
//! The array in the process, for provider tests:
//! - [`adapter`]: a provider's `ArrayControl` straight into `array::Array`'s verbs (no HTTP).
//! - [`memory_array`]: the real array on the memory engine, with call recording and injected
//!   failures in front of each host's adapter.
//!
//! The VSS emulator's labs (each a `vss_emulator::conformance::Lab`):
//! - [`shadowlun_lab`]: shadowlun's provider over that array (`--lab memory`).
//! - [`san`]: an in-process SAN (LUNs in memory or in files, masking per initiator), and
//!   [`reference`]: a small reference provider over it, with the lab they make.
//! - [`iscsi_lab`]: the reference provider with hosts on shadowlun's iSCSI target over loopback.
//! - [`real_lab`]: the array daemon on loopback, hosts over iSCSI, the provider over HTTPS
//!   (`--lab array`, the demo, `bench vss`).
//! - [`wine_lab`]: the same with `shadowlun-provider.exe` under Wine behind each host
//!   (`--lab wine`), reached through [`relay`]: provider calls as lines of JSON over a stream
//!   pair (the one module that also builds for Windows, for provider-com's relay example).
//!
//! Benchmarks and the engine's crash workload:
//! - [`report`]: the one report shape every benchmark prints.
//! - [`vss_bench`]: the provider against the array in the process and over HTTPS.
//! - [`failover_bench`]: what a gateway that cannot be reached costs the provider's calls
//!   when it is listed before a live one; [`unreachable`] makes such gateways on loopback.
//! - [`mpio_bench`]: the emulated host's MPIO against one iSCSI session, and a move of a LU
//!   between target port groups.
//! - [`engine_bench`]: the embedded engine against the raw file and against itself.
//! - [`target_bench`]: the iSCSI target against tgt and the raw file.
//! - [`rbd_bench`]: the target on the rbd backend against tgt's rbd backing store and
//!   `rbd bench`, and the backend's group commit latency.
//! - [`array_bench`]: an engine LUN of the array daemon through its target, against a file
//!   LUN on the same target and against tgt, with and without snapshots.
//! - [`tgt`]: a `tgtd` process, the target benchmarks' baseline and the initiator's referee.
//! - [`crashtest`]: the engine's crash workload (`blockstore-crashtest` kills it at random
//!   points and checks what recovery kept).
//! - [`soak`]: the array daemon as a child process under a random schedule of everything it
//!   does, killed with SIGKILL at random moments, every invariant checked (`shadowlun soak`).
#![forbid(unsafe_code)]

pub mod relay;

#[cfg(unix)]
pub mod adapter;
#[cfg(unix)]
pub mod array_bench;
#[cfg(unix)]
pub mod crashtest;
#[cfg(unix)]
pub mod engine_bench;
#[cfg(unix)]
pub mod failover_bench;
#[cfg(unix)]
pub mod gateway_rig;
#[cfg(unix)]
pub mod gateways_bench;
#[cfg(unix)]
pub mod iscsi_lab;
#[cfg(unix)]
pub mod memory_array;
#[cfg(unix)]
pub mod mpio_bench;
#[cfg(unix)]
pub mod rbd_bench;
#[cfg(unix)]
pub mod real_lab;
#[cfg(unix)]
pub mod reference;
#[cfg(unix)]
pub mod report;
#[cfg(unix)]
pub mod san;
#[cfg(unix)]
pub mod shadowlun_lab;
#[cfg(unix)]
pub mod soak;
#[cfg(unix)]
pub mod target_bench;
#[cfg(unix)]
pub mod tgt;
#[cfg(unix)]
pub mod unreachable;
#[cfg(unix)]
pub mod vss_bench;
#[cfg(unix)]
pub mod wine_lab;

/// Runs `delete` until it succeeds, retrying while the array refuses because a plex copy of
/// the LUN is still being made independent, for at most
/// [`vss_emulator::conformance::DELETE_WAIT`].
#[cfg(unix)]
pub(crate) fn retry_while_held(delete: impl Fn() -> Result<(), String>) -> Result<(), String> {
    let until = std::time::Instant::now() + vss_emulator::conformance::DELETE_WAIT;
    loop {
        match delete() {
            Err(e) if e.contains("plex") && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}
