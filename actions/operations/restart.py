"""restart: drain → stop → start → healthy → back in rotation, for one instance."""

from __future__ import annotations

import contextlib

from actions import audit
from actions.auth import Principal
from actions.backends.base import DRAINING, UP, FleetdeckActionError, Replica, UpstreamServer
from actions.operations import drain, pm2_cluster
from actions.operations.context import OperationContext
from actions.operations.frame import Body, plan_for_instance, run_operation
from actions.operations.types import RESTART, OperationResult, Plan, TargetOnlyOperation, state_of
from core.config import ServiceConfig


def plan(ctx: OperationContext, instance: str, principal: Principal | None = None) -> Plan:
    def fill(plan: Plan, service: ServiceConfig, replica: Replica,
             before: list[UpstreamServer]) -> list[UpstreamServer]:
        after = before
        if ctx.balancer(service) is not None and state_of(before, replica) == UP:
            after, _ = drain.preflight(ctx, service, replica, before)
        plan.reason = f"restart {replica.instance_id} (it is out of rotation meanwhile)"
        plan.steps = [
            f"drain {replica.instance_id} (≤ {service.drain_timeout_s:g}s)",
            f"stop it (SIGTERM, grace {service.stop_grace_s:g}s)",
            f"start a replacement, wait until healthy (≤ {service.boot_timeout_s:g}s)",
            "put it in rotation (nginx -t, reload, verify)",
        ]
        return after

    return plan_for_instance(ctx, RESTART, instance, principal, fill)


def execute(ctx: OperationContext, principal: Principal, instance: str, *,
            op_id: str | None = None) -> OperationResult:
    """drain → stop → start → healthy → undrain, for one instance."""

    def prepare() -> tuple[ServiceConfig, Body]:
        service, replica = ctx.find_instance(instance)
        pm2_cluster.refuse(service, "restart")
        if ctx.balancer(service) is not None and state_of(ctx.upstream(service), replica) == UP:
            drain.preflight(ctx, service, replica, ctx.upstream(service))

        def body(op: audit.Operation) -> OperationResult:
            return restart_locked(ctx, op, service, replica, principal)

        return service, body

    return run_operation(ctx, principal, RESTART, ctx.target_of(instance), {"instance": instance}, prepare, op_id)


def restart_locked(ctx: OperationContext, op: audit.Operation, service: ServiceConfig, replica: Replica,
                   principal: Principal) -> OperationResult:
    """The restart itself, under the service's lock (the rolling restart runs it once per replica)."""
    balancer = ctx.balancer(service)
    orchestrator = ctx.orchestrator(service)
    if balancer is not None and state_of(ctx.upstream(service), replica) in (UP, DRAINING):
        drained = drain.drain_locked(ctx, op, service, replica, None, "abort", principal, mark_down=False)
        if not drained.ok:
            return drained
    orchestrator.stop(service, replica.instance_id)
    op.progress(f"stopped {replica.instance_id}", "stopped", instance_id=replica.instance_id)
    # The old entry stays `down`/`draining` in the upstream (nginx sends it nothing) until the replacement is
    # healthy; then one reload swaps them — the replacement may come back on another port.
    fresh = orchestrator.start(service)
    op.progress(f"started {fresh.instance_id} on {fresh.address}", "started", instance_id=fresh.instance_id)
    try:
        fresh = ctx.wait_healthy(service, fresh)
    except FleetdeckActionError as error:
        with contextlib.suppress(FleetdeckActionError):
            orchestrator.stop(service, fresh.instance_id, grace_s=2)
        message = f"restart of {replica.instance_id}: the replacement never became healthy: {error}"
        return OperationResult(False, message, result=audit.FAILED, error=message)
    op.progress(f"{fresh.instance_id} is healthy", "healthy", instance_id=fresh.instance_id)
    if balancer is not None:
        upstream = [s for s in ctx.upstream(service) if s.address not in (fresh.address, replica.address)]
        ctx.apply(op, service, [*upstream, UpstreamServer(fresh.address, UP, fresh.instance_id)],
                  f"putting {fresh.instance_id} in rotation")
    same = fresh.instance_id == replica.instance_id and fresh.address == replica.address
    message = (f"restarted {replica.instance_id} on {fresh.address}" if same else
               f"replaced {replica.instance_id} ({replica.address}) by {fresh.instance_id} ({fresh.address})")
    return OperationResult(True, message, after={"new_instance": fresh.instance_id, "new_address": fresh.address,
                                                 "old_instance": replica.instance_id, "old_address": replica.address},
                           result=audit.OK)


Restart = TargetOnlyOperation(RESTART, "Restart", "instance", plan, execute)
"""The registry entry (see registry.py)."""
