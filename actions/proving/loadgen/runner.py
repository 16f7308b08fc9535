"""Runs a bounded load against a loopback target and returns one merged, JSON-able LoadResult.

Like locust, the pieces are kept apart: shapes say *how much* (pure functions), the client says *how* (one event loop's
connections and counters), and this runner says *where and for how long*: it checks the target, splits the work over N
worker processes (each with its own uvloop, since one Python core tops out near 0.66× wrk —
docs/design-notes.md#load-generation), forwards progress every ~0.5 s, and merges the workers' counters and histograms
at the end.

Safety rules enforced here, not left to callers:
- only loopback targets (127.0.0.0/8, ::1; names must resolve to loopback only and are pinned to that address),
  unless the exact host is listed in `allowed_hosts`;
- every run is bounded by `duration_s` AND `max_requests` and stops by itself; a watchdog in the parent stops
  (then terminates) workers that overrun;
- a cancel Event (or SIGINT when run from the main thread) stops a run within ~0.1 s.

Size (~600 lines): the worker processes' life cycle (check → start → watch → stop → merge) and the safety
rules above are one sequence; kept together so the safety rules can be audited in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import multiprocessing
import os
import queue as queue_module
import resource
import signal
import socket
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from actions.proving.loadgen.client import TRANSPORT_ERRORS, LoadClient, RequestTemplate, Target, parse_target
from actions.proving.loadgen.histogram import Histogram
from actions.proving.loadgen.shapes import Constant, LoadShape

MAX_DURATION_S = 3600.0
MAX_REQUESTS = 50_000_000
PROGRESS_EVERY_S = 0.5
_CANCEL_POLL_S = 0.05
# a worker process needs time to start Python and import uvloop before its own clock starts
_WORKER_STARTUP_ALLOWANCE_S = 30.0
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class TargetRefused(ValueError):
    """The load target is not loopback and not explicitly allowed."""


def check_target(url: str, allowed_hosts: Sequence[str] = ()) -> Target:
    """The parsed target when it is safe to load; raises TargetRefused otherwise.

    Host names are resolved once and the connection is pinned to the resolved loopback address, so a name cannot
    point somewhere else between this check and the first connection.
    """
    target = parse_target(url)
    host = target.connect_host
    if host.lower() in {allowed.lower() for allowed in allowed_hosts}:
        return target
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if address.is_loopback:
            return target
        raise TargetRefused(
            f"refusing to send load to {host}: only loopback addresses (127.0.0.0/8, ::1) are allowed unless the"
            " host is listed in allowed_hosts"
        )
    try:
        infos = socket.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise TargetRefused(f"refusing to send load to {host}: it does not resolve ({error})") from None
    addresses = [str(info[4][0]) for info in infos]
    outside = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if outside or not addresses:
        raise TargetRefused(
            f"refusing to send load to {host}: it resolves to non-loopback {', '.join(outside)}; list it in"
            " allowed_hosts to allow it explicitly"
        )
    return target._replace(connect_host=addresses[0])


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how hard, and the bounds. Closed loop unless `rate` or `shape` is given."""

    url: str
    method: str = "GET"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    connections: int = 10
    duration_s: float = 10.0
    max_requests: int = 1_000_000
    rate: float | None = None  # open loop at a constant rate (req/s over all workers)
    shape: LoadShape | None = None  # open loop following a shape; cut at duration_s
    workers: int = 1  # event loops, each in its own process when > 1
    timeout_s: float = 5.0
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S:g}], got {self.duration_s}")
        if not 1 <= self.max_requests <= MAX_REQUESTS:
            raise ValueError(f"max_requests must be in [1, {MAX_REQUESTS}], got {self.max_requests}")
        if not 1 <= self.connections <= 10_000:
            raise ValueError(f"connections must be in [1, 10000], got {self.connections}")
        if not 1 <= self.workers <= max(2, 2 * (os.cpu_count() or 1)):
            raise ValueError(f"workers must be in [1, 2 x CPU count], got {self.workers}")
        if self.workers > self.connections:
            raise ValueError(f"workers ({self.workers}) cannot exceed connections ({self.connections})")
        if not 0 < self.timeout_s <= 120:
            raise ValueError(f"timeout_s must be in (0, 120], got {self.timeout_s}")
        if self.method.upper() not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.rate is not None and self.shape is not None:
            raise ValueError("give either rate or shape, not both")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0 req/s, got {self.rate}")

    @property
    def effective_shape(self) -> LoadShape | None:
        if self.shape is not None:
            return self.shape
        if self.rate is not None:
            return Constant(self.rate, self.duration_s)
        return None

    @property
    def mode(self) -> str:
        return "closed" if self.effective_shape is None else "open"


class Progress(NamedTuple):
    """What the CLI and dashboard show while a run goes on; rates and p95 are over the last interval."""

    elapsed_s: float
    requests: int  # outcomes so far (responses + transport errors)
    rps: float
    p95_ms: float
    errors: int

    def to_dict(self) -> dict[str, float]:
        return self._asdict()


@dataclass
class LoadResult:
    run_id: str
    url: str
    method: str
    mode: str  # closed | open
    connections: int
    workers: int
    duration_s: float  # the bound that was set
    elapsed_s: float  # how long the load actually ran (longest worker)
    stop_reason: str  # duration | max_requests | shape_done | cancelled | error
    requests: int  # outcomes: responses + transport errors (== started - cancelled)
    started: int
    ok: int  # 2xx and 3xx responses
    errors: int  # 4xx/5xx responses + transport errors
    errors_by_kind: dict[str, int]  # http_4xx, http_5xx, connect, timeout, closed_on_reuse, closed, reset, protocol
    status_counts: dict[str, int]
    idle_closes: int  # idle keep-alive connections the peer closed before a request was written (retried)
    connects: int
    cancelled: int  # in flight when the run was cancelled
    unsent: int  # open loop: scheduled but never started (the generator or the server could not keep up)
    rps: float
    latency_ms: dict[str, float]
    instances: dict[str, int]  # X-Instance-Id value -> responses
    cpu_s: float  # the generator's own CPU time (user + system), all workers
    cpu_per_request_us: float
    cpu_utilization: float  # cpu_s / (elapsed_s x workers): near 1.0 means the generator itself is the bottleneck
    saturated: bool
    bytes_received: int
    target_rate: float | None = None
    last_error: str = ""
    worker_errors: list[str] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)
    histogram: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def latency_histogram(self) -> Histogram:
        return Histogram.from_dict(self.histogram)


# ---- one event loop -------------------------------------------------------------------------------------


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # plain asyncio works, at ~0.5x the throughput (docs/design-notes.md#load-generation)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _thread_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


async def _drive(
    spec: LoadSpec,
    target: Target,
    run_id: str,
    index: int,
    report: Callable[[dict[str, Any]], None],
    is_cancelled: Callable[[], bool],
) -> dict[str, Any]:
    """One worker's share of the run; returns its final snapshot (counters + histogram + timing)."""
    workers = spec.workers
    template = RequestTemplate(target, spec.method, spec.body, spec.headers, id_prefix=f"{run_id}-{index}-")
    client = LoadClient(
        target,
        template,
        connections=_split(spec.connections, workers, index),
        max_requests=_split(spec.max_requests, workers, index),
        timeout_s=spec.timeout_s,
    )
    shape = spec.effective_shape
    loop = asyncio.get_running_loop()
    cpu_start = _thread_cpu_s()
    start = time.perf_counter()
    deadline_hit = False

    def on_deadline() -> None:
        nonlocal deadline_hit
        deadline_hit = True
        client.stop()

    deadline = loop.call_later(spec.duration_s, on_deadline)
    main = asyncio.ensure_future(client.run_open(shape, 1 / workers) if shape is not None else client.run_closed())
    cancelled = False
    next_report = start + PROGRESS_EVERY_S
    # in-flight requests get the timeout to finish after the deadline; past that the run is cut short
    hard_stop = start + spec.duration_s + spec.timeout_s + 2.0

    def snapshot() -> dict[str, Any]:
        data = client.stats.snapshot()
        data["elapsed_s"] = time.perf_counter() - start
        data["cpu_s"] = _thread_cpu_s() - cpu_start
        return data

    while not main.done():
        await asyncio.wait([main], timeout=_CANCEL_POLL_S)
        now = time.perf_counter()
        if not cancelled and (is_cancelled() or now > hard_stop):
            cancelled = True
            main.cancel()
        if now >= next_report and not main.done():
            report(snapshot())
            next_report = now + PROGRESS_EVERY_S
    deadline.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        main.result()
    final = snapshot()
    if cancelled:
        final["stop_reason"] = "cancelled"
    elif deadline_hit:
        final["stop_reason"] = "duration"
    elif client.remaining <= 0:
        final["stop_reason"] = "max_requests"
    else:
        final["stop_reason"] = "shape_done"
    return final


def _run_in_this_thread(
    spec: LoadSpec,
    target: Target,
    run_id: str,
    index: int,
    report: Callable[[dict[str, Any]], None],
    is_cancelled: Callable[[], bool],
    sigint_cancels: Callable[[], None] | None = None,
) -> dict[str, Any]:
    loop = new_event_loop()
    try:
        if sigint_cancels is not None:
            loop.add_signal_handler(signal.SIGINT, sigint_cancels)
        return loop.run_until_complete(_drive(spec, target, run_id, index, report, is_cancelled))
    finally:
        if sigint_cancels is not None:
            loop.remove_signal_handler(signal.SIGINT)
        loop.close()


def _worker_process(
    spec: LoadSpec,
    target: Target,
    run_id: str,
    index: int,
    cancel: Any,  # multiprocessing.Event
    results: Any,  # multiprocessing.Queue
) -> None:
    # Ctrl-C reaches the whole process group; the parent decides and tells us through `cancel`
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        final = _run_in_this_thread(
            spec, target, run_id, index, lambda data: results.put(("progress", index, data)), cancel.is_set
        )
        results.put(("done", index, final))
    except BaseException as error:
        results.put(("error", index, f"worker {index}: {type(error).__name__}: {error}"))


# ---- merging ----------------------------------------------------------------------------------------------

_COUNTERS = ("started", "responses", "idle_closes", "connects", "cancelled", "unsent", "bytes_received")


def merge_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Adds worker snapshots: counters and dicts sum, histograms merge bucket by bucket."""
    histogram = Histogram()
    merged: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
    merged.update(status_counts={}, errors={}, instances={}, elapsed_s=0.0, cpu_s=0.0, last_error="")
    for snap in snapshots:
        histogram.merge(Histogram.from_dict(snap["histogram"]))
        for key in _COUNTERS:
            merged[key] += snap[key]
        for key in ("status_counts", "errors", "instances"):
            for name, count in snap[key].items():
                merged[key][name] = merged[key].get(name, 0) + count
        merged["elapsed_s"] = max(merged["elapsed_s"], snap["elapsed_s"])
        merged["cpu_s"] += snap["cpu_s"]
        merged["last_error"] = snap["last_error"] or merged["last_error"]
    merged["histogram"] = histogram
    return merged


def _error_kinds(merged: dict[str, Any]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for code, count in merged["status_counts"].items():
        if int(code) >= 400:
            key = f"http_{str(code)[0]}xx"
            kinds[key] = kinds.get(key, 0) + count
    for kind in TRANSPORT_ERRORS:
        if merged["errors"].get(kind):
            kinds[kind] = merged["errors"][kind]
    return kinds


class _ProgressTracker:
    """Turns cumulative snapshots into per-interval Progress and keeps the timeline."""

    def __init__(self, callback: Callable[[Progress], None] | None) -> None:
        self.callback = callback
        self.started = time.perf_counter()
        self.previous_histogram = Histogram()
        self.previous_requests = 0
        self.previous_at = self.started
        self.timeline: list[dict[str, float]] = []

    def update(self, snapshots: Sequence[dict[str, Any]]) -> None:
        merged = merge_snapshots(snapshots)
        now = time.perf_counter()
        histogram: Histogram = merged["histogram"]
        requests = merged["responses"] + sum(merged["errors"].values())
        span = max(now - self.previous_at, 1e-6)
        interval = histogram.minus(self.previous_histogram)
        progress = Progress(
            elapsed_s=round(now - self.started, 3),
            requests=requests,
            rps=round((requests - self.previous_requests) / span, 1),
            p95_ms=round(interval.percentile_us(95) / 1000, 3),
            errors=sum(_error_kinds(merged).values()),
        )
        self.previous_histogram, self.previous_requests, self.previous_at = histogram, requests, now
        self.timeline.append(progress.to_dict())
        if self.callback is not None:
            self.callback(progress)


# ---- the public entry point -------------------------------------------------------------------------------


def run_load(
    spec: LoadSpec,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    handle_sigint: bool = True,
) -> LoadResult:
    """Runs the load and blocks until it ends (duration, request budget, shape end or cancel).

    Call it from a thread without a running event loop (the dashboard: a background thread; the CLI: the main
    thread, where SIGINT cancels the run instead of killing it). With workers > 1 the workers are spawned
    processes started without re-running the caller's `__main__` (see `_parent_main_hidden`).
    The progress callback runs on the generator's own thread (workers == 1) or in the parent: keep it quick.
    """
    target = check_target(spec.url, spec.allowed_hosts)
    cancel = cancel or threading.Event()
    run_id = uuid.uuid4().hex[:8]
    tracker = _ProgressTracker(progress)
    in_main_thread = threading.current_thread() is threading.main_thread()
    worker_errors: list[str] = []
    if spec.workers == 1:
        final = _run_in_this_thread(
            spec,
            target,
            run_id,
            0,
            lambda data: tracker.update([data]),
            cancel.is_set,
            cancel.set if handle_sigint and in_main_thread else None,
        )
        finals = [final]
    else:
        finals = _run_processes(spec, target, run_id, tracker, cancel, handle_sigint and in_main_thread, worker_errors)
    tracker.update(finals)
    return _result(spec, run_id, finals, tracker, worker_errors, cancel.is_set())


def _run_processes(
    spec: LoadSpec,
    target: Target,
    run_id: str,
    tracker: _ProgressTracker,
    cancel: threading.Event,
    handle_sigint: bool,
    worker_errors: list[str],
) -> list[dict[str, Any]]:
    # spawn, not fork: the dashboard runs threads, and forking a threaded process can deadlock the child
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    stop_workers = context.Event()
    processes = [
        context.Process(
            target=_worker_process,
            args=(spec, target, run_id, index, stop_workers, results),
            name=f"fleetdeck-loadgen-{index}",
            daemon=True,
        )
        for index in range(spec.workers)
    ]
    previous_handler = None
    if handle_sigint:
        previous_handler = signal.signal(signal.SIGINT, lambda _signum, _frame: cancel.set())
    latest: dict[int, dict[str, Any]] = {}
    finals: dict[int, dict[str, Any]] = {}
    started_at = time.monotonic()
    overrun_at = started_at + _WORKER_STARTUP_ALLOWANCE_S + spec.duration_s + spec.timeout_s + 5.0
    next_progress = started_at + PROGRESS_EVERY_S
    try:
        with _parent_main_hidden():
            for process in processes:
                process.start()
        pending = set(range(spec.workers))
        while pending:
            now = time.monotonic()
            if cancel.is_set() or now > overrun_at:
                stop_workers.set()
            if now > overrun_at + 5.0:
                for index in list(pending):
                    worker_errors.append(f"worker {index}: did not stop in time; terminated")
                    pending.discard(index)
                break
            try:
                kind, index, payload = results.get(timeout=0.1)
            except queue_module.Empty:
                dead = [i for i in pending if not processes[i].is_alive()]
                if dead:
                    time.sleep(0.2)  # a final message may still be in the pipe
                    with contextlib.suppress(queue_module.Empty):
                        while True:
                            kind, index, payload = results.get_nowait()
                            _handle(kind, index, payload, latest, finals, worker_errors, pending)
                    for index in dead:
                        if index in pending:
                            worker_errors.append(f"worker {index}: exited with code {processes[index].exitcode}")
                            pending.discard(index)
            else:
                _handle(kind, index, payload, latest, finals, worker_errors, pending)
            if time.monotonic() >= next_progress and latest:
                tracker.update(list(latest.values()))
                next_progress = time.monotonic() + PROGRESS_EVERY_S
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        for process in processes:
            if process.pid is None:  # never started (start() of an earlier one failed)
                continue
            process.join(timeout=2.0)
            if process.is_alive():
                process.terminate()  # by its own PID, through the Process handle
                process.join(timeout=2.0)
        results.close()
    # a worker that died keeps its last progress snapshot, so its requests are not lost from the totals
    return [finals[index] if index in finals else latest[index]
            for index in range(spec.workers) if index in finals or index in latest]


@contextlib.contextmanager
def _parent_main_hidden() -> Iterator[None]:
    """Start spawned workers without making them re-run the parent's `__main__` script.

    A spawned child imports the parent's main module by path before unpickling its target. The workers need
    only this module, and re-running the parent's script is wrong wherever that script is not import-safe: a
    CLI or benchmark without a `__main__` guard, or a Streamlit page whose script runner left its temporary file
    in `sys.modules["__main__"]`. So the spawn sees a bare main module while the workers start.
    """
    real_main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real_main


def _handle(
    kind: str,
    index: int,
    payload: Any,
    latest: dict[int, dict[str, Any]],
    finals: dict[int, dict[str, Any]],
    worker_errors: list[str],
    pending: set[int],
) -> None:
    if kind == "progress":
        latest[index] = payload
    elif kind == "done":
        finals[index] = latest[index] = payload
        pending.discard(index)
    else:
        worker_errors.append(str(payload))
        pending.discard(index)


def _result(
    spec: LoadSpec,
    run_id: str,
    finals: list[dict[str, Any]],
    tracker: _ProgressTracker,
    worker_errors: list[str],
    was_cancelled: bool,
) -> LoadResult:
    merged = merge_snapshots(finals)
    histogram: Histogram = merged["histogram"]
    kinds = _error_kinds(merged)
    requests = merged["responses"] + sum(merged["errors"].values())
    ok = sum(count for code, count in merged["status_counts"].items() if 200 <= int(code) < 400)
    elapsed = merged["elapsed_s"]
    reasons = {final.get("stop_reason", "error") for final in finals}
    if was_cancelled or "cancelled" in reasons:
        stop_reason = "cancelled"
    elif worker_errors or not finals:
        stop_reason = "error"
    else:
        # several workers may end for different reasons; the earliest bound to bite is what the user set
        stop_reason = next(r for r in ("max_requests", "shape_done", "duration") if r in reasons)
    cpu_s = merged["cpu_s"]
    utilization = cpu_s / (elapsed * spec.workers) if elapsed > 0 else 0.0
    shape = spec.effective_shape
    return LoadResult(
        run_id=run_id,
        url=spec.url,
        method=spec.method.upper(),
        mode=spec.mode,
        connections=spec.connections,
        workers=spec.workers,
        duration_s=spec.duration_s,
        elapsed_s=round(elapsed, 4),
        stop_reason=stop_reason,
        requests=requests,
        started=merged["started"],
        ok=ok,
        errors=sum(kinds.values()),
        errors_by_kind=kinds,
        status_counts=dict(sorted(merged["status_counts"].items())),
        idle_closes=merged["idle_closes"],
        connects=merged["connects"],
        cancelled=merged["cancelled"],
        unsent=merged["unsent"],
        rps=round(requests / elapsed, 2) if elapsed > 0 else 0.0,
        latency_ms={key: round(value, 3) for key, value in histogram.summary_ms().items()},
        instances=dict(sorted(merged["instances"].items())),
        cpu_s=round(cpu_s, 4),
        cpu_per_request_us=round(cpu_s / requests * 1e6, 2) if requests else 0.0,
        cpu_utilization=round(utilization, 3),
        # a generator near a full core per worker measures its own queueing, not the server
        # (docs/design-notes.md#load-generation)
        saturated=utilization >= 0.9,
        bytes_received=merged["bytes_received"],
        target_rate=None if shape is None else round(shape.scheduled(shape.duration_s) / shape.duration_s, 3),
        last_error=merged["last_error"],
        worker_errors=worker_errors,
        timeline=tracker.timeline,
        histogram=histogram.to_dict(),
    )
