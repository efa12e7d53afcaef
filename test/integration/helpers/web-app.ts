/**
 * The application the observability tests look at (bench/web-app.ts: `web` answers 500 on
 * `/fail` and 200 after 5 ms otherwise, `client` sends), and `LOAD`, which sends a known number
 * of requests of which a known share fails.
 */

export { WEB_APP } from '../../../bench/web-app.js';

/**
 * `node -e LOAD N K`: N requests to http://web, four at a time over keep-alive, every K-th to
 * /fail; prints the count of each status (or error code) as JSON.
 */
export const LOAD = `const http = require("http"); const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const n = Number(process.argv[1]); const failEvery = Number(process.argv[2]); const seen = {};
const one = (i) => new Promise((resolve) => http.get({ host: "web", path: i % failEvery === 0 ? "/fail" : "/", agent }, (r) => { r.resume(); r.on("end", () => { seen[r.statusCode] = (seen[r.statusCode] ?? 0) + 1; resolve(); }); }).on("error", (e) => { seen[e.code] = (seen[e.code] ?? 0) + 1; resolve(); }));
(async () => { for (let i = 1; i <= n; i += 4) await Promise.all([0, 1, 2, 3].map((k) => i + k <= n ? one(i + k) : undefined)); console.log(JSON.stringify(seen)); agent.destroy(); })();`;
