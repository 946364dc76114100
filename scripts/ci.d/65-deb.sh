#!/usr/bin/env bash
# The Debian package (a few minutes; the release build of shadowlun is 60-demo's, reused):
#  1. built with cargo-deb (installed with cargo when missing), its control file, conffiles
#     and maintainer scripts checked;
#  2. installed with dpkg -i: the shadowlun system user, /etc/shadowlun/array.toml (0640
#     root:shadowlun), /var/lib/shadowlun (0700 shadowlun), /usr/bin/shadowlun runs;
#     `systemd-analyze verify` and `systemd-analyze security --offline` on the installed unit;
#  3. the array started from the package's own files. When systemd is PID 1: systemctl start,
#     is-active, then `shadowlun status`. Otherwise (a container): the installed binary as the
#     shadowlun user with the packaged configuration, under a NOTIFY_SOCKET this stage listens
#     on: READY=1 only once `shadowlun status` answers, STOPPING=1 and a clean exit on SIGTERM.
#     The stage says which of the two ran;
#  4. dpkg -r keeps the configuration and the pool; dpkg --purge removes the configuration and
#     keeps a pool that holds data, saying so.
# It installs the package system-wide, so it refuses to run on a machine that has a shadowlun
# installation it did not make itself, and removes everything it made when it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target_dir="${CARGO_TARGET_DIR:-$root/target}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
fail() { echo "65-deb: $*" >&2; exit 1; }

need=()
for p in systemd adduser openssl jq python3; do
  command -v "$p" >/dev/null || { [ "$p" = systemd ] && command -v systemd-analyze >/dev/null; } ||
    need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

# --- What this stage makes system-wide, and how it cleans up after itself.
marker=/var/lib/shadowlun/.made-by-65-deb
leftover() { [ -e /etc/shadowlun ] || [ -e /var/lib/shadowlun ] ||
  dpkg-query -W -f='${Status}' shadowlun 2>/dev/null | grep -q 'install ok'; }
made_user=0
getent passwd shadowlun >/dev/null || made_user=1
if leftover; then
  $SUDO test -e "$marker" ||
    fail "this machine has a shadowlun installation this stage did not make (/etc/shadowlun, /var/lib/shadowlun or the package); it installs and purges the package system-wide and will not touch that one"
  echo "65-deb: removing what an earlier run of this stage left"
  $SUDO dpkg --purge shadowlun >/dev/null 2>&1 || true
  $SUDO rm -rf /var/lib/shadowlun /etc/shadowlun
  made_user=1
fi
work=$(mktemp -d)
chmod 711 "$work"
pid=""
listener=""
cleanup() {
  if [ -n "$pid" ]; then $SUDO kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$listener" ]; then kill "$listener" 2>/dev/null || true; wait "$listener" 2>/dev/null || true; fi
  if [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm=)" = systemd ]; then
    $SUDO systemctl stop shadowlun-array 2>/dev/null || true
  fi
  $SUDO dpkg --purge shadowlun >/dev/null 2>&1 || true
  if $SUDO test -e "$marker"; then $SUDO rm -rf /var/lib/shadowlun; fi
  if [ "$made_user" = 1 ] && getent passwd shadowlun >/dev/null; then
    $SUDO deluser --quiet --system shadowlun >/dev/null 2>&1 || true
    getent group shadowlun >/dev/null && $SUDO delgroup --quiet --system shadowlun >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. Build.
cargo build --release -q -p shadowlun
cargo deb -p shadowlun --no-build --strip -q -o "$work/" >/dev/null
deb=$(ls "$work"/shadowlun_*.deb)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ "$(dpkg-deb -f "$deb" Package)" = shadowlun ] && [ "$(dpkg-deb -f "$deb" Version)" = "$version-1" ] ||
  fail "package name or version wrong: $(dpkg-deb -f "$deb" Package Version)"
dpkg-deb -f "$deb" Depends | grep -q adduser || fail "the package does not depend on adduser"
mkdir "$work/control"
dpkg-deb -e "$deb" "$work/control"
[ "$(cat "$work/control/conffiles")" = /etc/shadowlun/array.toml ] ||
  fail "conffiles: $(cat "$work/control/conffiles")"
for s in postinst prerm postrm; do [ -x "$work/control/$s" ] || fail "no $s script"; done
# Stopped on removal, restarted on upgrade only if running, never started on install.
grep -q 'deb-systemd-invoke stop shadowlun-array.service' "$work/control/prerm" ||
  fail "prerm does not stop the service on removal"
grep -q 'deb-systemd-invoke try-restart shadowlun-array.service' "$work/control/postinst" ||
  fail "postinst does not restart a running service on upgrade"
if grep -qE 'deb-systemd-invoke (start|restart) ' "$work/control/postinst"; then
  fail "postinst starts the service"
fi
unit_in_deb=$(dpkg-deb -c "$deb" | awk '{print $6}' | grep 'systemd/system/shadowlun-array.service$')
echo "65-deb: built $(basename "$deb") ($(du -h "$deb" | cut -f1)), unit at ${unit_in_deb#.}"

# --- 2. Install.
$SUDO dpkg -i "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i failed"; }
$SUDO touch "$marker"
# Not enabled (deb-systemd-helper makes the link even where systemd is not running), not running.
wants=/etc/systemd/system/multi-user.target.wants/shadowlun-array.service
[ ! -e "$wants" ] && [ ! -L "$wants" ] || fail "dpkg -i enabled the service ($wants)"
! pgrep -u shadowlun >/dev/null || fail "a process of user shadowlun runs after dpkg -i"
grep -q 'neither enabled nor started' "$work/install.log" || { cat "$work/install.log"; fail "postinst did not say how to start the array"; }
user=$(getent passwd shadowlun) || fail "no shadowlun user"
uid=$(cut -d: -f3 <<<"$user")
[ "$uid" -lt 1000 ] && [ "$(cut -d: -f7 <<<"$user")" = /usr/sbin/nologin ] &&
  [ "$(cut -d: -f6 <<<"$user")" = /var/lib/shadowlun ] || fail "shadowlun is not a system user without a shell: $user"
mode() { $SUDO stat -c '%a %U:%G' "$1"; }
[ "$(mode /etc/shadowlun)" = "750 root:shadowlun" ] || fail "/etc/shadowlun is $(mode /etc/shadowlun)"
[ "$(mode /etc/shadowlun/array.toml)" = "640 root:shadowlun" ] || fail "array.toml is $(mode /etc/shadowlun/array.toml)"
[ "$(mode /var/lib/shadowlun)" = "700 shadowlun:shadowlun" ] || fail "/var/lib/shadowlun is $(mode /var/lib/shadowlun)"
cmp -s /etc/shadowlun/array.toml crates/array/array.example.toml || fail "the packaged configuration is not array.example.toml"
# The configuration is where docs/array.md says.
grep -q '/etc/shadowlun/array.toml' docs/array.md || fail "docs/array.md does not name /etc/shadowlun/array.toml"
[ "$(/usr/bin/shadowlun --version)" = "shadowlun $version" ] || fail "shadowlun --version: $(/usr/bin/shadowlun --version)"
/usr/bin/shadowlun array serve --help | grep -q -- '--config' || fail "shadowlun array serve --help"
unit=$(dpkg -L shadowlun | grep 'systemd/system/shadowlun-array.service$')
# A stand-in network-online.target when the machine has none (containers); verify otherwise
# checks the unit as systemd would load it, ExecStart's binary included.
if ! systemd-analyze verify "$unit" >"$work/verify.log" 2>&1; then
  cat "$work/verify.log"; fail "systemd-analyze verify $unit"
fi
if [ -s "$work/verify.log" ]; then cat "$work/verify.log"; fail "systemd-analyze verify printed warnings"; fi
exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "the unit's exposure level is $exposure (more than 2.0)"
echo "65-deb: installed; user shadowlun ($uid), unit verified, exposure level $exposure"

# --- 3. The array from the package's files.
status_cli() { # the CLI as an administrator runs it on the array's machine, as root
  local fp
  fp=$($SUDO openssl x509 -in /var/lib/shadowlun/tls/cert.pem -noout -fingerprint -sha256 | sed 's/^.*=//')
  $SUDO /usr/bin/shadowlun status --json --array https://127.0.0.1:8443 --fingerprint "$fp" \
    --token-file /var/lib/shadowlun/admin.token
}
if [ "$(ps -p 1 -o comm=)" = systemd ] && [ -d /run/systemd/system ]; then
  echo "65-deb: systemd is PID 1: systemctl start shadowlun-array"
  $SUDO systemctl daemon-reload
  $SUDO timeout 120 systemctl start shadowlun-array || { $SUDO journalctl -u shadowlun-array --no-pager | tail -30; fail "systemctl start failed"; }
  [ "$(systemctl is-active shadowlun-array)" = active ] || fail "shadowlun-array is $(systemctl is-active shadowlun-array)"
  systemctl show -p StatusText --value shadowlun-array | grep -q '^serving: API https://127.0.0.1:8443' ||
    fail "status text: $(systemctl show -p StatusText --value shadowlun-array)"
  st=$(status_cli) || fail "shadowlun status against the service"
  $SUDO timeout 120 systemctl stop shadowlun-array
  $SUDO journalctl -u shadowlun-array --no-pager | grep -q 'array stopped' || fail "no clean stop in the journal"
else
  echo "65-deb: systemd is not PID 1 ($(ps -p 1 -o comm=)): the installed binary as user shadowlun, under a NOTIFY_SOCKET this stage listens on"
  for port in 3260 8443; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail "port $port is taken; the packaged configuration listens on it"
  done
  sock="$work/notify.sock"
  python3 - "$sock" >"$work/notify.log" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
print("listening", flush=True)
while True:
    m = s.recv(4096).decode()
    print(" | ".join(m.splitlines()), flush=True)
PY
  listener=$!
  for _ in $(seq 50); do grep -q listening "$work/notify.log" && break; sleep 0.1; done
  # setpriv execs the daemon as shadowlun (no session, no fork), as systemd's User= does.
  $SUDO env NOTIFY_SOCKET="$sock" setpriv --reuid shadowlun --regid shadowlun --init-groups \
    /usr/bin/shadowlun array serve --config /etc/shadowlun/array.toml >"$work/out" 2>"$work/log" &
  pid=$!
  for _ in $(seq 600); do grep -q 'READY=1' "$work/notify.log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  grep -q 'READY=1' "$work/notify.log" || { cat "$work/log"; fail "no READY=1 from the daemon"; }
  # READY=1 means it serves: the CLI answers at once, no retry.
  st=$(status_cli) || { cat "$work/log"; fail "shadowlun status right after READY=1"; }
  daemon=$(pgrep -u shadowlun -x shadowlun) || fail "no shadowlun process of user shadowlun"
  grep 'READY=1' "$work/notify.log" | grep -q "MAINPID=$daemon" ||
    fail "READY=1 without the daemon's MAINPID $daemon: $(cat "$work/notify.log")"
  $SUDO kill -TERM "$daemon"
  status=0; wait "$pid" || status=$?
  pid=""
  [ "$status" = 0 ] || { cat "$work/log"; fail "the daemon exited with $status on SIGTERM"; }
  for _ in $(seq 50); do grep -q 'STOPPING=1' "$work/notify.log" && break; sleep 0.1; done
  grep -q 'STOPPING=1' "$work/notify.log" || fail "no STOPPING=1: $(cat "$work/notify.log")"
  grep -q 'array stopped' "$work/log" || { cat "$work/log"; fail "no clean stop"; }
  kill "$listener"; wait "$listener" 2>/dev/null || true; listener=""
fi
[ "$(jq -r .backend <<<"$st")" = engine ] && [ "$(jq -r '.portals[0]' <<<"$st")" = 127.0.0.1:3260 ] ||
  fail "shadowlun status: $st"
# What the first start made: the pool, private to the daemon's user.
for f in admin.token tls/key.pem array.json journal.log; do
  [ "$(mode "/var/lib/shadowlun/$f")" = "600 shadowlun:shadowlun" ] || fail "/var/lib/shadowlun/$f is $(mode "/var/lib/shadowlun/$f")"
done
echo "65-deb: the array started from the package's files, answered shadowlun status, stopped cleanly"

# --- 4. Remove, then purge.
$SUDO dpkg -r shadowlun >/dev/null
[ ! -e /usr/bin/shadowlun ] && [ ! -e "$unit" ] || fail "dpkg -r left the binary or the unit"
[ -f /etc/shadowlun/array.toml ] || fail "dpkg -r removed the configuration"
$SUDO test -f /var/lib/shadowlun/journal.log || fail "dpkg -r removed the pool"
getent passwd shadowlun >/dev/null || fail "dpkg -r removed the user"
$SUDO dpkg --purge shadowlun >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge failed"; }
[ ! -e /etc/shadowlun ] || fail "dpkg --purge left /etc/shadowlun"
$SUDO test -f /var/lib/shadowlun/journal.log || fail "dpkg --purge removed a pool holding data"
grep -q 'pool in /var/lib/shadowlun was kept' "$work/purge.log" || { cat "$work/purge.log"; fail "purge did not say the pool was kept"; }
echo "65-deb: ok (dpkg -r kept the configuration and the pool; --purge removed the configuration, kept the pool and said so)"
