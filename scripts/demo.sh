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
echo "== what the node agents carried (mTLS connections by source -> destination identity, from their /metrics)"
for node in node-1 node-2; do
  ip=$(ambit local status --json | node -e 'let s="";process.stdin.on("data",c=>s+=c).on("end",()=>console.log(JSON.parse(s).nodes.find(n=>n.name===process.argv[1]).ip))' "$node")
  ambit local exec --node "$node" -- node -e '
    fetch(process.argv[1]).then((r) => r.text()).then((t) => {
      for (const line of t.split("\n")) {
        const m = /^istio_tcp_connections_opened_total\{(.*)\} (\S+)$/.exec(line);
        if (!m || !m[1].includes("reporter=\"destination\"")) continue;
        const l = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
        console.log(`  ${process.argv[2]}: ${l.source_principal} -> ${l.destination_principal} (${l.destination_service}) ${l.connection_security_policy}: ${m[2]}`);
      }
    })' "http://$ip:15020/metrics" "$node"
done
echo
ambit local status
echo
echo "try: node bin/ambit.js local exec shop/client -- node loadgen.mjs --url http://users/api/users/u1/checkout --method POST"
echo "     node bin/ambit.js local logs shop/client     node bin/ambit.js local down"
