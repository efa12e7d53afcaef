#!/usr/bin/env bash
# Builds the libFuzzer target for the ambit-cni plugin's JSON scanner (scan-fuzz.c) with
# AddressSanitizer and UndefinedBehaviorSanitizer, into $1 (default native/cni/build/scan-fuzz, beside the plugin's own build).
# Needs clang and its libFuzzer/sanitizer runtimes (Debian: clang and libclang-rt-<version>-dev;
# `scripts/setup.sh --fuzz` installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../build/scan-fuzz}
cc=${CC:-clang}
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "native/cni/fuzz/build.sh: $cc not found (scripts/setup.sh --fuzz installs clang and its fuzzing runtime)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# -Dmain: the plugin's own main must not clash with libFuzzer's.
if ! "$cc" -std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Wall -Wextra -Dmain=ambit_cni_main -o "$tmp" "$here/scan-fuzz.c"; then
  echo "native/cni/fuzz/build.sh: build failed; if the linker cannot find libclang_rt.fuzzer or libclang_rt.asan, install the clang runtime (Debian: libclang-rt-\$(clang -dumpversion | cut -d. -f1)-dev, or scripts/setup.sh --fuzz)" >&2
  exit 1
fi
mv -f "$tmp" "$out"
echo "native/cni/fuzz/build.sh: built $out"
