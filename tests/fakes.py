"""In-memory fakes of the protocols the operations act through, for the fast test tier (no services).

- `MemoryOpsStore`: the `OpsRecords` protocol (core/store/protocols.py) in dictionaries;
- `FakeOrchestrator`: the `Orchestrator` protocol; replicas are records, nothing runs;
- `FakeBalancer`: the `LoadBalancer` protocol; the upstream is a list, `apply` can be told to fail;
- `FakeHealth`: the health probe the operations call (actions/operations/types.py HealthProbe).

They are mocks in the house sense: each stands for a real part that the integration tier exercises for real
(tests/test_actions_*.py run sample-app processes behind a managed nginx on Postgres). Here they let the rules of
the operations (bounds, min_healthy, locks, permissions, audit, rollback) be checked in milliseconds.
"""

from __future__ import annotations

import builtins
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actions.backends.base import (
    DEAD,
    LIVE_STATES,
    RUNNING,
    STOPPED,
    ApplyResult,
    BackendError,
    Replica,
    ReplicaUnhealthy,
    UpstreamServer,
)
from actions.operations.types import Health
from core.config import FleetConfig, ServiceConfig, parse_config
from core.store import AuditEntry, Event, Fact, Progress, ReplicaRecord


class MemoryOpsStore:
    """OpsRecords in memory: same answers as OpsStore for what the operations do with it."""

    def __init__(self) -> None:
        self.kv: dict[str, dict] = {}
        self.lock_rows: dict[str, dict] = {}
        self.audit_rows: list[AuditEntry] = []
        self.event_rows: list[Event] = []
        self.progress_rows: list[Progress] = []
        self.replica_rows: dict[tuple[str, str], ReplicaRecord] = {}
        self.fact_rows: list[Fact] = []
        self._ids = itertools.count(1)

    def add_event(self, kind: str, target: str, message: str, details: dict | None = None,
                  ts: float | None = None) -> int:
        event = Event(next(self._ids), time.time() if ts is None else ts, kind, target, message, details or {})
        self.event_rows.append(event)
        return event.id

    def events(self, start: float, end: float, kind: str | None = None, target: str | None = None) -> list[Event]:
        return [e for e in self.event_rows if start <= e.ts <= end and kind in (None, e.kind)
                and target in (None, e.target)]

    def add_progress(self, op_id: str, target: str, message: str, details: dict | None = None,
                     ts: float | None = None) -> int:
        line = Progress(next(self._ids), op_id, time.time() if ts is None else ts, target, message, details or {})
        self.progress_rows.append(line)
        return line.id

    def progress(self, op_id: str, since: float | None = None) -> list[Progress]:
        return [p for p in self.progress_rows if p.op_id == op_id and (since is None or p.ts >= since)]

    def upsert_replica(self, rec: ReplicaRecord) -> None:
        self.replica_rows[(rec.service, rec.instance_id)] = rec

    def remove_replica(self, service: str, instance_id: str) -> bool:
        return self.replica_rows.pop((service, instance_id), None) is not None

    def replicas(self, service: str | None = None) -> list[ReplicaRecord]:
        return sorted(r for r in self.replica_rows.values() if service in (None, r.service))

    def append_audit(self, entry: AuditEntry) -> int:
        stored = entry._replace(id=next(self._ids))
        self.audit_rows.append(stored)
        return int(stored.id or 0)

    def audit(self, start: float | None = None, end: float | None = None, action: str | None = None,
              who: str | None = None, op_id: str | None = None) -> list[AuditEntry]:
        return [a for a in self.audit_rows if (start is None or a.ts >= start) and (end is None or a.ts <= end)
                and action in (None, a.action) and who in (None, a.who) and op_id in (None, a.op_id)]

    def acquire_lock(self, service: str, action: str, who: str, op_id: str, ttl_s: float,
                     now: float | None = None) -> tuple[bool, dict]:
        now = time.time() if now is None else now
        held = self.lock_rows.get(service)
        if held is None or held["expires_at"] <= now or held["op_id"] == op_id:
            held = {"service": service, "action": action, "who": who, "op_id": op_id, "acquired_at": now,
                    "expires_at": now + ttl_s}
            self.lock_rows[service] = held
        return held["op_id"] == op_id, dict(held)

    def release_lock(self, service: str, op_id: str) -> bool:
        if self.lock_rows.get(service, {}).get("op_id") == op_id:
            del self.lock_rows[service]
            return True
        return False

    def locks(self) -> list[dict]:
        return [dict(lock) for lock in self.lock_rows.values()]

    def add_fact(self, f: Fact) -> int:
        stored = f._replace(id=next(self._ids))
        self.fact_rows.append(stored)
        return int(stored.id or 0)

    def facts(self, run_id: str | None = None, rule: str | None = None) -> list[Fact]:
        return [f for f in self.fact_rows if run_id in (None, f.run_id) and rule in (None, f.rule)]

    def put_kv(self, key: str, value: dict, now: float | None = None) -> None:
        self.kv[key] = dict(value)

    def delete_kv(self, key: str) -> bool:
        return self.kv.pop(key, None) is not None

    def get_kv(self, key: str) -> dict | None:
        value = self.kv.get(key)
        return None if value is None else dict(value)


class FakeOrchestrator:
    """Replicas as records on 127.0.0.1 ports of the service's range; `unhealthy_next` makes the next started
    replica never become healthy (its log tail says so)."""

    def __init__(self) -> None:
        self.replicas: dict[str, list[Replica]] = {}
        self.unhealthy_next = False
        self._unhealthy: set[str] = set()
        self._clock = itertools.count(1)
        self.calls: list[tuple[str, str]] = []

    def seed(self, service: ServiceConfig, count: int) -> list[Replica]:
        return [self.start(service) for _ in range(count)]

    def list(self, service: ServiceConfig) -> list[Replica]:
        return list(self.replicas.get(service.name, []))

    def live(self, service: ServiceConfig) -> builtins.list[Replica]:
        return [r for r in self.list(service) if r.state in LIVE_STATES]

    def start(self, service: ServiceConfig) -> Replica:
        taken = {r.port for r in self.live(service)}
        port = next((p for p in range(service.ports.start, service.ports.end + 1) if p not in taken), None)
        if port is None:
            raise BackendError(f"no free port for '{service.name}'")
        numbers = {int(r.instance_id.rsplit("-", 1)[1]) for r in self.list(service)}
        number = next(n for n in itertools.count(1) if n not in numbers)
        replica = Replica(service.name, f"{service.name}-{number}", "127.0.0.1", port, None, RUNNING,
                          float(next(self._clock)), f"fake-{number}")
        self.replicas.setdefault(service.name, []).append(replica)
        if self.unhealthy_next:
            self._unhealthy.add(replica.instance_id)
            self.unhealthy_next = False
        self.calls.append(("start", replica.instance_id))
        return replica

    def stop(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica:
        replicas = self.replicas.get(service.name, [])
        for index, replica in enumerate(replicas):
            if replica.instance_id == instance_id:
                replicas[index] = replica._replace(state=STOPPED)
                self.calls.append(("stop", instance_id))
                return replicas[index]
        raise BackendError(f"unknown instance '{instance_id}'")

    def wait_healthy(self, service: ServiceConfig, replica: Replica, timeout_s: float | None = None) -> Replica:
        if replica.instance_id in self._unhealthy:
            self.stop(service, replica.instance_id)
            raise ReplicaUnhealthy(f"{replica.instance_id} did not become healthy", replica.instance_id,
                                   "Error: listen EADDRINUSE")
        return replica

    def kill(self, service: ServiceConfig, instance_id: str) -> None:
        replicas = self.replicas[service.name]
        for index, replica in enumerate(replicas):
            if replica.instance_id == instance_id:
                replicas[index] = replica._replace(state=DEAD)


class FakeBalancer:
    """The upstream as a list; every apply is a new generation unless `reject` makes it fail (kept unchanged);
    `reject_after` = n lets n more applies through, then sets `reject` (an apply failing mid-operation)."""

    def __init__(self, servers: list[UpstreamServer] | None = None) -> None:
        self.servers = list(servers or [])
        self.gen = 1
        self.reject = False
        self.reject_after: int | None = None
        self.old_workers = 0
        self.applied: list[list[UpstreamServer]] = []

    def apply(self, servers: list[UpstreamServer]) -> ApplyResult:
        if self.reject_after is not None:
            self.reject, self.reject_after = self.reject_after <= 0, max(self.reject_after - 1, 0)
        if self.reject:
            return ApplyResult(False, self.gen, self.gen, self.current(), "nginx -t: invalid parameter")
        self.gen += 1
        self.servers = list(servers)
        self.applied.append(list(servers))
        return ApplyResult(True, self.gen, self.gen - 1, self.current(), f"generation {self.gen} live")

    def current(self) -> list[UpstreamServer]:
        return list(self.servers)

    def generation(self) -> int:
        return self.gen

    def old_generation_workers(self) -> int:
        return self.old_workers


@dataclass
class FakeHealth:
    """Health answers by instance id; every replica passes with nothing in flight unless told otherwise."""

    answers: dict[str, Health] = field(default_factory=dict)
    probes: int = 0

    def __call__(self, replica: Replica, service: ServiceConfig, timeout_s: float) -> Health:
        self.probes += 1
        return self.answers.get(replica.instance_id, Health("pass", 0, False))


def fast_config(tmp_dir: str, **service: Any) -> FleetConfig:
    """A fleet of one local service `web` (ports 20000-20005) behind the load balancer; nothing is started."""
    return parse_config({
        "state_dir": f"{tmp_dir}/run",
        "store": {"url": "sqlite://"},
        "services": [{
            "name": "web", "backend": "local", "command": "true {port} {instance_id}",
            "ports": {"start": 20000, "end": 20005}, "replicas": 3, "min_replicas": 1, "max_replicas": 5,
            "min_healthy": 1, "drain_timeout_s": 2, "boot_timeout_s": 2, "stop_grace_s": 1, **service,
        }],
        "load_balancer": {"mode": "managed", "service": "web", "listen": "127.0.0.1:20080"},
    }, "fast", Path(tmp_dir))
