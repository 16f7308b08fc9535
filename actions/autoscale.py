"""The autoscaler: reads the store, decides with actions/autoscale_logic.py, acts through the `scale` action.

Runs in the collector process (a scheduler job, collectors/scheduler.py), one decision per service every
`interval` for each service whose policy is `advise` or `auto` (docs/autoscaling.md):

- the observation: the live replicas as the service's backend lists them — the count the `scale` action starts
  from, so a replica whose process died is not counted even while the registry still says `running` — and, from
  the latest samples in the store, mean `cpu_percent` of those replicas, requests/s and request-weighted p95 of
  the load balancer's upstream servers (when the service is behind it), and `waiting` of the policy's BullMQ
  queues — each only when fresher than `metrics_max_age`;
- every decision (inputs, the formula of each metric, the reasons, what was done or why not) is stored under the
  KV key `autoscale:latest:<service>` (what `status` shows), and as an event of kind `autoscale` (the timeline,
  drawn on the charts) whenever it acted or differs from the previous one — a repeat is counted on the latest
  record instead, so a steady service does not add an event every interval;
- in `auto` mode a change is executed by `FleetActions.scale` as the principal `autoscaler` (operator role), so
  it takes the same lock, respects `min_healthy`, drains before stopping and is audited like a person's scale.
  A manual action on the service (anyone but the autoscaler: scale, drain, undrain, restart, limits) pauses it
  for `pause_after_manual`: it never fights an operator.

The recommendation history (for the stabilization windows) is kept in the KV store too, so a restarted collector
does not forget a recent peak and scale down early.

:func:`simulate` replays the stored series of a past period through a policy without acting.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actions.auth import Principal
from actions.autoscale_logic import Decision, Observation, Recommendation, decide
from actions.backends.base import Replica
from core.config import FleetConfig
from core.config_autoscale import AutoscalePolicy

log = logging.getLogger(__name__)

AUTOSCALER = Principal("autoscaler", "operator", "autoscaler")
DECISION_EVENT = "autoscale"
# actions by someone else that pause the autoscaler on the service
MANUAL_ACTIONS = frozenset({"scale", "drain", "undrain", "restart", "rolling_restart", "set_limits"})


def latest_key(service: str) -> str:
    return f"autoscale:latest:{service}"


def history_key(service: str) -> str:
    return f"autoscale:history:{service}"


def effective_bounds(store: Any, config: FleetConfig, service: str) -> tuple[int, int]:
    from actions.operations import effective_limits  # late: operations imports the backends

    return effective_limits(store, config.service(service))


# -- observation ---------------------------------------------------------------------------------------------------


def _fresh(store: Any, source: str, metric: str, oldest: float) -> list[Any]:
    return [x for x in store.latest(source=source, metric=metric) if x.ts >= oldest]


def observe(config: FleetConfig, store: Any, service: str, policy: AutoscalePolicy, now: float,
            live: list[Replica]) -> Observation:
    """The service as the latest fresh samples show it, with `live` its live replicas as its backend lists them.

    The count must be the backend's, not the registry's: the registry says `running` until something lists the
    service after a replica died, and a decision from that count asks the `scale` action for a change it then
    finds already made (a no-op) or wrong by the dead replicas."""
    oldest = now - policy.metrics_max_age_s
    targets = {f"{service}/{r.instance_id}" for r in live}
    cpu_percent = p95_ms = rps_total = backlog = None
    if policy.cpu_percent is not None:
        cpu = [x.value for x in _fresh(store, "instance", "cpu_percent", oldest) if x.series.target in targets]
        if not cpu:  # docker services: the container's view
            cpu = [x.value for x in _fresh(store, "instance", "container_cpu_percent", oldest)
                   if x.series.target in targets]
        cpu_percent = sum(cpu) / len(cpu) if cpu else None
    lb = config.load_balancer
    if lb is not None and lb.service == service and (policy.rps_per_replica is not None or policy.p95_ms is not None):
        prefix = f"nginx:{lb.service}/"
        rates = {x.series.target: x.value for x in _fresh(store, "nginx", "requests_per_s", oldest)
                 if x.series.target.startswith(prefix)}
        if rates:
            rps_total = sum(rates.values())
        p95 = {x.series.target: x.value for x in _fresh(store, "nginx", "upstream_p95_ms", oldest)
               if x.series.target.startswith(prefix)}
        weight = sum(rates.get(t, 0.0) for t in p95)
        if p95:
            p95_ms = (sum(v * rates.get(t, 0.0) for t, v in p95.items()) / weight if weight > 0
                      else sum(p95.values()) / len(p95))
    if policy.queue_backlog is not None:
        wanted = set(policy.queue_backlog.queues)
        waiting = [x.value for x in _fresh(store, "bullmq", "waiting", oldest) if x.series.target in wanted]
        backlog = sum(waiting) if waiting else None
    return Observation(now, len(live), cpu_percent, p95_ms, rps_total, backlog)


# -- the loop ------------------------------------------------------------------------------------------------------


def manual_action_since(store: Any, service: str, since: float) -> Any:
    """The latest action by someone other than the autoscaler on `service` after `since` (an AuditEntry) or None."""
    found = None
    for entry in store.audit(start=since):
        target = str(entry.params.get("target", ""))
        if (entry.who != AUTOSCALER.name and entry.action in MANUAL_ACTIONS
                and target.split("/", 1)[0] == service and entry.result in ("started", "ok", "noop")):
            found = entry
    return found


class Autoscaler:
    """One instance per collector process. `actions` may be injected (tests); by default a FleetActions."""

    def __init__(self, config: FleetConfig, store: Any, actions: Any = None) -> None:
        self.config = config
        self.store = store
        self._actions = actions
        self._next_at: dict[str, float] = {}

    @property
    def policies(self) -> dict[str, AutoscalePolicy]:
        return {name: p for name, p in self.config.autoscale.items() if p.mode != "off"}

    def actions(self) -> Any:
        if self._actions is None:
            from actions.operations import FleetActions

            self._actions = FleetActions(self.config, self.store)
        return self._actions

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Decide for every service whose interval has come; the stored decision records."""
        records = []
        for service, policy in self.policies.items():
            current = time.time() if now is None else now
            if current < self._next_at.get(service, 0.0):
                continue
            self._next_at[service] = current + policy.interval_s
            try:
                records.append(self.evaluate(service, policy, current))
            except Exception as error:  # one service's trouble must not stop the others
                log.error("autoscale %s: %s", service, error)
        return records

    def _history(self, service: str) -> list[Recommendation]:
        stored = self.store.get_kv(history_key(service)) or {}
        return [Recommendation(float(ts), int(n)) for ts, n in stored.get("recommendations", [])]

    def evaluate(self, service: str, policy: AutoscalePolicy, now: float) -> dict[str, Any]:
        live = self.actions().live(self.config.service(service))
        obs = observe(self.config, self.store, service, policy, now, live)
        bounds = effective_bounds(self.store, self.config, service)
        decision, history = decide(policy, obs, self._history(service), bounds)
        self.store.put_kv(history_key(service), {"recommendations": [[r.ts, r.replicas] for r in history[-2000:]]})
        record: dict[str, Any] = {"service": service, "mode": policy.mode, "observation": obs._asdict(),
                                  **decision.as_dict(), "acted": False, "why_not": None, "op_id": None,
                                  "result": None}
        if decision.change == 0:
            record["why_not"] = "no change needed"
        elif policy.mode != "auto":
            record["why_not"] = f"mode is {policy.mode}: recommendation only"
        else:
            manual = manual_action_since(self.store, service, now - policy.pause_after_manual_s)
            if manual is not None:
                resume = manual.ts + policy.pause_after_manual_s
                record["why_not"] = (f"paused: {manual.action} by {manual.who} at "
                                     f"{time.strftime('%H:%M:%S', time.gmtime(manual.ts))} UTC; resumes "
                                     f"{time.strftime('%H:%M:%S', time.gmtime(resume))} UTC")
            else:
                result = self.actions().scale(AUTOSCALER, service, decision.desired)
                record.update(acted=True, op_id=result.op_id, result=result.result,
                              why_not=None if result.ok else f"scale {result.result}: {result.error or result.detail}")
        self._store_decision(service, record)
        return record

    def _store_decision(self, service: str, record: dict[str, Any]) -> None:
        """The latest decision always; an event (the timeline) when it acted or says something new.

        A decision that repeats the previous one (same counts, same reason for not acting) is counted on the
        latest record (`repeats`, `since`) instead of adding an event every interval."""
        previous = self.store.get_kv(latest_key(service))
        if previous is not None and not record["acted"] and _outcome(previous) == _outcome(record):
            record["repeats"] = int(previous.get("repeats", 0)) + 1
            record["since"] = previous.get("since", previous.get("ts"))
        else:
            record["repeats"], record["since"] = 0, record["ts"]
            verdict = ("acted: " + str(record["result"])) if record["acted"] else f"not acted: {record['why_not']}"
            self.store.add_event(DECISION_EVENT, service, f"autoscale: {record['summary']} ({verdict})"[:2000],
                                 record, ts=record["ts"])
        self.store.put_kv(latest_key(service), record)


def _outcome(record: dict[str, Any]) -> tuple[Any, ...]:
    why_not = str(record.get("why_not") or "")
    return (record.get("mode"), record.get("current"), record.get("desired"), record.get("recommendation"),
            why_not.split(":", 1)[0])


def latest_decision(store: Any, service: str) -> dict[str, Any] | None:
    """What the autoscaler last decided for `service` and why (for `status` and the Instances page)."""
    return store.get_kv(latest_key(service))


def advice_lines(config: FleetConfig, store: Any) -> list[str]:
    """One line per service with a policy: its latest recommendation and why, for the Instances page and `status`."""
    lines = []
    for service, policy in config.autoscale.items():
        if policy.mode == "off":
            continue
        record = latest_decision(store, service)
        if record is None:
            lines.append(f"autoscale {service} ({policy.mode}): no decision yet")
            continue
        tail = f" — not acted: {record['why_not']}" if record.get("why_not") and record["change"] else ""
        lines.append(f"autoscale {service} ({policy.mode}): {record['summary']}{tail}")
    return lines


def decisions(store: Any, service: str, start: float, end: float) -> list[dict[str, Any]]:
    """The stored decisions of `service` in [start, end], oldest first (the timeline)."""
    return [{"ts": e.ts, "message": e.message, **e.details}
            for e in store.events(start, end, kind=DECISION_EVENT) if e.target == service]


# -- simulation ----------------------------------------------------------------------------------------------------


class _Series:
    """One stored series as sorted (ts, value) for "the value at t" lookups."""

    def __init__(self, points: list[Any]) -> None:
        self.ts = [p.ts for p in points]
        self.values = [p.value for p in points]

    def at(self, t: float, max_age_s: float) -> float | None:
        index = bisect.bisect_right(self.ts, t) - 1
        if index < 0 or t - self.ts[index] > max_age_s:
            return None
        return self.values[index]


@dataclass
class Simulation:
    service: str
    start: float
    end: float
    steps: list[dict[str, Any]] = field(default_factory=list)  # ts, actual, simulated, decision summary

    @property
    def changes(self) -> list[dict[str, Any]]:
        return [s for s in self.steps if s["change"]]

    def replica_hours(self, key: str) -> float:
        if len(self.steps) < 2:
            return 0.0
        step_s = self.steps[1]["ts"] - self.steps[0]["ts"]
        return sum((s[key] or 0) for s in self.steps) * step_s / 3600.0


def _load_series(store: Any, source: str, metric: str, like_target: str | None, start: float, end: float,
                 max_points: int, target: str | None = None) -> dict[str, _Series]:
    found = store.find_series(source=source, metric=metric, like_target=like_target, target=target)
    if not found:
        return {}
    points = store.query([s.id for s in found], start, end, max_points=max_points)
    return {s.target: _Series(points.get(s.id, [])) for s in found}


def simulate(config: FleetConfig, store: Any, service: str, policy: AutoscalePolicy, start: float, end: float,
             progress: Callable[[str], None] | None = None) -> Simulation:
    """Replay [start, end] of the stored series through `policy`, as if it had acted on every decision.

    The observed totals (CPU summed over replicas, requests/s, waiting jobs) are spread over the *simulated*
    replica count; latency is replayed as observed (it depends on the count in ways the data cannot tell)."""
    step_s = policy.interval_s
    steps = max(1, int((end - start) // step_s))
    max_points = min(20_000, steps + 10)
    max_age = max(policy.metrics_max_age_s, step_s * 2)
    ups = _load_series(store, "instance", "up", f"{service}/%", start - max_age, end, max_points)
    cpu = _load_series(store, "instance", "cpu_percent", f"{service}/%", start - max_age, end, max_points)
    lb = config.load_balancer
    behind_lb = lb is not None and lb.service == service
    rps = _load_series(store, "nginx", "requests_per_s", f"nginx:{service}/%", start - max_age, end,
                       max_points) if behind_lb else {}
    p95 = _load_series(store, "nginx", "upstream_p95_ms", f"nginx:{service}/%", start - max_age, end,
                       max_points) if behind_lb else {}
    waiting: dict[str, _Series] = {}
    if policy.queue_backlog is not None:
        for queue in policy.queue_backlog.queues:
            # exact: a queue name may hold LIKE wildcards (_ and %)
            waiting.update(_load_series(store, "bullmq", "waiting", None, start - max_age, end, max_points,
                                        target=queue))
    bounds = effective_bounds(store, config, service)
    simulation = Simulation(service, start, end)
    history: list[Recommendation] = []
    simulated: int | None = None
    for index in range(steps + 1):
        t = start + index * step_s
        actual = sum(1 for s in ups.values() if (s.at(t, max_age) or 0) >= 1)
        if simulated is None:
            simulated = max(actual, bounds[0])
        cpu_now = [v for s in cpu.values() if (v := s.at(t, max_age)) is not None]
        rates = {k: v for k, s in rps.items() if (v := s.at(t, max_age)) is not None}
        lat = {k: v for k, s in p95.items() if (v := s.at(t, max_age)) is not None}
        jobs = [v for s in waiting.values() if (v := s.at(t, max_age)) is not None]
        cpu_total = sum(cpu_now) if cpu_now else None
        weight = sum(rates.get(k, 0.0) for k in lat)
        obs = Observation(
            t, simulated,
            cpu_percent=None if cpu_total is None or simulated == 0 else cpu_total / simulated,
            p95_ms=(sum(v * rates.get(k, 0.0) for k, v in lat.items()) / weight if weight > 0
                    else (sum(lat.values()) / len(lat) if lat else None)),
            rps_total=sum(rates.values()) if rates else None,
            backlog=sum(jobs) if jobs else None,
        )
        decision: Decision
        decision, history = decide(policy, obs, history, bounds)
        simulation.steps.append({"ts": t, "actual": actual, "simulated": decision.desired, "from": simulated,
                                 "change": decision.change, "summary": decision.summary()})
        simulated = decision.desired
        if progress is not None and index and index % 1000 == 0:
            progress(f"{index}/{steps} steps")
    return simulation


def sparkline(values: list[int], width: int = 72, top: int | None = None) -> str:
    """The counts as one line of block characters (each character the max of its slice; full block = `top`)."""
    if not values:
        return ""
    blocks = " ▁▂▃▄▅▆▇█"
    chunk = max(1, math.ceil(len(values) / width))
    maxima = [max(values[i:i + chunk]) for i in range(0, len(values), chunk)]
    top = top or max(maxima) or 1
    return "".join(blocks[round(v / top * (len(blocks) - 1))] for v in maxima)
