"""Queue actions: retry, remove, promote, pause, resume, clean, drain, obliterate — guarded, audited, batched.

Each action is one :class:`QueueOperation` with ``plan()`` (the dry-run preview, from the same counts the action
starts from) and ``execute()`` (the work). :class:`QueueActions` runs them in the frame every fleetdeck action
gets: the role check (``actions.auth.require``: operator, obliterate admin), the store's action lock (one action
per queue at a time, ``queue:<redis>/<prefix>:<queue>``), an audit entry at the start and at the end with the
queue's counts before and after, and progress events keyed by the op id. Results are ``OperationResult``s like
the other actions', so the CLI maps them to the same exit codes.

BullMQ's semantics, not ours: every change is made by the Lua scripts the ``bullmq`` package ships
(collectors/bullmq_scripts.py), so Node and Python workers keep working. Large queues stay safe: bulk actions
work ``batch`` jobs per script call (1,000 by default; each call a few milliseconds), report progress between
calls and record the longest single Redis call in the audit (docs/queues.md).

Size (~615 lines, above the ~500 the codebase aims for): ten plan/execute pairs of 5-40 lines each, all on
the same ``Context`` and helpers, and the ``QueueActions`` frame that runs them; a module per operation would be
ten files of a few dozen lines each, and the table of operations is meant to be read in one place.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actions import audit
from actions.auth import PermissionDenied, require
from actions.operations import OperationResult, Plan, format_busy, new_op_id
from collectors import bullmq_jobs
from collectors.bullmq_scripts import Batcher, QueueClient, QueueRef, UnknownQueue, now_ms, parse_ref
from core.config import FleetConfig
from core.store import Store

# Permissions (actions.auth.PERMISSIONS): everything an operator may do, and obliterate, which only an admin may.
QUEUE_ACT = "queue_act"
QUEUE_OBLITERATE = "queue_obliterate"

RETRY = "queue_retry"
RETRY_ALL = "queue_retry_all"
REMOVE = "queue_remove"
PROMOTE = "queue_promote"
PROMOTE_ALL = "queue_promote_all"
PAUSE = "queue_pause"
RESUME = "queue_resume"
CLEAN = "queue_clean"
DRAIN = "queue_drain"
OBLITERATE = "queue_obliterate"

DEFAULT_BATCH = 1000
MAX_BATCH = 5000
LOCK_TTL_S = 1800.0
PROGRESS_EVERY_S = 0.5
CLEANABLE = ("completed", "failed")
_INF_SCORE = 1.7976931348623157e308  # what bullmq's promoteJobs passes as "every delayed job"


class QueueRefusal(Exception):
    """Nothing was changed: bad input, or the queue/job is not in a state the action applies to."""


def lock_name(ref: QueueRef) -> str:
    return f"queue:{ref.name}"


@dataclass
class Context:
    """What an operation sees: the queue, its connection, the parameters, the counts it starts from."""

    ref: QueueRef
    client: QueueClient
    params: dict[str, Any]
    counts: bullmq_jobs.QueueCounts
    batch: int
    op: audit.Operation | None = None
    started_ms: int = field(default_factory=now_ms)
    _last_progress: float = 0.0

    def progress(self, message: str, step: str, force: bool = False, **details: Any) -> None:
        """A progress line (store event + terminal), at most every PROGRESS_EVERY_S unless forced."""
        now = time.monotonic()
        if self.op is None or (not force and now - self._last_progress < PROGRESS_EVERY_S):
            return
        self._last_progress = now
        self.op.progress(message, step, **details)


@dataclass
class Preview:
    summary: str
    jobs: int  # how many jobs the action would touch
    steps: list[str]
    destructive: bool
    noop: bool = False
    confirm: str = ""  # what to type (the queue name, or the job id)


@dataclass
class Outcome:
    detail: str
    jobs: int  # jobs affected
    noop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueOperation:
    name: str
    permission: str
    plan: Callable[[Context], Preview]
    execute: Callable[[Context], Outcome]
    label: str  # for messages: "retry all failed jobs"


# ------------------------------------------------------------------------------------------------ helpers


def _job_id(ctx: Context) -> str:
    job_id = str(ctx.params.get("job_id") or "").strip()
    if not job_id or len(job_id) > 512 or any(c in job_id for c in "\r\n"):
        raise QueueRefusal("a job id is required (1..512 characters, one line)")
    return job_id


def _whole(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QueueRefusal(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise QueueRefusal(f"{what} must be a whole number in [{low}, {high}], got {str(value)[:40]}")
    return int(number)


def _require_state(ctx: Context, job_id: str, wanted: tuple[str, ...]) -> str:
    exists = ctx.client.timed("exists", "EXISTS", ctx.ref.base + job_id)
    if not exists:
        raise QueueRefusal(f"no job '{job_id}' in {ctx.ref.name}")
    state = bullmq_jobs.job_state(ctx.client, job_id)
    if state not in wanted:
        raise QueueRefusal(f"job '{job_id}' is {state}, not {' or '.join(wanted)}")
    return state


def _lifo(ctx: Context, job_id: str) -> bool:
    opts = ctx.client.timed("opts", "HGET", ctx.ref.base + job_id, "opts")
    try:
        return bool(json.loads(opts or b"{}").get("lifo")) if opts and len(opts) < 65536 else False
    except (ValueError, AttributeError):
        return False


def _keys(ref: QueueRef, *suffixes: str) -> list[str]:
    return [ref.key(suffix) for suffix in suffixes]


def _batches_for(count: int, batch: int) -> int:
    return math.ceil(count / batch) if count else 0


# ------------------------------------------------------------------------------------------------ retry


def _plan_retry(ctx: Context) -> Preview:
    job_id = _job_id(ctx)
    _require_state(ctx, job_id, ("failed",))
    return Preview(f"move failed job {job_id} back to waiting (BullMQ reprocessJob)", 1,
                   [f"reprocessJob {job_id}: failed → waiting, failedReason cleared"], destructive=False)


def _retry(ctx: Context) -> Outcome:
    job_id = _job_id(ctx)
    ref = ctx.ref
    result = ctx.client.script(
        "reprocessJob",
        [ref.base + job_id, *_keys(ref, "events", "failed", "wait", "meta", "active", "marker", "prioritized", "pc")],
        [job_id, "RPUSH" if _lifo(ctx, job_id) else "LPUSH", "failedReason", "failed", "0", "0"],
    )
    if result == -1:
        raise QueueRefusal(f"no job '{job_id}' in {ref.name}")
    if result == -3:
        raise QueueRefusal(f"job '{job_id}' is not failed (any more)")
    return Outcome(f"job {job_id} moved from failed to waiting", 1)


def _reason(ctx: Context) -> str:
    return str(ctx.params.get("reason") or "")


def _plan_retry_all(ctx: Context) -> Preview:
    reason = _reason(ctx)
    if reason:
        ids, scanned = bullmq_jobs.failed_ids_with_reason(ctx.client, reason)
        ctx.params["_ids"] = ids
        return Preview(
            f"retry the {len(ids)} failed job(s) whose failure reason is {reason[:80]!r} (of {scanned} failed)",
            len(ids), [f"reprocessJob per job, {ctx.batch} per round trip, {_batches_for(len(ids), ctx.batch)}"
                       " round trip(s)"], destructive=False, noop=not ids)
    failed = ctx.counts.failed
    return Preview(
        f"retry all {failed} failed job(s): failed → waiting (BullMQ moveJobsToWait)", failed,
        [f"moveJobsToWait, at most {ctx.batch} jobs per call, about {_batches_for(failed, ctx.batch)} call(s)"],
        destructive=False, noop=failed == 0)


def _retry_all(ctx: Context) -> Outcome:
    ref, client = ctx.ref, ctx.client
    reason = _reason(ctx)
    if reason:
        ids = ctx.params.pop("_ids", None)
        if ids is None:
            ids, _ = bullmq_jobs.failed_ids_with_reason(client, reason)
        keys_tail = _keys(ref, "events", "failed", "wait", "meta", "active", "marker", "prioritized", "pc")
        retried = 0
        for start in range(0, len(ids), ctx.batch):
            chunk = ids[start : start + ctx.batch]
            sha = client.sha("reprocessJob")
            replies = client.pipeline("reprocessJob×batch", [
                ("EVALSHA", sha, 9, ref.base + job_id, *keys_tail, job_id, "LPUSH", "failedReason", "failed", "0", "0")
                for job_id in chunk
            ])  # fmt: skip
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            retried += sum(1 for r in replies if r == 1)
            ctx.progress(f"retried {retried} of {len(ids)}", "batch", retried=retried, total=len(ids))
        return Outcome(f"retried {retried} failed job(s) with reason {reason[:80]!r}"
                       f" ({len(ids) - retried} had left the failed state)", retried, noop=retried == 0)
    # jobs failing again after the start are not picked up again: moveJobsToWait takes finishedOn ≤ timestamp
    moved, calls = _move_to_wait(ctx, "failed", ctx.started_ms, "retried")
    return Outcome(f"retried {moved} failed job(s) in {calls} call(s) of at most {ctx.batch}", moved,
                   noop=moved == 0)


def _move_to_wait(ctx: Context, state: str, timestamp: float, verb: str) -> tuple[int, int]:
    """BullMQ's moveJobsToWait (what retryJobs/promoteJobs loop over), batch by batch: (jobs moved, calls)."""
    ref, client = ctx.ref, ctx.client
    total = int(client.timed("zcard", "ZCARD", ref.key(state)))
    keys = [ref.base, *_keys(ref, "events", state, "wait", "paused", "meta", "active", "marker")]
    batcher = Batcher(ctx.batch)
    left, calls = total, 0
    while calls <= total + 1:  # every call that reports more moved at least one job
        size = batcher.size
        began = time.perf_counter()
        more, now_left = client.script_then("moveJobsToWait", keys, [size, timestamp, state],
                                            ("ZCARD", ref.key(state)))
        calls += 1
        batcher.observe(max(0, left - int(now_left)), (time.perf_counter() - began) * 1000)
        left = int(now_left)
        ctx.progress(f"{verb} {max(0, total - left)} of {total} ({calls} call(s), {size} per call)", "batch",
                     done=max(0, total - left), total=total)
        if not more:
            break
    return max(0, total - left), calls


# ------------------------------------------------------------------------------------------------ remove


def _plan_remove(ctx: Context) -> Preview:
    job_id = _job_id(ctx)
    state = _require_state(ctx, job_id, ("waiting", "delayed", "prioritized", "waiting-children", "completed",
                                         "failed", "paused", "unknown"))
    return Preview(f"remove {state} job {job_id} and its data, logs and children (BullMQ removeJob)", 1,
                   [f"removeJob {job_id} (refused by BullMQ while a worker holds its lock)"], destructive=True,
                   confirm=job_id)


def _remove(ctx: Context) -> Outcome:
    job_id = _job_id(ctx)
    result = ctx.client.script("removeJob", [ctx.ref.base + job_id, ctx.ref.key("repeat")],
                               [job_id, "1", ctx.ref.base])
    if result == 0:
        raise QueueRefusal(f"job '{job_id}' (or one of its children) is locked by a worker: not removed")
    if result == -8:
        raise QueueRefusal(f"job '{job_id}' is the next run of a job scheduler: remove the scheduler instead")
    return Outcome(f"job {job_id} removed", 1)


# ------------------------------------------------------------------------------------------------ promote


def _plan_promote(ctx: Context) -> Preview:
    job_id = _job_id(ctx)
    _require_state(ctx, job_id, ("delayed",))
    return Preview(f"promote delayed job {job_id} to waiting now (BullMQ promote)", 1,
                   [f"promote {job_id}"], destructive=False)


def _promote(ctx: Context) -> Outcome:
    job_id = _job_id(ctx)
    ref = ctx.ref
    result = ctx.client.script(
        "promote", _keys(ref, "delayed", "wait", "paused", "meta", "prioritized", "active", "pc", "events", "marker"),
        [ref.base, job_id])
    if result == -3:
        raise QueueRefusal(f"job '{job_id}' is not delayed (any more)")
    return Outcome(f"job {job_id} promoted to waiting", 1)


def _plan_promote_all(ctx: Context) -> Preview:
    delayed = ctx.counts.delayed
    return Preview(f"promote all {delayed} delayed job(s) to waiting now (BullMQ promoteJobs)", delayed,
                   [f"moveJobsToWait on delayed, at most {ctx.batch} per call"], destructive=False,
                   noop=delayed == 0)


def _promote_all(ctx: Context) -> Outcome:
    moved, calls = _move_to_wait(ctx, "delayed", _INF_SCORE, "promoted")
    return Outcome(f"promoted {moved} delayed job(s) in {calls} call(s)", moved, noop=moved == 0)


# ------------------------------------------------------------------------------------------------ pause / resume


def _plan_pause(ctx: Context) -> Preview:
    if ctx.counts.paused:
        return Preview("already paused", 0, [], destructive=False, noop=True)
    return Preview(f"pause the queue: workers take no new job ({ctx.counts.waiting} waiting stay queued;"
                   f" {ctx.counts.active} active finish)", 0, ["pause (meta.paused = 1)"], destructive=False)


def _pause(ctx: Context) -> Outcome:
    ref = ctx.ref
    ctx.client.script("pause", _keys(ref, "wait", "paused", "meta", "prioritized", "events", "delayed", "marker"),
                      ["paused", "1"])
    return Outcome("queue paused", 0)


def _plan_resume(ctx: Context) -> Preview:
    if not ctx.counts.paused:
        return Preview("not paused", 0, [], destructive=False, noop=True)
    return Preview(f"resume the queue: workers take the {ctx.counts.waiting} waiting job(s) again", 0,
                   ["resume (meta.paused removed, legacy paused list moved back ≤ 7,000 per call)"],
                   destructive=False)


def _resume(ctx: Context) -> Outcome:
    ref = ctx.ref
    keys = _keys(ref, "paused", "wait", "meta", "prioritized", "events", "delayed", "marker")
    for _ in range(1000):
        remaining = ctx.client.script("pause", keys, ["resumed", "1"])
        if not remaining:
            break
        ctx.progress(f"{remaining} legacy paused job(s) left to move back", "batch")
    return Outcome("queue resumed", 0)


# ------------------------------------------------------------------------------------------------ clean


def _clean_params(ctx: Context) -> tuple[str, int, int, int]:
    state = str(ctx.params.get("state") or "")
    if state not in CLEANABLE:
        raise QueueRefusal(f"clean applies to {' or '.join(CLEANABLE)} jobs, not {state[:40]!r}")
    older_than_s = _whole(ctx.params.get("older_than_s", 0), "older than (seconds)", 0, 10 * 365 * 86400)
    limit = _whole(ctx.params.get("limit", 10_000), "limit", 1, 10_000_000)
    cutoff = ctx.started_ms - older_than_s * 1000
    return state, older_than_s, limit, cutoff


def _plan_clean(ctx: Context) -> Preview:
    state, older_than_s, limit, cutoff = _clean_params(ctx)
    matching = int(ctx.client.timed("zcount", "ZCOUNT", ctx.ref.key(state), 0, cutoff))
    jobs = min(matching, limit)
    return Preview(f"delete {jobs} {state} job(s) finished more than {older_than_s} s ago"
                   f" ({matching} match, limit {limit})", jobs,
                   [f"cleanJobsInSet on {state}, at most {min(ctx.batch, limit)} per call"], destructive=True,
                   noop=jobs == 0, confirm=ctx.ref.queue)


def _clean(ctx: Context) -> Outcome:
    state, _older, limit, cutoff = _clean_params(ctx)
    ref, client = ctx.ref, ctx.client
    batcher = Batcher(ctx.batch)
    deleted = calls = 0
    while deleted < limit:
        size = min(batcher.size, limit - deleted)
        began = time.perf_counter()
        # cleanJobsInSet's ARGV[2] is the cutoff (bullmq computes it as now - grace): fixed at the start
        ids = client.script("cleanJobsInSet", [ref.key(state), ref.key("events"), ref.key("repeat")],
                            [ref.base, cutoff, size, state])
        batcher.observe(len(ids), (time.perf_counter() - began) * 1000)
        calls += 1
        deleted += len(ids)
        ctx.progress(f"deleted {deleted} {state} job(s) ({calls} call(s), {size} per call)", "batch",
                     deleted=deleted)
        if len(ids) < size:
            break
    return Outcome(f"deleted {deleted} {state} job(s) in {calls} call(s)", deleted, noop=deleted == 0)


# ------------------------------------------------------------------------------------------------ drain


def _drain_sets(ctx: Context) -> list[str]:
    sets = ["wait", "paused", "prioritized"]
    if ctx.params.get("delayed"):
        sets.append("delayed")
    return sets


def _plan_drain(ctx: Context) -> Preview:
    c = ctx.counts
    jobs = c.waiting + c.paused_list + c.prioritized + (c.delayed if ctx.params.get("delayed") else 0)
    return Preview(
        f"delete the {jobs} waiting{', delayed' if ctx.params.get('delayed') else ''} and prioritized job(s)"
        " (active, completed and failed jobs and job-scheduler runs stay)", jobs,
        [f"BullMQ's drain removal on {', '.join(_drain_sets(ctx))}, at most {ctx.batch} per call"],
        destructive=True, noop=jobs == 0, confirm=ctx.ref.queue)


def _drain(ctx: Context) -> Outcome:
    # BullMQ's drain script empties the lists in ONE call (minutes on a big queue); drainBatch is its removal
    # code with a bounded main (collectors/bullmq_scripts.py), called until the state is empty.
    ref, client = ctx.ref, ctx.client
    batcher = Batcher(ctx.batch)
    deleted = calls = 0
    for suffix in _drain_sets(ctx):
        kind = "list" if suffix in ("wait", "paused") else "zset"
        budget = int(client.timed("size", "LLEN" if kind == "list" else "ZCARD", ref.key(suffix)))
        removed_here = 0
        while removed_here < budget:  # jobs added while draining are not chased for ever
            size = batcher.size
            began = time.perf_counter()
            taken, removed = client.script("drainBatch", [ref.key(suffix), ref.key("repeat")],
                                           [ref.base, size, kind])
            batcher.observe(int(taken), (time.perf_counter() - began) * 1000)
            calls += 1
            removed_here += int(removed)
            ctx.progress(f"deleted {deleted + removed_here} job(s) ({suffix}, {size} per call)", "batch",
                         deleted=deleted + removed_here)
            if int(taken) < size or not int(removed):
                break
        deleted += removed_here
    return Outcome(f"drained {deleted} job(s) in {calls} call(s)", deleted, noop=deleted == 0)


# ------------------------------------------------------------------------------------------------ obliterate


def _plan_obliterate(ctx: Context) -> Preview:
    c = ctx.counts
    jobs = (c.waiting + c.paused_list + c.active + c.delayed + c.prioritized + c.waiting_children + c.completed
            + c.failed)
    if c.active and not ctx.params.get("force"):
        raise QueueRefusal(f"{c.active} job(s) are active: wait for them, or obliterate with force")
    return Preview(f"destroy the queue and all its {jobs} job(s), metrics and events (BullMQ obliterate)", jobs,
                   ["pause", f"obliterate, at most {ctx.batch} jobs per call"], destructive=True,
                   confirm=ctx.ref.queue)


def _obliterate(ctx: Context) -> Outcome:
    ref, client = ctx.ref, ctx.client
    _pause(ctx)  # BullMQ obliterates paused queues only (its own obliterate() pauses first)
    calls = 0
    force = "force" if ctx.params.get("force") else ""
    batcher = Batcher(ctx.batch)
    while True:
        size = batcher.size
        began = time.perf_counter()
        result = client.script("obliterate", [ref.key("meta"), ref.base], [size, force])
        batcher.observe(size, (time.perf_counter() - began) * 1000)
        calls += 1
        if result == -2:
            raise QueueRefusal("jobs are active: nothing more was removed (use force)")
        if result == -1:
            raise QueueRefusal("the queue was resumed while obliterating; stopped")
        ctx.progress(f"obliterating: {calls} batch(es) done", "batch")
        if result == 0:
            break
    return Outcome(f"queue obliterated in {calls} batch(es)", 0)


OPERATIONS: dict[str, QueueOperation] = {
    op.name: op
    for op in (
        QueueOperation(RETRY, QUEUE_ACT, _plan_retry, _retry, "retry a failed job"),
        QueueOperation(RETRY_ALL, QUEUE_ACT, _plan_retry_all, _retry_all, "retry failed jobs"),
        QueueOperation(REMOVE, QUEUE_ACT, _plan_remove, _remove, "remove a job"),
        QueueOperation(PROMOTE, QUEUE_ACT, _plan_promote, _promote, "promote a delayed job"),
        QueueOperation(PROMOTE_ALL, QUEUE_ACT, _plan_promote_all, _promote_all, "promote all delayed jobs"),
        QueueOperation(PAUSE, QUEUE_ACT, _plan_pause, _pause, "pause the queue"),
        QueueOperation(RESUME, QUEUE_ACT, _plan_resume, _resume, "resume the queue"),
        QueueOperation(CLEAN, QUEUE_ACT, _plan_clean, _clean, "clean old jobs"),
        QueueOperation(DRAIN, QUEUE_ACT, _plan_drain, _drain, "drain waiting jobs"),
        QueueOperation(OBLITERATE, QUEUE_OBLITERATE, _plan_obliterate, _obliterate, "obliterate the queue"),
    )
}


# ------------------------------------------------------------------------------------------------ the frame


def _snapshot(client: QueueClient) -> dict[str, Any]:
    return {"counts": bullmq_jobs.counts(client).as_dict()}


class QueueActions:
    """The queue actions API for the CLI and the dashboard; holds no per-action state."""

    def __init__(self, config: FleetConfig, store: Store, *, on_progress: audit.ProgressCallback | None = None,
                 batch: int = DEFAULT_BATCH, timeout_s: float = 5.0) -> None:
        self.config = config
        self.store = store
        self.on_progress = on_progress
        self.batch = max(1, min(int(batch), MAX_BATCH))
        self.timeout_s = timeout_s

    def ref(self, queue: str) -> QueueRef:
        try:
            return parse_ref(self.config, queue)
        except UnknownQueue as error:
            raise QueueRefusal(str(error)) from None

    def _operation(self, action: str) -> QueueOperation:
        if action not in OPERATIONS:
            raise QueueRefusal(f"unknown queue action '{action}'; known: {', '.join(OPERATIONS)}")
        return OPERATIONS[action]

    def plan(self, action: str, queue: str, principal: Any | None = None, **params: Any) -> Plan:
        """The dry-run preview: what the action would do and to how many jobs, or why it would be refused."""
        target = queue
        try:
            operation = self._operation(action)
            ref = self.ref(queue)
            target = ref.name
            if principal is not None:
                require(principal, operation.permission)
            with QueueClient(ref, self.timeout_s) as client:
                ctx = Context(ref, client, dict(params), bullmq_jobs.counts(client), self.batch)
                preview = operation.plan(ctx)
        except PermissionDenied as error:
            return Plan(action, target, target, False, f"permission denied: {error}", params=params)
        except QueueRefusal as error:
            return Plan(action, target, target, False, str(error), params=params)
        except Exception as error:  # Redis unreachable, a WRONGTYPE: say so, never crash the caller
            return Plan(action, target, target, False, f"cannot read the queue: {type(error).__name__}: {error}",
                        params=params)
        return Plan(action, ref.name, ref.name, True, preview.summary, affected=[], steps=preview.steps,
                    confirm_text=preview.confirm or ref.queue, disruptive=preview.destructive, noop=preview.noop,
                    params={**params, "jobs": preview.jobs})

    def run(self, principal: Any, action: str, queue: str, *, op_id: str | None = None,
            **params: Any) -> OperationResult:
        """Check the role, lock the queue, audit, run the operation in batches, audit; never raises."""
        op_id = op_id or new_op_id()
        status = audit.operation_status(self.store, op_id)
        if status and status.get("state") not in (None, "running"):  # idempotent by op id, like FleetActions
            state = str(status["state"])
            return OperationResult(state in (audit.OK, audit.NOOP), f"already done (op {op_id}): {status['message']}",
                                   after=status.get("after") or {}, op_id=op_id, result=state, action=action,
                                   target=str(status.get("target", "")))
        public = {k: v for k, v in params.items() if not k.startswith("_")}
        op = audit.Operation(self.store, op_id, principal, action, f"queue:{queue}", queue, public,
                             self.on_progress)
        try:
            operation = self._operation(action)
            require(principal, operation.permission)
            ref = self.ref(queue)
        except PermissionDenied as error:
            return self._refuse(op, f"permission denied: {error}")
        except QueueRefusal as error:
            return self._refuse(op, str(error))
        op.service, op.target = lock_name(ref), ref.name
        got, holder = self.store.acquire_lock(lock_name(ref), action, principal.name, op_id, LOCK_TTL_S)
        if not got:
            return self._refuse(op, format_busy(holder))
        before: dict[str, Any] = {}
        client = QueueClient(ref, self.timeout_s)
        try:
            try:
                ctx = Context(ref, client, dict(params), bullmq_jobs.counts(client), self.batch, op)
                before = {"counts": ctx.counts.as_dict()}
                preview = operation.plan(ctx)  # the same preflight as the dry run, on the counts audited as before
            except QueueRefusal as error:
                return self._refuse(op, str(error), before)
            except Exception as error:  # Redis unreachable or a wrong-type key: nothing was changed
                message = f"cannot read the queue: {type(error).__name__}: {error}"
                op.finish(audit.FAILED, message, before, {}, message)
                return OperationResult(False, message, before=before, op_id=op_id, result=audit.FAILED,
                                       action=action, target=ref.name, error=message)
            op.begin(before)
            op.progress(preview.summary, "plan", jobs=preview.jobs)
            started = time.perf_counter()
            result: OperationResult
            try:
                outcome = operation.execute(ctx)
                elapsed = time.perf_counter() - started
                word = audit.NOOP if outcome.noop else audit.OK
                result = OperationResult(True, outcome.detail, result=word)
                result.after = {"jobs": outcome.jobs, "elapsed_s": round(elapsed, 3),
                                "jobs_per_s": round(outcome.jobs / elapsed, 1) if elapsed > 0 and outcome.jobs else 0,
                                **client.stats.as_dict(), **outcome.extra}
            except QueueRefusal as error:
                result = OperationResult(False, str(error), result=audit.FAILED, error=str(error))
                result.after = client.stats.as_dict()
            except Exception as error:  # Redis went away mid-way, a script error: audited as a failure
                message = f"{type(error).__name__}: {error}"
                result = OperationResult(False, f"failed: {message}", result=audit.FAILED, error=message)
                result.after = client.stats.as_dict()
            try:
                result.after = {**_snapshot(client), **result.after}
            except Exception as error:  # the after-state is best effort; the outcome stands
                result.after = {**result.after, "counts_error": str(error)}
        finally:
            self.store.release_lock(lock_name(ref), op_id)
            client.close()
        result.op_id, result.action, result.target, result.before = op_id, action, ref.name, before
        op.finish(result.result, result.detail, before, result.after, result.error)
        return result

    def _refuse(self, op: audit.Operation, message: str, before: dict[str, Any] | None = None) -> OperationResult:
        op.finish(audit.REFUSED, message, before or {}, {}, message)
        return OperationResult(False, message, before=before or {}, op_id=op.op_id, result=audit.REFUSED,
                               action=op.action, target=op.target, error=message)
