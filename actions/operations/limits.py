"""A service's effective replica bounds: the admin's override in the store when it is still valid, else the config's.

Every bound check (scale, `fleetdeck up`, the dashboard's inputs) goes through `effective_limits`, never through
`service.min_replicas/max_replicas` directly. The operation that changes them is `set_limits.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from actions.backends import port_capacity
from core.config import ServiceConfig
from core.store import OpsRecords


def limits_key(service: str) -> str:
    return f"limits:{service}"


class Limits(NamedTuple):
    """A service's effective replica bounds and where they come from (for `fleetdeck limits` and the dashboard)."""

    min_replicas: int
    max_replicas: int
    source: str  # "config" | "override"
    by: str | None = None  # who set the override
    ts: float | None = None  # when

    def describe(self) -> str:
        if self.source == "config":
            return "from the config (min_replicas, max_replicas)"
        when = datetime.fromtimestamp(self.ts).strftime("%Y-%m-%d %H:%M:%S") if self.ts else "?"
        return f"override set by {self.by or '?'} at {when}"


def limits_of(store: OpsRecords, service: ServiceConfig) -> Limits:
    """The effective bounds: the admin's override in the store when it is still valid, else the config's.

    An override that no longer fits (the config's port range shrank, a hand-edited value) is ignored rather than
    trusted: the config's bounds are always a safe fallback.
    """
    record = store.get_kv(limits_key(service.name)) or {}
    low, high = record.get("min_replicas"), record.get("max_replicas")
    capacity = port_capacity(service)
    if (isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool) and not isinstance(high, bool)
            and 0 <= low <= high and high >= 1 and (capacity is None or high <= capacity)):
        ts = record.get("ts")
        return Limits(low, high, "override", str(record.get("by") or "") or None,
                      float(ts) if isinstance(ts, int | float) else None)
    return Limits(service.min_replicas, service.max_replicas, "config")


def effective_limits(store: OpsRecords, service: ServiceConfig) -> tuple[int, int]:
    """(min_replicas, max_replicas) every bound check uses — never `service.min_replicas/max_replicas` directly."""
    limits = limits_of(store, service)
    return limits.min_replicas, limits.max_replicas


def with_effective_limits(store: OpsRecords, service: ServiceConfig) -> ServiceConfig:
    """The service config carrying its effective bounds, so the backends' own guards (LocalOrchestrator.start
    refuses beyond `max_replicas`) agree with the override instead of the file."""
    low, high = effective_limits(store, service)
    if (low, high) == (service.min_replicas, service.max_replicas):
        return service
    return service.model_copy(update={"min_replicas": low, "max_replicas": high})
