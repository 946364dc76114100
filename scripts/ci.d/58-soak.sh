#!/usr/bin/env bash
# Soak, short form (about 2 minutes plus the release build, which 60-demo then reuses):
# `shadowlun soak` runs the array daemon as a child process for SOAK_MINUTES (default 1)
# under a seeded random schedule of shadow copy sets of every kind (auto-release, persistent,
# transportable imported on a second host, break, resync, delete), LUN creations, mappings,
# growths and deletions, with a ledger writer on the first host all along; it kills the daemon
# with SIGKILL at random moments, between and during operations, and starts it again. The
# stage fails if an acknowledged write is lost, a snapshot is not one point in time, a LUN,
# set or engine volume is orphaned, the daemon's descriptors, threads or memory grow past
# their bounds, or the pool's used space does not return to its start. This is a sample of
# the long run (`shadowlun soak --minutes 30`); the seed is printed so a failure can be rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -q
bin="${CARGO_TARGET_DIR:-target}/release/shadowlun"
seed="${SOAK_SEED:-$(date +%s)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! timeout --foreground 900 "$bin" soak --minutes "${SOAK_MINUTES:-1}" --seed "$seed" \
     --pool "$work/soak" | tee "$work/report.txt"; then
  echo "58-soak: failed with seed $seed; the daemon's log:" >&2
  tail -n 50 "$work/soak/daemon.log" >&2 || true
  exit 1
fi
grep -q "^soak passed" "$work/report.txt"
