#!/usr/bin/env bash
# Builds the ambit-cni plugin (native/cni/ambit-cni.c) into $1 (default native/cni/build/ambit-cni).
# Static when the libc allows it, so the one file runs on any node; dynamic otherwise.
# The compiler is $CC, else the first of cc, clang, gcc found.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/native/cni/ambit-cni.c"
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

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
flags=(-std=c11 -O2 -Wall -Wextra -Werror -s)
# The static attempt is quiet: a missing static libc is expected; real errors show in the retry.
if "$cc" "${flags[@]}" -static -o "$tmp" "$src" 2>/dev/null; then
  kind=static
else
  "$cc" "${flags[@]}" -o "$tmp" "$src"
  kind=dynamic
fi
mv -f "$tmp" "$out"
echo "build-cni.sh: built $out ($kind, $cc)"
