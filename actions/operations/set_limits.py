"""set limits: override a service's [min_replicas, max_replicas] in the store (admin).

Refused when the running count would fall outside the new bounds; the same limits again is a no-op. Setting the
config file's own bounds removes the override (that is how limits are reset).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from actions import audit
from actions.auth import Principal
from actions.backends import port_capacity
from actions.operations.context import OperationContext
from actions.operations.frame import Body, check_permission, planned, run_operation
from actions.operations.limits import Limits, limits_key, limits_of
from actions.operations.types import SET_LIMITS, OperationResult, Plan, Refusal, whole_number
from core.config import ServiceConfig


def preflight(ctx: OperationContext, service_name: str, min_replicas: int | str,
              max_replicas: int | str) -> tuple[ServiceConfig, Limits, int, int, int]:
    """(service as in the config, current limits, new min, new max, live count) or Refusal naming the problem."""
    try:
        service = ctx.config.service(service_name)
    except KeyError as error:
        raise Refusal(str(error.args[0])) from None
    low = whole_number(min_replicas, "--min")
    high = whole_number(max_replicas, "--max")
    if low < 0:
        raise Refusal(f"--min must be at least 0, got {low}")
    if low > high:
        raise Refusal(f"--min ({low}) must be <= --max ({high})")
    if high < 1:
        # as in the config (max_replicas >= 1): a service nobody may run is a config change, not a limit
        raise Refusal(f"--max must be at least 1, got {high}")
    capacity = port_capacity(service)
    if capacity is not None and high > capacity:
        raise Refusal(
            f"--max ({high}) exceeds the port range of '{service.name}' ({service.ports.start}-{service.ports.end}"
            f" holds {capacity} port(s)); widen ports in the config first"
        )
    current = limits_of(ctx.store, service)
    live = len(ctx.live(service))
    # With nothing running (fleet down) there is no count to be out of bounds; `fleet up` clamps its desired
    # count into the new bounds (actions.fleet.desired_replicas).
    if live and not low <= live <= high:
        raise Refusal(
            f"'{service.name}' runs {live} replica(s), outside the new limits [{low}, {high}]; scale it to within"
            f" them first (`fleetdeck scale {service.name} {min(max(live, low), high)}`), then change the limits"
        )
    return service, current, low, high, live


def plan(ctx: OperationContext, service_name: str, min_replicas: int | str, max_replicas: int | str,
         principal: Principal | None = None) -> Plan:
    """The dry-run of set_limits: the bounds before → after and where the current ones come from."""

    def fill(plan: Plan) -> None:
        check_permission(principal, SET_LIMITS)
        service, current, low, high, live = preflight(ctx, service_name, min_replicas, max_replicas)
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

    return planned(Plan(SET_LIMITS, service_name, service_name, True, "", confirm_text=service_name,
                        params={"min_replicas": min_replicas, "max_replicas": max_replicas}), fill)


def execute(ctx: OperationContext, principal: Principal, service: str, min_replicas: int | str,
            max_replicas: int | str, *, op_id: str | None = None) -> OperationResult:
    """Override the service's [min_replicas, max_replicas] (see the module docstring)."""
    params = {"service": service, "min_replicas": min_replicas, "max_replicas": max_replicas}

    def prepare() -> tuple[ServiceConfig, Body]:
        config_service = preflight(ctx, service, min_replicas, max_replicas)[0]

        def body(op: audit.Operation) -> OperationResult:
            # again under the lock: a scale that finished meanwhile may have moved the count
            file_service, current, low, high, live = preflight(ctx, service, min_replicas, max_replicas)
            if (low, high) == (file_service.min_replicas, file_service.max_replicas) and current.source != "config":
                # back to the file's bounds: drop the override so a later edit of the file takes effect again
                ctx.store.delete_kv(limits_key(service))
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
            ctx.store.put_kv(limits_key(service), record)
            op.progress(f"limits of '{service}' set to [{low}, {high}]", "limits")
            return OperationResult(
                True, f"'{service}' limits [{current.min_replicas}, {current.max_replicas}] → [{low}, {high}]"
                      f" ({live} replica(s) running)",
                after={"limits": {**record, "source": "override"}, "previous_limits": previous},
                result=audit.OK)

        return config_service, body

    return run_operation(ctx, principal, SET_LIMITS, service, params, prepare, op_id)


class SetLimits:
    """The registry entry (see registry.py)."""

    name = SET_LIMITS
    label = "Limits"
    scope = "service"
    options = ("min_replicas", "max_replicas")

    def plan(self, ctx: OperationContext, target: str, params: Mapping[str, Any],
             principal: Principal | None = None) -> Plan:
        return plan(ctx, target, params["min_replicas"], params["max_replicas"], principal)

    def execute(self, ctx: OperationContext, principal: Principal, target: str, params: Mapping[str, Any],
                op_id: str | None = None) -> OperationResult:
        return execute(ctx, principal, target, params["min_replicas"], params["max_replicas"], op_id=op_id)
