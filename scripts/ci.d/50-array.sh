#!/usr/bin/env bash
# Array daemon (about a minute):
#  1. the real-process tests: kill -9 between and during set steps, LUN masking and identity
#     over iSCSI, CHAP;
#  2. the daemon example started from a TOML file: LUN, host and mapping made over HTTPS with
#     curl pinned to the certificate's public key, then libiscsi's iscsi-ls / iscsi-inq must see
#     the LUN (with the serial the API reported) from the host's initiator with its CHAP secret,
#     nothing without the secret and nothing from a stranger (whose refusal is logged); the audit
#     trail holds the changes and no secret; SIGTERM must stop the daemon cleanly.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v iscsi-ls >/dev/null || need+=(libiscsi-bin)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo test -q -p array --test crash --test iscsi

cargo build -q -p array --example serve
bin="${CARGO_TARGET_DIR:-target}/debug/examples/serve"

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/array.toml" <<TOML
pool_dir = "$work/pool"
api_listen = "127.0.0.1:0"
iscsi_portals = ["127.0.0.1:0"]
TOML
(umask 022; RUST_LOG=debug exec "$bin" "$work/array.toml") > "$work/out" 2> "$work/log" &
pid=$!
for _ in $(seq 100); do grep -q "iSCSI portal" "$work/out" 2>/dev/null && break; sleep 0.1; done
api=$(sed -n 's/^shadowlun array: API //p' "$work/out")
portal=$(sed -n 's/^shadowlun array: iSCSI portal //p' "$work/out")
[ -n "$api" ] && [ -n "$portal" ] || { cat "$work/log"; echo "daemon did not start"; exit 1; }
if grep -q "$(cat "$work/pool/admin.token")" "$work/out" "$work/log"; then
  echo "the admin token appeared in the daemon's output"; exit 1
fi

pin="sha256//$(openssl x509 -in "$work/pool/tls/cert.pem" -pubkey -noout \
  | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)"
call() { # METHOD PATH [JSON]
  curl -sS --fail-with-body -k --pinnedpubkey "$pin" -X "$1" \
    -H "Authorization: Bearer $(cat "$work/pool/admin.token")" \
    -H 'Content-Type: application/json' ${3:+--data "$3"} "$api$2"
}
host_iqn=iqn.2026-01.org.shadowlun:ci-host
lun=$(call POST /v1/admin/luns '{"name":"ci","size_bytes":67108864}')
lun_id=$(jq -r .id <<<"$lun")
serial=$(jq -r .serial <<<"$lun")
chap=ci-chap-secret1
host_token=$(call POST /v1/admin/hosts \
  "{\"name\":\"ci\",\"initiators\":[\"$host_iqn\"],\"chap_secret\":\"$chap\"}" | jq -r .token)
call POST /v1/admin/hosts/ci/map "{\"lun\":\"$lun_id\"}" >/dev/null
# An unauthenticated call is refused with a problem document.
code=$(curl -s -k --pinnedpubkey "$pin" -o "$work/p.json" -w '%{http_code}' "$api/v1/admin/luns")
[ "$code" = 401 ] && [ "$(jq -r .code "$work/p.json")" = unauthorized ] || { echo "401 expected, got $code"; exit 1; }

# The pool's own target name, made with its array id when the pool was first used.
target=$(jq -r .target_name "$work/pool/array.json")
[[ "$target" == iqn.2026-01.org.shadowlun:array-* ]] || { echo "target name $target carries no array id"; exit 1; }
[ "$(stat -c %a "$work/pool/array.json")" = 600 ] && [ "$(stat -c %a "$work/pool")" = 700 ] ||
  { echo "the pool directory or its identity file is readable by others"; exit 1; }
# The host has a CHAP secret, so its initiator name alone does not get it in.
no_chap=$(timeout --foreground 20 iscsi-ls -i "$host_iqn" -s "iscsi://$portal" 2>&1 || true)
if grep -q "Lun:" <<<"$no_chap"; then echo "$no_chap"; echo "the host logged in without its CHAP secret"; exit 1; fi
ls_out=$(timeout --foreground 20 iscsi-ls -i "$host_iqn" -s "iscsi://$host_iqn%$chap@$portal" 2>&1 || true)
grep -q "Lun:0" <<<"$ls_out" || { echo "$ls_out"; echo "the host's initiator does not see its LUN"; exit 1; }
inq=$(timeout --foreground 20 iscsi-inq -i "$host_iqn" -e 1 -c 128 "iscsi://$host_iqn%$chap@$portal/$target/0" 2>&1)
grep -q "$serial" <<<"$inq" || { echo "$inq"; echo "serial $serial not served"; exit 1; }
stranger=$(timeout --foreground 20 iscsi-ls -i iqn.2026-01.org.shadowlun:stranger -s "iscsi://$portal" 2>&1 || true)
if grep -q "Lun:" <<<"$stranger"; then echo "$stranger"; echo "a stranger sees LUNs"; exit 1; fi

# A stranger's login to the target is refused, and the log says so with its address.
if timeout --foreground 20 iscsi-inq -i iqn.2026-01.org.shadowlun:stranger \
  "iscsi://$portal/$target/0" >/dev/null 2>&1; then echo "a stranger logged in to the target"; exit 1; fi
grep -q "iSCSI login refused.*stranger\|stranger.*iSCSI login refused" "$work/log" ||
  { tail -50 "$work/log"; echo "the stranger's refused login was not logged"; exit 1; }
# The audit trail has the changes made above, by the admin, with the CHAP secret shown as set.
audit=$(call GET /v1/admin/audit)
[ "$(jq -r '[.[].action] | join(",")' <<<"$audit")" = "lun create,host add,host map" ] &&
  [ "$(jq -r '.[1].details.chap_secret' <<<"$audit")" = set ] &&
  [ "$(jq -r '[.[].who] | unique | join(",")' <<<"$audit")" = admin ] ||
  { echo "$audit"; echo "the audit trail does not hold the changes"; exit 1; }

# Every file in the pool is private to the daemon's user, whatever the umask it started with.
loose=$(find "$work/pool" \( -type f ! -perm 600 \) -o \( -type d ! -perm 700 \))
[ -z "$loose" ] || { ls -la $loose; echo "files in the pool are readable by others"; exit 1; }

kill -TERM "$pid"
status=0; wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || { cat "$work/log"; echo "daemon exited with $status on SIGTERM"; exit 1; }
grep -q "array stopped" "$work/log" || { cat "$work/log"; echo "no clean stop"; exit 1; }
if grep -q $'\e\[' "$work/log"; then echo "colour codes in a log written to a file"; exit 1; fi
for secret in "$(cat "$work/pool/admin.token")" "$host_token" "$chap"; do
  if grep -qF "$secret" "$work/out" "$work/log" "$work/pool/audit.log"; then
    echo "a secret appeared in the daemon's log or its audit trail"; exit 1
  fi
done
echo "array: ok"
