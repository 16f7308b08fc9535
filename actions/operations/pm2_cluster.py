"""PM2 cluster mode in the operations: PM2 balances the instances on one port, so nginx is not involved.

Scale is `pm2 scale`, a rolling restart is `pm2 reload`; per-instance drain and restart are refused with the
reason (actions/backends/pm2.py).
"""

from __future__ import annotations

import time

from actions import audit
from actions.backends.base import FleetdeckActionError
from actions.operations.context import OperationContext
from actions.operations.types import OperationResult, Refusal
from core.config import ServiceConfig


def is_pm2_cluster(service: ServiceConfig) -> bool:
    return service.backend == "pm2" and service.pm2_exec_mode == "cluster"


def refuse(service: ServiceConfig, action: str) -> None:
    """Refusal for a per-instance action on a PM2 cluster service."""
    if is_pm2_cluster(service):
        from actions.backends.pm2 import CLUSTER_DRAIN_REFUSED

        raise Refusal(CLUSTER_DRAIN_REFUSED.format(action=action, service=service.name))


def scale(ctx: OperationContext, op: audit.Operation, service: ServiceConfig, wanted: int) -> OperationResult:
    orchestrator = ctx.orchestrator(service)
    started = time.monotonic()
    op.progress(f"pm2 scale {service.name} {wanted}", "pm2_scale")
    try:
        replicas = orchestrator.cluster_scale(service, wanted)  # type: ignore[attr-defined]
    except FleetdeckActionError as error:
        message = f"pm2 scale failed: {error}"
        return OperationResult(False, message, result=audit.FAILED, error=message)
    ctx.record_desired(service)
    return OperationResult(True, f"'{service.name}' runs {len(replicas)} PM2 cluster instance(s)"
                           f" after {time.monotonic() - started:.2f}s", result=audit.OK)


def reload(ctx: OperationContext, op: audit.Operation, service: ServiceConfig) -> OperationResult:
    orchestrator = ctx.orchestrator(service)
    op.progress(f"pm2 reload {service.name} (zero-downtime: new worker listening before the old one stops)",
                "pm2_reload")
    try:
        replicas = orchestrator.cluster_reload(service)  # type: ignore[attr-defined]
    except FleetdeckActionError as error:
        message = f"pm2 reload failed: {error}"
        return OperationResult(False, message, result=audit.FAILED, error=message)
    names = [r.instance_id for r in replicas]
    return OperationResult(True, f"reloaded {len(names)} PM2 cluster instance(s)", after={"restarted": names},
                           result=audit.OK)
