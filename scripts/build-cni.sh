#!/usr/bin/env bash
# Builds the ambit-cni plugin (native/cni/ambit-cni.c) into OUT (default native/cni/build/ambit-cni).
#
#   scripts/build-cni.sh [--static] [OUT]
#
# --static (what ships, deploy/Dockerfile): linked statically and checked to be so (no program
# interpreter, no shared library needed), because the container runtime runs it on the HOST,
# whose libc may be older than the builder's or not glibc at all. Fails when it cannot link
# statically; nothing is written then.
# Without --static (local development): static when the libc allows it, else dynamic with a
# warning, since a dynamic plugin runs only on hosts with this machine's libc or a newer one.
# The compiler is $CC, else the first of cc, clang, gcc found.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/native/cni/ambit-cni.c"

require_static=0
if [ "${1:-}" = "--static" ]; then require_static=1; shift; fi
case "${1:-}" in -*) echo "build-cni.sh: unknown option $1 (usage: build-cni.sh [--static] [OUT])" >&2; exit 2 ;; esac
out=${1:-$root/native/cni/build/ambit-cni}

cc=${CC:-}
if [ -z "$cc" ]; then
  for candidate in cc clang gcc; do
    if command -v "$candidate" >/dev/null 2>&1; then cc=$candidate; break; fi
  done
fi
if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
  echo "build-cni.sh: no C compiler found (install clang or gcc, or set CC)" >&2
  exit 1
fi

# Exits non-zero, naming what it found, unless $1 has no program interpreter (PT_INTERP) and
# needs no shared library (DT_NEEDED): what a binary must be to run against any host's libc.
verify_static() {
  if ! command -v readelf >/dev/null 2>&1; then
    echo "build-cni.sh: readelf is needed to check that $1 is static (Debian: apt-get install binutils)" >&2
    return 1
  fi
  local interp needed
  interp=$(readelf -lW "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  needed=$(readelf -dW "$1" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
  if [ -n "$interp" ] || [ -n "$needed" ]; then
    echo "build-cni.sh: $1 is not static: interpreter '${interp:-none}', shared libraries '${needed:-none}'" >&2
    return 1
  fi
}

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
flags=(-std=c11 -O2 -Wall -Wextra -Werror -s)
if [ "$require_static" = 1 ]; then
  if ! "$cc" "${flags[@]}" -static -o "$tmp" "$src"; then
    echo "build-cni.sh: $cc cannot link $src statically (it needs the static C library: Debian's libc6-dev has libc.a; or CC=musl-gcc from musl-tools)" >&2
    exit 1
  fi
  verify_static "$tmp"
  kind=static
elif "$cc" "${flags[@]}" -static -o "$tmp" "$src" 2>/dev/null; then
  # The static attempt is quiet: a missing static libc is expected here; real errors show in the retry.
  kind=static
else
  "$cc" "${flags[@]}" -o "$tmp" "$src"
  kind=dynamic
  echo "build-cni.sh: warning: $out is linked dynamically and runs only on hosts with this libc or a newer one; build what ships with --static" >&2
fi
mv -f "$tmp" "$out"
echo "build-cni.sh: built $out ($kind, $cc)"
