"""The one frame every operation runs in, and the one frame every dry-run plan is computed in.

`run_operation`:

1. resolve and validate the input (`prepare`: unknown service or instance, N out of bounds, not a number → refused);
2. check the principal's role with `actions.auth.require` (the role check lives here, not in the UI);
3. take the per-service lock in the store (`busy: <action> by <who> since <time>` when someone else holds it);
4. audit the start, do the work step by step (`body`; each step a progress record in the store, keyed by the op
   id), and audit the outcome — refusals (permission, busy, bad input) are audited too;
5. release the lock.

Results are never exceptions: every call returns an `OperationResult` whose `result` is ok | noop | failed |
refused, so the CLI maps it to an exit code and the dashboard to a message without guessing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from actions import audit
from actions.auth import PermissionDenied, Principal, require
from actions.backends.base import FleetdeckActionError, Refused, Replica, UpstreamServer
from actions.operations.context import OperationContext
from actions.operations.types import (
    PERMISSION_OF,
    OperationResult,
    Plan,
    Refusal,
    format_busy,
    new_op_id,
    servers_dicts,
)
from core.config import ServiceConfig

Body = Callable[[audit.Operation], OperationResult]
Prepare = Callable[[], tuple[ServiceConfig, Body]]


def default_ttl(service: ServiceConfig) -> float:
    # long enough for the slowest legitimate path (boot + drain + stop), so a live op never loses its lock
    return service.boot_timeout_s + service.drain_timeout_s + service.stop_grace_s + 120


def run_operation(
    ctx: OperationContext,
    principal: Principal,
    action: str,
    target: str,
    params: dict[str, Any],
    prepare: Prepare,
    op_id: str | None = None,
    lock_ttl_s: Callable[[ServiceConfig], float] | None = None,
    extra_permissions: tuple[str, ...] = (),
) -> OperationResult:
    """Validate (prepare), check the role, lock, audit, run, audit, unlock. Never raises FleetdeckActionError."""
    op_id = op_id or new_op_id()
    replay = _replay(ctx, op_id)
    if replay is not None:
        return replay
    service_name = target.split("/", 1)[0]
    op = audit.Operation(ctx.store, op_id, principal, action, service_name, target, params, ctx.on_progress)
    try:
        # Permission first: a viewer learns nothing about the fleet from the error of a refused action.
        for permission in (PERMISSION_OF.get(action, action), *extra_permissions):
            require(principal, permission)
        service, body = prepare()
    except PermissionDenied as error:
        return _refuse(op, f"permission denied: {error}")
    except (Refusal, Refused) as error:
        return _refuse(op, str(error))
    except FleetdeckActionError as error:  # e.g. the Docker daemon is unreachable: nothing was changed
        op.finish(audit.FAILED, str(error), {}, {}, str(error))
        return OperationResult(False, str(error), op_id=op_id, result=audit.FAILED, action=action, target=target,
                               error=str(error))
    op.service = service.name
    ttl = lock_ttl_s(service) if lock_ttl_s else default_ttl(service)
    got, holder = ctx.store.acquire_lock(service.name, action, principal.name, op_id, ttl)
    if not got:
        return _refuse(op, format_busy(holder))
    before: dict[str, Any] = {}
    try:
        before = ctx.snapshot(service)
        op.begin(before)
        result = body(op)
    except (Refusal, Refused) as error:
        # A refusal found after the lock (e.g. health changed): still nothing was changed.
        return _refuse(op, str(error), before)
    except FleetdeckActionError as error:
        result = OperationResult(False, str(error), result=audit.FAILED, error=str(error))
    except Exception as error:  # the audit must record even a bug, then the caller sees a failure
        result = OperationResult(False, f"internal error: {type(error).__name__}: {error}",
                                 result=audit.FAILED, error=f"{type(error).__name__}: {error}")
    finally:
        ctx.store.release_lock(service.name, op_id)
    result.op_id, result.action, result.target = op_id, action, target
    result.before = before
    with contextlib.suppress(Exception):
        # the state after, plus what the action measured (out_of_rotation_s, scale_up_s, restarted, ...)
        result.after = {**ctx.snapshot(service), **result.after}
    op.finish(result.result, result.detail, before, result.after, result.error)
    return result


def _refuse(op: audit.Operation, message: str, before: dict[str, Any] | None = None) -> OperationResult:
    op.finish(audit.REFUSED, message, before or {}, {}, message)
    return OperationResult(False, message, before=before or {}, op_id=op.op_id, result=audit.REFUSED,
                           action=op.action, target=op.target, error=message)


def _replay(ctx: OperationContext, op_id: str) -> OperationResult | None:
    """Idempotency by operation id: re-submitting a finished op returns its outcome without acting again."""
    status = audit.operation_status(ctx.store, op_id)
    if not status or status.get("state") in (None, "running"):
        return None
    state = str(status["state"])
    return OperationResult(state in (audit.OK, audit.NOOP), f"already done (op {op_id}): {status.get('message')}",
                           after=status.get("after") or {}, op_id=op_id, result=state,
                           action=str(status.get("action", "")), target=str(status.get("target", "")))


def check_permission(principal: Principal | None, action: str) -> None:
    """PermissionDenied unless `principal` may run `action`; a plan asked for without a principal skips it."""
    if principal is not None:
        require(principal, PERMISSION_OF[action])


def planned(plan: Plan, fill: Callable[[Plan], None]) -> Plan:
    """Let `fill` complete the plan from the same preflight code the operation runs; a permission error, a refusal
    or a backend error turns it into a refused plan that says why."""
    try:
        fill(plan)
    except PermissionDenied as error:
        plan.allowed, plan.reason = False, f"permission denied: {error}"
    except (Refusal, FleetdeckActionError) as error:
        plan.allowed, plan.reason = False, str(error)
    return plan


InstancePlanFill = Callable[[Plan, ServiceConfig, Replica, list[UpstreamServer]], list[UpstreamServer]]


def plan_for_instance(ctx: OperationContext, action: str, instance: str, principal: Principal | None,
                      fill: InstancePlanFill) -> Plan:
    """The plan of an operation on one instance: find it, record the upstream before, let `fill` describe the
    steps and return the upstream after."""
    try:
        service, replica = ctx.find_instance(instance)
    except (Refusal, FleetdeckActionError) as error:
        return Plan(action, instance.rpartition("/")[0] or "?", instance, False, str(error), confirm_text=instance)
    before = ctx.upstream(service)
    plan = Plan(action, service.name, f"{service.name}/{replica.instance_id}", True, "", [replica.instance_id],
                upstream_before=servers_dicts(before), confirm_text=replica.instance_id)

    def complete(plan: Plan) -> None:
        check_permission(principal, action)
        plan.upstream_after = servers_dicts(fill(plan, service, replica, before))

    return planned(plan, complete)
