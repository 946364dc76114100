#!/usr/bin/env bash
# Builds vssprov_ps.dll (Wine test scaffolding, see vssprov.idl) into $1.
# Needs widl (wine64-tools) and x86_64-w64-mingw32-gcc.
set -euo pipefail
src="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build-proxy.sh OUTDIR}"
mkdir -p "$out"
cd "$out"
widl --win64 -Oif -h -H vssprov.h -p -P vssprov_p.c -u -U vssprov_i.c "$src/vssprov.idl"
widl --win64 --dlldata-only -o dlldata.c vssprov
# mingw header fixups: the proxy must be stubless, and the IUnknown proxy prototypes that
# widl's proxy refers to are not declared by mingw's headers.
{
  echo '#define USE_STUBLESS_PROXY'
  echo '#include <rpcproxy.h>'
  echo 'HRESULT STDMETHODCALLTYPE IUnknown_QueryInterface_Proxy(IUnknown *This, REFIID riid, void **ppvObject);'
  echo 'ULONG STDMETHODCALLTYPE IUnknown_AddRef_Proxy(IUnknown *This);'
  echo 'ULONG STDMETHODCALLTYPE IUnknown_Release_Proxy(IUnknown *This);'
  cat vssprov_p.c
} > vssprov_p_fixed.c
cat > vssprov.def <<'DEF'
EXPORTS
    DllGetClassObject PRIVATE
    DllCanUnloadNow PRIVATE
    DllRegisterServer PRIVATE
    DllUnregisterServer PRIVATE
DEF
x86_64-w64-mingw32-gcc -shared -O2 -DREGISTER_PROXY_DLL \
  -DPROXY_CLSID_IS='{0x2c1b9b4e,0x5f1a,0x4c0e,{0x9d,0x5a,0x61,0x0b,0x7e,0x3c,0x21,0x90}}' \
  -o vssprov_ps.dll vssprov_p_fixed.c vssprov_i.c dlldata.c vssprov.def \
  -lrpcrt4 -lole32 -loleaut32 -luuid
echo "$out/vssprov_ps.dll"
