"""Operator actions: scale, drain, undrain, restart, rolling restart, set limits — safe, audited and role-checked.

One module per operation (scale.py, drain.py, undrain.py, restart.py, rolling_restart.py, set_limits.py), each
with `plan()` (the dry-run preview: which replicas, the upstream before/after and its diff, the refusal if any,
from the same preflight code the operation uses, so the preview cannot drift from what it will do) and
`execute()`. Every operation runs in the one frame of frame.py (validate → role check → per-service lock → audit
→ work with progress → audit → unlock); context.py holds the backends and the checks they share; registry.py
lists them for the CLI and the dashboard; facade.py keeps `FleetActions` as one object with a method each.
"""

from actions.operations.context import OperationContext, replica_stopped_under
from actions.operations.facade import FleetActions
from actions.operations.limits import Limits, effective_limits, limits_key, limits_of, with_effective_limits
from actions.operations.registry import OPERATIONS, Operation, operations_for, permission_of
from actions.operations.types import (
    DRAIN,
    FORCE,
    PERMISSION_OF,
    RESTART,
    ROLLING_RESTART,
    SCALE,
    SET_LIMITS,
    UNDRAIN,
    Health,
    OnTimeout,
    OperationResult,
    Plan,
    TimeoutChooser,
    format_busy,
    new_op_id,
    probe_health,
    upstream_diff,
)

__all__ = [
    "DRAIN", "FORCE", "OPERATIONS", "PERMISSION_OF", "RESTART", "ROLLING_RESTART", "SCALE", "SET_LIMITS", "UNDRAIN",
    "FleetActions", "Health", "Limits", "OnTimeout", "Operation", "OperationContext", "OperationResult", "Plan",
    "TimeoutChooser", "effective_limits", "format_busy", "limits_key", "limits_of", "new_op_id", "operations_for",
    "permission_of", "probe_health", "replica_stopped_under", "upstream_diff", "with_effective_limits",
]
