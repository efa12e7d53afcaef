/**
 * The application the observability tests look at: namespace `obs` in the mesh, a 2-replica
 * Deployment `web` (service account `web`) behind Service `web`, answering 500 on `/fail` and 200
 * after a short delay otherwise, and a Deployment `client` to send from. `LOAD` sends a known
 * number of requests of which a known share fails.
 */

export const WEB_APP = `
apiVersion: v1
kind: Namespace
metadata: { name: obs, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: web, namespace: obs }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: obs }
spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 9080 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: obs }
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web, version: v1 } }
    spec:
      serviceAccountName: web
      containers:
      - name: c
        # /fail answers 500; anything else 200 after 5 ms.
        command: [node, -e, 'require("http").createServer((q, s) => { if (q.url.startsWith("/fail")) { s.statusCode = 500; return s.end("fail"); } setTimeout(() => s.end("ok"), 5); }).listen(9080)']
        readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: client, namespace: obs }
spec:
  replicas: 1
  selector: { matchLabels: { app: client } }
  template:
    metadata: { labels: { app: client } }
    spec: { containers: [{ name: c, command: [sleep, infinity] }] }
`;

/**
 * `node -e LOAD N K`: N requests to http://web, four at a time over keep-alive, every K-th to
 * /fail; prints the count of each status (or error code) as JSON.
 */
export const LOAD = `const http = require("http"); const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const n = Number(process.argv[1]); const failEvery = Number(process.argv[2]); const seen = {};
const one = (i) => new Promise((resolve) => http.get({ host: "web", path: i % failEvery === 0 ? "/fail" : "/", agent }, (r) => { r.resume(); r.on("end", () => { seen[r.statusCode] = (seen[r.statusCode] ?? 0) + 1; resolve(); }); }).on("error", (e) => { seen[e.code] = (seen[e.code] ?? 0) + 1; resolve(); }));
(async () => { for (let i = 1; i <= n; i += 4) await Promise.all([0, 1, 2, 3].map((k) => i + k <= n ? one(i + k) : undefined)); console.log(JSON.stringify(seen)); agent.destroy(); })();`;
