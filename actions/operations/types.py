"""What every operation shares: the action names and their permissions, results, dry-run plans, health probes."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from actions import audit
from actions.backends.base import Replica, UpstreamServer
from core.config import ServiceConfig
from core.process import http_get

# Action names, as audited and as checked by actions.auth.require().
SCALE = "scale"
DRAIN = "drain"
UNDRAIN = "undrain"
RESTART = "restart"
ROLLING_RESTART = "rolling_restart"
FORCE = "force"  # force a drain past its timeout (admin)
SET_LIMITS = "set_limits"  # override a service's [min_replicas, max_replicas] (admin)
# The permission each action needs (names of actions.auth.PERMISSIONS).
PERMISSION_OF = {SCALE: SCALE, DRAIN: DRAIN, UNDRAIN: UNDRAIN, RESTART: RESTART, ROLLING_RESTART: ROLLING_RESTART,
                 SET_LIMITS: "change_limits"}

OnTimeout = Literal["abort", "force"]
TimeoutChooser = Callable[[str], OnTimeout]  # given the situation text, return the operator's choice
# How often the drain wait polls, and how many consecutive quiet polls prove the instance idle.
DRAIN_POLL_S = 0.1
QUIET_POLLS = 2
PROGRESS_EVERY_S = 1.0


def new_op_id() -> str:
    return uuid.uuid4().hex[:12]


class Refusal(Exception):
    """Internal: the action is refused before anything changed (bad input, preflight, busy, permission)."""


class Health(NamedTuple):
    """One /health probe of one replica, reduced to what the actions decide on."""

    status: str  # pass | warn | fail | unreachable
    in_flight: int | None
    draining: bool

    @property
    def healthy(self) -> bool:
        return self.status == "pass"


@dataclass
class OperationResult:
    """What an operation did: the outcome word, the affected target and the audit's before/after records."""

    ok: bool
    detail: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    op_id: str = field(default_factory=new_op_id)
    started_at: float = field(default_factory=time.time)
    result: str = audit.OK  # ok | noop | failed | refused
    action: str = ""
    target: str = ""
    error: str | None = None

    @property
    def refused(self) -> bool:
        return self.result == audit.REFUSED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """A dry-run preview: what the action would do, to whom, and the upstream before/after."""

    action: str
    service: str
    target: str
    allowed: bool
    reason: str  # why it would be refused, or a one-line summary of what it would do
    affected: list[str] = field(default_factory=list)  # instance ids that lose or gain traffic / get stopped
    steps: list[str] = field(default_factory=list)
    upstream_before: list[dict[str, str]] = field(default_factory=list)
    upstream_after: list[dict[str, str]] = field(default_factory=list)
    confirm_text: str = ""  # what the operator must type to confirm (the instance or service name)
    disruptive: bool = True
    noop: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def upstream_diff(self) -> list[str]:
        return upstream_diff(
            [UpstreamServer(**s) for s in self.upstream_before], [UpstreamServer(**s) for s in self.upstream_after]
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "upstream_diff": self.upstream_diff}

    def render(self) -> str:
        """The plan as text (CLI --dry-run)."""
        lines = [f"plan: {self.action} {self.target}: {'allowed' if self.allowed else 'REFUSED'} — {self.reason}"]
        if self.affected:
            lines.append(f"  affected: {', '.join(self.affected)}")
        for number, step in enumerate(self.steps, 1):
            lines.append(f"  {number}. {step}")
        diff = self.upstream_diff
        if diff:
            lines.append("  upstream diff:")
            lines.extend(f"    {line}" for line in diff)
        elif self.upstream_before or self.upstream_after:
            lines.append("  upstream: unchanged")
        return "\n".join(lines)


def upstream_diff(before: list[UpstreamServer], after: list[UpstreamServer]) -> list[str]:
    """A unified-diff-like list: `- addr state`, `+ addr state`, `~ addr old → new`."""
    old = {s.address: s for s in before}
    new = {s.address: s for s in after}
    lines: list[str] = []
    for address, server in old.items():
        if address not in new:
            lines.append(f"- {address} {server.instance_id or '-'} {server.state}")
        elif new[address].state != server.state or new[address].instance_id != server.instance_id:
            lines.append(
                f"~ {address} {server.instance_id or '-'} {server.state} → {new[address].instance_id or '-'}"
                f" {new[address].state}"
            )
    lines.extend(f"+ {a} {s.instance_id or '-'} {s.state}" for a, s in new.items() if a not in old)
    return lines


def servers_dicts(servers: list[UpstreamServer]) -> list[dict[str, str]]:
    return [s._asdict() for s in servers]


def with_state(servers: list[UpstreamServer], replica: Replica, state: str) -> list[UpstreamServer]:
    return [s._replace(state=state) if s.address == replica.address else s for s in servers]


def state_of(servers: list[UpstreamServer], replica: Replica) -> str | None:
    """The replica's state in the upstream, or None when it is not listed there."""
    for server in servers:
        if server.address == replica.address:
            return server.state
    return None


def format_busy(holder: dict[str, Any]) -> str:
    since = float(holder.get("acquired_at") or 0.0)
    when = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S") if since else "?"
    return (f"busy: {holder.get('action', '?')} by {holder.get('who', '?')} since {when}"
            f" (op {holder.get('op_id', '?')})")


def whole_number(value: int | str, what: str) -> int:
    """An int from an int or a decimal string; bools and anything else are refused with `what` named."""
    if isinstance(value, bool):
        raise Refusal(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise Refusal(f"{what} must be a whole number, got {value!r}")
        return int(text)
    if not isinstance(value, int):
        raise Refusal(f"{what} must be a whole number, got {value!r}")
    return value


# (replica, service, timeout_s) -> its health; `probe_health` by default, a fake in the fast tests
HealthProbe = Callable[[Replica, ServiceConfig, float], Health]


def probe_health(replica: Replica, service: ServiceConfig, timeout_s: float = 1.0) -> Health:
    """GET the health path; parse status, inFlight and draining when the body is JSON."""
    status, body = http_get(f"{replica.base_url}{service.health.path}", min(timeout_s, service.health.timeout_s))
    if status == 0:
        return Health("unreachable", None, False)
    data: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            data = parsed
    word = str(data.get("status", "")).lower()
    in_flight = data.get("inFlight")
    draining = bool(data.get("draining", False)) or word in ("shutting_down", "out_of_service")
    if status >= 400:
        normalised = "fail"
    elif word in ("", "ok", "up", "pass"):
        normalised = "pass"
    elif word == "warn":
        normalised = "warn"
    else:
        normalised = "fail"
    return Health(normalised, int(in_flight) if isinstance(in_flight, int | float) else None, draining)


class TargetOnlyOperation:
    """A registry entry (see registry.py) for an operation that takes nothing beyond its target: it forwards to the
    module's own `plan(ctx, target, principal)` and `execute(ctx, principal, target, op_id=...)`."""

    options: tuple[str, ...] = ()

    def __init__(self, name: str, label: str, scope: str, plan: Callable[..., Plan],
                 execute: Callable[..., OperationResult]) -> None:
        self.name, self.label, self.scope = name, label, scope
        self._plan, self._execute = plan, execute

    def plan(self, ctx: Any, target: str, params: Mapping[str, Any], principal: Any = None) -> Plan:
        return self._plan(ctx, target, principal)

    def execute(self, ctx: Any, principal: Any, target: str, params: Mapping[str, Any],
                op_id: str | None = None) -> OperationResult:
        return self._execute(ctx, principal, target, op_id=op_id)
