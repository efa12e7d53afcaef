#!/usr/bin/env bash
# `make demo`: the shop (users -> orders -> payment, inventory, shipping) on a 2-node local
# cluster, some traffic through it, and the cluster's status. The cluster keeps running
# afterwards; `node bin/ambit.js local down` removes it. Running the demo again reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ambit() { node bin/ambit.js "$@"; }

ambit local up -f examples/shop
echo
echo "== 60 checkouts from shop/client: users -> orders -> inventory, payment, shipping"
# ambit stat samples every node agent while the checkouts run (it says "sampling" once it has its first scrape).
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
ambit stat deploy -n shop --window 10s >"$out" 2>"$err" &
stat_pid=$!
until grep -q sampling "$err" || ! kill -0 "$stat_pid" 2>/dev/null; do sleep 0.2; done
ambit local exec shop/client -- node loadgen.mjs --url http://users/api/users/u1/checkout --method POST --requests 60 --concurrency 4
echo
echo "== what the node agents carried, per deployment (ambit stat: connections open, share of mutual TLS)"
wait "$stat_pid" || cat "$err" >&2
cat "$out"
echo
ambit local status
echo
echo "try: node bin/ambit.js local exec shop/client -- node loadgen.mjs --url http://users/api/users/u1/checkout --method POST"
echo "     node bin/ambit.js waypoint apply -n shop --enroll-namespace     (L7: success, RPS and latency in ambit stat)"
echo "     node bin/ambit.js dashboard     node bin/ambit.js local up --prometheus"
echo "     node bin/ambit.js local logs shop/client     node bin/ambit.js local down"
