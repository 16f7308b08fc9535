"""The scaling-efficiency test: the same load at 1, 2, …, N replicas, E(n) per step and a USL fit.

Each step scales the service through the actions layer (role-checked, locked, audited, zero-drop), lets the new
upstream settle, then runs the identical closed-loop load through the load balancer. Throughput counts successful
responses only. A step where the load generator itself ran near a full core measures the generator, not the
fleet (docs/design-notes.md#load-generation): it is kept and shown, but left out of E(n)'s verdict and of the USL fit.

Whatever happens — success, failure, cancel, an exception — the original replica count is restored in `finally`.
Results live in the store: the run document under `scaling:run:<run_id>` (steps, fit, restore outcome), the
newest completed run of a service under `scaling:latest:<service>`, and a `linear_scaling` fact.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actions.backends.base import LIVE_STATES
from actions.operations import FleetActions
from actions.proving.scorecard import FAIL, PASS, RULES_BY_ID, UNKNOWN
from actions.proving.usl import efficiency, fit_usl
from core.config import FleetConfig, ServiceConfig
from core.store import Fact, RecordsReader, Store

if TYPE_CHECKING:
    from actions.proving.loadgen import Progress

log = logging.getLogger(__name__)

RUN_PREFIX = "scaling-"
EFFICIENCY_MIN = 0.8
MAX_ERROR_RATIO = 0.05  # a step with more failed requests than this measures errors, not capacity
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class ScalingOptions:
    service: str | None = None  # default: the load balancer's service
    max_replicas: int | None = None  # N; default: the current replica count (at least 2), capped by max_replicas
    step_seconds: float = 3.0
    connections: int = 16
    path: str = "/work/cpu?ms=2"  # CPU-bound on the server, cheap on the generator
    method: str = "GET"
    settle_s: float = 0.5  # after a scale, before the load: the new nginx generation serves
    workers: int = 1  # generator processes


@dataclass
class ScalingReport:
    run_id: str
    service: str
    state: str  # done | cancelled | failed
    steps: list[dict[str, Any]] = field(default_factory=list)
    fit: dict[str, Any] | None = None
    original_replicas: int = 0
    restored: bool = False
    restore_detail: str = ""
    error: str | None = None
    scaler: str = "actions.operations.FleetActions.scale"

    @property
    def passed(self) -> bool:
        return self.state == "done" and linear_status(self.steps)[0] == PASS

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "service": self.service, "state": self.state, "steps": self.steps,
                "fit": self.fit, "original_replicas": self.original_replicas, "restored": self.restored,
                "restore_detail": self.restore_detail, "error": self.error, "scaler": self.scaler,
                "passed": self.passed}


def run_key(run_id: str) -> str:
    return f"scaling:run:{run_id}"


def latest_key(service: str) -> str:
    return f"scaling:latest:{service}"


def latest_scaling_run(store: RecordsReader, service: str) -> dict[str, Any] | None:
    pointer = store.get_kv(latest_key(service))
    return store.get_kv(run_key(pointer["run_id"])) if pointer else None


def annotate_steps(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Adds E(n) and `in_fit` to each step (in place) and returns the USL fit of the usable steps, if any."""
    usable = {s["replicas"]: s["throughput"] for s in steps if s["in_fit"]}
    by_n = efficiency(usable)
    for step in steps:
        step["efficiency"] = by_n.get(step["replicas"])
    if len(usable) < 2:
        return None
    try:
        fit = fit_usl(list(usable), list(usable.values()))
    except ValueError:
        return None
    result = fit.as_dict()
    result["predicted"] = {str(n): round(fit.predict(n), 2) for n in sorted(usable)}
    return result


def linear_status(steps: list[dict[str, Any]]) -> tuple[str, str]:
    measured = [s for s in steps if s.get("efficiency") is not None and s["replicas"] > 1]
    if not measured:
        return UNKNOWN, "no usable step above 1 replica (generator saturated, errors, or cancelled)"
    worst = min(measured, key=lambda s: s["efficiency"])
    status = PASS if worst["efficiency"] >= EFFICIENCY_MIN else FAIL
    return status, f"min E(n) = {worst['efficiency']:.2f} at n={worst['replicas']}"


def run_scaling(
    config: FleetConfig,
    store: Store,
    principal: Any,
    options: ScalingOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    run_id: str | None = None,
) -> ScalingReport:
    from actions.auth import require
    from actions.proving.loadgen import LoadSpec, run_load

    require(principal, "start_test")
    require(principal, "scale")
    options = options or ScalingOptions()
    cancel = cancel or threading.Event()
    run_id = run_id or f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    lb = config.load_balancer
    service_name = options.service or (lb.service if lb else config.services[0].name)
    service = config.service(service_name)
    if lb is None or lb.service != service.name:
        raise ValueError(f"service '{service.name}' has no load balancer in front: nothing to measure through")
    from actions.backends.nginx import loopback_url

    url = loopback_url(lb.listen, options.path)
    scale_one, scaler_name, live_count = _scaler(config, store, principal, service)
    original = live_count()
    top = options.max_replicas or max(original, 2)
    if not 1 <= top <= service.max_replicas or service.min_replicas > 1:
        raise ValueError(f"the scaling test needs 1..{top} replicas within [{service.min_replicas},"
                         f" {service.max_replicas}] (min_replicas, max_replicas)")
    report = ScalingReport(run_id, service.name, "running", original_replicas=original, scaler=scaler_name)
    started_at = time.time()

    def save(state: str) -> None:
        store.put_kv(run_key(run_id), {**report.as_dict(), "state": state, "started_at": started_at,
                                       "updated_at": time.time(), "max_replicas": top,
                                       "options": options.__dict__})

    def say(**event: Any) -> None:
        if progress:
            progress({"run_id": run_id, "total_steps": top, **event})

    save("running")
    try:
        for n in range(1, top + 1):
            if cancel.is_set():
                break
            say(phase="scaling", replicas=n, step=n - 1, message=f"scaling {service.name} to {n}")
            ok, detail = scale_one(n)
            if not ok:
                raise RuntimeError(f"scale to {n} failed: {detail}")
            time.sleep(options.settle_s)
            if cancel.is_set():
                break
            say(phase="load", replicas=n, step=n - 1, message=f"load at {n} replica(s)")
            spec = LoadSpec(url=url, method=options.method, connections=options.connections,
                            duration_s=options.step_seconds, max_requests=2_000_000, workers=options.workers,
                            timeout_s=5.0)
            result = run_load(spec, cancel=cancel, handle_sigint=False, progress=_step_progress(say, n))
            if result.stop_reason == "cancelled":
                break
            elapsed = max(result.elapsed_s, 1e-6)
            error_ratio = result.errors / max(result.requests, 1)
            step = {
                "replicas": n, "throughput": round(result.ok / elapsed, 2), "rps": result.rps,
                "requests": result.requests, "errors": result.errors, "errors_by_kind": result.errors_by_kind,
                "p50_ms": result.latency_ms.get("p50"), "p95_ms": result.latency_ms.get("p95"),
                "p99_ms": result.latency_ms.get("p99"), "generator_cpu": result.cpu_utilization,
                "generator_saturated": result.saturated, "instances": result.instances,
                "error_ratio": round(error_ratio, 4), "elapsed_s": result.elapsed_s,
                "in_fit": not result.saturated and error_ratio <= MAX_ERROR_RATIO and result.ok > 0,
            }
            report.steps.append(step)
            report.fit = annotate_steps(report.steps)
            save("running")
            say(phase="step_done", replicas=n, step=n, message=f"{n} replica(s): {step['throughput']:.0f} req/s,"
                f" p95 {step['p95_ms']} ms, generator CPU {step['generator_cpu']:.0%}", result=step)
        report.state = "cancelled" if cancel.is_set() else "done"
    except Exception as error:
        log.exception("scaling run %s failed", run_id)
        report.state, report.error = "failed", f"{type(error).__name__}: {error}"
    finally:
        # restore even when cancelled or failed: the fleet must leave this test as it came in
        say(phase="restoring", message=f"restoring {original} replica(s)")
        try:
            ok, detail = scale_one(original)
            report.restored = ok and live_count() == original
            report.restore_detail = detail
        except Exception as error:
            report.restored, report.restore_detail = False, f"{type(error).__name__}: {error}"
        save(report.state)
    status, observed = linear_status(report.steps)
    if report.state == "done":
        store.put_kv(latest_key(service.name), {"run_id": run_id, "ts": time.time()})
        rule = RULES_BY_ID["linear_scaling"]
        store.add_fact(Fact(None, run_id, rule.id, rule.level, service.name, time.time(), status, observed,
                            {"scaling_run": run_id, "steps": report.steps, "fit": report.fit}))
    say(phase="finished", state=report.state, message=f"{report.state}: {observed}; restored={report.restored}")
    return report


def _scaler(config: FleetConfig, store: Store, principal: Any,
            service: ServiceConfig) -> tuple[Callable[[int], tuple[bool, str]], str, Callable[[], int]]:
    """(scale_to(n) -> (ok, detail), its name, live replica count) through the actions layer's guarded scale."""
    actions = FleetActions(config, store)

    def scale_to(n: int) -> tuple[bool, str]:
        result = actions.scale(principal, service.name, n)
        return result.ok, f"{result.result}: {result.detail}"

    def live_count() -> int:
        return sum(1 for r in actions.orchestrator(service).list(service) if r.state in LIVE_STATES)

    return scale_to, "actions.operations.FleetActions.scale", live_count


def _step_progress(say: Callable[..., None], replicas: int) -> Callable[[Progress], None]:
    """The load generator's progress of one step, reported with the step's replica count."""

    def report(progress: Progress) -> None:
        say(phase="load", replicas=replicas, step=replicas - 1, live=progress.to_dict())

    return report
