#!/usr/bin/env bash
# iSCSI referees (about a minute):
#  1. libiscsi's conformance suite (iscsi-test-cu), iSCSI and SCSI families, against the
#     target serving a file LUN through scsi::Target, and the block command suites against
#     a file LUN with direct I/O (O_DIRECT);
#  2. iscsi-ls / iscsi-inq see exactly the identity and LUN masking configured, and the
#     target port group the array serves too (TPGS 1, a target port group designator);
#  2b. one target on three portals, each its own target port and port group, the third
#     Standby: libiscsi's MultipathIO suite across the first two, iscsi-inq's view of each
#     port, QEMU refused the medium through the Standby one (a few seconds);
#  3. QEMU's iSCSI driver (qemu-img, qemu-io, installed by scripts/setup): capacity, bytes,
#     allocation map (GET LBA STATUS), discard (UNMAP), write-zeroes (WRITE SAME), header
#     digests, each checked on the LUN and in the backing file; the direct I/O LUN read and
#     written with its file left out of the page cache;
#  4. the crate's initiator against tgt.
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
# The direct I/O LUN's file lives on the build's disk (a tmpfs has no O_DIRECT to test).
mkdir -p "${CARGO_TARGET_DIR:-target}"
direct_dir=$(mktemp -d -p "${CARGO_TARGET_DIR:-target}")
serve_pid=""
mp_pid=""
cleanup() {
  for p in "$serve_pid" "$mp_pid"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
  rm -rf "$work" "$direct_dir"
}
trap cleanup EXIT

tgt_name=iqn.2026-01.org.shadowlun:ci
i1=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test
i2=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2
only0=iqn.2026-01.org.shadowlun:only-lun0
nobody=iqn.2026-01.org.shadowlun:nobody
qemu=iqn.2026-01.org.shadowlun:qemu

# The portal binds a free port, read back from what serve prints (a port picked beforehand
# could be taken by then).
"$bin" --portal "127.0.0.1:0" --target "$tgt_name" --serial-prefix CI --port-group 1 \
  --initiator "$i1" --initiator "$i2" \
  --lun "0:file:$work/lun0.img:64" --lun 1:mem:16 --lun "2:direct:$direct_dir/lun2.img:16" \
  --map "0=$i1,$i2,$only0,$qemu" --map "1=$i1,$i2,$qemu" --map "2=$i1,$i2,$qemu" \
  >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/serve.out" || { cat "$work/serve.err"; echo "target did not start"; exit 1; }
port=$(awk '/^listening on / { sub(/.*:/, "", $3); print $3; exit }' "$work/serve.out")
url="iscsi://127.0.0.1:$port/$tgt_name"
lc() { timeout --foreground 60 "$@"; }

echo "== identity and masking"
inq=$(lc iscsi-inq -i "$i1" "$url/0")
grep -q '^Vendor:SHADOWLN$' <<<"$inq" || { echo "$inq"; echo "wrong vendor"; exit 1; }
grep -q '^Product:shadowlun LUN' <<<"$inq" || { echo "$inq"; echo "wrong product"; exit 1; }
grep -qx 'Unit Serial Number:\[CI0000\]' <<<"$(lc iscsi-inq -i "$i1" -e 1 -c 128 "$url/0")" || { echo "wrong serial of LUN 0"; exit 1; }
grep -qx 'Unit Serial Number:\[CI0001\]' <<<"$(lc iscsi-inq -i "$i1" -e 1 -c 128 "$url/1")" || { echo "wrong serial of LUN 1"; exit 1; }
# The port is in target port group 1 (--port-group 1): implicit asymmetric access.
grep -qx 'TPGS:1' <<<"$inq" || { echo "$inq"; echo "TPGS is not 1"; exit 1; }
vpd83=$(lc iscsi-inq -i "$i1" -e 1 -c 131 "$url/0")
awk '/Association:\(1\) TARGET_PORT$/ { tp = 1; next } tp && /Designator Type:\(5\) TARGET_PORT_GROUP/ { found = 1 } { tp = 0 } END { exit !found }' <<<"$vpd83" ||
  { echo "$vpd83"; echo "no target port group designator in VPD 0x83"; exit 1; }
ls_all=$(lc iscsi-ls -s -i "$i1" "iscsi://127.0.0.1:$port")
[ "$(grep -c '^Lun:' <<<"$ls_all")" -eq 3 ] || { echo "$ls_all"; echo "$i1 must see LUNs 0, 1 and 2"; exit 1; }
ls_one=$(lc iscsi-ls -s -i "$only0" "iscsi://127.0.0.1:$port")
grep -q '^Lun:0 ' <<<"$ls_one" && ! grep -q '^Lun:1 ' <<<"$ls_one" || { echo "$ls_one"; echo "$only0 must see LUN 0 only"; exit 1; }
ls_none=$(lc iscsi-ls -s -i "$nobody" "iscsi://127.0.0.1:$port")
[ -z "$ls_none" ] || { echo "$ls_none"; echo "$nobody must see no target"; exit 1; }
echo "identity and masking ok"

echo "== QEMU's iSCSI driver (qemu-img, qemu-io)"
command -v qemu-io >/dev/null && dpkg-query -W -f='${Status}' qemu-block-extra 2>/dev/null | grep -q 'ok installed' ||
  { echo "qemu-io or its iSCSI driver (qemu-block-extra) is missing: run scripts/setup"; exit 1; }
# QEMU reads the capacity, the block limits and LBPRZ, maps allocation with GET LBA STATUS,
# discards with UNMAP and writes zeroes with WRITE SAME; each result is checked on the LUN
# and in the backing file. LUN 0 is a fresh sparse file, LUN 1 memory.
qimg() { # LUN [header-digest]
  echo "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:$port,file.target=$tgt_name,file.lun=$1,file.initiator-name=$qemu,file.header-digest=${2:-none}"
}
fail_qemu() { echo "QEMU: $*"; exit 1; }
qio() { # LUN COMMAND... ; fails on any error or pattern mismatch
  local lun=$1 out; shift
  local args=(); for c in "$@"; do args+=(-c "$c"); done
  out=$(lc qemu-io --image-opts "$(qimg "$lun")" "${args[@]}" 2>&1) || fail_qemu "qemu-io $*: $out"
  if grep -qiE 'fail|error' <<<"$out"; then fail_qemu "qemu-io $*: $out"; fi
}
size0=$(lc qemu-img info --output=json --image-opts "$(qimg 0)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
[ "$size0" -eq $((64 << 20)) ] || fail_qemu "LUN 0 has $size0 bytes, not 64 MiB"
qio 0 "write -P 0xab 1M 64k" "write -P 0xcd 8M 1M" "read -P 0xab 1M 64k" "read -P 0xcd 8M 1M" "read -P 0 0 1M"
qmap() { lc qemu-img map --output=json --image-opts "$(qimg 0)" |
  python3 -c 'import json,sys; print(" ".join("%d+%d" % (e["start"], e["length"]) for e in json.load(sys.stdin) if e["data"]))'; }
# The backing file's bytes and holes, independently of the target.
file_check() { # OFFSET LENGTH BYTE DATA|HOLE
  python3 - "$work/lun0.img" "$@" <<'PY' || fail_qemu "backing file: $*"
import os, sys
path, off, n, byte, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0), sys.argv[5]
fd = os.open(path, os.O_RDONLY)
assert os.pread(fd, n, off) == bytes([byte]) * n, "bytes differ"
data = os.lseek(fd, off, os.SEEK_DATA) if os.path.getsize(path) > off else None
assert (data == off) if kind == "DATA" else (data is None or data >= off + n), f"{kind} expected, data at {data}"
PY
}
got=$(qmap); [ "$got" = "1048576+65536 8388608+1048576" ] || fail_qemu "map after writes: $got"
file_check $((1 << 20)) 65536 0xab DATA
file_check $((8 << 20)) $((1 << 20)) 0xcd DATA
qio 0 "discard 8M 512k" "read -P 0 8M 512k" "read -P 0xcd 8704k 512k"
file_check $((8 << 20)) $((512 << 10)) 0 HOLE
got=$(qmap); [ "$got" = "1048576+65536 8912896+524288" ] || fail_qemu "map after discard: $got"
qio 0 "write -z -u 1M 64k" "read -P 0 1M 64k"
file_check $((1 << 20)) 65536 0 HOLE
got=$(qmap); [ "$got" = "8912896+524288" ] || fail_qemu "map after write-zeroes with unmap: $got"
lc qemu-img convert --image-opts "$(qimg 0)" -O raw "$work/lun0.copy" || fail_qemu "convert from LUN 0"
cmp "$work/lun0.copy" "$work/lun0.img" || fail_qemu "LUN 0 read by qemu-img differs from its backing file"
head -c 16M /dev/urandom >"$work/in.raw"
lc qemu-img convert -n -f raw "$work/in.raw" --target-image-opts "$(qimg 1 crc32c)" || fail_qemu "convert to LUN 1"
lc qemu-img compare --image-opts "driver=raw,file.filename=$work/in.raw" "$(qimg 1 crc32c)" >/dev/null || fail_qemu "LUN 1 differs from what qemu-img wrote"
# The direct I/O LUN: what qemu-img writes is in the file, reads back equal, and none of
# it passes through the page cache (fincore counts the file's cached pages).
lc qemu-img convert -n -f raw "$work/in.raw" --target-image-opts "$(qimg 2)" || fail_qemu "convert to LUN 2"
cmp "$work/in.raw" "$direct_dir/lun2.img" || fail_qemu "LUN 2's file differs from what qemu-img wrote"
lc qemu-img compare --image-opts "driver=raw,file.filename=$work/in.raw" "$(qimg 2 crc32c)" >/dev/null || fail_qemu "LUN 2 differs from what qemu-img wrote"
python3 - "$direct_dir/lun2.img" <<'PY' || fail_qemu "could not drop LUN 2's file from the page cache"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
PY
lc qemu-img compare --image-opts "driver=raw,file.filename=$work/in.raw" "$(qimg 2)" >/dev/null || fail_qemu "LUN 2 differs on a second read"
pages=$(fincore --noheadings --output PAGES "$direct_dir/lun2.img")
[ "$pages" -eq 0 ] || fail_qemu "LUN 2 (direct I/O) left $pages pages of its file in the page cache"
echo "QEMU ok"

# Runs one family or suite against LUN URL $4 (default LUN 0); writes the names of failed
# tests to $3.
run_cu() {
  local spec=$1 log=$2 out=$3 lun_url=${4:-$url/0}
  timeout --foreground 900 iscsi-test-cu --dataloss -i "$i1" -I "$i2" --test="$spec" "$lun_url" >"$log" 2>&1 || true
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
# The block command suites again, on the direct I/O LUN.
echo "== the block command suites on LUN 2 (O_DIRECT)"
for suite in Read10 Read16 Write10 Write16 WriteVerify16 Verify16 WriteSame16 Unmap CompareAndWrite; do
  run_cu "SCSI.$suite" "$work/cu-direct-$suite.log" "$work/failed-direct-$suite" "$url/2"
  while read -r t; do
    [ -n "$t" ] || continue
    echo "FAILED on the direct I/O LUN: $t"; fail=1
  done <"$work/failed-direct-$suite"
done
[ $fail -eq 0 ] || { echo "iscsi-test-cu failures above"; exit 1; }

echo "== several target ports: MultipathIO"
# One process serves the target on three portals, each its own target port (relative port,
# portal group tag and target port group 1, 2, 3); LUN 0 is Standby in group 3, LUN 1 in
# groups 2 and 3. Each portal binds a free port, read back from what serve prints.
mp_name=iqn.2026-01.org.shadowlun:ci-mpath
"$bin" --target "$mp_name" --portal "127.0.0.1:0=1" --portal "127.0.0.1:0=2" \
  --portal "127.0.0.1:0=3" --access 3=standby --access 1:2=standby \
  --initiator "$i1" --initiator "$i2" --initiator "$qemu" --lun 0:mem:16 --lun 1:mem:1 \
  >"$work/mp.out" 2>"$work/mp.err" &
mp_pid=$!
for _ in $(seq 100); do [ "$(grep -c listening "$work/mp.out" 2>/dev/null)" -eq 3 ] && break; sleep 0.1; done
[ "$(grep -c listening "$work/mp.out")" -eq 3 ] || { cat "$work/mp.err"; echo "multiport target did not start"; exit 1; }
for n in 1 2 3; do
  a=$(awk -v n="$n" '$0 ~ "relative target port " n "," { print $3 }' "$work/mp.out")
  [ -n "$a" ] || { cat "$work/mp.out"; echo "no portal of port $n"; exit 1; }
  eval "mp$n=\$a"
done
mpurl() { echo "iscsi://$1/$mp_name/${2:-0}"; }
# Each active port names itself in VPD 0x83: its SCSI name carries its portal group tag,
# and it has a relative target port and a target port group designator. (iscsi-inq prints
# a binary designator as a C string, so the identifiers' values, 00 00 00 0N, show empty;
# crates/iscsi/tests/multipath.rs asserts them byte for byte.)
for n in 1 2; do
  eval "p=\$mp$n"
  v=$(lc iscsi-inq -i "$i1" -e 1 -c 131 "$(mpurl "$p")")
  grep -qx "Designator:\[$mp_name,t,0x000$n\]" <<<"$v" || { echo "$v"; echo "port $n: no target port name with tag $n"; exit 1; }
  for d in '(4) RELATIVE_TARGET_PORT' '(5) TARGET_PORT_GROUP'; do
    grep -qF "Designator Type:$d" <<<"$v" || { echo "$v"; echo "port $n: no $d designator"; exit 1; }
  done
  grep -qx 'TPGS:1' <<<"$(lc iscsi-inq -i "$i1" "$(mpurl "$p")")" || { echo "port $n: TPGS is not 1"; exit 1; }
done
timeout --foreground 300 iscsi-test-cu --dataloss -i "$i1" -I "$i2" --test=SCSI.MultipathIO \
  "$(mpurl "$mp1")" "$(mpurl "$mp2")" >"$work/cu-mpath.log" 2>&1 || true
grep -q 'found matching LU device identifier for all (2) paths' "$work/cu-mpath.log" ||
  { tail -30 "$work/cu-mpath.log"; echo "MultipathIO did not see one logical unit on both paths"; exit 1; }
summary=$(grep -E '^ +tests ' "$work/cu-mpath.log" | tail -1 || true)
[ -n "$summary" ] || { tail -20 "$work/cu-mpath.log"; echo "MultipathIO did not finish"; exit 1; }
echo "SCSI.MultipathIO: $summary"
read -r _ total ran _ <<<"$summary"
[ "$ran" -eq "$total" ] && [ "$total" -ge 4 ] || { cat "$work/cu-mpath.log"; echo "MultipathIO ran $ran of $total tests"; exit 1; }
awk '/^  Test: / { name=$2 } /FAILED$/ && name != "" { print "SCSI.MultipathIO." name; name="" }' "$work/cu-mpath.log" |
  sort -u >"$work/failed-mpath"
while read -r t; do
  [ -n "$t" ] || continue
  known=0
  for k in "${KNOWN_NOT_APPLICABLE[@]}"; do [ "$t" = "$k" ] && known=1; done
  if [ $known -eq 1 ]; then echo "not applicable (documented): $t"; else echo "FAILED: $t"; fail=1; fi
done <"$work/failed-mpath"
[ $fail -eq 0 ] || { cat "$work/cu-mpath.log"; echo "MultipathIO failures above"; exit 1; }
# Through a Standby port the medium is refused: libiscsi's connection (iscsi-inq, QEMU)
# ends with the NOT READY, 04/0B of its first TEST UNIT READY; through an active port
# QEMU reads. The state is per LU: port 2 serves LUN 0 and refuses LUN 1.
mpq() { echo "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=$1,file.target=$mp_name,file.lun=${2:-0},file.initiator-name=$qemu"; }
qio_out=$(lc qemu-io --image-opts "$(mpq "$mp2")" -c "read 0 4k" 2>&1) && ! grep -qiE 'fail|error' <<<"$qio_out" ||
  fail_qemu "read through port 2: $qio_out"
for pl in "$mp3 0" "$mp2 1"; do
  read -r addr lun <<<"$pl"
  if out=$(lc qemu-io --image-opts "$(mpq "$addr" "$lun")" -c "read 0 4k" 2>&1); then fail_qemu "read of Standby LUN $lun through $addr: $out"; fi
  grep -q 'NOT READY.*0x040b' <<<"$out" || fail_qemu "Standby LUN $lun through $addr did not answer 04/0B: $out"
done
if out=$(lc iscsi-inq -i "$i1" "$(mpurl "$mp3")" 2>&1); then echo "$out"; echo "iscsi-inq connected through the Standby port"; exit 1; fi
grep -q 'NOT READY.*0x040b' <<<"$out" || { echo "$out"; echo "the Standby port did not answer 04/0B to iscsi-inq"; exit 1; }
kill "$mp_pid"; wait "$mp_pid" 2>/dev/null || true; mp_pid=""
echo "several target ports ok"

echo "== initiator against tgt"
cargo test -q -p lab --test tgt_interop -- --ignored
cargo test -q -p lab --test array_bench -- --ignored
echo "iscsi referees passed"
