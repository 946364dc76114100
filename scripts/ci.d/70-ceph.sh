#!/usr/bin/env bash
# Ceph (about 13 minutes on two cores with a warm build): installs Ceph, starts a throwaway
# single-node cluster (scripts/ceph-lab) and runs on it:
#  1. the rbd crate's tests (librbd through the project's own layer, the rbd CLI as witness);
#  1b. the gateways crate's: the shared state in RADOS between separate connections and
#     processes: a stale commit refused, notify and poll, a paused or killed leader replaced
#     after its lease and fenced, concurrent updates, a dead member's lease expiring, a paused
#     member fenced through the leader's roster, a leader cut off from the cluster stepping
#     down at its lease's end (about 40 s: that case starts a lab of its own);
#  1c. the gateways crate's LUN owners: three gateway processes, the leader's steward spreading
#     units, a killed owner fenced before its units move, a killed leader replaced, a gateway
#     back taking its share, a drain (about 15 s);
#  2. the storage conformance suite on the rbd backend, then its naming, stranger, delete and
#     resync cases;
#  3. the array daemon with `[backend] kind = "rbd"`: a LUN made over the API is an image
#     named from the array id; libiscsi's iscsi-test-cu, iSCSI and SCSI families, on it
#     through the daemon's target; after the LUN is deleted `rbd ls` shows nothing of it and
#     an image someone else made in the pool is still there;
#  4. the array on rbd in process (crates/array/tests/rbd.rs): the caching page and librbd's
#     flush counted for FUA and SYNCHRONIZE CACHE, a source image deleted behind the array's
#     back, a mapped LUN whose image is deleted (NOT READY 02/04/03, another LUN serving),
#     a missing pool and an unreachable cluster at start;
#  5. the daemon killed with SIGKILL on rbd (crates/array/tests/crash.rs): between every set
#     step, and during a burst of commits at three sampled points, then restarted;
#  5b. sets the array takes by itself (crates/array/tests/admin_sets.rs): the target fences
#     writes so a set across two images is one instant; and a full pool on a lab cluster of
#     the test's own (crates/array/tests/rbd_full.rs): 07/27/07 for a durable write, no-space
#     for a new LUN and for a start that must write, writes on again once there is room;
#  6. the demo as a user runs it, `shadowlun demo --backend rbd`, a process on this cluster
#     (crates/shadowlun/tests/demo_rbd.rs): every check passes, `rbd ls` then shows none of
#     its images and an image made before it; and a demo that started its own cluster,
#     interrupted with SIGINT, leaves no daemon of it;
#     The same test binary runs `shadowlun demo --gateways 2` (about 10 s);
#  6b. two gateways of one array (crates/shadowlun/tests/gateways_rbd.rs): the standby's
#     Standby paths and relayed control API, the serving one killed with SIGKILL under an
#     MPIO writer, the standby fences it, its paths turn Active/Optimized and serve the same
#     LUNs with every acknowledged write; persistent reservations made through either
#     gateway survive the takeover; a clean stop hands over at once; a stopped standby never
#     serves; a drain under the MPIO writer hands over with no I/O error (about 45 s); and
#     (crates/shadowlun/tests/gateways_sets_rbd.rs) a VSS snapshot set whose gateway is
#     killed completes through the next, or is aborted there leaving nothing (about 40 s);
#     and (crates/shadowlun/tests/gateways_partition_rbd.rs, root: a network namespace and
#     a lab cluster of its own on a link to it) the serving gateway cut off from the cluster
#     stands down before the other takes office (about 30 s);
#  6c. libiscsi's reservation suites (both initiators) through a daemon with [gateway], whose
#     reservations are kept in the array's shared state in RADOS (the row is checked);
#  7. the VSS conformance catalogue with every scenario's array on rbd (each must pass),
#     sampled: a third of the scenarios per run (every third one, from the first, second or
#     third: `vss conformance --part K/3`, K from the commit count, scripts/ci-part), so three
#     consecutive commits run it all; the whole catalogue runs on every commit against the
#     daemon on the embedded engine in 10-rust. Then `rbd ls` must show only the stranger's
#     image;
# then stops the cluster (only the daemons it started).
set -euo pipefail
cd "$(dirname "$0")/../.."

bash scripts/setup --ceph
need=()
command -v iscsi-test-cu >/dev/null || need+=(libiscsi-bin)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build -q -p array --example serve
cargo build -q -p shadowlun
cargo test -q -p rbd --no-run
cargo test -q -p gateways --no-run
cargo test -q -p storage --test rbd --no-run
cargo test -q -p array --test rbd --test crash --test admin_sets --test rbd_full --no-run
cargo test -q -p shadowlun --test demo_rbd --no-run
cargo test -q -p shadowlun --test gateways_rbd --test gateways_sets_rbd --test gateways_partition_rbd --no-run
bin="${CARGO_TARGET_DIR:-target}/debug/examples/serve"

work=$(mktemp -d)
lab="$work/lab"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  bash scripts/ceph-lab stop "$lab" || true
  rm -rf "$work"
}
trap cleanup EXIT

eval "$(bash scripts/ceph-lab start "$lab")"
export CEPH_CONF SHADOWLUN_REQUIRE_CEPH=1

echo "== the rbd crate"
cargo test -q -p rbd
# Several gateways' shared state: guarded commits, watch/notify, leader lock, fencing, leases.
echo "== the gateways crate: shared state, leader and members in RADOS"
cargo test -q -p gateways
echo "== the storage conformance suite on the rbd backend"
cargo test -q -p storage --test rbd

echo "== the array on rbd"
rbd create --size 4M rbd/stranger
cat >"$work/array.toml" <<TOML
pool_dir = "$work/pool"
api_listen = "127.0.0.1:0"
iscsi_portals = ["127.0.0.1:0"]

[backend]
kind = "rbd"
pool = "rbd"
ceph_conf = "$CEPH_CONF"
TOML
# serve TOML NAME: starts the daemon on TOML (output in $work/NAME.out and .log) and sets
# pid, api, portal and the pool directory `pooldir` that `call` takes the admin token from.
serve() {
  RUST_LOG=info "$bin" "$1" >"$work/$2.out" 2>"$work/$2.log" &
  pid=$!
  for _ in $(seq 300); do grep -q "iSCSI portal" "$work/$2.out" 2>/dev/null && break; sleep 0.1; done
  api=$(sed -n 's/^shadowlun array: API //p' "$work/$2.out")
  portal=$(sed -n 's/^shadowlun array: iSCSI portal //p' "$work/$2.out")
  pooldir=$(sed -n 's/^pool_dir = "\(.*\)"$/\1/p' "$1")
  [ -n "$api" ] && [ -n "$portal" ] || { tail -20 "$work/$2.log"; echo "$2 did not start"; exit 1; }
}
call() { # METHOD PATH [JSON]
  curl -sS --fail-with-body -k -X "$1" -H "Authorization: Bearer $(cat "$pooldir/admin.token")" \
    -H 'Content-Type: application/json' ${3:+--data "$3"} "$api$2"
}
# lun_for_libiscsi NAME BYTES: a LUN mapped to libiscsi's two initiators; sets lun_id.
i1=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test
i2=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2
lun_for_libiscsi() {
  lun_id=$(call POST /v1/admin/luns "{\"name\":\"$1\",\"size_bytes\":$2}" | jq -r .id)
  call POST /v1/admin/hosts "{\"name\":\"cu\",\"initiators\":[\"$i1\",\"$i2\"]}" >/dev/null
  call POST /v1/admin/hosts/cu/map "{\"lun\":\"$lun_id\"}" >/dev/null
}
serve "$work/array.toml" daemon
lun_for_libiscsi ci 134217728
array_id=$(jq -r .array_id "$work/pool/array.json")
target=$(jq -r .target_name "$work/pool/array.json")
images=$(rbd ls rbd)
grep -qx "sl-.*-$lun_id" <<<"$images" || { echo "$images"; echo "no image for $lun_id (array $array_id)"; exit 1; }

fail=0
for fam in iSCSI SCSI; do
  log="$work/cu-$fam.log"
  timeout --foreground 900 iscsi-test-cu --dataloss -i "$i1" -I "$i2" --test="$fam" \
    "iscsi://$portal/$target/0" >"$log" 2>&1 || true
  summary=$(grep -E '^ +tests ' "$log" | tail -1 || true)
  [ -n "$summary" ] || { tail -20 "$log"; echo "iscsi-test-cu $fam did not finish"; exit 1; }
  echo "$fam: $summary"
  failed=$(awk '/^Suite: / { suite=$2 } /^  Test: / { name=$2 }
    /FAILED$/ && name != "" { print suite "." name; name="" }' "$log" | sort -u)
  if [ -n "$failed" ]; then echo "$failed" | sed 's/^/FAILED: /'; fail=1; fi
done
[ $fail -eq 0 ] || { echo "iscsi-test-cu failures on the RBD LUN"; exit 1; }

call DELETE "/v1/admin/hosts/cu/map/$lun_id" >/dev/null
call DELETE "/v1/admin/luns/$lun_id" >/dev/null
images=$(rbd ls rbd)
[ "$images" = stranger ] || { echo "$images"; echo "after the delete, rbd ls shows more than the stranger's image"; exit 1; }
kill -TERM "$pid"; wait "$pid" || true; pid=""

echo "== libiscsi's reservation suites through a gateway (its reservations kept in RADOS)"
# The same referee on the path several gateways take: with [gateway], each PERSISTENT
# RESERVE OUT's change is made durable in the array's shared state before it completes.
rbd namespace create rbd/prgw
sed -e "s|^pool_dir = .*|pool_dir = \"$work/pool-gw\"|" "$work/array.toml" >"$work/gw.toml"
printf 'namespace = "prgw"\n[gateway]\nname = "ci-gw"\n' >>"$work/gw.toml"
serve "$work/gw.toml" gateway
lun_for_libiscsi ci-pr 67108864
target=$(jq -r .target_name "$work/pool-gw/array.json")
# Every reservation suite this libiscsi has (PERSISTENT RESERVE IN and OUT, RESERVE(6)), from
# its own list, so a newer libiscsi's suites run too.
pr_suites=$(iscsi-test-cu -l 2>/dev/null | sed -nE 's/^SCSI\.(Pr(in|out)[A-Za-z0-9]*|Reserve6)$/\1/p')
[ "$(wc -w <<<"$pr_suites")" -ge 8 ] || { echo "$pr_suites"; echo "iscsi-test-cu lists too few reservation suites"; exit 1; }
for t in $pr_suites; do
  log="$work/cu-gw-$t.log"
  timeout --foreground 300 iscsi-test-cu --dataloss -i "$i1" -I "$i2" --test="SCSI.$t" \
    "iscsi://$portal/$target/0" >"$log" 2>&1 || true
  summary=$(grep -E '^ +tests ' "$log" | tail -1 || true)
  echo "$t: $summary"
  read -r _ total ran passed failed _ <<<"$summary"
  [ -n "$summary" ] && [ "$ran" -gt 0 ] && [ "$failed" = 0 ] && [ "$passed" = "$ran" ] ||
    { tail -30 "$log"; echo "iscsi-test-cu SCSI.$t through a gateway failed"; exit 1; }
done
state="shadowlun.$(jq -r .array_id "$work/pool-gw/array.json").state"
rados -p rbd -N prgw listomapkeys "$state" | grep -qx "state.array.pr.$lun_id" ||
  { echo "no reservations row for $lun_id in $state"; exit 1; }
kill -TERM "$pid"; wait "$pid" || true; pid=""

echo "== the array on rbd: write cache, flushes, a deleted source or mapped LUN image, a missing pool or cluster"
cargo test -q -p array --test rbd
echo "== kill -9 of the daemon on rbd"
cargo test -q -p array --test crash -- on_rbd
echo "== sets the array takes by itself on rbd: writes fenced in the target, one instant across images"
cargo test -q -p array --test admin_sets -- on_rbd
echo "== a full pool on a lab of the test's own: no space, with the reason"
cargo test -q -p array --test rbd_full

echo "== the demo on rbd"
t0=$(date +%s)
cargo test -q -p shadowlun --test demo_rbd -- --nocapture
echo "demo on rbd: $(($(date +%s) - t0)) s"

echo "== two gateways of one array on rbd: a takeover after SIGKILL, a clean handover, a drain, sets"
cargo test -q -p shadowlun --test gateways_rbd --test gateways_sets_rbd -- --nocapture
echo "== a gateway cut off from the cluster (its own lab cluster on a link in a network namespace)"
SHADOWLUN_REQUIRE_NETNS=1 cargo test -q -p shadowlun --test gateways_partition_rbd -- --nocapture

echo "== the VSS conformance catalogue on rbd (a third of it, by the commit)"
t0=$(date +%s)
part="$(bash scripts/ci-part 3)/3"
timeout --foreground 1800 "${CARGO_TARGET_DIR:-target}/debug/shadowlun" vss conformance \
  --lab array --backend rbd --part "$part"
echo "catalogue on rbd: $(($(date +%s) - t0)) s"
images=$(rbd ls rbd)
[ "$images" = stranger ] || { echo "$images"; echo "after the catalogue, rbd ls shows more than the stranger's image"; exit 1; }
rbd rm --no-progress rbd/stranger
echo "ceph: ok"
