"""drain: take one instance out of rotation and wait until it is idle.

The sequence follows docs/design-notes.md#orchestrators: preflight (min_healthy, lock, known target) → audit → render
the server `down` → `nginx -t` → reload → verify the new generation is live (all inside `ManagedNginx.apply`, which
restores the previous files on any failure) → wait until no old nginx worker (which may still hold a request for
the target) is left and the instance's own in-flight count is 0, bounded by drain_timeout_s → mark it `down`. On
timeout the operator's choice applies: abort (put it back in rotation) or force (admin only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from actions import audit
from actions.auth import PermissionDenied, Principal, require
from actions.backends.base import DOWN, DRAINING, UP, Replica, UpstreamServer
from actions.operations import pm2_cluster
from actions.operations.context import OperationContext, replica_stopped_under
from actions.operations.frame import Body, plan_for_instance, run_operation
from actions.operations.types import (
    DRAIN,
    FORCE,
    OnTimeout,
    OperationResult,
    Plan,
    Refusal,
    TimeoutChooser,
    state_of,
    with_state,
)
from core.config import ServiceConfig


def preflight(ctx: OperationContext, service: ServiceConfig, replica: Replica,
              upstream: list[UpstreamServer]) -> tuple[list[UpstreamServer], bool]:
    """(the upstream after the drain, already drained?) or Refusal."""
    pm2_cluster.refuse(service, "drain")
    if ctx.balancer(service) is None:
        raise Refusal(f"service '{service.name}' is not behind the load balancer: there is nothing to drain")
    state = state_of(upstream, replica)
    if state is None:
        raise Refusal(f"{replica.instance_id} ({replica.address}) is not in the upstream of '{service.name}'")
    if state == DOWN:
        return upstream, True
    if state == UP:
        ctx.check_min_healthy(service, upstream, {replica.instance_id})
    return with_state(upstream, replica, DRAINING), False


def plan(ctx: OperationContext, instance: str, principal: Principal | None = None) -> Plan:
    def fill(plan: Plan, service: ServiceConfig, replica: Replica,
             before: list[UpstreamServer]) -> list[UpstreamServer]:
        after, plan.noop = preflight(ctx, service, replica, before)
        plan.reason = "already drained: nothing to do" if plan.noop else (
            f"take {replica.instance_id} out of rotation, wait for its requests to finish"
            f" (≤ {service.drain_timeout_s:g}s)")
        plan.steps = [] if plan.noop else [
            f"render {replica.address} down; nginx -t; reload; verify the new generation",
            "wait: no old nginx worker left and the instance's in-flight count is 0",
            f"on timeout: abort (back in rotation) or force (admin), after {service.drain_timeout_s:g}s",
        ]
        return after

    return plan_for_instance(ctx, DRAIN, instance, principal, fill)


def execute(
    ctx: OperationContext,
    principal: Principal,
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

    def prepare() -> tuple[ServiceConfig, Body]:
        if timeout_s is not None and not 0 < timeout_s <= 3600:
            raise Refusal(f"--timeout must be within (0, 3600] seconds, got {timeout_s}")
        service, replica = ctx.find_instance(instance)
        preflight(ctx, service, replica, ctx.upstream(service))

        def body(op: audit.Operation) -> OperationResult:
            return drain_locked(ctx, op, service, replica, timeout_s, on_timeout, principal)

        return service, body

    return run_operation(ctx, principal, DRAIN, ctx.target_of(instance), params, prepare, op_id,
                         lambda s: (timeout_s or s.drain_timeout_s) + 120,
                         extra_permissions=(FORCE,) if force_now else ())


def drain_locked(ctx: OperationContext, op: audit.Operation, service: ServiceConfig, replica: Replica,
                 timeout_s: float | None, on_timeout: OnTimeout | TimeoutChooser, principal: Principal,
                 mark_down: bool = True) -> OperationResult:
    """The drain itself, under the service's lock (restart runs it too, without the final `down`)."""
    upstream = ctx.upstream(service)
    after, noop = preflight(ctx, service, replica, upstream)
    if noop:
        op.progress(f"{replica.instance_id} is already drained", "noop")
        return OperationResult(True, f"{replica.instance_id} is already drained (no-op)", result=audit.NOOP)
    timeout = timeout_s or service.drain_timeout_s
    started = time.monotonic()
    if state_of(upstream, replica) == UP:
        ctx.apply(op, service, after, f"taking {replica.instance_id} out of rotation")
    else:
        op.progress(f"{replica.instance_id} is already out of rotation (draining); waiting for it", "resume")
    out_of_rotation_s = time.monotonic() - started
    op.progress(f"{replica.instance_id} out of rotation after {out_of_rotation_s:.3f}s; waiting for in-flight",
                "out_of_rotation", out_of_rotation_s=out_of_rotation_s)
    quiet, why = ctx.wait_idle(op, service, replica, timeout)
    metrics = {"out_of_rotation_s": round(out_of_rotation_s, 3),
               "drain_s": round(time.monotonic() - started, 3)}
    stopped = replica_stopped_under(ctx.orchestrator(service), service, replica)
    if stopped is not None:  # an idle answer from a replica that is being stopped proves nothing
        message = f"drain of {replica.instance_id} failed: {stopped}"
        op.progress(message, "replica_stopped")
        return OperationResult(False, message, after=metrics, result=audit.FAILED, error=message)
    if quiet:
        if mark_down:  # a restart skips this reload: it replaces the entry once the new replica is healthy
            ctx.apply(op, service, with_state(ctx.upstream(service), replica, DOWN), "marking it down")
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
        ctx.apply(op, service, with_state(ctx.upstream(service), replica, DOWN), "forcing it down")
        return OperationResult(True, f"{replica.instance_id} forced down after {timeout:g}s ({why})",
                               after={**metrics, "forced": True}, result=audit.OK)
    ctx.apply(op, service, with_state(ctx.upstream(service), replica, UP), "aborting: back in rotation")
    message = f"drain of {replica.instance_id} timed out after {timeout:g}s ({why}); aborted, back in rotation"
    return OperationResult(False, message, after=metrics, result=audit.FAILED, error=message)


class Drain:
    """The registry entry (see registry.py)."""

    name = DRAIN
    label = "Drain"
    scope = "instance"
    options = ("timeout_s", "on_timeout")

    def plan(self, ctx: OperationContext, target: str, params: Mapping[str, Any],
             principal: Principal | None = None) -> Plan:
        return plan(ctx, target, principal)

    def execute(self, ctx: OperationContext, principal: Principal, target: str, params: Mapping[str, Any],
                op_id: str | None = None) -> OperationResult:
        return execute(ctx, principal, target, timeout_s=params.get("timeout_s"),
                       on_timeout=params.get("on_timeout", "abort"), op_id=op_id)
