"""rolling restart: restart every replica of a service, one at a time, under one lock; stop at the first failure."""

from __future__ import annotations

from actions import audit
from actions.auth import Principal
from actions.backends.base import UP
from actions.operations import drain, pm2_cluster
from actions.operations.context import OperationContext
from actions.operations.frame import Body, check_permission, default_ttl, planned, run_operation
from actions.operations.restart import restart_locked
from actions.operations.types import (
    ROLLING_RESTART,
    OperationResult,
    Plan,
    Refusal,
    TargetOnlyOperation,
    servers_dicts,
    state_of,
)
from core.config import ServiceConfig


def plan(ctx: OperationContext, service_name: str, principal: Principal | None = None) -> Plan:
    def fill(plan: Plan) -> None:
        service = ctx.service(service_name)
        check_permission(principal, ROLLING_RESTART)
        live = ctx.live(service)
        upstream = ctx.upstream(service)
        plan.upstream_before = plan.upstream_after = servers_dicts(upstream)
        plan.affected = [r.instance_id for r in live]
        if not live:
            raise Refusal(f"'{service_name}' has no running replicas")
        if ctx.balancer(service) is not None and len(ctx.serving(service, upstream, set())) < 2:
            raise Refusal(f"'{service_name}' has fewer than 2 serving replicas: a rolling restart would"
                          " take the service down; scale up first")
        plan.reason = f"restart {len(live)} replica(s) one at a time; stops at the first failure"
        plan.steps = [f"restart {r.instance_id}: drain, stop, start, healthy, back in rotation" for r in live]

    return planned(Plan(ROLLING_RESTART, service_name, service_name, True, "", confirm_text=service_name), fill)


def execute(ctx: OperationContext, principal: Principal, service_name: str, *,
            op_id: str | None = None) -> OperationResult:
    """Restart every replica, one at a time, under one lock; stop at the first failure."""

    def prepare() -> tuple[ServiceConfig, Body]:
        service = ctx.service(service_name)
        if not ctx.live(service):
            raise Refusal(f"'{service_name}' has no running replicas")

        def body(op: audit.Operation) -> OperationResult:
            if pm2_cluster.is_pm2_cluster(service):
                return pm2_cluster.reload(ctx, op, service)
            originals = [r.instance_id for r in ctx.live(service)]
            done: list[str] = []
            # old id → new id and address: a replacement may come back under another id or port, and the message
            # and the audit say so instead of claiming the old names were restarted
            replaced: dict[str, str] = {}
            for instance_id in originals:
                replica = next((r for r in ctx.live(service) if r.instance_id == instance_id), None)
                if replica is None:
                    continue  # it went away meanwhile: nothing to restart
                if ctx.balancer(service) is not None and state_of(ctx.upstream(service), replica) == UP:
                    drain.preflight(ctx, service, replica, ctx.upstream(service))
                op.progress(f"rolling restart: {len(done) + 1}/{len(originals)}: {instance_id}", "step")
                outcome = restart_locked(ctx, op, service, replica, principal)
                if not outcome.ok:
                    message = (f"rolling restart stopped at {instance_id} after {len(done)} of"
                               f" {len(originals)}: {outcome.error or outcome.detail}")
                    return OperationResult(False, message, after={"restarted": done, "replaced_by": replaced},
                                           result=audit.FAILED, error=message)
                done.append(instance_id)
                after = outcome.after or {}
                replaced[instance_id] = f"{after.get('new_instance', '?')} ({after.get('new_address', '?')})"
            pairs = ", ".join(f"{old} → {new}" for old, new in replaced.items())
            return OperationResult(True, f"restarted {len(done)} replica(s): {pairs}",
                                   after={"restarted": done, "replaced_by": replaced}, result=audit.OK)

        return service, body

    def ttl(service: ServiceConfig) -> float:
        return max(1, len(ctx.live(service))) * default_ttl(service)

    return run_operation(ctx, principal, ROLLING_RESTART, service_name, {"service": service_name}, prepare, op_id,
                         ttl)


RollingRestart = TargetOnlyOperation(ROLLING_RESTART, "Rolling restart", "service", plan, execute)
"""The registry entry (see registry.py)."""
