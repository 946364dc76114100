#!/usr/bin/env bash
# The Windows provider (crates/provider-com) cross-built for x86_64-pc-windows-gnu and tested
# under Wine: COM vtables with CoTaskMem accounting (the real provider core among them, against
# an array daemon on loopback), out-of-process activation through a widl proxy/stub,
# install/activate/uninstall of the real exe; then the conformance catalogue (a third of
# it, by the commit: see below) through COM against a real array daemon. Wine-only scaffolding (the
# ProcessPrng shim and the proxy/stub DLL) is built from tools/wine into the test prefix.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target_dir="${CARGO_TARGET_DIR:-$root/target}"
export WINEPREFIX="${WINEPREFIX:-$target_dir/wine-prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
wine=/usr/lib/wine/wine64

# Tools, only when missing (scripts/setup normally installed them already).
missing=()
for p in gcc-mingw-w64-x86-64 wine64 wine wine64-tools; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx x86_64-pc-windows-gnu || rustup target add x86_64-pc-windows-gnu

# Wine-only scaffolding.
tools="$target_dir/wine-tools"
mkdir -p "$tools"
x86_64-w64-mingw32-gcc -shared -O2 -o "$tools/bcryptprimitives.dll" tools/wine/processprng.c -lbcrypt
bash tools/wine/build-proxy.sh "$tools" >/dev/null

# The prefix: created once, then reused.
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  echo "40-windows: creating Wine prefix $WINEPREFIX"
  mkdir -p "$WINEPREFIX"
  timeout 300 "$wine" wineboot --init >/dev/null 2>&1
  timeout 120 wineserver -w
fi
sys32="$WINEPREFIX/drive_c/windows/system32"
cp "$tools/bcryptprimitives.dll" "$tools/vssprov_ps.dll" "$sys32/"
timeout 120 "$wine" regsvr32 /s 'C:\windows\system32\vssprov_ps.dll'

cargo clippy -p provider-com --target x86_64-pc-windows-gnu --all-targets -- -D warnings

# The real provider core through the vtables (tests/real_core.rs) talks to an array daemon over
# HTTPS: one on loopback, on the Linux side, while the tests run.
cargo build -q -p shadowlun
array_dir=$(mktemp -d)
"$target_dir/debug/shadowlun" array serve --pool "$array_dir/pool" --api 127.0.0.1:0 \
  --portal 127.0.0.1:0 >"$array_dir/out" 2>"$array_dir/log" &
array_pid=$!
stop_array() {
  kill "$array_pid" 2>/dev/null || true
  wait "$array_pid" 2>/dev/null || true
  rm -rf "$array_dir"
}
trap stop_array EXIT
for _ in $(seq 100); do grep -q "admin token in" "$array_dir/out" 2>/dev/null && break; sleep 0.1; done
api=$(sed -n 's/^shadowlun array: API //p' "$array_dir/out")
fingerprint=$(sed -n 's/^shadowlun array: certificate SHA-256 fingerprint //p' "$array_dir/out")
token_file=$(sed -n 's/^shadowlun array: admin token in //p' "$array_dir/out")
[ -n "$api" ] && [ -n "$fingerprint" ] && [ -f "$token_file" ] ||
  { cat "$array_dir/log"; echo "40-windows: the array daemon did not start"; exit 1; }
SHADOWLUN_TEST_ARRAY="$api" SHADOWLUN_TEST_FINGERPRINT="$fingerprint" \
  SHADOWLUN_TEST_ADMIN_TOKEN="$(cat "$token_file")" \
  timeout --foreground 900 cargo test -p provider-com --target x86_64-pc-windows-gnu
stop_array
trap - EXIT

timeout 60 wineserver -k || true

# The emulator's conformance catalogue driven through COM: a real array daemon on loopback,
# and behind each emulated host the real shadowlun-provider.exe installed in a prefix of its
# own, activated and called by the relay (crates/provider-com/examples/relay.rs) from another
# Windows process. Two hosts at most are live at once: two prefixes.
cargo build -q -p provider-com --target x86_64-pc-windows-gnu --bins --examples
prefix2="$target_dir/wine-prefix2"
rm -rf "$prefix2"
cp -a "$WINEPREFIX" "$prefix2"
# Sampled: every scenario under Wine starts a Wine prefix's services and the provider exe
# afresh (about 6 s each), so each run takes a third of the catalogue (every third scenario,
# from the first, second or third: `--part K/3`, K from the commit count, scripts/ci-part):
# three consecutive commits run all of it through COM; every scenario runs on every commit
# against the real array in 10-rust.
part="$(bash scripts/ci-part 3)/3"
timeout --foreground 1500 cargo run -q -p shadowlun -- vss conformance --lab wine --part "$part" \
  --wine-prefix "$WINEPREFIX" --wine-prefix "$prefix2" \
  --provider-exe "$target_dir/x86_64-pc-windows-gnu/debug/shadowlun-provider.exe" \
  --relay-exe "$target_dir/x86_64-pc-windows-gnu/debug/examples/relay.exe"

# Leave no Wine process of either prefix behind (the command stops them too).
timeout 60 wineserver -k || true
WINEPREFIX="$prefix2" timeout 60 wineserver -k || true
