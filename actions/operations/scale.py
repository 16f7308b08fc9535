"""scale: N replicas within the effective [min, max] (`limits.effective_limits`); new replicas join the upstream
only once healthy, removed ones are drained first."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from actions import audit
from actions.auth import Principal
from actions.backends.base import DRAINING, UP, FleetdeckActionError, Replica, UpstreamServer
from actions.operations import pm2_cluster
from actions.operations.context import OperationContext
from actions.operations.frame import Body, check_permission, planned, run_operation
from actions.operations.types import SCALE, OperationResult, Plan, servers_dicts, state_of, with_state
from core.config import ServiceConfig


def plan(ctx: OperationContext, service_name: str, replicas: int | str, principal: Principal | None = None) -> Plan:
    def fill(plan: Plan) -> None:
        service = ctx.service(service_name)
        check_permission(principal, SCALE)
        wanted = ctx.parse_count(service, replicas)
        live = ctx.live(service)
        upstream = ctx.upstream(service)
        plan.upstream_before = servers_dicts(upstream)
        plan.upstream_after = servers_dicts(upstream)
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
            victims = ctx.pick_victims(service, live, upstream, len(live) - wanted)
            names = {v.instance_id for v in victims}
            if ctx.balancer(service) is not None:
                ctx.check_min_healthy(service, upstream, names)
            plan.reason = f"stop {len(victims)} replica(s): {len(live)} → {wanted}"
            plan.affected = sorted(names)
            plan.steps = [f"drain {', '.join(sorted(names))} (≤ {service.drain_timeout_s:g}s)",
                          f"stop them (SIGTERM, grace {service.stop_grace_s:g}s)",
                          "remove them from the upstream (nginx -t, reload, verify)"]
            plan.upstream_after = servers_dicts(
                [s for s in upstream if s.address not in {v.address for v in victims}])

    return planned(Plan(SCALE, service_name, service_name, True, "", confirm_text=service_name,
                        params={"replicas": replicas}), fill)


def execute(ctx: OperationContext, principal: Principal, service_name: str, replicas: int | str, *,
            op_id: str | None = None) -> OperationResult:
    """Scale to N within the effective [min, max]; new replicas join only once healthy."""

    def prepare() -> tuple[ServiceConfig, Body]:
        service = ctx.service(service_name)
        wanted = ctx.parse_count(service, replicas)

        def body(op: audit.Operation) -> OperationResult:
            # The limits may have changed between the preflight and the lock (set_limits takes the same lock):
            # check again and act with the bounds as they are now.
            current = ctx.service(service_name)
            ctx.parse_count(current, wanted)
            live = ctx.live(current)
            if wanted == len(live):
                op.progress(f"'{current.name}' already runs {wanted} replica(s)", "noop")
                return OperationResult(True, f"'{current.name}' already at {wanted} replica(s) (no-op)",
                                       result=audit.NOOP)
            if pm2_cluster.is_pm2_cluster(current):
                return pm2_cluster.scale(ctx, op, current, wanted)
            if wanted > len(live):
                return _scale_up(ctx, op, current, wanted - len(live))
            return _scale_down(ctx, op, current, live, len(live) - wanted)

        return service, body

    return run_operation(ctx, principal, SCALE, service_name, {"service": service_name, "replicas": replicas},
                         prepare, op_id)


def _scale_up(ctx: OperationContext, op: audit.Operation, service: ServiceConfig, count: int) -> OperationResult:
    orchestrator = ctx.orchestrator(service)
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
            new[index] = ctx.wait_healthy(service, replica)
            op.progress(f"{replica.instance_id} is healthy after {time.monotonic() - started_at:.2f}s", "healthy",
                        instance_id=replica.instance_id)
        if ctx.balancer(service) is not None:
            upstream = [s for s in ctx.upstream(service) if s.address not in {r.address for r in new}]
            upstream += [UpstreamServer(r.address, UP, r.instance_id) for r in new]
            ctx.apply(op, service, upstream, f"adding {', '.join(r.instance_id for r in new)} to the upstream")
    except FleetdeckActionError as error:
        # Leave nothing half-done: replicas that never joined are stopped; the upstream is unchanged.
        for replica in new:
            with contextlib.suppress(FleetdeckActionError):
                orchestrator.stop(service, replica.instance_id, grace_s=2)
                op.progress(f"stopped {replica.instance_id} (rolled back)", "rollback")
        message = f"scale up failed: {error}" + (f"\n{error.log_tail}" if error.log_tail else "")
        return OperationResult(False, message, result=audit.FAILED, error=str(error))
    serving_s = time.monotonic() - started_at
    ctx.record_desired(service)
    return OperationResult(True, f"started {', '.join(r.instance_id for r in new)}; serving after {serving_s:.2f}s",
                           after={"scale_up_s": round(serving_s, 3)}, result=audit.OK)


def _scale_down(ctx: OperationContext, op: audit.Operation, service: ServiceConfig, live: list[Replica],
                count: int) -> OperationResult:
    upstream = ctx.upstream(service)
    victims = ctx.pick_victims(service, live, upstream, count)
    names = [v.instance_id for v in victims]
    balancer = ctx.balancer(service)
    if balancer is not None:
        ctx.check_min_healthy(service, upstream, set(names))
        to_drain = [v for v in victims if state_of(upstream, v) == UP]
        if to_drain:
            drained = upstream
            for victim in to_drain:
                drained = with_state(drained, victim, DRAINING)
            ctx.apply(op, service, drained, f"taking {', '.join(names)} out of rotation")
        deadline_s = service.drain_timeout_s
        for victim in victims:
            quiet, why = ctx.wait_idle(op, service, victim, deadline_s)
            if not quiet:
                # The operator did not ask to cut requests: put them back and report.
                restored = ctx.upstream(service)
                for other in to_drain:
                    restored = with_state(restored, other, UP)
                ctx.apply(op, service, restored, "aborting: back in rotation")
                message = f"scale down aborted: {victim.instance_id} still busy after {deadline_s:g}s ({why})"
                return OperationResult(False, message, result=audit.FAILED, error=message)
    orchestrator = ctx.orchestrator(service)
    for victim in victims:
        orchestrator.stop(service, victim.instance_id)
        op.progress(f"stopped {victim.instance_id}", "stopped", instance_id=victim.instance_id)
    leftover = ""
    if balancer is not None:
        gone = {v.address for v in victims}
        try:
            ctx.apply(op, service, [s for s in ctx.upstream(service) if s.address not in gone],
                      f"removing {', '.join(names)} from the upstream")
        except FleetdeckActionError as error:
            # The count is reached and no request can reach the stopped replicas: they went out of rotation before
            # they were stopped, and a failed apply keeps that generation. Only their `down` entries are left, so
            # calling the scale failed would send its caller (a person, the autoscaler) after a change already made.
            leftover = f"; nginx still lists them as down (out of rotation), removing them failed: {error}"
    ctx.record_desired(service)
    return OperationResult(True, f"stopped {', '.join(names)}{leftover}", result=audit.OK)


class Scale:
    """The registry entry (see registry.py)."""

    name = SCALE
    label = "Scale"
    scope = "service"
    options = ("replicas",)

    def plan(self, ctx: OperationContext, target: str, params: Mapping[str, Any],
             principal: Principal | None = None) -> Plan:
        return plan(ctx, target, params["replicas"], principal)

    def execute(self, ctx: OperationContext, principal: Principal, target: str, params: Mapping[str, Any],
                op_id: str | None = None) -> OperationResult:
        return execute(ctx, principal, target, params["replicas"], op_id=op_id)
