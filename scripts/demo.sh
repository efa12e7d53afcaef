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
ambit local exec shop/client -- node loadgen.mjs --url http://users/api/users/u1/checkout --method POST --requests 60 --concurrency 4
echo
ambit local status
echo
echo "try: node bin/ambit.js local exec shop/client -- node loadgen.mjs --url http://users/api/users/u1/checkout --method POST"
echo "     node bin/ambit.js local logs shop/client     node bin/ambit.js local down"
