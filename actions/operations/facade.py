"""`FleetActions`: the operations as methods, for callers that hold one object (the CLI, the proving runs, tests).
Each method is a one-line call into the operation's own module."""

from __future__ import annotations

from actions.auth import Principal
from actions.operations import drain, restart, rolling_restart, scale, set_limits, undrain
from actions.operations.context import OperationContext
from actions.operations.types import OnTimeout, OperationResult, Plan, TimeoutChooser


class FleetActions(OperationContext):
    """The actions API: an OperationContext with one method per operation and per plan."""

    def plan_scale(self, service_name: str, replicas: int | str, principal: Principal | None = None) -> Plan:
        return scale.plan(self, service_name, replicas, principal)

    def scale(self, principal: Principal, service_name: str, replicas: int | str, *,
              op_id: str | None = None) -> OperationResult:
        return scale.execute(self, principal, service_name, replicas, op_id=op_id)

    def plan_drain(self, instance: str, principal: Principal | None = None) -> Plan:
        return drain.plan(self, instance, principal)

    def drain(self, principal: Principal, instance: str, *, timeout_s: float | None = None,
              on_timeout: OnTimeout | TimeoutChooser = "abort", op_id: str | None = None) -> OperationResult:
        return drain.execute(self, principal, instance, timeout_s=timeout_s, on_timeout=on_timeout, op_id=op_id)

    def plan_undrain(self, instance: str, principal: Principal | None = None) -> Plan:
        return undrain.plan(self, instance, principal)

    def undrain(self, principal: Principal, instance: str, *, op_id: str | None = None) -> OperationResult:
        return undrain.execute(self, principal, instance, op_id=op_id)

    def plan_restart(self, instance: str, principal: Principal | None = None) -> Plan:
        return restart.plan(self, instance, principal)

    def restart(self, principal: Principal, instance: str, *, op_id: str | None = None) -> OperationResult:
        return restart.execute(self, principal, instance, op_id=op_id)

    def plan_rolling_restart(self, service_name: str, principal: Principal | None = None) -> Plan:
        return rolling_restart.plan(self, service_name, principal)

    def rolling_restart(self, principal: Principal, service_name: str, *,
                        op_id: str | None = None) -> OperationResult:
        return rolling_restart.execute(self, principal, service_name, op_id=op_id)

    def plan_set_limits(self, service_name: str, min_replicas: int | str, max_replicas: int | str,
                        principal: Principal | None = None) -> Plan:
        return set_limits.plan(self, service_name, min_replicas, max_replicas, principal)

    def set_limits(self, principal: Principal, service: str, min_replicas: int | str, max_replicas: int | str,
                   op_id: str | None = None) -> OperationResult:
        return set_limits.execute(self, principal, service, min_replicas, max_replicas, op_id=op_id)
