"""What kind of outage is this? Plain functions (no streamlit) the pages use to word it the same everywhere.

Four situations look alike on a naive "up/down" page and call for opposite reactions (docs/operations.md):

- **unreachable** — the instance did not answer at all: the instance (or its host/port) is the problem;
- **dependency** — it answers, and a health check of a dependency (Redis, Postgres, ...) fails: restarting
  healthy replicas does not help, the dependency needs attention; nginx often says it is still serving traffic;
- **unhealthy** — it answers and reports itself failing without naming a dependency;
- **stale** — fleetdeck's own collection (or store) stopped: the picture is old, not the fleet broken.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.store import Latest, StoreView

OK = "ok"
UNREACHABLE = "unreachable"
DEPENDENCY = "dependency"
UNHEALTHY = "unhealthy"
DRAINING = "draining"
STALE = "stale"
TEXT_LIMIT = 200


@dataclass
class InstanceOutage:
    instance: str
    kind: str  # ok | unreachable | dependency | unhealthy | draining | stale
    detail: str
    serving_rps: float | None  # nginx's requests/s to this instance, when known


@dataclass
class OutageSummary:
    rows: list[InstanceOutage] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)  # one line per situation, worst first

    def kinds(self) -> set[str]:
        return {row.kind for row in self.rows}


def _latest_by_target(store: StoreView, source: str) -> dict[str, dict[str, Latest]]:
    rows: dict[str, dict[str, Latest]] = defaultdict(dict)
    for latest in store.latest(source=source):
        if not latest.series.labels:
            rows[latest.series.target][latest.series.metric] = latest
    return rows


def _clip(text: str | None) -> str:
    return (text or "").replace("\n", " ")[:TEXT_LIMIT]


def server_traffic(store: StoreView) -> dict[str, tuple[float | None, float | None]]:
    """upstream address -> (requests/s, 5xx/s) as nginx last reported them."""
    traffic: dict[str, tuple[float | None, float | None]] = {}
    for target, metrics in _latest_by_target(store, "nginx").items():
        if "/" not in target:
            continue
        address = target.split("/", 1)[1]
        rps = metrics.get("requests_per_s")
        errors = metrics.get("status_5xx_per_s")
        traffic[address] = (rps.value if rps else None, errors.value if errors else None)
    return traffic


def registry_addresses(store: StoreView) -> dict[str, str]:
    """"service/instance" -> "host:port" from the replica registry (how nginx names the same instance)."""
    try:
        return {f"{r.service}/{r.instance_id}": f"{r.host}:{r.port}" for r in store.replicas()}
    except Exception:  # a store without the registry (or a read error): no traffic detail, nothing else lost
        return {}


def classify(metrics: Mapping[str, Latest], reference_ts: float, stale_after_s: float) -> tuple[str, str]:
    up = metrics.get("up")
    if up is None:
        return STALE, "never collected"
    if up.ts < reference_ts - stale_after_s:
        return STALE, "not collected recently"
    if up.value < 1:
        return UNREACHABLE, f"no answer: {_clip(up.text) or 'unreachable'}"
    health = metrics.get("health_status")
    word = (health.text or "") if health else ""
    failing = metrics.get("failing_checks")
    names = _clip(failing.text) if failing and failing.value > 0 else ""
    if word == "draining":
        return DRAINING, "draining"
    if names and word in ("warn", "fail"):
        return DEPENDENCY, f"answers; failing check: {names}"
    if word == "fail":
        return UNHEALTHY, "answers but reports fail (no failing check named)"
    return OK, word or "pass"


def summarise(store: StoreView, now: float, stale_after_s: float,
              instance_addresses: Mapping[str, str] | None = None) -> OutageSummary:
    instances = _latest_by_target(store, "instance")
    # a replica an action removed is gone, not an outage (dashboard/fleet_state.py)
    from dashboard.fleet_state import fleet_state

    try:
        state = fleet_state(store, now, nginx_latest={})
        instances = {t: m for t, m in instances.items() if state.live(t)}
    except Exception:  # the registry/events are a refinement: without them every target counts, as before
        pass
    if not instances:
        return OutageSummary()
    addresses = dict(instance_addresses) if instance_addresses is not None else registry_addresses(store)
    traffic = server_traffic(store)
    reference = max((m["up"].ts for m in instances.values() if "up" in m), default=now)
    summary = OutageSummary()
    for target in sorted(instances):
        kind, detail = classify(instances[target], reference, stale_after_s)
        rps = None
        address = addresses.get(target)
        if address and address in traffic:
            rps, errors = traffic[address]
            if kind in (DEPENDENCY, UNHEALTHY, UNREACHABLE) and rps:
                detail += f"; nginx: still serving {rps:.1f} req/s ({errors or 0:.2f} 5xx/s)"
        summary.rows.append(InstanceOutage(target, kind, detail, rps))
    summary.headlines = _headlines(summary.rows, now - reference, stale_after_s)
    return summary


def _headlines(rows: list[InstanceOutage], age_s: float, stale_after_s: float) -> list[str]:
    lines: list[str] = []
    if age_s > stale_after_s:
        lines.append(f"fleetdeck's instance data is {age_s:.0f}s old: collection (or the store) has stopped —"
                     " the fleet may be fine; see the collector health above")
    unreachable = [r.instance for r in rows if r.kind == UNREACHABLE]
    if unreachable:
        lines.append(f"Instance outage: {', '.join(unreachable)} — no answer (the process or its port is gone)")
    by_check: dict[str, list[InstanceOutage]] = defaultdict(list)
    for row in rows:
        if row.kind == DEPENDENCY:
            by_check[row.detail.split("failing check: ", 1)[1].split(";", 1)[0]].append(row)
    total = len(rows)
    for checks, affected in by_check.items():
        serving = sum(1 for r in affected if r.serving_rps)
        lines.append(
            f"Dependency outage: {checks} failing on {len(affected)}/{total} instance(s) — they answer"
            + (f" and {serving} still serve traffic (nginx)" if serving else "")
            + "; restarting replicas will not fix a dependency"
        )
    unhealthy = [r.instance for r in rows if r.kind == UNHEALTHY]
    if unhealthy:
        lines.append(f"Unhealthy instance(s): {', '.join(unhealthy)} — they answer but report fail")
    return lines
