#!/usr/bin/env bash
# The Windows installer: crates/provider-com/msi/shadowlun-provider.wxs built with Debian's
# wixl, its tables checked with msiinfo (Wine forgives ordering mistakes Windows does not),
# then, on a fresh Wine prefix: a failing install rolls back to nothing; an install registers
# everything (status --json), with two gateway URLs in ARRAY, each probed; an upgrade keeps the
# configuration; an uninstall leaves nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target_dir="${CARGO_TARGET_DIR:-$root/target}"
wine=/usr/lib/wine/wine64
export WINEDEBUG="${WINEDEBUG:--all}"

missing=()
for p in gcc-mingw-w64-x86-64 wine64 wine wine64-tools wixl msitools jq; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx x86_64-pc-windows-gnu || rustup target add x86_64-pc-windows-gnu

cargo build -q -p provider-com --target x86_64-pc-windows-gnu --bins
exe="$target_dir/x86_64-pc-windows-gnu/debug/shadowlun-provider.exe"
work="$target_dir/msi"
rm -rf "$work"
mkdir -p "$work"
fail() { echo "45-msi: $*" >&2; exit 1; }

# Two packages: the crate's version and the next patch, for the upgrade.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
next="${version%.*}.$(( ${version##*.} + 1 ))"
# wixl takes file sources relative to the .wxs: build in the work directory.
cp crates/provider-com/msi/shadowlun-provider.wxs "$exe" "$work/"
(cd "$work" &&
  wixl -a x64 -D Version="$version" -D Exe=shadowlun-provider.exe -o v1.msi shadowlun-provider.wxs &&
  wixl -a x64 -D Version="$next" -D Exe=shadowlun-provider.exe -o v2.msi shadowlun-provider.wxs) 2>"$work/wixl.log" ||
  { cat "$work/wixl.log"; fail "wixl failed"; }

# --- The tables, as Windows will read them.
msiinfo export "$work/v1.msi" InstallExecuteSequence | tr -d '\r' >"$work/seq"
msiinfo export "$work/v1.msi" CustomAction | tr -d '\r' >"$work/ca"
msiinfo export "$work/v1.msi" Component | tr -d '\r' >"$work/comp"
seq_of() { awk -F'\t' -v a="$1" '$1 == a { print $3 }' "$work/seq"; }
for a in InstallValidate RemoveExistingProducts InstallInitialize RemoveFiles InstallFiles \
  PublishProduct InstallFinalize; do
  [ -n "$(seq_of $a)" ] || fail "$a is not sequenced"
done
[ "$(seq_of InstallValidate)" -lt "$(seq_of RemoveExistingProducts)" ] &&
  [ "$(seq_of RemoveExistingProducts)" -lt "$(seq_of InstallInitialize)" ] ||
  fail "RemoveExistingProducts is not between InstallValidate and InstallInitialize"
for a in UnregisterProvider UnregisterProviderPurge; do
  s=$(seq_of $a)
  [ -n "$s" ] && [ "$s" -gt "$(seq_of InstallInitialize)" ] && [ "$s" -lt "$(seq_of RemoveFiles)" ] ||
    fail "$a ($s) must run after InstallInitialize and before RemoveFiles"
done
for a in RegisterProvider RegisterProviderVssOptional RegisterProviderKeep RegisterProviderKeepVssOptional; do
  s=$(seq_of $a)
  [ -n "$s" ] && [ "$s" -gt "$(seq_of InstallFiles)" ] && [ "$s" -lt "$(seq_of InstallFinalize)" ] ||
    fail "$a ($s) must run after InstallFiles and before InstallFinalize"
done
# Every action: an exe from the installed file (18), deferred (1024), not impersonating
# (2048), its exit code checked (no 64 bit): 3090.
while IFS=$'\t' read -r id type source target _; do
  case "$id" in Action|s72|CustomAction) continue ;; esac
  [ "$type" = 3090 ] || fail "custom action $id has type $type, expected 3090"
  [ "$source" = ProviderExeFile ] || fail "custom action $id runs $source"
  case "$target" in *--token\ *|*--token) fail "custom action $id passes a token on its command line" ;; esac
done <"$work/ca"
[ "$(grep -c . "$work/ca")" -ge 9 ] || fail "custom actions missing"
# The component is 64-bit (msidbComponentAttributes64bit = 256).
attrs=$(awk -F'\t' '$1 == "ProviderExe" { print $4 }' "$work/comp")
[ $(( attrs & 256 )) -eq 256 ] || fail "the component is not 64-bit (attributes $attrs)"
echo "45-msi: tables ok"

# --- Under Wine, on a fresh prefix.
export WINEPREFIX="$work/prefix"
mkdir -p "$WINEPREFIX"
timeout 300 "$wine" wineboot --init >/dev/null 2>&1
timeout 120 wineserver -w
tools="$target_dir/wine-tools"
mkdir -p "$tools"
x86_64-w64-mingw32-gcc -shared -O2 -o "$tools/bcryptprimitives.dll" tools/wine/processprng.c -lbcrypt
cp "$tools/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
cleanup() { timeout 60 wineserver -k 2>/dev/null || true; }
trap cleanup EXIT

token="msi-secret-$RANDOM$RANDOM"
printf '%s\n' "$token" >"$work/token"
fp=$(printf 'ab%.0s' $(seq 32))
array=https://127.0.0.1:9
# Two gateways, comma-separated as the ARRAY property takes them (nothing listens on either).
gateways=https://127.0.0.1:9,https://127.0.0.1:10
winpath() { echo "Z:${1//\//\\}"; }
installed='C:\Program Files\shadowlun\shadowlun-provider.exe'
installed_unix="$WINEPREFIX/drive_c/Program Files/shadowlun/shadowlun-provider.exe"
msiexec() {
  local log=$1; shift
  local rc=0
  timeout 300 "$wine" msiexec "$@" /qn /l*v "$(winpath "$log")" || rc=$?
  timeout 120 wineserver -w
  return $rc
}
# Wine writes the log in ASCII, Windows in UTF-16.
as_text() {
  if [ "$(head -c2 "$1" | od -An -tx1 | tr -d ' ')" = fffe ]; then iconv -f utf-16 -t utf-8 "$1"; else cat "$1"; fi
}
status() { timeout 120 "$wine" "$1" status --json 2>/dev/null | tr -d '\r' || true; }
no_secret() { ! grep -a -q "$token" "$@" || fail "the token appears in $*"; }

# A failing custom action rolls back: without VSSOPTIONAL the VSS registration fails under
# Wine (no coordinator), the exe undoes its steps, Windows Installer removes the files.
rc=0
msiexec "$work/fail.log" /i "$(winpath "$work/v1.msi")" ARRAY=$array FINGERPRINT=$fp \
  TOKENFILE="$(winpath "$work/token")" || rc=$?
[ "$rc" -ne 0 ] || fail "the install should fail where VSS refuses the registration"
as_text "$work/fail.log" >"$work/fail.txt"
grep -a -q "RegisterProvider" "$work/fail.txt" || fail "the log does not name the failed action"
[ ! -e "$installed_unix" ] || fail "rollback left the exe installed"
s=$(status "$exe")
for r in com_class service event_source; do
  [ "$(jq -r ".registrations.$r.registered" <<<"$s")" = false ] || fail "rollback left $r: $s"
done
[ "$(jq -r .configuration.present <<<"$s")" = false ] || fail "rollback left the configuration"
no_secret "$work/fail.txt" "$WINEPREFIX/system.reg"
echo "45-msi: a failed install rolled back"

# Install: every registration, the exe under Program Files.
msiexec "$work/install.log" /i "$(winpath "$work/v1.msi")" ARRAY=$gateways FINGERPRINT=$fp \
  TOKENFILE="$(winpath "$work/token")" VSSOPTIONAL=1 || fail "install failed (see $work/install.log)"
[ -f "$installed_unix" ] || fail "the exe is not under Program Files"
s=$(status "$installed")
echo "$s" >"$work/status-install.json"
[ "$(jq -r '.configuration.array_urls | join(",")' <<<"$s")" = "$gateways" ] || fail "configuration: $s"
[ "$(jq -r '[.array.gateways[] | select(.failure == "unreachable") | .url] | join(",")' <<<"$s")" = "$gateways" ] ||
  fail "each gateway is not probed: $s"
[ "$(jq -r .configuration.token <<<"$s")" = stored ] || fail "token: $s"
[ "$(jq -r .registrations.com_class.registered <<<"$s")" = true ] || fail "COM class: $s"
jq -r .registrations.com_class.local_server32 <<<"$s" | grep -qi 'program files\\shadowlun\\shadowlun-provider.exe' ||
  fail "LocalServer32 does not name the installed exe: $s"
[ "$(jq -r .registrations.service.registered <<<"$s")" = true ] || fail "service: $s"
[ "$(jq -r .registrations.event_source.registered <<<"$s")" = true ] || fail "event source: $s"
jq -r .registrations.event_source.event_message_file <<<"$s" | grep -qi 'program files\\shadowlun\\shadowlun-provider.exe' ||
  fail "EventMessageFile does not name the installed exe: $s"
[ "$(jq -r .registrations.vss.registered <<<"$s")" = null ] || fail "VSS: $s"
as_text "$work/install.log" >"$work/install.txt"
no_secret "$work/install.txt" "$WINEPREFIX/system.reg"
echo "45-msi: installed; every registration in place"

# Upgrade: the next version over it, no settings given: the configuration is kept.
msiexec "$work/upgrade.log" /i "$(winpath "$work/v2.msi")" VSSOPTIONAL=1 || fail "upgrade failed (see $work/upgrade.log)"
s=$(status "$installed")
[ "$(jq -r '.configuration.array_urls | join(",")' <<<"$s")" = "$gateways" ] ||
  fail "the upgrade lost the configuration: $s"
[ "$(jq -r .configuration.token <<<"$s")" = stored ] || fail "the upgrade lost the token: $s"
[ "$(jq -r .registrations.com_class.registered <<<"$s")" = true ] || fail "COM class after upgrade: $s"
[ "$(jq -r .registrations.service.registered <<<"$s")" = true ] || fail "service after upgrade: $s"
! grep -q "\"DisplayVersion\"=\"$version\"" "$WINEPREFIX/system.reg" ||
  fail "the upgrade left version $version installed"
grep -q "\"DisplayVersion\"=\"$next\"" "$WINEPREFIX/system.reg" || fail "the installed version is not $next"
echo "45-msi: upgraded to $next; configuration kept"

# Uninstall, configuration too: nothing left.
msiexec "$work/remove.log" /x "$(winpath "$work/v2.msi")" REMOVECONFIG=1 || fail "uninstall failed (see $work/remove.log)"
[ ! -e "$installed_unix" ] || fail "the exe is still installed"
[ ! -e "$WINEPREFIX/drive_c/ProgramData/shadowlun/provider.toml" ] || fail "the configuration is left"
s=$(status "$exe")
for r in com_class service event_source; do
  [ "$(jq -r ".registrations.$r.registered" <<<"$s")" = false ] || fail "uninstall left $r: $s"
done
! grep -qi 'shadowlun' "$WINEPREFIX/system.reg" || fail "the registry still names shadowlun: $(grep -i shadowlun "$WINEPREFIX/system.reg" | head)"
echo "45-msi: uninstalled; nothing left"
