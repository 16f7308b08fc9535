"""The collection schedule: APScheduler 3 BackgroundScheduler, one job per (collector, target) — or, from
``SLOT_JOBS_FROM`` targets of a collector on, one job per slot of targets (see ``CollectorScheduler._grouped``).

Every job has ``max_instances=1`` and ``coalesce=True`` and is bounded by the runner's timeout, so one slow target
only ever delays itself. Collect coroutines of every collector run on ONE asyncio event loop in a dedicated
thread (uvloop when installed); a job hands its coroutine to that loop and returns at once (a job thread that
waited for its poll made the thread pool the limit: 16 threads × a few ms per poll fell short of 10,000 targets
at a 10 s interval). A target whose previous run is still going is skipped, not stacked. The schedule reports
on itself as samples of source ``collector``, target ``scheduler/<collector>``: ``cycles_total``,
``cycles_skipped_total``, ``cycles_late_total`` (started more than ``late_after_s`` after the scheduled time) and
``schedule_lag_max_ms``, written when they change or once a minute. Samples go to an
in-memory queue that a writer job flushes to the Store once a second in one batch (so 1,000 targets cost one
transaction, not 1,000) and feeds to the alert rules. A refresh job first reconciles the replica registry with the
backends (actions/backends/reconcile.py: containers Compose started), then re-reads targets (replicas come and go)
and adds/removes jobs. Rollups run every ``ROLLUP_EVERY_S`` (incremental, a few ms) so long-range charts read
fresh rollups; retention runs every ``RETENTION_EVERY_S``.

Exactly one scheduler per process: :func:`start_embedded` is idempotent and is what the dashboard and the
``collect`` verb call. APScheduler job stores are in memory and never shared (docs/design-notes.md#store).

Size (~540 lines, above the ~500 the codebase aims for): most of it is the one ``CollectorScheduler`` class,
whose jobs (collect, write, refresh, rollup, retention, its own counters) share the job table, the sample queue
and the event-loop thread; split, those would be reached across modules through private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from actions.backends.reconcile import ReplicaReconciler
from collectors.alerts import AlertEvaluator
from collectors.clients import CollectorClients
from collectors.exporter import MetricsServer, SampleExporter
from collectors.registry import AnyCollector, build_collectors, interval_setting
from collectors.runner import SELF_METRICS_EVERY_S, SELF_REGISTRY, Runner
from collectors.self_health import BufferedWriter
from core.config import FleetConfig
from core.redact import redact
from core.samples import Sample
from core.store import Store, TimeSeries

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 1.0
SLOT_JOBS_FROM = 1000  # targets of one collector from which they share slot jobs (see CollectorScheduler._grouped)
SLOTS_PER_S = 20  # slot jobs per second of the interval: 10,000 targets at 10 s -> 200 jobs of ~50 targets
START_RATE_PER_S = 500.0  # job starts per second a collector's schedule is spread to, when its interval allows
REFRESH_TARGETS_S = 10.0
FLUSH_EVERY_S = 1.0
NOTIFY_EVERY_S = 1.0  # how often due notifications are decided and sent (docs/alerts.md)
AUTOSCALE_TICK_S = 1.0  # how often the autoscaler looks for a service whose interval has come
AUTOSCALE_STOP_WAIT_S = 90.0  # a scale in progress finishes first (bounded by the service's boot/drain timeouts)
NOTIFY_STOP_WAIT_S = 30.0  # a delivery attempt in progress finishes first (bounded by alerts.delivery.timeout_s)
ROLLUP_EVERY_S = 60.0
RETENTION_EVERY_S = 3600.0
ROLLUP_FIRST_AFTER_S = 60.0


def interval_of(config: FleetConfig, collector_name: str) -> float:
    return max(MIN_INTERVAL_S, interval_setting(config, collector_name))


class SlotTargets(tuple):
    """The targets one slot job runs (a plain tuple would be ambiguous: targets are NamedTuples)."""

    __slots__ = ()


class LoopThread:
    """One asyncio event loop running in its own daemon thread."""

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # uvloop is optional; plain asyncio works, a bit slower
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fleetdeck-collect-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class BackgroundLoop:
    """`body()` every `every_s` on its own daemon thread until stop(); never raises.

    The notifier and the autoscaler run like this rather than as APScheduler jobs: one pass may take seconds (a
    delivery attempt, a scale that boots replicas) and should delay only its own next pass, without APScheduler
    warning about skipped runs meanwhile."""

    def __init__(self, name: str, every_s: float, body: Any, stop_wait_s: float) -> None:
        self.name = name
        self.every_s = every_s
        self.body = body
        self.stop_wait_s = stop_wait_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fleetdeck-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.body()
            except Exception as error:  # e.g. the store is briefly unavailable: try again next pass
                log.error("%s: %s", self.name, error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.stop_wait_s)


class CollectorScheduler:
    def __init__(
        self,
        config: FleetConfig,
        store: Store,
        collectors: Sequence[AnyCollector] | None = None,
        intervals: dict[str, float] | None = None,
        max_threads: int = 16,
        kind: str = "embedded",
    ) -> None:
        self.config = config
        self.store = store  # the whole store for the ops side: the replica reconcile, notifier, autoscaler
        self.series: TimeSeries = store  # the time-series side: samples written, rolled up, retention applied
        # failed writes wait in a bounded backlog; a heartbeat file reports on the collector (self_health.py)
        self.writer = BufferedWriter(self.series, config.state_path, kind)
        # one set of network clients for every collector built here, closed after them (collectors/clients.py)
        self.clients = CollectorClients()
        self.collectors = (list(collectors) if collectors is not None
                           else build_collectors(config, store, self.clients))
        self.reconciler = ReplicaReconciler(config, store)
        self.intervals = intervals or {}
        self.timeout_s = config.collectors.timeout_s
        # retention first runs with the first rollup, then hourly
        self.last_retention = float("-inf")
        self.runner = Runner(self.timeout_s)
        self.alerts = AlertEvaluator(config.alerts.rules)
        self.pending: queue.SimpleQueue[list[Sample]] = queue.SimpleQueue()
        self.exporter = SampleExporter(config.prometheus.max_age_s)
        self.metrics_server: MetricsServer | None = None
        self.notifier: Any = None  # core.notify.engine.Notifier, when alerts.routes are configured
        self.autoscaler: Any = None  # actions.autoscale.Autoscaler, when a policy is not `off`
        self._loops: list[BackgroundLoop] = []
        self.loop_thread: LoopThread | None = None
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max_threads)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30},
            timezone="UTC",
        )
        self._targets: dict[str, Any] = {}  # job id -> target it was scheduled for (targets are typed per collector)
        self._lock = threading.Lock()
        self.written = 0
        self.late_after_s = 1.0
        self._in_flight: dict[str, float] = {}  # "<collector>:<target key>" -> when its run started (monotonic)
        self._tasks: set[asyncio.Future[None]] = set()  # the running tasks, referenced so they are not collected
        self._job_size: dict[str, int] = {}  # job id -> targets it runs (slot jobs run many)
        self.slot_jobs_from = SLOT_JOBS_FROM
        self._schedule = threading.RLock()
        # collector name -> [cycles, skipped, late, worst lag ms since last report]
        self.schedule_counts: dict[str, list[float]] = {}
        self._schedule_reported: dict[str, tuple[float, tuple[float, ...]]] = {}
        self._last_scheduled: dict[str, float] = {}  # job id -> its previous scheduled run (unix s)

    # -- life cycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._start_metrics_server()
        self.loop_thread = LoopThread()
        self.refresh()
        self.scheduler.add_job(self.refresh, "interval", seconds=REFRESH_TARGETS_S, id="fleetdeck:refresh")
        self.scheduler.add_job(self.flush, "interval", seconds=FLUSH_EVERY_S, id="fleetdeck:flush")
        if self.config.alerts.routes:
            from core.notify.engine import Notifier

            self.notifier = Notifier(self.config, self.store)
            self._loops.append(BackgroundLoop("notify", NOTIFY_EVERY_S, self.notifier.tick, NOTIFY_STOP_WAIT_S))
        if any(policy.mode != "off" for policy in self.config.autoscale.values()):
            from actions.autoscale import Autoscaler  # late: the actions layer is only needed with a policy

            self.autoscaler = Autoscaler(self.config, self.store)
            self._loops.append(BackgroundLoop("autoscale", AUTOSCALE_TICK_S, self.autoscaler.tick,
                                              AUTOSCALE_STOP_WAIT_S))
        for loop in self._loops:
            loop.start()
        self.scheduler.add_job(
            self.rollup,
            "interval",
            seconds=ROLLUP_EVERY_S,
            id="fleetdeck:rollup",
            next_run_time=datetime.now().astimezone() + timedelta(seconds=ROLLUP_FIRST_AFTER_S),
        )
        watched = EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        self.scheduler.add_listener(self._on_job_event, watched)
        self.scheduler.start()

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()
        self._loops = []
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        deadline = time.monotonic() + self.timeout_s + 2.0
        while self._in_flight and time.monotonic() < deadline:  # each run is bounded by the runner's timeout
            time.sleep(0.05)
        if self.loop_thread is not None:
            for collector in self.collectors:
                try:
                    self.loop_thread.run(collector.aclose(), 5)
                except Exception as error:  # closing must finish for every collector
                    log.warning("closing %s: %s", collector.name, error)
            try:
                self.loop_thread.run(self.clients.aclose(), 5)
            except Exception as error:
                log.warning("closing the collectors' clients: %s", error)
            self.loop_thread.stop()
            self.loop_thread = None
        self.reconciler.close()
        self.flush()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None

    def _start_metrics_server(self) -> None:
        """/metrics for Prometheus (docs/prometheus.md); a busy port is logged and collection goes on without it."""
        if not self.config.prometheus.enabled or self.metrics_server is not None:
            return
        server = MetricsServer(self.exporter, self.config.prometheus.listen)
        try:
            server.start()
        except OSError as error:
            log.error("cannot serve /metrics on %s: %s", self.config.prometheus.listen, error)
            return
        self.metrics_server = server

    @property
    def running(self) -> bool:
        return self.scheduler.running

    # -- jobs -----------------------------------------------------------------------------------------------------

    def interval(self, collector: AnyCollector) -> float:
        return max(MIN_INTERVAL_S, self.intervals.get(collector.name, interval_of(self.config, collector.name)))

    def refresh(self) -> None:
        """Reconcile the replica registry with the backends, then refresh the targets (which read it)."""
        self.reconciler.run()
        self.refresh_targets()

    def refresh_targets(self) -> None:
        """Add a job for every new target, replace changed ones, remove the vanished."""
        with self._lock:
            wanted: dict[str, tuple[AnyCollector, Any]] = {}
            for collector in self.collectors:
                try:
                    targets = collector.targets()
                except Exception as error:  # e.g. the store is briefly unavailable: keep the current jobs
                    log.warning("targets of %s: %s", collector.name, error)
                    wanted.update({k: (c, t) for k, (c, t) in self._scheduled_of(collector).items()})
                    continue
                for target in targets:
                    wanted[f"{collector.name}:{target.key}"] = (collector, target)
            per_collector: dict[str, int] = {}  # targets (not jobs) per collector
            for collector, target in wanted.values():
                size = len(target) if isinstance(target, SlotTargets) else 1
                per_collector[collector.name] = per_collector.get(collector.name, 0) + size
            wanted = self._grouped(wanted, per_collector)
            for job_id in list(self._targets):
                if job_id not in wanted or wanted[job_id][1] != self._targets[job_id]:
                    self._remove_job(job_id)
            for job_id, (collector, target) in wanted.items():
                if job_id in self._targets:
                    continue
                interval = self.interval(collector)
                # Spread first runs so targets don't all fire in the same instant, and the runs after them with
                # them (the phase is kept): over 1 s for a few targets (data shows up at once), over the whole
                # interval from START_RATE_PER_S targets on: 10,000 targets in one second were 10,000 late runs.
                spread = min(interval, max(1.0, per_collector[collector.name] / START_RATE_PER_S))
                first = datetime.now().astimezone() + timedelta(seconds=random.uniform(0, spread))
                self._job_size[job_id] = len(target) if isinstance(target, SlotTargets) else 1
                self.scheduler.add_job(
                    self.collect_slot if isinstance(target, SlotTargets) else self.collect_one,
                    "interval",
                    args=(collector, target),
                    seconds=interval,
                    id=job_id,
                    name=job_id,
                    next_run_time=first,
                    replace_existing=True,
                )
                self._targets[job_id] = target

    def _grouped(
        self, wanted: dict[str, tuple[Any, Any]], per_collector: dict[str, int]
    ) -> dict[str, tuple[Any, Any]]:
        """From ``slot_jobs_from`` targets on, a collector's targets share ``SLOTS_PER_S`` jobs per second of its
        interval (a target stays in its slot: crc32 of its key): APScheduler's own work per job run (~0.5 ms of
        CPU: triggers, events, a pool thread) made 10,000 per-target jobs cost more than the polls themselves.
        Each target still runs on its own and is skipped alone while its previous run is going."""
        grouped: dict[str, tuple[Any, Any]] = {}
        slots: dict[str, dict[int, list[Any]]] = {}
        for job_id, (collector, target) in wanted.items():
            if isinstance(target, SlotTargets) or per_collector.get(collector.name, 0) < self.slot_jobs_from:
                grouped[job_id] = (collector, target)
                continue
            count = max(1, int(self.interval(collector) * SLOTS_PER_S))
            slot = zlib.crc32(str(target.key).encode()) % count
            slots.setdefault(collector.name, {}).setdefault(slot, []).append(target)
        by_name = {collector.name: collector for collector, _ in wanted.values()}
        for name, members in slots.items():
            for slot, targets in members.items():
                ordered = SlotTargets(sorted(targets, key=lambda t: str(t.key)))
                grouped[f"{name}:@slot{slot}"] = (by_name[name], ordered)
        return grouped

    def _scheduled_of(self, collector: AnyCollector) -> dict[str, tuple[AnyCollector, Any]]:
        prefix = f"{collector.name}:"
        return {k: (collector, t) for k, t in self._targets.items() if k.startswith(prefix)}

    def _remove_job(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):  # already gone
            self.scheduler.remove_job(job_id)
        self._targets.pop(job_id, None)
        self._last_scheduled.pop(job_id, None)
        self._job_size.pop(job_id, None)

    def collect_one(self, collector: AnyCollector, target: Any) -> None:
        """One (collector, target) job: hands the run to the loop and returns; never raises into APScheduler."""
        self.collect_slot(collector, (target,))

    def collect_slot(self, collector: Any, targets: tuple[Any, ...]) -> None:
        """Start a run of each target on the loop, except those whose previous run is still going (skipped)."""
        loop_thread = self.loop_thread
        if loop_thread is None:
            return
        to_run: list[Any] = []
        with self._schedule:
            for target in targets:
                key = f"{collector.name}:{target.key}"
                if key in self._in_flight:  # the previous run of this target is still going: skip, don't stack
                    continue
                self._in_flight[key] = time.monotonic()
                to_run.append(target)
            skipped = len(targets) - len(to_run)
        if skipped:
            self._count(collector.name, skipped=skipped)
        if to_run:
            loop_thread.loop.call_soon_threadsafe(self._spawn, collector, to_run)

    def _spawn(self, collector: Any, targets: list[Any]) -> None:
        """On the loop: one task per target, each writing its own samples when it finishes."""
        for target in targets:
            task = asyncio.ensure_future(self._run_one(collector, target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_one(self, collector: Any, target: Any) -> None:
        try:
            self.pending.put(await self.runner.run(collector, target))
        except Exception as error:  # the runner never raises; cancellation at shutdown lands here
            log.warning("collect %s %s: %s", collector.name, getattr(target, "key", target), redact(error))
        finally:
            with self._schedule:
                self._in_flight.pop(f"{collector.name}:{target.key}", None)

    def _on_job_event(self, event: JobEvent) -> None:
        """APScheduler's view of the schedule: coalesced or missed runs are skipped ones; start delay is lag."""
        job_id = str(event.job_id)
        if job_id.startswith("fleetdeck:"):
            return
        name = job_id.split(":", 1)[0]
        if isinstance(event, JobSubmissionEvent):
            runs = event.scheduled_run_times
            if not runs:
                return
            newest = runs[-1].timestamp()
            lag_s = max(0.0, time.time() - newest)
            # coalesced runs arrive as one (the newest): the scheduled times jumped over the ones folded into it
            interval = max(MIN_INTERVAL_S, self.intervals.get(name, interval_of(self.config, name)))
            previous = self._last_scheduled.get(job_id)
            self._last_scheduled[job_id] = newest
            skipped = len(runs) - 1
            if previous is not None:
                skipped += max(0, round((newest - previous) / interval) - 1)
            size = self._job_size.get(job_id, 1)  # a slot job stands for its targets' runs
            late = size if lag_s > self.late_after_s else 0
            self._count(name, cycles=size, skipped=skipped * size, late=late, lag_ms=lag_s * 1000.0)
        else:  # EVENT_JOB_MISSED (past the misfire grace time) or EVENT_JOB_MAX_INSTANCES
            self._count(name, skipped=1)

    def _count(self, name: str, cycles: int = 0, skipped: int = 0, late: int = 0, lag_ms: float = 0.0) -> None:
        with self._schedule:
            counts = self.schedule_counts.setdefault(name, [0, 0, 0, 0.0])
            counts[0] += cycles
            counts[1] += skipped
            counts[2] += late
            counts[3] = max(counts[3], lag_ms)

    def schedule_samples(self, force: bool = False) -> list[Sample]:
        """The schedule's own health as samples, for each collector whose counts changed (or once a minute)."""
        now_ts, now = time.time(), time.monotonic()
        out: list[Sample] = []
        with self._schedule:
            for name, counts in self.schedule_counts.items():
                state = (counts[1], counts[2])  # skipped, late: what deserves a write as soon as it moves
                previous = self._schedule_reported.get(name)
                fresh = previous is not None and now - previous[0] < SELF_METRICS_EVERY_S
                if not force and fresh and previous is not None and previous[1] == state:
                    continue
                self._schedule_reported[name] = (now, state)
                subject = f"scheduler/{name}"
                out.append(SELF_REGISTRY.sample(subject, "cycles_total", counts[0], now_ts))
                out.append(SELF_REGISTRY.sample(subject, "cycles_skipped_total", counts[1], now_ts))
                out.append(SELF_REGISTRY.sample(subject, "cycles_late_total", counts[2], now_ts))
                out.append(SELF_REGISTRY.sample(subject, "schedule_lag_max_ms", counts[3], now_ts))
                counts[3] = 0.0
        return out

    def flush(self) -> int:
        """Write everything collected since the last flush in one batch, then the alerts it triggers."""
        batch: list[Sample] = []
        while True:
            try:
                batch.extend(self.pending.get_nowait())
            except queue.Empty:
                break
        batch.extend(self.schedule_samples())
        if batch:
            batch.extend(self.alerts.evaluate(batch))
            self.exporter.update(batch)
        # also with an empty batch: retries the backlog (samples the store refused earlier) and refreshes the
        # heartbeat (collectors/self_health.py)
        started = time.perf_counter()
        written = self.writer.write(batch)
        if batch or written or self.writer.backlog:
            self.exporter.record_flush(time.perf_counter() - started, len(batch), ok=self.writer.last_error is None)
        self.written += written
        if self.notifier is not None and batch:
            try:
                self.notifier.observe(batch)
            except Exception as error:  # the store refused: the next evaluation of the rule reports it again
                log.error("recording alert transitions: %s", error)
        return written

    def rollup(self) -> None:
        started = time.monotonic()
        try:
            self.series.rollup()
            if time.monotonic() - self.last_retention >= RETENTION_EVERY_S:
                self.series.apply_retention()
                self.last_retention = time.monotonic()
        except Exception as error:
            log.error("rollup/retention: %s", error)
        log.debug("rollup/retention took %.1fs", time.monotonic() - started)


# -- one scheduler per process -----------------------------------------------------------------------------------

_GUARD = threading.Lock()
_EMBEDDED: CollectorScheduler | None = None


def start_embedded(config: FleetConfig, store: Store, **kwargs: Any) -> CollectorScheduler:
    """Start the process's scheduler, or return the one already running (idempotent, thread-safe)."""
    global _EMBEDDED
    with _GUARD:
        if _EMBEDDED is not None and _EMBEDDED.running:
            return _EMBEDDED
        scheduler = CollectorScheduler(config, store, **kwargs)
        scheduler.start()
        _EMBEDDED = scheduler
        return scheduler


def stop_embedded() -> None:
    global _EMBEDDED
    with _GUARD:
        if _EMBEDDED is not None:
            _EMBEDDED.stop()
            _EMBEDDED = None


async def _collect_all(collectors: Sequence[AnyCollector], runner: Runner,
                       clients: CollectorClients | None = None) -> list[Sample]:
    try:
        results = await asyncio.gather(*(runner.run_many(c, c.targets()) for c in collectors))
    finally:
        for collector in collectors:
            try:
                await collector.aclose()
            except Exception as error:
                log.warning("closing %s: %s", collector.name, error)
        if clients is not None:  # the shared clients, after every collector that used them
            await clients.aclose()
    return [sample for batch in results for sample in batch]


def collect_once(config: FleetConfig, store: Store | None = None,
                 collectors: Sequence[AnyCollector] | None = None) -> list[Sample]:
    """Every collector once, every target concurrently; the samples, alerts included (no sample is written; the
    replica registry is reconciled with the backends first, as the scheduler's refresh does)."""
    if store is not None:
        with ReplicaReconciler(config, store) as reconciler:
            reconciler.run()
    clients = CollectorClients() if collectors is None else None
    chosen = list(collectors) if collectors is not None else build_collectors(config, store, clients)
    samples = asyncio.run(_collect_all(chosen, Runner(config.collectors.timeout_s), clients))
    return samples + AlertEvaluator(config.alerts.rules).evaluate(samples)


__all__ = ["CollectorScheduler", "LoopThread", "build_collectors", "collect_once", "interval_of", "start_embedded",
           "stop_embedded"]
