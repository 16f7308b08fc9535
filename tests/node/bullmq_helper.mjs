// Node BullMQ in the loop for tests/test_queue_node.py: one JSON request in argv[2], one JSON answer on stdout.
// Ops: seed (add jobs and let a Node worker fail or complete them), add (no worker), process (a Node worker runs until the given
// job ids completed), isPaused, counts. Every op is bounded by `timeout_ms` and closes its connections.
import { Queue, Worker } from "bullmq";

const request = JSON.parse(process.argv[2]);
const connection = { url: request.redis };
const opts = { connection, prefix: request.prefix };
const deadline = Date.now() + (request.timeout_ms ?? 15000);

async function until(predicate) {
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error("timed out waiting");
}

// fails a job whose data.fail is set on its first attempt only, so a retried job completes
async function processor(job) {
  if (job.data.fail && (job.attemptsStarted ?? 1) <= 1) throw new Error(job.data.reason ?? "failed");
  return { by: "node", attemptsStarted: job.attemptsStarted };
}

async function main() {
  const queue = new Queue(request.queue, opts);
  try {
    if (request.op === "seed") {
      const added = [];
      for (const job of request.jobs) {
        const made = await queue.add(job.name, job.data, { attempts: 1, ...(job.opts ?? {}) });
        added.push(made.id);
      }
      const settle = request.jobs.filter((job) => !(job.opts && job.opts.delay)).length;
      const worker = new Worker(request.queue, processor, { ...opts, concurrency: 4 });
      await until(async () => {
        const counts = await queue.getJobCounts("completed", "failed");
        return counts.completed + counts.failed >= settle;
      });
      await worker.close();
      return { ids: added, counts: await queue.getJobCounts() };
    }
    if (request.op === "process") {
      const done = new Set();
      const worker = new Worker(request.queue, processor, { ...opts, concurrency: 4 });
      worker.on("completed", (job) => done.add(job.id));
      await until(async () => request.ids.every((id) => done.has(id)));
      await worker.close();
      const states = {};
      for (const id of request.ids) states[id] = await queue.getJobState(id);
      return { completed: [...done], states, counts: await queue.getJobCounts() };
    }
    if (request.op === "add") {
      const added = [];
      for (const job of request.jobs) added.push((await queue.add(job.name, job.data, job.opts ?? {})).id);
      return { ids: added, counts: await queue.getJobCounts() };
    }
    if (request.op === "isPaused") return { paused: await queue.isPaused() };
    if (request.op === "counts") return { counts: await queue.getJobCounts() };
    throw new Error(`unknown op ${request.op}`);
  } finally {
    await queue.close();
  }
}

main().then(
  (answer) => { process.stdout.write(JSON.stringify(answer) + "\n"); process.exit(0); },
  (error) => { process.stderr.write(String(error?.stack ?? error) + "\n"); process.exit(1); },
);
