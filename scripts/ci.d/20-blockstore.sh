#!/usr/bin/env bash
# Crash consistency of the embedded engine: 120 runs of a workload killed with SIGKILL at a
# random point inside it (after a random number of acknowledged operations, plus up to 3 ms),
# each followed by recovery and a block-by-block check (under a minute): a sample of the long
# mode below. The harness fails if more than a tenth of the runs finished before their kill.
# Long mode: BLOCKSTORE_CRASH_RUNS=1000 scripts/test 20-blockstore
set -euo pipefail
cd "$(dirname "$0")/../.."
# Built with the shadowlun package selected too, so that its dependencies get the features
# `cargo build --release` resolves for shadowlun: the release builds of the later stages
# (58-soak, 60-demo, 65-deb) then reuse every crate instead of building the stack again.
cargo build --release -p shadowlun -p lab --bin blockstore-crashtest
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/blockstore-crashtest" --runs "${BLOCKSTORE_CRASH_RUNS:-120}"
