"""Operator actions: scale, drain, undrain, restart, rolling restart, set limits — safe, audited and role-checked.

Every action goes through the same frame (`FleetActions._run`):

1. resolve and validate the input (unknown service or instance, N out of bounds, not a number → refused);
2. check the principal's role with `actions.auth.require` (the role check lives here, not in the UI);
3. take the per-service lock in the store (`busy: <action> by <who> since <time>` when someone else holds it);
4. audit the start, do the work step by step (each step a progress event in the store, keyed by the op id),
   and audit the outcome — refusals (permission, busy, bad input) are audited too;
5. release the lock.

Results are never exceptions: every call returns an `OperationResult` whose `result` is ok | noop | failed |
refused, so the CLI maps it to an exit code and the dashboard to a message without guessing.

The drain follows docs/design-notes.md#orchestrators: preflight (min_healthy, lock, known target) → audit → render the
server `down` → `nginx -t` → reload → verify the new generation is live (all inside `ManagedNginx.apply`, which restores
the previous files on any failure) → wait until no old nginx worker (which may still hold a request for the target) is
left and the instance's own in-flight count is 0, bounded by drain_timeout_s → mark it `down`. On timeout the operator's
choice applies: abort (put it back in rotation) or force (admin only).

`plan_*()` compute the dry-run preview (which replicas, the upstream before/after and its diff, the refusal if
any) from the same preflight code the actions use, so the preview cannot drift from what the action will do.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from actions import audit
from actions.auth import PermissionDenied, require
from actions.backends import backend_for, port_capacity
from actions.backends.base import (
    DOWN,
    DRAINING,
    LIVE_STATES,
    UP,
    ActionResult,
    ApplyResult,
    FleetdeckActionError,
    LoadBalancer,
    Orchestrator,
    Refused,
    Replica,
    UpstreamServer,
    new_op_id,
)
from core.config import FleetConfig, ServiceConfig
from core.process import http_get
from core.store import Store

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


class Health(NamedTuple):
    """One /health probe of one replica, reduced to what the actions decide on."""

    status: str  # pass | warn | fail | unreachable
    in_flight: int | None
    draining: bool

    @property
    def healthy(self) -> bool:
        return self.status == "pass"


@dataclass
class OperationResult(ActionResult):
    """ActionResult plus the outcome word and the affected target, for the CLI and the dashboard."""

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


def _servers_dicts(servers: list[UpstreamServer]) -> list[dict[str, str]]:
    return [s._asdict() for s in servers]


def format_busy(holder: dict[str, Any]) -> str:
    since = float(holder.get("acquired_at") or 0.0)
    when = datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S") if since else "?"
    return (f"busy: {holder.get('action', '?')} by {holder.get('who', '?')} since {when}"
            f" (op {holder.get('op_id', '?')})")


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


def limits_of(store: Store, service: ServiceConfig) -> Limits:
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


def effective_limits(store: Store, service: ServiceConfig) -> tuple[int, int]:
    """(min_replicas, max_replicas) every bound check uses — never `service.min_replicas/max_replicas` directly."""
    limits = limits_of(store, service)
    return limits.min_replicas, limits.max_replicas


def with_effective_limits(store: Store, service: ServiceConfig) -> ServiceConfig:
    """The service config carrying its effective bounds, so the backends' own guards (LocalOrchestrator.start
    refuses beyond `max_replicas`) agree with the override instead of the file."""
    low, high = effective_limits(store, service)
    if (low, high) == (service.min_replicas, service.max_replicas):
        return service
    return service.model_copy(update={"min_replicas": low, "max_replicas": high})


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


class _Refusal(Exception):
    """Internal: the action is refused before anything changed (bad input, preflight, busy, permission)."""


class FleetActions:
    """The actions API. One instance per process is fine; it holds no per-action state.

    `orchestrators` and `balancer` may be injected (tests wrap the real ones); by default the service's backend
    and the managed nginx of `config.load_balancer` are used.
    """

    def __init__(
        self,
        config: FleetConfig,
        store: Store,
        *,
        orchestrator: Orchestrator | None = None,
        balancer: LoadBalancer | None = None,
        on_progress: audit.ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._orchestrator = orchestrator
        self._backends: dict[str, Orchestrator] = {}
        self._balancer = balancer
        self.on_progress = on_progress

    # -- backends --------------------------------------------------------------------------------------------

    def orchestrator(self, service: ServiceConfig) -> Orchestrator:
        if self._orchestrator is not None:
            return self._orchestrator
        if service.backend not in self._backends:
            # one per backend, kept: a docker/swarm orchestrator holds the daemon connection
            self._backends[service.backend] = backend_for(service, self.config, self.store)
        return self._backends[service.backend]

    def balancer(self, service: ServiceConfig) -> LoadBalancer | None:
        """The load balancer in front of `service`, or None when nginx does not route to it."""
        lb = self.config.load_balancer
        if lb is None or lb.service != service.name:
            return None
        if self._balancer is None:
            from actions.backends.nginx import ManagedNginx

            self._balancer = ManagedNginx(self.config, self.store)
        return self._balancer

    # -- lookups ---------------------------------------------------------------------------------------------

    def _service(self, name: str) -> ServiceConfig:
        """The named service with its effective limits applied (see `with_effective_limits`), or _Refusal."""
        try:
            service = self.config.service(name)
        except KeyError as error:
            raise _Refusal(str(error.args[0])) from None
        return with_effective_limits(self.store, service)

    def _live(self, service: ServiceConfig) -> list[Replica]:
        return [r for r in self.orchestrator(service).list(service) if r.state in LIVE_STATES]

    def find_instance(self, instance: str) -> tuple[ServiceConfig, Replica]:
        """`web-2` or `web/web-2` → (service, replica); refused when unknown or not running."""
        wanted_service, _, instance_id = instance.rpartition("/")
        services = [self._service(wanted_service)] if wanted_service else list(self.config.services)
        known: list[str] = []
        for service in services:
            try:
                replicas = self.orchestrator(service).list(service)
            except FleetdeckActionError:
                continue  # that backend is unreachable: the instance may still be found in another service
            for replica in replicas:
                known.append(replica.instance_id)
                if replica.instance_id == instance_id:
                    if replica.state not in LIVE_STATES:
                        raise _Refusal(f"instance '{instance_id}' is {replica.state}, not running")
                    return service, replica
        raise _Refusal(f"unknown instance '{instance}'; known: {', '.join(known) or 'none'}")

    def _upstream(self, service: ServiceConfig) -> list[UpstreamServer]:
        balancer = self.balancer(service)
        return list(balancer.current()) if balancer else []

    @staticmethod
    def _state_of(servers: list[UpstreamServer], replica: Replica) -> str | None:
        for server in servers:
            if server.address == replica.address:
                return server.state
        return None

    def _snapshot(self, service: ServiceConfig) -> dict[str, Any]:
        """The before/after record of the audit: replicas with their health and upstream state."""
        upstream = self._upstream(service)
        replicas = []
        for replica in self._live(service):
            health = probe_health(replica, service, 0.5)
            replicas.append({
                "instance_id": replica.instance_id, "address": replica.address, "state": replica.state,
                "health": health.status, "upstream": self._state_of(upstream, replica),
            })
        generation = None
        balancer = self.balancer(service)
        if balancer is not None:
            generation = balancer.generation()
        return {"replicas": replicas, "count": len(replicas), "generation": generation,
                "upstream": _servers_dicts(upstream)}

    def _serving(self, service: ServiceConfig, upstream: list[UpstreamServer], exclude: set[str]) -> list[str]:
        """Instance ids that are healthy and in rotation (upstream `up`, or no LB at all), minus `exclude`."""
        balancer = self.balancer(service)
        serving = []
        for replica in self._live(service):
            if replica.instance_id in exclude:
                continue
            if balancer is not None and self._state_of(upstream, replica) != UP:
                continue
            if probe_health(replica, service, 1.0).healthy:
                serving.append(replica.instance_id)
        return serving

    def _check_min_healthy(self, service: ServiceConfig, upstream: list[UpstreamServer], removing: set[str]) -> None:
        # Never take the last serving replica out, whatever min_healthy says: that would be an outage, not a drain.
        need = max(service.min_healthy, 1)
        remaining = self._serving(service, upstream, removing)
        if len(remaining) < need:
            raise _Refusal(
                f"refused: taking {', '.join(sorted(removing))} out of '{service.name}' would leave"
                f" {len(remaining)} healthy serving replica(s) ({', '.join(remaining) or 'none'});"
                f" min_healthy is {service.min_healthy}" + (" and the last one is never drained" if need == 1 else "")
            )

    # -- the frame every action runs in ------------------------------------------------------------------------

    def _run(
        self,
        principal: Any,
        action: str,
        target: str,
        params: dict[str, Any],
        prepare: Callable[[], tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]],
        op_id: str | None = None,
        lock_ttl_s: Callable[[ServiceConfig], float] | None = None,
        extra_permissions: tuple[str, ...] = (),
    ) -> OperationResult:
        """Validate (prepare), check the role, lock, audit, run, audit, unlock. Never raises FleetdeckActionError."""
        op_id = op_id or new_op_id()
        replay = self._replay(op_id)
        if replay is not None:
            return replay
        service_name = target.split("/", 1)[0]
        op = audit.Operation(self.store, op_id, principal, action, service_name, target, params, self.on_progress)
        try:
            # Permission first: a viewer learns nothing about the fleet from the error of a refused action.
            for permission in (PERMISSION_OF.get(action, action), *extra_permissions):
                require(principal, permission)
            service, body = prepare()
        except PermissionDenied as error:
            return self._refuse(op, f"permission denied: {error}")
        except (_Refusal, Refused) as error:
            return self._refuse(op, str(error))
        except FleetdeckActionError as error:  # e.g. the Docker daemon is unreachable: nothing was changed
            op.finish(audit.FAILED, str(error), {}, {}, str(error))
            return OperationResult(False, str(error), op_id=op_id, result=audit.FAILED, action=action, target=target,
                                   error=str(error))
        op.service = service.name
        ttl = lock_ttl_s(service) if lock_ttl_s else self._default_ttl(service)
        got, holder = self.store.acquire_lock(service.name, action, principal.name, op_id, ttl)
        if not got:
            return self._refuse(op, format_busy(holder))
        before: dict[str, Any] = {}
        try:
            before = self._snapshot(service)
            op.begin(before)
            result = body(op)
        except (_Refusal, Refused) as error:
            # A refusal found after the lock (e.g. health changed): still nothing was changed.
            return self._refuse(op, str(error), before)
        except FleetdeckActionError as error:
            result = OperationResult(False, str(error), result=audit.FAILED, error=str(error))
        except Exception as error:  # the audit must record even a bug, then the caller sees a failure
            result = OperationResult(False, f"internal error: {type(error).__name__}: {error}",
                                     result=audit.FAILED, error=f"{type(error).__name__}: {error}")
        finally:
            self.store.release_lock(service.name, op_id)
        result.op_id, result.action, result.target = op_id, action, target
        result.before = before
        with contextlib.suppress(Exception):
            # the state after, plus what the action measured (out_of_rotation_s, scale_up_s, restarted, ...)
            result.after = {**self._snapshot(service), **result.after}
        op.finish(result.result, result.detail, before, result.after, result.error)
        return result

    def _refuse(self, op: audit.Operation, message: str, before: dict[str, Any] | None = None) -> OperationResult:
        op.finish(audit.REFUSED, message, before or {}, {}, message)
        return OperationResult(False, message, before=before or {}, op_id=op.op_id, result=audit.REFUSED,
                               action=op.action, target=op.target, error=message)

    def _replay(self, op_id: str) -> OperationResult | None:
        """Idempotency by operation id: re-submitting a finished op returns its outcome without acting again."""
        status = audit.operation_status(self.store, op_id)
        if not status or status.get("state") in (None, "running"):
            return None
        state = str(status["state"])
        return OperationResult(state in (audit.OK, audit.NOOP), f"already done (op {op_id}): {status.get('message')}",
                               after=status.get("after") or {}, op_id=op_id, result=state,
                               action=str(status.get("action", "")), target=str(status.get("target", "")))

    @staticmethod
    def _default_ttl(service: ServiceConfig) -> float:
        # long enough for the slowest legitimate path (boot + drain + stop), so a live op never loses its lock
        return service.boot_timeout_s + service.drain_timeout_s + service.stop_grace_s + 120

    def _apply(self, op: audit.Operation, service: ServiceConfig, servers: list[UpstreamServer],
               why: str) -> ApplyResult:
        balancer = self.balancer(service)
        assert balancer is not None
        op.progress(f"{why}: nginx -t, reload, verify", "apply")
        result = balancer.apply(servers)
        if not result.ok:
            op.progress(f"nginx apply failed, previous config kept: {result.detail}", "apply_failed")
            result.raise_for_failure()
        op.progress(result.detail, "applied", generation=result.generation)
        return result

    # -- drain / undrain ---------------------------------------------------------------------------------------

    def plan_drain(self, instance: str, principal: Any | None = None) -> Plan:
        return self._plan_instance(DRAIN, instance, principal)

    def plan_undrain(self, instance: str, principal: Any | None = None) -> Plan:
        return self._plan_instance(UNDRAIN, instance, principal)

    def plan_restart(self, instance: str, principal: Any | None = None) -> Plan:
        return self._plan_instance(RESTART, instance, principal)

    def _plan_instance(self, action: str, instance: str, principal: Any | None) -> Plan:
        try:
            service, replica = self.find_instance(instance)
        except (_Refusal, FleetdeckActionError) as error:
            return Plan(action, instance.rpartition("/")[0] or "?", instance, False, str(error), confirm_text=instance)
        before = self._upstream(service)
        target = f"{service.name}/{replica.instance_id}"
        plan = Plan(action, service.name, target, True, "", [replica.instance_id],
                    upstream_before=_servers_dicts(before), confirm_text=replica.instance_id)
        try:
            if principal is not None:
                require(principal, PERMISSION_OF[action])
            current = self._state_of(before, replica)
            if action == DRAIN:
                after, plan.noop = self._drain_preflight(service, replica, before)
                plan.reason = "already drained: nothing to do" if plan.noop else (
                    f"take {replica.instance_id} out of rotation, wait for its requests to finish"
                    f" (≤ {service.drain_timeout_s:g}s)")
                plan.steps = [] if plan.noop else [
                    f"render {replica.address} down; nginx -t; reload; verify the new generation",
                    "wait: no old nginx worker left and the instance's in-flight count is 0",
                    f"on timeout: abort (back in rotation) or force (admin), after {service.drain_timeout_s:g}s",
                ]
            elif action == UNDRAIN:
                after, plan.noop = self._undrain_preflight(service, replica, before)
                plan.disruptive = False
                plan.reason = "already in rotation: nothing to do" if plan.noop else (
                    f"put {replica.instance_id} back in rotation")
                plan.steps = [] if plan.noop else [f"render {replica.address} up; nginx -t; reload; verify"]
            else:
                after = before
                if self.balancer(service) is not None and current == UP:
                    after, _ = self._drain_preflight(service, replica, before)
                plan.reason = f"restart {replica.instance_id} (it is out of rotation meanwhile)"
                plan.steps = [
                    f"drain {replica.instance_id} (≤ {service.drain_timeout_s:g}s)",
                    f"stop it (SIGTERM, grace {service.stop_grace_s:g}s)",
                    f"start a replacement, wait until healthy (≤ {service.boot_timeout_s:g}s)",
                    "put it in rotation (nginx -t, reload, verify)",
                ]
            plan.upstream_after = _servers_dicts(after)
        except PermissionDenied as error:
            plan.allowed, plan.reason = False, f"permission denied: {error}"
        except (_Refusal, FleetdeckActionError) as error:
            plan.allowed, plan.reason = False, str(error)
        return plan

    def _drain_preflight(self, service: ServiceConfig, replica: Replica,
                         upstream: list[UpstreamServer]) -> tuple[list[UpstreamServer], bool]:
        """(the upstream after the drain, already drained?) or _Refusal."""
        if self.balancer(service) is None:
            raise _Refusal(f"service '{service.name}' is not behind the load balancer: there is nothing to drain")
        state = self._state_of(upstream, replica)
        if state is None:
            raise _Refusal(f"{replica.instance_id} ({replica.address}) is not in the upstream of '{service.name}'")
        if state == DOWN:
            return upstream, True
        if state == UP:
            self._check_min_healthy(service, upstream, {replica.instance_id})
        return _with_state(upstream, replica, DRAINING), False

    def _undrain_preflight(self, service: ServiceConfig, replica: Replica,
                           upstream: list[UpstreamServer]) -> tuple[list[UpstreamServer], bool]:
        if self.balancer(service) is None:
            raise _Refusal(f"service '{service.name}' is not behind the load balancer: there is nothing to undrain")
        state = self._state_of(upstream, replica)
        if state == UP:
            return upstream, True
        health = probe_health(replica, service)
        if not health.healthy:
            raise _Refusal(f"{replica.instance_id} is not healthy ({health.status}); not putting it back in rotation")
        if state is None:
            return [*upstream, UpstreamServer(replica.address, UP, replica.instance_id)], False
        return _with_state(upstream, replica, UP), False

    def drain(
        self,
        principal: Any,
        instance: str,
        *,
        timeout_s: float | None = None,
        on_timeout: OnTimeout | TimeoutChooser = "abort",
        op_id: str | None = None,
    ) -> OperationResult:
        """Take one instance out of rotation and wait until it is idle (see the module docstring)."""
        force_now = on_timeout == "force"
        params = {"instance": instance, "timeout_s": timeout_s, "on_timeout": on_timeout if isinstance(on_timeout, str)
                  else "ask"}

        def prepare() -> tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]:
            if timeout_s is not None and not 0 < timeout_s <= 3600:
                raise _Refusal(f"--timeout must be within (0, 3600] seconds, got {timeout_s}")
            service, replica = self.find_instance(instance)
            self._drain_preflight(service, replica, self._upstream(service))

            def body(op: audit.Operation) -> OperationResult:
                return self._drain_locked(op, service, replica, timeout_s, on_timeout, principal)

            return service, body

        return self._run(principal, DRAIN, _target_of(self, instance), params, prepare, op_id,
                         lambda s: (timeout_s or s.drain_timeout_s) + 120,
                         extra_permissions=(FORCE,) if force_now else ())

    def _drain_locked(self, op: audit.Operation, service: ServiceConfig, replica: Replica, timeout_s: float | None,
                      on_timeout: OnTimeout | TimeoutChooser, principal: Any,
                      mark_down: bool = True) -> OperationResult:
        upstream = self._upstream(service)
        after, noop = self._drain_preflight(service, replica, upstream)
        if noop:
            op.progress(f"{replica.instance_id} is already drained", "noop")
            return OperationResult(True, f"{replica.instance_id} is already drained (no-op)", result=audit.NOOP)
        timeout = timeout_s or service.drain_timeout_s
        started = time.monotonic()
        if self._state_of(upstream, replica) == UP:
            self._apply(op, service, after, f"taking {replica.instance_id} out of rotation")
        else:
            op.progress(f"{replica.instance_id} is already out of rotation (draining); waiting for it", "resume")
        out_of_rotation_s = time.monotonic() - started
        op.progress(f"{replica.instance_id} out of rotation after {out_of_rotation_s:.3f}s; waiting for in-flight",
                    "out_of_rotation", out_of_rotation_s=out_of_rotation_s)
        quiet, why = self._wait_idle(op, service, replica, timeout)
        metrics = {"out_of_rotation_s": round(out_of_rotation_s, 3),
                   "drain_s": round(time.monotonic() - started, 3)}
        stopped = replica_stopped_under(self.orchestrator(service), service, replica)
        if stopped is not None:  # an idle answer from a replica that is being stopped proves nothing
            message = f"drain of {replica.instance_id} failed: {stopped}"
            op.progress(message, "replica_stopped")
            return OperationResult(False, message, after=metrics, result=audit.FAILED, error=message)
        if quiet:
            if mark_down:  # a restart skips this reload: it replaces the entry once the new replica is healthy
                self._apply(op, service, _with_state(self._upstream(service), replica, DOWN), "marking it down")
            return OperationResult(True, f"{replica.instance_id} drained in {metrics['drain_s']:.2f}s",
                                   after=metrics, result=audit.OK)
        choice = on_timeout if isinstance(on_timeout, str) else on_timeout(
            f"{replica.instance_id} still busy after {timeout:g}s ({why})")
        if choice == "force":
            try:
                require(principal, FORCE)
            except PermissionDenied as error:
                op.progress(f"force is not allowed ({error}); aborting instead", "force_denied")
                choice = "abort"
        if choice == "force":
            self._apply(op, service, _with_state(self._upstream(service), replica, DOWN), "forcing it down")
            return OperationResult(True, f"{replica.instance_id} forced down after {timeout:g}s ({why})",
                                   after={**metrics, "forced": True}, result=audit.OK)
        self._apply(op, service, _with_state(self._upstream(service), replica, UP), "aborting: back in rotation")
        message = f"drain of {replica.instance_id} timed out after {timeout:g}s ({why}); aborted, back in rotation"
        return OperationResult(False, message, after=metrics, result=audit.FAILED, error=message)

    def _wait_idle(self, op: audit.Operation, service: ServiceConfig, replica: Replica,
                   timeout_s: float) -> tuple[bool, str]:
        """Until no old nginx worker is left and the instance reports 0 in flight, twice in a row."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        last_report = 0.0
        why = ""
        while True:
            old_workers = self._old_nginx_workers(service)
            health = probe_health(replica, service)
            # An unreachable replica has nothing in flight (it is gone); a replica without inFlight is judged
            # by the nginx side alone.
            in_flight = 0 if health.status == "unreachable" else (health.in_flight or 0)
            if old_workers == 0 and in_flight == 0:
                quiet += 1
                if quiet >= QUIET_POLLS:
                    return True, "idle"
            else:
                quiet = 0
            why = f"in-flight {in_flight}, old nginx workers {old_workers}"
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                op.progress(f"waiting for {replica.instance_id}: {why}", "waiting", in_flight=in_flight,
                            old_workers=old_workers)
                last_report = now
            if now >= deadline:
                return False, why
            time.sleep(DRAIN_POLL_S)

    def _old_nginx_workers(self, service: ServiceConfig) -> int:
        """nginx workers of an older generation still finishing requests (they may still hit the target)."""
        balancer = self.balancer(service)
        return balancer.old_generation_workers() if balancer is not None else 0

    def undrain(self, principal: Any, instance: str, *, op_id: str | None = None) -> OperationResult:
        """Put a drained instance back in rotation (it must be healthy)."""

        def prepare() -> tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]:
            service, replica = self.find_instance(instance)
            self._undrain_preflight(service, replica, self._upstream(service))

            def body(op: audit.Operation) -> OperationResult:
                after, noop = self._undrain_preflight(service, replica, self._upstream(service))
                if noop:
                    op.progress(f"{replica.instance_id} is already in rotation", "noop")
                    return OperationResult(True, f"{replica.instance_id} is already in rotation (no-op)",
                                           result=audit.NOOP)
                self._apply(op, service, after, f"putting {replica.instance_id} back in rotation")
                return OperationResult(True, f"{replica.instance_id} back in rotation", result=audit.OK)

            return service, body

        return self._run(principal, UNDRAIN, _target_of(self, instance), {"instance": instance}, prepare, op_id)

    # -- scale -------------------------------------------------------------------------------------------------

    @staticmethod
    def _whole_number(value: int | str, what: str) -> int:
        """An int from an int or a decimal string; bools and anything else are refused with `what` named."""
        if isinstance(value, bool):
            raise _Refusal(f"{what} must be a whole number, got {value!r}")
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("-").isdigit():
                raise _Refusal(f"{what} must be a whole number, got {value!r}")
            return int(text)
        if not isinstance(value, int):
            raise _Refusal(f"{what} must be a whole number, got {value!r}")
        return value

    def _parse_count(self, service: ServiceConfig, replicas: int | str) -> int:
        replicas = self._whole_number(replicas, "N")
        limits = limits_of(self.store, self.config.service(service.name))
        if not limits.min_replicas <= replicas <= limits.max_replicas:
            where = ("min_replicas, max_replicas in the config" if limits.source == "config"
                     else f"limits {limits.describe()}; see `fleetdeck limits {service.name}`")
            raise _Refusal(
                f"N={replicas} is outside '{service.name}' bounds [{limits.min_replicas}, {limits.max_replicas}]"
                f" ({where})"
            )
        return replicas

    def _pick_victims(self, service: ServiceConfig, live: list[Replica], upstream: list[UpstreamServer],
                      count: int) -> list[Replica]:
        """Which replicas to remove: already out of rotation first, then unhealthy, then the newest."""

        def cost(replica: Replica) -> tuple[int, int, float]:
            state = self._state_of(upstream, replica)
            out_of_rotation = 0 if state in (DOWN, DRAINING) else 1
            unhealthy = 0 if not probe_health(replica, service, 0.5).healthy else 1
            return out_of_rotation, unhealthy, -replica.started_at

        return sorted(live, key=cost)[:count]

    def plan_scale(self, service_name: str, replicas: int | str, principal: Any | None = None) -> Plan:
        plan = Plan(SCALE, service_name, service_name, True, "", confirm_text=service_name,
                    params={"replicas": replicas})
        try:
            service = self._service(service_name)
            if principal is not None:
                require(principal, SCALE)
            wanted = self._parse_count(service, replicas)
            live = self._live(service)
            upstream = self._upstream(service)
            plan.upstream_before = _servers_dicts(upstream)
            plan.upstream_after = _servers_dicts(upstream)
            if wanted == len(live):
                plan.noop, plan.disruptive = True, False
                plan.reason = f"'{service_name}' already runs {wanted} replica(s): nothing to do"
            elif wanted > len(live):
                plan.disruptive = False
                add = wanted - len(live)
                plan.reason = f"start {add} replica(s): {len(live)} → {wanted}"
                plan.affected = [f"+{add} new"]
                plan.steps = [f"start {add} replica(s) on free ports {service.ports.start}-{service.ports.end}",
                              f"wait until each is healthy (≤ {service.boot_timeout_s:g}s)",
                              "add them to the upstream (nginx -t, reload, verify)"]
                plan.upstream_after = [*plan.upstream_before,
                                       *({"address": "(new)", "state": UP, "instance_id": f"new-{i + 1}"}
                                         for i in range(add))]
            else:
                victims = self._pick_victims(service, live, upstream, len(live) - wanted)
                names = {v.instance_id for v in victims}
                if self.balancer(service) is not None:
                    self._check_min_healthy(service, upstream, names)
                plan.reason = f"stop {len(victims)} replica(s): {len(live)} → {wanted}"
                plan.affected = sorted(names)
                plan.steps = [f"drain {', '.join(sorted(names))} (≤ {service.drain_timeout_s:g}s)",
                              f"stop them (SIGTERM, grace {service.stop_grace_s:g}s)",
                              "remove them from the upstream (nginx -t, reload, verify)"]
                plan.upstream_after = _servers_dicts(
                    [s for s in upstream if s.address not in {v.address for v in victims}])
        except PermissionDenied as error:
            plan.allowed, plan.reason = False, f"permission denied: {error}"
        except (_Refusal, FleetdeckActionError) as error:
            plan.allowed, plan.reason = False, str(error)
        return plan

    def scale(self, principal: Any, service_name: str, replicas: int | str, *,
              op_id: str | None = None) -> OperationResult:
        """Scale to N within the effective [min, max] (`effective_limits`); new replicas join only once healthy."""

        def prepare() -> tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]:
            service = self._service(service_name)
            wanted = self._parse_count(service, replicas)

            def body(op: audit.Operation) -> OperationResult:
                # The limits may have changed between the preflight and the lock (set_limits takes the same lock):
                # check again and act with the bounds as they are now.
                current = self._service(service_name)
                self._parse_count(current, wanted)
                live = self._live(current)
                if wanted == len(live):
                    op.progress(f"'{current.name}' already runs {wanted} replica(s)", "noop")
                    return OperationResult(True, f"'{current.name}' already at {wanted} replica(s) (no-op)",
                                           result=audit.NOOP)
                if wanted > len(live):
                    return self._scale_up(op, current, wanted - len(live))
                return self._scale_down(op, current, live, len(live) - wanted)

            return service, body

        return self._run(principal, SCALE, service_name, {"service": service_name, "replicas": replicas}, prepare,
                         op_id)

    def _scale_up(self, op: audit.Operation, service: ServiceConfig, count: int) -> OperationResult:
        orchestrator = self.orchestrator(service)
        started_at = time.monotonic()
        new: list[Replica] = []
        try:
            for _ in range(count):
                replica = orchestrator.start(service)
                new.append(replica)
                op.progress(f"started {replica.instance_id} on {replica.address}", "started",
                            instance_id=replica.instance_id)
            # They boot in parallel; wait for each in turn (the total is the slowest boot, not the sum).
            for index, replica in enumerate(new):
                new[index] = self._wait_healthy(service, replica)
                op.progress(f"{replica.instance_id} is healthy after {time.monotonic() - started_at:.2f}s", "healthy",
                            instance_id=replica.instance_id)
            if self.balancer(service) is not None:
                upstream = [s for s in self._upstream(service) if s.address not in {r.address for r in new}]
                upstream += [UpstreamServer(r.address, UP, r.instance_id) for r in new]
                self._apply(op, service, upstream, f"adding {', '.join(r.instance_id for r in new)} to the upstream")
        except FleetdeckActionError as error:
            # Leave nothing half-done: replicas that never joined are stopped; the upstream is unchanged.
            for replica in new:
                with contextlib.suppress(FleetdeckActionError):
                    orchestrator.stop(service, replica.instance_id, grace_s=2)
                    op.progress(f"stopped {replica.instance_id} (rolled back)", "rollback")
            message = f"scale up failed: {error}" + (f"\n{error.log_tail}" if error.log_tail else "")
            return OperationResult(False, message, result=audit.FAILED, error=str(error))
        serving_s = time.monotonic() - started_at
        self.store.put_kv(f"desired:{service.name}", {"replicas": len(self._live(service)), "ts": time.time()})
        return OperationResult(True, f"started {', '.join(r.instance_id for r in new)}; serving after {serving_s:.2f}s",
                               after={"scale_up_s": round(serving_s, 3)}, result=audit.OK)

    def _wait_healthy(self, service: ServiceConfig, replica: Replica) -> Replica:
        return self.orchestrator(service).wait_healthy(service, replica)

    def _scale_down(self, op: audit.Operation, service: ServiceConfig, live: list[Replica],
                    count: int) -> OperationResult:
        upstream = self._upstream(service)
        victims = self._pick_victims(service, live, upstream, count)
        names = [v.instance_id for v in victims]
        balancer = self.balancer(service)
        if balancer is not None:
            self._check_min_healthy(service, upstream, set(names))
            to_drain = [v for v in victims if self._state_of(upstream, v) == UP]
            if to_drain:
                drained = upstream
                for victim in to_drain:
                    drained = _with_state(drained, victim, DRAINING)
                self._apply(op, service, drained, f"taking {', '.join(names)} out of rotation")
            deadline_s = service.drain_timeout_s
            for victim in victims:
                quiet, why = self._wait_idle(op, service, victim, deadline_s)
                if not quiet:
                    # The operator did not ask to cut requests: put them back and report.
                    restored = self._upstream(service)
                    for other in to_drain:
                        restored = _with_state(restored, other, UP)
                    self._apply(op, service, restored, "aborting: back in rotation")
                    message = f"scale down aborted: {victim.instance_id} still busy after {deadline_s:g}s ({why})"
                    return OperationResult(False, message, result=audit.FAILED, error=message)
        orchestrator = self.orchestrator(service)
        for victim in victims:
            orchestrator.stop(service, victim.instance_id)
            op.progress(f"stopped {victim.instance_id}", "stopped", instance_id=victim.instance_id)
        if balancer is not None:
            gone = {v.address for v in victims}
            self._apply(op, service, [s for s in self._upstream(service) if s.address not in gone],
                        f"removing {', '.join(names)} from the upstream")
        self.store.put_kv(f"desired:{service.name}", {"replicas": len(self._live(service)), "ts": time.time()})
        return OperationResult(True, f"stopped {', '.join(names)}", result=audit.OK)

    # -- limits ------------------------------------------------------------------------------------------------

    def _limits_preflight(self, service_name: str, min_replicas: int | str,
                          max_replicas: int | str) -> tuple[ServiceConfig, Limits, int, int, int]:
        """(service as in the config, current limits, new min, new max, live count) or _Refusal naming the problem."""
        try:
            service = self.config.service(service_name)
        except KeyError as error:
            raise _Refusal(str(error.args[0])) from None
        low = self._whole_number(min_replicas, "--min")
        high = self._whole_number(max_replicas, "--max")
        if low < 0:
            raise _Refusal(f"--min must be at least 0, got {low}")
        if low > high:
            raise _Refusal(f"--min ({low}) must be <= --max ({high})")
        if high < 1:
            # as in the config (max_replicas >= 1): a service nobody may run is a config change, not a limit
            raise _Refusal(f"--max must be at least 1, got {high}")
        capacity = port_capacity(service)
        if capacity is not None and high > capacity:
            raise _Refusal(
                f"--max ({high}) exceeds the port range of '{service.name}' ({service.ports.start}-{service.ports.end}"
                f" holds {capacity} port(s)); widen ports in the config first"
            )
        current = limits_of(self.store, service)
        live = len(self._live(service))
        # With nothing running (fleet down) there is no count to be out of bounds; `fleet up` clamps its desired
        # count into the new bounds (actions.fleet.desired_replicas).
        if live and not low <= live <= high:
            raise _Refusal(
                f"'{service.name}' runs {live} replica(s), outside the new limits [{low}, {high}]; scale it to within"
                f" them first (`fleetdeck scale {service.name} {min(max(live, low), high)}`), then change the limits"
            )
        return service, current, low, high, live

    def plan_set_limits(self, service_name: str, min_replicas: int | str, max_replicas: int | str,
                        principal: Any | None = None) -> Plan:
        """The dry-run of set_limits: the bounds before → after and where the current ones come from."""
        plan = Plan(SET_LIMITS, service_name, service_name, True, "", confirm_text=service_name,
                    params={"min_replicas": min_replicas, "max_replicas": max_replicas})
        try:
            if principal is not None:
                require(principal, PERMISSION_OF[SET_LIMITS])
            service, current, low, high, live = self._limits_preflight(service_name, min_replicas, max_replicas)
            if (current.min_replicas, current.max_replicas) == (low, high):
                plan.noop, plan.disruptive = True, False
                plan.reason = (f"'{service.name}' limits are already [{low}, {high}] ({current.describe()}):"
                               " nothing to do")
            else:
                # No traffic moves, but the safety bounds do: it keeps `disruptive` so it is confirmed by name.
                plan.reason = (f"limits of '{service.name}': [{current.min_replicas}, {current.max_replicas}]"
                               f" ({current.describe()}) → [{low}, {high}]; {live} replica(s) running")
                plan.steps = [f"record the override {limits_key(service.name)} = [{low}, {high}] in the store",
                              "scale (CLI, dashboard) and `fleetdeck up` keep within the new limits from then on"]
        except PermissionDenied as error:
            plan.allowed, plan.reason = False, f"permission denied: {error}"
        except (_Refusal, FleetdeckActionError) as error:
            plan.allowed, plan.reason = False, str(error)
        return plan

    def set_limits(self, principal: Any, service: str, min_replicas: int | str, max_replicas: int | str,
                   op_id: str | None = None) -> OperationResult:
        """Override the service's [min_replicas, max_replicas] in the store (admin); refused when the running
        count would fall outside the new bounds; the same limits again is a no-op. Setting the config file's own
        bounds removes the override (that is how limits are reset)."""
        params = {"service": service, "min_replicas": min_replicas, "max_replicas": max_replicas}

        def prepare() -> tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]:
            config_service = self._limits_preflight(service, min_replicas, max_replicas)[0]

            def body(op: audit.Operation) -> OperationResult:
                # again under the lock: a scale that finished meanwhile may have moved the count
                file_service, current, low, high, live = self._limits_preflight(service, min_replicas, max_replicas)
                if (low, high) == (file_service.min_replicas, file_service.max_replicas) and current.source != "config":
                    # back to the file's bounds: drop the override so a later edit of the file takes effect again
                    self.store.delete_kv(limits_key(service))
                    op.progress(f"limits of '{service}' reset to the config's [{low}, {high}]", "limits")
                    return OperationResult(
                        True, f"'{service}' limits [{current.min_replicas}, {current.max_replicas}] → the config's"
                              f" [{low}, {high}] ({live} replica(s) running)",
                        after={"limits": {"min_replicas": low, "max_replicas": high, "source": "config"},
                               "previous_limits": {"min_replicas": current.min_replicas,
                                                   "max_replicas": current.max_replicas, "source": current.source}},
                        result=audit.OK)
                previous = {"min_replicas": current.min_replicas, "max_replicas": current.max_replicas,
                            "source": current.source}
                if (current.min_replicas, current.max_replicas) == (low, high):
                    op.progress(f"'{service}' limits are already [{low}, {high}]", "noop")
                    return OperationResult(True, f"'{service}' limits already [{low}, {high}] (no-op)",
                                           after={"limits": previous}, result=audit.NOOP)
                record = {"min_replicas": low, "max_replicas": high, "by": principal.name, "ts": time.time()}
                self.store.put_kv(limits_key(service), record)
                op.progress(f"limits of '{service}' set to [{low}, {high}]", "limits")
                return OperationResult(
                    True, f"'{service}' limits [{current.min_replicas}, {current.max_replicas}] → [{low}, {high}]"
                          f" ({live} replica(s) running)",
                    after={"limits": {**record, "source": "override"}, "previous_limits": previous},
                    result=audit.OK)

            return config_service, body

        return self._run(principal, SET_LIMITS, service, params, prepare, op_id)

    # -- restart -----------------------------------------------------------------------------------------------

    def restart(self, principal: Any, instance: str, *, op_id: str | None = None) -> OperationResult:
        """drain → stop → start → healthy → undrain, for one instance."""

        def prepare() -> tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]:
            service, replica = self.find_instance(instance)
            if self.balancer(service) is not None and self._state_of(self._upstream(service), replica) == UP:
                self._drain_preflight(service, replica, self._upstream(service))

            def body(op: audit.Operation) -> OperationResult:
                return self._restart_locked(op, service, replica)

            return service, body

        return self._run(principal, RESTART, _target_of(self, instance), {"instance": instance}, prepare, op_id)

    def _restart_locked(self, op: audit.Operation, service: ServiceConfig, replica: Replica) -> OperationResult:
        balancer = self.balancer(service)
        orchestrator = self.orchestrator(service)
        if balancer is not None and self._state_of(self._upstream(service), replica) in (UP, DRAINING):
            drained = self._drain_locked(op, service, replica, None, "abort", op.principal, mark_down=False)
            if not drained.ok:
                return drained
        orchestrator.stop(service, replica.instance_id)
        op.progress(f"stopped {replica.instance_id}", "stopped", instance_id=replica.instance_id)
        # The old entry stays `down`/`draining` in the upstream (nginx sends it nothing) until the replacement is
        # healthy; then one reload swaps them — the replacement may come back on another port.
        fresh = orchestrator.start(service)
        op.progress(f"started {fresh.instance_id} on {fresh.address}", "started", instance_id=fresh.instance_id)
        try:
            fresh = self._wait_healthy(service, fresh)
        except FleetdeckActionError as error:
            with contextlib.suppress(FleetdeckActionError):
                orchestrator.stop(service, fresh.instance_id, grace_s=2)
            message = f"restart of {replica.instance_id}: the replacement never became healthy: {error}"
            return OperationResult(False, message, result=audit.FAILED, error=message)
        op.progress(f"{fresh.instance_id} is healthy", "healthy", instance_id=fresh.instance_id)
        if balancer is not None:
            upstream = [s for s in self._upstream(service) if s.address not in (fresh.address, replica.address)]
            self._apply(op, service, [*upstream, UpstreamServer(fresh.address, UP, fresh.instance_id)],
                        f"putting {fresh.instance_id} in rotation")
        return OperationResult(True, f"{replica.instance_id} restarted as {fresh.instance_id} on {fresh.address}",
                               after={"new_instance": fresh.instance_id}, result=audit.OK)

    def plan_rolling_restart(self, service_name: str, principal: Any | None = None) -> Plan:
        plan = Plan(ROLLING_RESTART, service_name, service_name, True, "", confirm_text=service_name)
        try:
            service = self._service(service_name)
            if principal is not None:
                require(principal, ROLLING_RESTART)
            live = self._live(service)
            upstream = self._upstream(service)
            plan.upstream_before = plan.upstream_after = _servers_dicts(upstream)
            plan.affected = [r.instance_id for r in live]
            if not live:
                raise _Refusal(f"'{service_name}' has no running replicas")
            if self.balancer(service) is not None and len(self._serving(service, upstream, set())) < 2:
                raise _Refusal(f"'{service_name}' has fewer than 2 serving replicas: a rolling restart would"
                               " take the service down; scale up first")
            plan.reason = f"restart {len(live)} replica(s) one at a time; stops at the first failure"
            plan.steps = [f"restart {r.instance_id}: drain, stop, start, healthy, back in rotation" for r in live]
        except PermissionDenied as error:
            plan.allowed, plan.reason = False, f"permission denied: {error}"
        except (_Refusal, FleetdeckActionError) as error:
            plan.allowed, plan.reason = False, str(error)
        return plan

    def rolling_restart(self, principal: Any, service_name: str, *, op_id: str | None = None) -> OperationResult:
        """Restart every replica, one at a time, under one lock; stop at the first failure."""

        def prepare() -> tuple[ServiceConfig, Callable[[audit.Operation], OperationResult]]:
            service = self._service(service_name)
            if not self._live(service):
                raise _Refusal(f"'{service_name}' has no running replicas")

            def body(op: audit.Operation) -> OperationResult:
                originals = [r.instance_id for r in self._live(service)]
                done: list[str] = []
                for instance_id in originals:
                    replica = next((r for r in self._live(service) if r.instance_id == instance_id), None)
                    if replica is None:
                        continue  # it went away meanwhile: nothing to restart
                    if self.balancer(service) is not None and self._state_of(self._upstream(service), replica) == UP:
                        self._drain_preflight(service, replica, self._upstream(service))
                    op.progress(f"rolling restart: {len(done) + 1}/{len(originals)}: {instance_id}", "step")
                    outcome = self._restart_locked(op, service, replica)
                    if not outcome.ok:
                        message = (f"rolling restart stopped at {instance_id} after {len(done)} of"
                                   f" {len(originals)}: {outcome.error or outcome.detail}")
                        return OperationResult(False, message, after={"restarted": done}, result=audit.FAILED,
                                               error=message)
                    done.append(instance_id)
                return OperationResult(True, f"restarted {len(done)} replica(s): {', '.join(done)}",
                                       after={"restarted": done}, result=audit.OK)

            return service, body

        def ttl(service: ServiceConfig) -> float:
            return max(1, len(self._live(service))) * self._default_ttl(service)

        return self._run(principal, ROLLING_RESTART, service_name, {"service": service_name}, prepare, op_id, ttl)


def replica_stopped_under(orchestrator: Orchestrator, service: ServiceConfig, replica: Replica) -> str | None:
    """Why `replica` no longer runs (stopped, dead or replaced while an action waited on it), else None."""
    current = next((r for r in orchestrator.list(service) if r.instance_id == replica.instance_id), None)
    if current is None:
        return f"{replica.instance_id} was stopped while the action ran (by another command, e.g. `fleetdeck down`)"
    if current.state not in LIVE_STATES:
        return f"{replica.instance_id} is {current.state} (stopped while the action ran)"
    if replica.ref and current.ref and current.ref != replica.ref:
        return f"{replica.instance_id} was replaced by another process while the action ran"
    return None


def _with_state(servers: list[UpstreamServer], replica: Replica, state: str) -> list[UpstreamServer]:
    return [s._replace(state=state) if s.address == replica.address else s for s in servers]


def _target_of(actions: FleetActions, instance: str) -> str:
    """`<service>/<instance>` for the audit, even when the operator typed only the instance id."""
    if "/" in instance:
        return instance
    with contextlib.suppress(_Refusal, Refused, FleetdeckActionError):
        service, replica = actions.find_instance(instance)
        return f"{service.name}/{replica.instance_id}"
    return f"?/{instance}"
