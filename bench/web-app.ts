/**
 * The application the restart, outage and observability runs send traffic to: namespace `obs` in
 * the mesh, a 2-replica Deployment `web` (service account `web`) behind Service `web`, and a
 * Deployment `client` to send from. web answers `/fail` with 500 and anything else, after 5 ms,
 * with the address it saw (its own pod's through the mesh, the client's in plaintext), and logs
 * the peer of every connection it accepts (`peer ADDRESS`).
 */

export const WEB_COMMAND = 'const s = require("http").createServer((q, r) => { if (q.url.startsWith("/fail")) { r.statusCode = 500; return r.end("fail"); } setTimeout(() => r.end(String(q.socket.remoteAddress)), 5); }); s.on("connection", (c) => console.log("peer " + c.remoteAddress)); s.listen(9080)';

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
        command: [node, -e, '${WEB_COMMAND}']
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
