#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, with AddressSanitizer) of what
# reads bytes from the network and of the SCSI device model:
#   pdu            PDU decoding under a segment limit, AHS and CDB, text keys and their
#                  negotiation (fuzz/fuzz_targets/pdu.rs)
#   scsi_commands  command sequences from three I_T nexuses against two LUNs
#                  (fuzz/fuzz_targets/scsi_commands.rs)
#   session        bytes on a live loopback connection to a TargetServer, from the first
#                  byte or after a login; the server must keep serving
#                  (fuzz/fuzz_targets/session.rs, seeds from fuzz/seeds/session.py)
# Each target runs for FUZZ_SECONDS (60 by default). A panic, a memory error, a leak or one
# allocation above 64 MiB (a length taken from the input unchecked) fails the stage; the input
# that did it is kept in fuzz/artifacts/<target>/ and replays with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` (from fuzz/).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-60}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# cargo-fuzz builds with -Z flags (sanitizer, coverage instrumentation); this lets the
# machine's stable toolchain accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
# Memory that live threads reach only through thread-local storage is not reported as a leak
# (fuzz/lsan.supp says which); connection threads that outlive their clients are caught by
# the session target itself.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

cd fuzz
cargo fuzz build
fail=0
for t in $(cargo fuzz list); do
  log=$(mktemp)
  dirs=("corpus/$t")
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  if cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" -malloc_limit_mb=64 \
      -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    echo "fuzz $t: ${runs:-?} inputs in ${secs}s, no failure (${cov:-cov: ?} edges)"
  else
    grep -E -A6 -m1 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" || tail -20 "$log"
    grep -E '^SUMMARY|Test unit written' "$log" || true
    echo "fuzz $t FAILED; input kept in fuzz/artifacts/$t/"
    fail=1
  fi
  rm -f "$log"
done
exit $fail
