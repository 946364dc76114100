#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, with AddressSanitizer) of every
# parser that takes outside input, and of the SCSI device model:
#   pdu              PDU decoding under a segment limit, AHS and CDB, text keys and their
#                    negotiation (fuzz/fuzz_targets/pdu.rs)
#   scsi_commands    command sequences from three I_T nexuses against two LUNs
#   session          bytes on a live loopback connection to a TargetServer, from the first
#                    byte or after a login; the server must keep serving (seeds from
#                    fuzz/seeds/session.py)
#   control_api      any request through the daemon's router and authentication: never a
#                    panic or a 5xx, every refusal a problem document with its status
#   array_config     the array's TOML configuration: an error names the file; round-trips
#   array_journal    the array's journal at start: an error or an array that reopens equal
#   engine_metadata  the engine's checkpoint, log and commit records: consistent accounting
#   bcd              the backup components document the emulator imports: round-trips
#   diskshadow       diskshadow scripts (seeds: examples/vss/*.dsh)
#   relay            the provider relay's line protocol on a real provider: one answer a line
# The first three run FUZZ_SECONDS each (12 by default), the other seven FUZZ_NEW_SECONDS
# (6 by default), so fuzzing takes under 2 minutes after the build: a sample that keeps CI
# short (each run starts from the corpus the seeds make, so a short run still reaches the
# parsers' depths); the long runs are in docs/fuzzing.md (and the build, with
# the array, the emulator and the lab under AddressSanitizer, a few minutes more on 2 cores).
# Targets whose seeds come from the code they fuzz (real pools, the OpenAPI document's
# routes, documents as the emulator writes them) write them on start when
# SHADOWLUN_FUZZ_SEEDS names a directory, so the seeds follow today's formats.
# A panic, a memory error, a leak or one allocation above 64 MiB (a length taken from the
# input unchecked) fails the stage; the input that did it is kept in fuzz/artifacts/<target>/
# and replays with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` (from fuzz/).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-12}
new_secs=${FUZZ_NEW_SECONDS:-6}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# cargo-fuzz builds with -Z flags (sanitizer, coverage instrumentation); this lets the
# machine's stable toolchain accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
# Memory that live threads reach only through thread-local storage is not reported as a leak
# (fuzz/lsan.supp says which); connection threads that outlive their clients are caught by
# the session target itself.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

# Sixteen codegen units instead of cargo-fuzz's one, so LLVM works on the large crates (the
# array, the emulator and the lab under AddressSanitizer) on every core at once; inputs run
# slightly slower. `cargo fuzz run` takes the same flags, or it would build everything again.
build=(--codegen-units 16)
# Optimized at level 1 rather than 3 for this short sample: on 2 cores the build takes 406 s
# against 518 s, and inputs run at 80-85% of the level-3 rate (pdu, control_api, session,
# 8 s each from the same corpus). Long runs ask for level 3 (FUZZ_OPT_LEVEL=3, docs/fuzzing.md).
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${FUZZ_OPT_LEVEL:-1}"
cd fuzz
cargo fuzz build "${build[@]}"
fail=0
for t in $(cargo fuzz list); do
  log=$(mktemp)
  case $t in
    pdu | scsi_commands | session) s=$secs ;;
    *) s=$new_secs ;;
  esac
  dirs=("corpus/$t" "corpus/$t.seeds")
  mkdir -p "corpus/$t" "corpus/$t.seeds"
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  [ "$t" = diskshadow ] && dirs+=("../examples/vss")
  if SHADOWLUN_FUZZ_SEEDS="$PWD/corpus/$t.seeds" cargo fuzz run "${build[@]}" "$t" "${dirs[@]}" -- \
      -max_total_time="$s" -malloc_limit_mb=64 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    echo "fuzz $t: ${runs:-?} inputs in ${s}s, no failure (${cov:-cov: ?} edges)"
  else
    grep -E -A6 -m1 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" || tail -20 "$log"
    grep -E '^SUMMARY|Test unit written' "$log" || true
    echo "fuzz $t FAILED; input kept in fuzz/artifacts/$t/"
    fail=1
  fi
  rm -f "$log"
done
exit $fail
