// fleetdeck's reference Express app: the stack our users run, configured by its environment like theirs.
//
// Express 5; sessions in Postgres (express-session + connect-pg-simple); uploads kept in memory by multer and
// stored base64 in Postgres; a BullMQ producer and worker per queue; prom-client default metrics, a request
// histogram and the event-loop lag; an IETF health+json endpoint with the pg pool's stats; graceful SIGTERM/SIGINT
// that stops accepting, finishes in-flight requests and active jobs, then exits.
//
// Like most Express apps its in-flight counter counts EVERY request, the health probe included: fleetdeck must
// not depend on an app excluding its own probe (docs/architecture.md, "How drain decides a replica is idle").
//
// Environment: PORT, INSTANCE_ID, SERVICE_NAME, DATABASE_URL, REDIS_URL, BULLMQ_PREFIX, QUEUES (comma list,
// empty = none), WORKER_CONCURRENCY, POOL_MAX, SESSION_SECRET, SHUTDOWN_TIMEOUT_S, DRAIN_DELAY_S,
// KEEPALIVE_TIMEOUT_S, APP_VERSION, JOB_KEEP.
'use strict';

const crypto = require('node:crypto');
const os = require('node:os');
const express = require('express');
const session = require('express-session');
const PgSession = require('connect-pg-simple')(session);
const multer = require('multer');
const { Pool } = require('pg');
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');
const client = require('prom-client');

function envInt(name, fallback) {
  const value = Number.parseInt(process.env[name] ?? '', 10);
  return Number.isFinite(value) ? value : fallback;
}

const settings = {
  port: envInt('PORT', 3000),
  host: process.env.HOST || '127.0.0.1',
  instanceId: process.env.INSTANCE_ID || `express-${process.pid}`,
  serviceName: process.env.SERVICE_NAME || 'web',
  version: process.env.APP_VERSION || '1.0.0',
  databaseUrl: process.env.DATABASE_URL || 'postgresql://127.0.0.1:5432/postgres',
  redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379/0',
  bullmqPrefix: process.env.BULLMQ_PREFIX || 'bull',
  queues: (process.env.QUEUES ?? 'emails,reports').split(',').map((q) => q.trim()).filter(Boolean),
  workerConcurrency: Math.max(1, envInt('WORKER_CONCURRENCY', 10)),
  poolMax: Math.max(1, envInt('POOL_MAX', 5)),
  sessionSecret: process.env.SESSION_SECRET || 'fleetdeck-sample-secret',
  shutdownTimeoutMs: Math.max(1000, envInt('SHUTDOWN_TIMEOUT_S', 20) * 1000),
  keepAliveTimeoutMs: Math.max(1000, envInt('KEEPALIVE_TIMEOUT_S', 5) * 1000),
  // After SIGTERM/SIGINT keep listening this long, answering with `Connection: close`, before closing the listener.
  // Closing idle keep-alive sockets at once races a proxy reusing one (a POST on it gets a 502); under PM2 cluster
  // mode nothing drains the instance first, so set it above the proxy's upstream keep-alive timeout there.
  drainDelayMs: Math.max(0, Number(process.env.DRAIN_DELAY_S || 0) * 1000),
  jobKeep: envInt('JOB_KEEP', 10000),
};

function log(message) {
  console.log(`${new Date().toISOString()} ${settings.instanceId} ${message}`);
}

// --- metrics -----------------------------------------------------------------------------------------------
const registry = new client.Registry();
// default metrics include process_resident_memory_bytes, process_cpu_seconds_total, nodejs_eventloop_lag_seconds
client.collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 10 });
const httpDuration = new client.Histogram({
  name: 'http_request_duration_seconds',
  help: 'Duration of HTTP requests in seconds',
  labelNames: ['method', 'route', 'status_code'],
  buckets: [0.001, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});
const inFlightGauge = new client.Gauge({
  name: 'http_requests_in_flight', help: 'HTTP requests being served (every request)', registers: [registry],
});
const jobsProcessed = new client.Counter({
  name: 'jobs_processed_total', help: 'BullMQ jobs processed by this instance', labelNames: ['queue', 'result'],
  registers: [registry],
});
new client.Gauge({
  name: 'app_info', help: 'Version and identity', labelNames: ['version', 'instance_id', 'service'],
  registers: [registry],
}).set({ version: settings.version, instance_id: settings.instanceId, service: settings.serviceName }, 1);

// Event-loop lag the way the health body reports it: the worst timer overshoot of the last 5 s.
const lagSamples = [];
let lagTimer = null;
function measureLag() {
  const started = process.hrtime.bigint();
  lagTimer = setTimeout(() => {
    const overshoot = Math.max(0, Number(process.hrtime.bigint() - started) / 1e9 - 0.25);
    lagSamples.push(overshoot);
    if (lagSamples.length > 20) lagSamples.shift();
    measureLag();
  }, 250);
  lagTimer.unref();
}
measureLag();

// --- state ---------------------------------------------------------------------------------------------------
const state = { inFlight: 0, ready: false, draining: false, startedAt: Date.now() };
// libpq's default when the URL names no user is the OS user; node-postgres would need USER set, so say it here
const databaseUrl = new URL(settings.databaseUrl);
if (!databaseUrl.username) databaseUrl.username = process.env.PGUSER || os.userInfo().username;
const pool = new Pool({
  connectionString: databaseUrl.toString(),
  max: settings.poolMax,
  application_name: `${settings.serviceName}/${settings.instanceId}`,
  connectionTimeoutMillis: 5000,
});
pool.on('error', (error) => log(`error: idle pg client: ${error.message}`));
const redisOptions = { maxRetriesPerRequest: null, connectionName: `${settings.serviceName}:${settings.instanceId}` };
const redis = new IORedis(settings.redisUrl, { ...redisOptions, lazyConnect: false });
redis.on('error', (error) => log(`error: redis: ${error.message}`));
const queues = new Map();
const workers = [];

const SCHEMA_SQL = `
CREATE TABLE IF NOT EXISTS uploads (
  id text PRIMARY KEY, filename text, content_type text NOT NULL, size integer NOT NULL,
  data text NOT NULL, instance_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS "session" (
  "sid" varchar NOT NULL COLLATE "default" PRIMARY KEY, "sess" json NOT NULL, "expire" timestamp(6) NOT NULL);
CREATE INDEX IF NOT EXISTS "IDX_session_expire" ON "session" ("expire");
`;

async function ensureSchema() {
  const conn = await pool.connect();
  try {
    await conn.query('BEGIN');
    // several replicas boot together: CREATE ... IF NOT EXISTS still races on the catalog
    await conn.query('SELECT pg_advisory_xact_lock(727274)');
    await conn.query(SCHEMA_SQL);
    await conn.query('COMMIT');
  } catch (error) {
    await conn.query('ROLLBACK').catch(() => {});
    throw error;
  } finally {
    conn.release();
  }
}

async function becomeReady() {
  for (let attempt = 1; !state.draining; attempt += 1) {
    try {
      await ensureSchema();
      state.ready = true;
      log(`ready port=${settings.port}`);
      return;
    } catch (error) {
      if (attempt === 1 || attempt % 10 === 0) log(`error: schema set-up failed (attempt ${attempt}): ${error.message}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// --- app -----------------------------------------------------------------------------------------------------
const app = express();
app.disable('x-powered-by');
app.set('trust proxy', 'loopback');

// Count and time every request (probes too, as most apps do), name the instance on every response.
app.use((req, res, next) => {
  state.inFlight += 1;
  inFlightGauge.inc();
  const started = process.hrtime.bigint();
  res.setHeader('X-Instance-Id', settings.instanceId);
  if (state.draining) res.setHeader('Connection', 'close'); // each connection ends after this answer
  const requestId = req.get('X-Request-Id');
  if (requestId) res.setHeader('X-Request-Id', requestId.slice(0, 200));
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    state.inFlight -= 1;
    inFlightGauge.dec();
    const route = req.route ? req.baseUrl + req.route.path : 'unmatched';
    const method = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].includes(req.method) ? req.method : 'OTHER';
    httpDuration.observe({ method, route, status_code: String(res.statusCode) },
      Number(process.hrtime.bigint() - started) / 1e9);
  };
  res.on('finish', finish);
  res.on('close', finish);
  next();
});

async function timedCheck(probe) {
  const started = process.hrtime.bigint();
  let status = 'pass';
  let output;
  try {
    await Promise.race([probe(), new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 1500))]);
  } catch (error) {
    status = 'fail';
    output = String(error.message).slice(0, 200);
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  return { componentType: 'datastore', observedValue: Math.round(ms * 1000) / 1000, observedUnit: 'ms', status,
    time: new Date().toISOString(), ...(output ? { output } : {}) };
}

app.get('/health', async (req, res) => {
  const [pgCheck, redisCheck] = await Promise.all([
    timedCheck(() => pool.query('SELECT 1')),
    timedCheck(() => redis.ping()),
  ]);
  const failed = pgCheck.status === 'fail' || redisCheck.status === 'fail';
  const status = failed ? 'fail' : (state.draining || !state.ready ? 'warn' : 'pass');
  const memory = process.memoryUsage();
  const body = {
    status, version: settings.version, releaseId: settings.version, serviceId: settings.serviceName,
    instanceId: settings.instanceId, description: 'fleetdeck reference Express app', pid: process.pid,
    uptime: Math.round((Date.now() - state.startedAt) / 1000 * 1000) / 1000,
    inFlight: state.inFlight, draining: state.draining, ready: state.ready,
    eventLoopLag: Math.max(0, ...lagSamples),
    memory: { rss: memory.rss, heapTotal: memory.heapTotal, heapUsed: memory.heapUsed, external: memory.external },
    database: { pool: { totalCount: pool.totalCount, idleCount: pool.idleCount, waitingCount: pool.waitingCount,
      max: settings.poolMax } },
    checks: { 'postgres:responseTime': [pgCheck], 'redis:responseTime': [redisCheck] },
  };
  res.status(failed ? 503 : 200).type('application/health+json').send(JSON.stringify(body));
});

app.get('/livez', (req, res) => res.json({ status: 'pass', instanceId: settings.instanceId }));

app.get('/readyz', (req, res) => {
  if (state.draining) return res.status(503).json({ status: 'draining', ready: false });
  if (!state.ready) return res.status(503).json({ status: 'starting', ready: false });
  return res.json({ status: 'ready', ready: true });
});

app.get('/metrics', async (req, res) => {
  res.type(registry.contentType).send(await registry.metrics());
});

// Sessions only where they are used: probes and metrics never touch Postgres for a session.
const sessions = session({
  store: new PgSession({ pool, tableName: 'session', pruneSessionInterval: 900 }),
  secret: settings.sessionSecret,
  name: 'sid',
  resave: false,
  saveUninitialized: false,
  cookie: { httpOnly: true, sameSite: 'lax', maxAge: 86400 * 1000 },
});

app.post('/api/login', sessions, express.json({ limit: '16kb' }), (req, res, next) => {
  const user = req.body && req.body.user;
  if (typeof user !== 'string' || !user.trim() || user.length > 200) {
    return res.status(400).json({ error: 'expected a JSON body {"user": "<1..200 characters>"}' });
  }
  req.session.regenerate((error) => {
    if (error) return next(error);
    req.session.user = user;
    req.session.createdBy = settings.instanceId;
    return req.session.save((saveError) => (saveError ? next(saveError)
      : res.json({ user, instance: settings.instanceId })));
  });
});

app.get('/api/me', sessions, (req, res) => {
  if (!req.session.user) return res.status(401).json({ error: 'not logged in' });
  return res.json({ user: req.session.user, instance: settings.instanceId, createdBy: req.session.createdBy });
});

app.post('/api/logout', sessions, (req, res, next) => {
  req.session.destroy((error) => (error ? next(error) : res.clearCookie('sid').json({ ok: true })));
});

const upload = multer({ storage: multer.memoryStorage(), limits: { fileSize: 10 * 1024 * 1024, files: 1 } });

app.post('/api/uploads', upload.single('file'), async (req, res) => {
  if (!req.file) return res.status(400).json({ error: 'expected a multipart field "file"' });
  const id = crypto.randomUUID().replaceAll('-', '');
  await pool.query(
    'INSERT INTO uploads (id, filename, content_type, size, data, instance_id) VALUES ($1, $2, $3, $4, $5, $6)',
    [id, (req.file.originalname || '').slice(0, 255), req.file.mimetype || 'application/octet-stream',
      req.file.size, req.file.buffer.toString('base64'), settings.instanceId],
  );
  return res.status(201).json({ id, size: req.file.size, instance: settings.instanceId });
});

app.get('/api/uploads/:id', async (req, res) => {
  const { id } = req.params;
  if (!/^[a-zA-Z0-9]{1,64}$/.test(id)) return res.status(404).json({ error: 'no such upload' });
  const { rows } = await pool.query('SELECT content_type, data FROM uploads WHERE id = $1', [id]);
  if (rows.length === 0) return res.status(404).json({ error: 'no such upload' });
  return res.type(rows[0].content_type).send(Buffer.from(rows[0].data, 'base64'));
});

function queueOf(req, res) {
  const queue = queues.get(req.params.queue);
  if (!queue) res.status(404).json({ error: `unknown queue ${JSON.stringify(req.params.queue).slice(0, 100)}`,
    queues: settings.queues });
  return queue;
}

app.post('/api/jobs/:queue', express.json({ limit: '64kb' }), async (req, res) => {
  const queue = queueOf(req, res);
  if (!queue) return undefined;
  const data = req.body ?? {};
  if (typeof data !== 'object' || Array.isArray(data)) return res.status(400).json({ error: 'job data must be a JSON object' });
  const opts = { removeOnComplete: settings.jobKeep, removeOnFail: settings.jobKeep };
  if (req.query.attempts) opts.attempts = Math.max(1, Number.parseInt(req.query.attempts, 10) || 1);
  if (req.query.delay_ms) opts.delay = Math.max(0, Number.parseInt(req.query.delay_ms, 10) || 0);
  const job = await queue.add(String(req.query.name || 'job').slice(0, 100), data, opts);
  return res.status(201).json({ jobId: job.id, queue: queue.name, instance: settings.instanceId });
});

app.get('/api/jobs/:queue/:id', async (req, res) => {
  const queue = queueOf(req, res);
  if (!queue) return undefined;
  const job = await queue.getJob(req.params.id);
  if (!job) return res.status(404).json({ error: 'no such job' });
  return res.json({ jobId: job.id, queue: queue.name, state: await job.getState(), data: job.data,
    returnvalue: job.returnvalue ?? null, failedReason: job.failedReason || null, attemptsMade: job.attemptsMade,
    finishedOn: job.finishedOn ?? null });
});

// Load-test routes, the same as the Python sample app's.
app.post('/work/echo', express.raw({ type: () => true, limit: '1mb' }), async (req, res) => {
  const ms = Math.min(Number(req.query.ms) || 0, 600000);
  if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
  res.json({ instance: settings.instanceId, request_id: req.get('X-Request-Id') || null,
    bytes: Buffer.isBuffer(req.body) ? req.body.length : 0 });
});

app.get('/work/cpu', (req, res) => {
  // synchronous work on the event loop, on purpose: visible as loop lag
  const burnMs = Math.min(Number(req.query.ms) || 10, 10000);
  const deadline = process.hrtime.bigint() + BigInt(Math.round(burnMs * 1e6));
  let spins = 0;
  while (process.hrtime.bigint() < deadline) spins += 1;
  res.json({ instance: settings.instanceId, ms: burnMs, spins });
});

app.get('/', (req, res) => {
  res.type('text/html').send(`<!doctype html><title>fleetdeck Express app</title>
<h1>fleetdeck reference Express app</h1><p>instance ${settings.instanceId}, version ${settings.version}</p>`);
});

app.use((req, res) => res.status(404).json({ error: 'not found' }));
// eslint-disable-next-line no-unused-vars
app.use((error, req, res, next) => {
  const status = error.status || error.statusCode || 500;
  if (status >= 500) log(`error ${req.method} ${req.path}: ${error.message}`);
  res.status(status).json({ error: status >= 500 ? 'internal error' : String(error.message).slice(0, 200) });
});

// --- jobs ------------------------------------------------------------------------------------------------------
function startWorkers() {
  for (const name of settings.queues) {
    const connection = new IORedis(settings.redisUrl, redisOptions);
    connection.on('error', () => {});
    queues.set(name, new Queue(name, { connection, prefix: settings.bullmqPrefix }));
    const worker = new Worker(name, async (job) => {
      const data = job.data && typeof job.data === 'object' ? job.data : {};
      const sleepMs = Math.max(0, Math.min(Number(data.sleep_ms ?? 50), 600000));
      await new Promise((resolve) => setTimeout(resolve, sleepMs));
      if (data.fail) {
        jobsProcessed.inc({ queue: name, result: 'failed' });
        throw new Error(`job ${job.id} asked to fail`);
      }
      jobsProcessed.inc({ queue: name, result: 'completed' });
      return { instance: settings.instanceId, slept_ms: sleepMs };
    }, {
      connection: new IORedis(settings.redisUrl, redisOptions),
      prefix: settings.bullmqPrefix,
      concurrency: settings.workerConcurrency,
      name: settings.instanceId,
      metrics: { maxDataPoints: 60 },
    });
    worker.on('error', (error) => log(`worker ${name} error: ${error.message}`));
    workers.push(worker);
  }
}

// --- lifecycle ---------------------------------------------------------------------------------------------------
const server = app.listen(settings.port, settings.host, () => {
  log(`listening http://${settings.host}:${settings.port} queues=${settings.queues.join(',')} pid=${process.pid}`);
});
server.keepAliveTimeout = settings.keepAliveTimeoutMs;
server.on('error', (error) => {
  log(`error: cannot listen on ${settings.host}:${settings.port}: ${error.code || error.message}`);
  process.exit(1);
});
startWorkers();
becomeReady();

let stoppingSince = 0;
async function shutdown(signal) {
  if (stoppingSince) {
    // A wrapper (npm start) forwards the signal its process group already got: a repeat within a second is
    // that echo, not an operator insisting.
    if (Date.now() - stoppingSince < 1000) return;
    log(`second ${signal}: exiting now`);
    process.exit(1);
  }
  stoppingSince = Date.now();
  state.draining = true; // readyz turns 503 at once
  log(`draining on ${signal}: in_flight=${state.inFlight}`);
  const hardStop = setTimeout(() => {
    log(`error: still busy after ${settings.shutdownTimeoutMs} ms; exiting`);
    process.exit(1);
  }, settings.shutdownTimeoutMs);
  hardStop.unref();
  if (settings.drainDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, settings.drainDelayMs));
  // close() stops accepting and closes idle keep-alive sockets; in-flight requests finish first (Node >= 19)
  const httpClosed = new Promise((resolve) => server.close(resolve));
  server.closeIdleConnections();
  await Promise.allSettled([httpClosed, ...workers.map((worker) => worker.close())]);
  await Promise.allSettled([...[...queues.values()].map((queue) => queue.close()), pool.end(), redis.quit()]);
  log('stopped cleanly');
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
