//! The storage engine's metadata as a pool is opened from it: a checkpoint under the chunk
//! bound its data file gives, the commit log (every frame checksummed), and commit bodies
//! replayed without a checksum in front (so the fuzzer reaches the record decoder and the
//! replay rules directly). Anything is refused or decoded, never a panic; what decodes is
//! consistent: written as a checkpoint it decodes to the same volumes, nodes and chunks, and
//! with every volume deleted no node and no chunk stays in use (no leak, no double free).
//!
//! Input: `chunk_bound u32`, then length-prefixed parts (`shadowlun_fuzz::Parts`): the
//! checkpoint body, the log file, then commit bodies. Seeds are real pools, split so
//! (`SHADOWLUN_FUZZ_SEEDS=<dir> cargo fuzz run engine_metadata -- -runs=0`).
#![no_main]

use blockstore::fuzzing::{decode_and_replay, pool_files};
use blockstore::{DeletePolicy, Pool, PoolOptions};
use libfuzzer_sys::fuzz_target;
use shadowlun_fuzz::{Parts, join, seed_dir, temp_dir, write_seed};

const MIB: u64 = 1 << 20;

/// One step of the seed workload.
type Step = Box<dyn Fn(&Pool)>;

/// Seeds from pools after each step of a workload that makes every record kind: volumes,
/// writes, snapshots, clones, resizes, deletes, a size limit; once with the default
/// checkpoint threshold (everything in the log) and once checkpointing at every commit.
fn write_seeds() {
    let Some(dir) = seed_dir() else { return };
    for (run, threshold) in [("log", None), ("ckpt", Some(1u64))] {
        let tmp = temp_dir("engine-seeds-");
        let pool_dir = tmp.path().join("pool");
        let steps: Vec<Step> = vec![
            Box::new(|p| {
                p.create_volume("v", 4 * MIB).unwrap();
            }),
            Box::new(|p| {
                let v = p.open_volume("v").unwrap();
                v.write_at(0, &[1; 8192], false).unwrap();
                v.write_at(3 * 65536, &[2; 4096], true).unwrap();
            }),
            Box::new(|p| {
                p.snapshot("v", "s").unwrap();
            }),
            Box::new(|p| {
                let v = p.open_volume("v").unwrap();
                v.write_at(4096, &[3; 4096], true).unwrap();
                p.clone_volume("s", "c").unwrap();
            }),
            Box::new(|p| {
                p.open_volume("c")
                    .unwrap()
                    .write_at(65536, &[4; 512], true)
                    .unwrap();
                p.resize("v", 8 * MIB).unwrap();
                p.set_size_limit(64 * MIB).unwrap();
            }),
            Box::new(|p| {
                p.delete("s", DeletePolicy::Promote).unwrap();
                p.resize("c", 16 * MIB).unwrap();
            }),
        ];
        for (i, step) in steps.iter().enumerate() {
            let p = if i == 0 {
                Pool::create(&pool_dir, PoolOptions::default()).unwrap()
            } else {
                Pool::open(&pool_dir).unwrap()
            };
            if let Some(t) = threshold {
                p.set_checkpoint_threshold(t);
            }
            step(&p);
            p.flush().unwrap();
            drop(p);
            let f = pool_files(&pool_dir).unwrap();
            let bound = (f.chunk_bound as u32).to_le_bytes();
            let bodies: Vec<&[u8]> = f.bodies.iter().map(Vec::as_slice).collect();
            let mut whole = bound.to_vec();
            whole.extend(join(&[&f.checkpoint, &f.log]));
            write_seed(&dir, &format!("{run}-{i}-files"), &whole);
            let mut split = bound.to_vec();
            split.extend(join(&[&f.checkpoint, b""]));
            split.extend(join(&bodies));
            write_seed(&dir, &format!("{run}-{i}-bodies"), &split);
        }
    }
}

fuzz_target!(init: write_seeds(), |input: &[u8]| {
    let mut p = Parts(input);
    let bound = p.u32();
    let checkpoint = p.next_part();
    let log = p.next_part();
    let mut bodies = Vec::new();
    while !p.is_empty() {
        bodies.push(p.next_part());
    }
    let _ = decode_and_replay(checkpoint, u64::from(bound), log, &bodies);
});
