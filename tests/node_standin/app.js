// A stand-in Node replica for the local backend's identity tests: configured only by its environment
// (PORT, INSTANCE_ID), like most Express apps. CRASH_INSTANCE makes that one instance exit at start-up;
// SPAWN_DETACHED starts a child in its own session (it leaves the replica's process group). Like most Express
// apps its in-flight counter counts every request, the health probe included; IN_FLIGHT=none leaves it out of
// /health altogether. POST /work/echo?ms=N answers after N ms.
'use strict';
const http = require('http');
const { spawn } = require('child_process');

const port = Number(process.env.PORT);
const instanceId = process.env.INSTANCE_ID || 'unknown';
if (!port) {
  console.error('PORT is not set');
  process.exit(2);
}
if (process.env.CRASH_INSTANCE && process.env.CRASH_INSTANCE === instanceId) {
  console.error(`standin ${instanceId}: crash-marker: refusing to start`);
  process.exit(3);
}
if (process.env.SPAWN_DETACHED) {
  const child = spawn('sleep', ['300'], { detached: true, stdio: 'ignore' });
  child.unref();
  console.log(`standin ${instanceId}: detached child ${child.pid}`);
}
let inFlight = 0;
const server = http.createServer((req, res) => {
  inFlight += 1;
  res.on('close', () => { inFlight -= 1; });
  const url = new URL(req.url, 'http://localhost');
  const answer = (payload) => {
    const body = JSON.stringify(payload);
    res.writeHead(200, { 'Content-Type': 'application/health+json', 'Content-Length': Buffer.byteLength(body),
      'X-Instance-Id': instanceId });
    res.end(body);
  };
  if (req.method === 'POST') {
    const ms = Math.min(Number(url.searchParams.get('ms')) || 0, 30000);
    req.resume();
    req.on('end', () => setTimeout(() => answer({ instanceId, ms }), ms));
    return;
  }
  const health = { status: 'pass', instanceId, port, pid: process.pid };
  if (process.env.IN_FLIGHT !== 'none') health.inFlight = inFlight;
  answer(health);
});
server.listen(port, '127.0.0.1', () => console.log(`standin ${instanceId} on ${port}`));
let sigterms = 0;
process.on('SIGTERM', () => {
  sigterms += 1;
  console.log(`standin ${instanceId}: SIGTERM ${sigterms}`);
  // finish like an app with in-flight work: a moment later, so a duplicate signal would be seen
  if (sigterms === 1) server.close(() => setTimeout(() => process.exit(0), 300));
});
