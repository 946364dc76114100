#!/usr/bin/env bash
# iSCSI referees (about a minute):
#  1. libiscsi's conformance suite (iscsi-test-cu), iSCSI and SCSI families, against the
#     target serving a file LUN through scsi::Target;
#  2. iscsi-ls / iscsi-inq see exactly the identity and LUN masking configured;
#  3. the crate's initiator against tgt.
# Tests that do not apply are listed in KNOWN_NOT_APPLICABLE with the reason (also in
# docs/iscsi.md); every other test must pass.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v iscsi-test-cu >/dev/null || need+=(libiscsi-bin)
command -v tgtd >/dev/null || need+=(tgt)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Tests that do not apply to this target, each with its reason (none at present; keep
# docs/iscsi.md in step).
KNOWN_NOT_APPLICABLE=()

cargo build -q -p iscsi --example serve
bin="${CARGO_TARGET_DIR:-target}/debug/examples/serve"

work=$(mktemp -d)
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tgt_name=iqn.2026-01.org.shadowlun:ci
i1=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test
i2=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2
only0=iqn.2026-01.org.shadowlun:only-lun0
nobody=iqn.2026-01.org.shadowlun:nobody

"$bin" --portal "127.0.0.1:$port" --target "$tgt_name" --serial-prefix CI \
  --initiator "$i1" --initiator "$i2" \
  --lun "0:file:$work/lun0.img:64" --lun 1:mem:16 \
  --map "0=$i1,$i2,$only0" --map "1=$i1,$i2" \
  >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/serve.out" || { cat "$work/serve.err"; echo "target did not start"; exit 1; }
url="iscsi://127.0.0.1:$port/$tgt_name"
lc() { timeout --foreground 60 "$@"; }

echo "== identity and masking"
inq=$(lc iscsi-inq -i "$i1" "$url/0")
grep -q '^Vendor:SHADOWLN$' <<<"$inq" || { echo "$inq"; echo "wrong vendor"; exit 1; }
grep -q '^Product:shadowlun LUN' <<<"$inq" || { echo "$inq"; echo "wrong product"; exit 1; }
grep -qx 'Unit Serial Number:\[CI0000\]' <<<"$(lc iscsi-inq -i "$i1" -e 1 -c 128 "$url/0")" || { echo "wrong serial of LUN 0"; exit 1; }
grep -qx 'Unit Serial Number:\[CI0001\]' <<<"$(lc iscsi-inq -i "$i1" -e 1 -c 128 "$url/1")" || { echo "wrong serial of LUN 1"; exit 1; }
ls_all=$(lc iscsi-ls -s -i "$i1" "iscsi://127.0.0.1:$port")
[ "$(grep -c '^Lun:' <<<"$ls_all")" -eq 2 ] || { echo "$ls_all"; echo "$i1 must see LUNs 0 and 1"; exit 1; }
ls_one=$(lc iscsi-ls -s -i "$only0" "iscsi://127.0.0.1:$port")
grep -q '^Lun:0 ' <<<"$ls_one" && ! grep -q '^Lun:1 ' <<<"$ls_one" || { echo "$ls_one"; echo "$only0 must see LUN 0 only"; exit 1; }
ls_none=$(lc iscsi-ls -s -i "$nobody" "iscsi://127.0.0.1:$port")
[ -z "$ls_none" ] || { echo "$ls_none"; echo "$nobody must see no target"; exit 1; }
echo "identity and masking ok"

# Runs one family; writes the names of failed tests to $3.
run_cu() {
  local spec=$1 log=$2 out=$3
  timeout --foreground 900 iscsi-test-cu --dataloss -i "$i1" -I "$i2" --test="$spec" "$url/0" >"$log" 2>&1 || true
  local summary
  summary=$(grep -E '^ +tests ' "$log" | tail -1 || true)
  if [ -z "$summary" ]; then tail -20 "$log"; echo "iscsi-test-cu $spec did not finish"; exit 1; fi
  echo "$spec: $summary"
  # A test's FAILED may follow its "Test:" line after some log lines.
  awk -v fam="$spec" '
    /^Suite: / { suite=$2 }
    /^  Test: / { name=$2 }
    /FAILED$/ && name != "" { print fam "." suite "." name; name="" }
  ' "$log" | sort -u >"$out"
}

fail=0
for fam in iSCSI SCSI; do
  run_cu "$fam" "$work/cu-$fam.log" "$work/failed-$fam"
  while read -r t; do
    [ -n "$t" ] || continue
    known=0
    for k in "${KNOWN_NOT_APPLICABLE[@]}"; do [ "$t" = "$k" ] && known=1; done
    if [ $known -eq 1 ]; then echo "not applicable (documented): $t"; else echo "FAILED: $t"; fail=1; fi
  done <"$work/failed-$fam"
done
[ $fail -eq 0 ] || { echo "iscsi-test-cu failures above"; exit 1; }

echo "== initiator against tgt"
cargo test -q -p iscsi --test tgt_interop -- --ignored
echo "iscsi referees passed"
