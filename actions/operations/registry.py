"""The operations, listed once: the CLI and the dashboard iterate this registry instead of dispatching on the
action's name themselves.

Every entry offers `plan()` (the dry-run, from the same preflight code the operation runs) and `execute()` (the
operation in the shared lock/permission/audit frame of frame.py), both taking the operation's own parameters
(`options`) as a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from actions.auth import Principal
from actions.operations.context import OperationContext
from actions.operations.drain import Drain
from actions.operations.restart import Restart
from actions.operations.rolling_restart import RollingRestart
from actions.operations.scale import Scale
from actions.operations.set_limits import SetLimits
from actions.operations.types import PERMISSION_OF, OperationResult, Plan
from actions.operations.undrain import Undrain


class Operation(Protocol):
    @property
    def name(self) -> str:
        """The action name, as audited."""
        ...

    @property
    def label(self) -> str:
        """What a button or a heading calls it."""
        ...

    @property
    def scope(self) -> str:
        """"instance" (the target is an instance id) or "service" (a service name)."""
        ...

    @property
    def options(self) -> tuple[str, ...]:
        """The parameters it takes beyond the target."""
        ...

    def plan(self, ctx: OperationContext, target: str, params: Mapping[str, Any],
             principal: Principal | None = None) -> Plan: ...

    def execute(self, ctx: OperationContext, principal: Principal, target: str, params: Mapping[str, Any],
                op_id: str | None = None) -> OperationResult: ...


OPERATIONS: dict[str, Operation] = {
    operation.name: operation
    for operation in (Scale(), Drain(), Undrain, Restart, RollingRestart, SetLimits())
}


def operations_for(scope: str) -> list[Operation]:
    """The operations whose target is an instance ("instance") or a service ("service"), in registry order."""
    return [operation for operation in OPERATIONS.values() if operation.scope == scope]


def permission_of(operation: Operation) -> str:
    """The permission (a name of actions.auth.PERMISSIONS) the operation needs."""
    return PERMISSION_OF[operation.name]
