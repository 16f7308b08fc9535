"""undrain: put a drained instance back in rotation (it must be healthy)."""

from __future__ import annotations

from actions import audit
from actions.auth import Principal
from actions.backends.base import UP, Replica, UpstreamServer
from actions.operations.context import OperationContext
from actions.operations.frame import Body, plan_for_instance, run_operation
from actions.operations.types import UNDRAIN, OperationResult, Plan, Refusal, TargetOnlyOperation, state_of, with_state
from core.config import ServiceConfig


def preflight(ctx: OperationContext, service: ServiceConfig, replica: Replica,
              upstream: list[UpstreamServer]) -> tuple[list[UpstreamServer], bool]:
    """(the upstream after the undrain, already in rotation?) or Refusal."""
    if ctx.balancer(service) is None:
        raise Refusal(f"service '{service.name}' is not behind the load balancer: there is nothing to undrain")
    state = state_of(upstream, replica)
    if state == UP:
        return upstream, True
    health = ctx.health(replica, service)
    if not health.healthy:
        raise Refusal(f"{replica.instance_id} is not healthy ({health.status}); not putting it back in rotation")
    if state is None:
        return [*upstream, UpstreamServer(replica.address, UP, replica.instance_id)], False
    return with_state(upstream, replica, UP), False


def plan(ctx: OperationContext, instance: str, principal: Principal | None = None) -> Plan:
    def fill(plan: Plan, service: ServiceConfig, replica: Replica,
             before: list[UpstreamServer]) -> list[UpstreamServer]:
        after, plan.noop = preflight(ctx, service, replica, before)
        plan.disruptive = False
        plan.reason = "already in rotation: nothing to do" if plan.noop else (
            f"put {replica.instance_id} back in rotation")
        plan.steps = [] if plan.noop else [f"render {replica.address} up; nginx -t; reload; verify"]
        return after

    return plan_for_instance(ctx, UNDRAIN, instance, principal, fill)


def execute(ctx: OperationContext, principal: Principal, instance: str, *,
            op_id: str | None = None) -> OperationResult:
    """Put a drained instance back in rotation (it must be healthy)."""

    def prepare() -> tuple[ServiceConfig, Body]:
        service, replica = ctx.find_instance(instance)
        preflight(ctx, service, replica, ctx.upstream(service))

        def body(op: audit.Operation) -> OperationResult:
            after, noop = preflight(ctx, service, replica, ctx.upstream(service))
            if noop:
                op.progress(f"{replica.instance_id} is already in rotation", "noop")
                return OperationResult(True, f"{replica.instance_id} is already in rotation (no-op)",
                                       result=audit.NOOP)
            ctx.apply(op, service, after, f"putting {replica.instance_id} back in rotation")
            return OperationResult(True, f"{replica.instance_id} back in rotation", result=audit.OK)

        return service, body

    return run_operation(ctx, principal, UNDRAIN, ctx.target_of(instance), {"instance": instance}, prepare, op_id)


Undrain = TargetOnlyOperation(UNDRAIN, "Undrain", "instance", plan, execute)
"""The registry entry (see registry.py)."""
