// Puts BullMQ queues into known states with Node's own BullMQ (the one compose/expressapp pins) and a Node worker
// really processing jobs, then reports what Node BullMQ itself says about them (getJobCounts, isPaused,
// getWorkers, the oldest waiting job's timestamp), so tests/test_bullmq_node_parity.py can hold fleetdeck's
// collector against it. Protocol on stdio: prints one JSON line when the states are set; on each "report" line
// read from stdin prints a fresh JSON report; on "quit" (or stdin closing) cleans up and exits.
'use strict';
const path = require('node:path');
const readline = require('node:readline');

const appModules = path.join(__dirname, '..', '..', 'compose', 'expressapp', 'node_modules');
const { Queue, Worker, FlowProducer } = require(require.resolve('bullmq', { paths: [appModules] }));
const IORedis = require(require.resolve('ioredis', { paths: [appModules] }));

const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379/0';
const prefix = process.env.BULLMQ_PREFIX;
if (!prefix) throw new Error('BULLMQ_PREFIX is required');
const connection = () => new IORedis(redisUrl, { maxRetriesPerRequest: null });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const names = ['states', 'paused', 'lifo'];
const queues = Object.fromEntries(names.map((name) => [name, new Queue(name, { connection: connection(), prefix })]));
let worker = null;
let flow = null;

async function waitFor(check, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function setUp() {
  const states = queues.states;
  // A Node worker, one job at a time: it completes one job, fails one, then stays busy with a long one (active).
  worker = new Worker('states', async (job) => {
    if (job.data.fail) throw new Error('asked to fail');
    await sleep(job.data.sleep_ms || 10);
    return { done: job.id };
  }, { connection: connection(), prefix, concurrency: 1, name: 'node-parity' });
  await states.add('ok', { sleep_ms: 10 });
  await states.add('bad', { fail: true });
  await waitFor(async () => {
    const counts = await states.getJobCounts('completed', 'failed');
    return counts.completed === 1 && counts.failed === 1;
  }, 'one completed and one failed job');
  await states.add('long', { sleep_ms: 120000 });
  await waitFor(async () => (await states.getJobCounts('active')).active === 1, 'the long job to be active');
  // the worker is busy now: everything below stays where it is put
  for (let i = 0; i < 3; i += 1) await states.add('waiting', { i });
  await states.add('prio', {}, { priority: 5 });
  await states.add('later', {}, { delay: 600000 });
  flow = new FlowProducer({ connection: connection(), prefix });
  await flow.add({ name: 'parent', queueName: 'states', children: [{ name: 'child', queueName: 'paused' }] });

  await queues.paused.pause();
  await queues.paused.add('held', {});

  // the oldest job is FIFO; LIFO jobs added later stack on the end BullMQ takes next
  await queues.lifo.add('first-in', {});
  await sleep(1500);
  await queues.lifo.add('lifo-1', {}, { lifo: true });
  await queues.lifo.add('lifo-2', {}, { lifo: true });
}

async function report() {
  const out = {};
  for (const [name, queue] of Object.entries(queues)) {
    const waitingJobs = await queue.getJobs(['wait', 'paused'], 0, -1);
    out[name] = {
      counts: await queue.getJobCounts(),
      isPaused: await queue.isPaused(),
      workers: (await queue.getWorkers()).length,
      oldestWaitingTimestamp: waitingJobs.length ? Math.min(...waitingJobs.map((job) => job.timestamp)) : null,
    };
  }
  return out;
}

async function cleanUp() {
  if (worker) await worker.close(true);
  if (flow) await flow.close();
  for (const queue of Object.values(queues)) {
    await queue.obliterate({ force: true }).catch(() => {});
    await queue.close();
  }
}

async function main() {
  await setUp();
  console.log(JSON.stringify({ ready: true, report: await report() }));
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === 'report') console.log(JSON.stringify({ report: await report() }));
    if (line.trim() === 'quit') break;
  }
  await cleanUp();
  process.exit(0);
}

main().catch(async (error) => {
  console.error(error && error.stack ? error.stack : String(error));
  await cleanUp().catch(() => {});
  process.exit(1);
});
