"""The permission check and audit record for the verbs outside FleetActions: fleet up/down, test runs, cancels,
logins.

FleetActions (actions/operations.py) runs scale, drain, restart... in its own frame; everything else that changes
state goes through `guarded()`: the role is checked first, a refusal is audited (one `refused` row), an accepted
attempt is audited when it starts and when it ends (`ok` or `failed`, with the error), so every state-changing
verb leaves the same trail whoever calls it (CLI, dashboard, a test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from actions import audit
from actions.auth import PermissionDenied, Principal, require
from actions.operations.types import new_op_id
from core.store import AuditEntry, Store

T = TypeVar("T")

# the audit action names of these verbs (and their permission names in actions.auth.PERMISSIONS)
FLEET_UP = "fleet_up"
FLEET_DOWN = "fleet_down"
START_TEST = "start_test"
STOP_TEST = "stop_test"
LOGIN = "login"


def _operation(store: Store, principal: Any, action: str, target: str, params: dict[str, Any]) -> audit.Operation:
    # the "service" of these operations starts with "~", which no service name can (core/config.py): their status
    # never shows up as the last operation of a real service that happens to be called "fleet" or "test"
    return audit.Operation(store, new_op_id(), principal, action, "~" + target.split("/", 1)[0], target, params)


def authorize(store: Store, principal: Any, action: str, target: str, params: dict[str, Any],
              permission: str | None = None) -> None:
    """The role check alone; a refusal is audited (one `refused` row) and raised as PermissionDenied."""
    try:
        require(principal, permission or action)
    except PermissionDenied as error:
        message = f"permission denied: {error}"
        _operation(store, principal, action, target, params).finish(audit.REFUSED, message, {}, {}, message)
        raise


def guarded(store: Store, principal: Any, action: str, target: str, params: dict[str, Any],
            body: Callable[[], T], *, permission: str | None = None,
            after: Callable[[T], dict[str, Any]] | None = None) -> T:
    """Check `permission` (default: the action's own), audit, run `body`, audit its outcome, return its value.

    Raises PermissionDenied after auditing the refusal; re-raises whatever `body` raised after auditing it.
    """
    authorize(store, principal, action, target, params, permission)
    op = _operation(store, principal, action, target, params)
    op.begin({})
    try:
        value = body()
    except BaseException as error:  # KeyboardInterrupt included: the trail says the attempt ended
        message = f"{type(error).__name__}: {error}"
        op.finish(audit.FAILED, message, {}, {}, message)
        raise
    op.finish(audit.OK, "done", {}, after(value) if after else {}, None)
    return value


def record_login(store: Store, name: str, via: str, client: str, ok: bool, reason: str = "",
                 role: str = "-") -> None:
    """One audit row per login attempt, failed ones included (who tried, from where, why it failed)."""
    import time

    store.append_audit(AuditEntry(
        id=None, ts=time.time(), op_id=new_op_id(), who=name[:128] or "-", role=role, action=LOGIN,
        params={"target": "dashboard", "via": via, "client": client[:128]}, before={}, after={},
        result=audit.OK if ok else audit.REFUSED, error=None if ok else (reason or "bad credentials"),
        duration_s=0.0,
    ))


__all__ = ["FLEET_DOWN", "FLEET_UP", "LOGIN", "START_TEST", "STOP_TEST", "Principal", "authorize", "guarded",
           "record_login"]
