#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to run ambit and its tests, then the npm packages.
#   scripts/setup.sh          runtime + tests: libbpf1, iproute2, iptables, nftables, nsenter, openssl, tcpdump; bpffs; npm ci
#   scripts/setup.sh --bpf    also the toolchain that rebuilds bpf/*.bpf.o and builds the CNI plugin: clang, llvm, bpftool, libbpf-dev, libc6-dev
#   scripts/setup.sh --bench  also what the benchmarks run: gcc, haproxy, iperf3, h2load and nghttpd (nghttp2)
#   scripts/setup.sh --fuzz   also clang with its libFuzzer and sanitizer runtimes (the CNI scanner's fuzzer)
#   scripts/setup.sh --observe  also what the observability tests run: prometheus (ambit local up --prometheus), chromium (the dashboard test)
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(libbpf1 iproute2 iptables nftables util-linux openssl tcpdump)
# The major version of the clang installed, else of the one Debian would install.
clang_major() {
  local v
  if v=$(clang -dumpversion 2>/dev/null); then echo "${v%%.*}"; return; fi
  apt-cache show clang 2>/dev/null | sed -n 's/^Version: \([0-9]*:\)\{0,1\}\([0-9]*\).*/\2/p' | head -1
}
for flag in "$@"; do
  case "$flag" in
    --bpf) want+=(clang llvm bpftool libbpf-dev libc6-dev) ;;
    --bench) want+=(gcc libc6-dev haproxy iperf3 nghttp2-client nghttp2-server) ;;
    # Debian ships clang's libFuzzer/ASan runtimes apart, per clang version (libclang-rt-14-dev on bookworm).
    --fuzz) want+=(clang libc6-dev "libclang-rt-$(clang_major)-dev") ;;
    --observe) want+=(prometheus chromium fonts-dejavu-core) ;;
    *) echo "setup: unknown option $flag (known: --bpf, --bench, --fuzz, --observe)" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs is where ambit pins its maps and links; many hosts do not mount it at boot.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  if [[ $(id -u) -eq 0 ]]; then mount -t bpf bpf /sys/fs/bpf; else echo "setup: bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)" >&2; fi
fi

# npm ci only when the lockfile changed since the last install (koffi's binary is an optional
# dependency: never install with --omit=optional).
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
