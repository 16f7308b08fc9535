"""The audit trail and the live progress of every action, both kept in the store.

Every attempt of an action — refused, failed or successful — leaves one `AuditEntry` (append-only) with who did
it, with which role, the parameters, the state before and after, the result, the error and the duration. The
same outcome is also written as a store event of kind `action` so it shows up as an annotation on the charts.

While an action runs, each step is written to the store's progress records under the operation id (not as chart
events: no chart wants them), and the operation's current status is kept under the KV key `op:<op_id>`; the
latest operation of a service is under `op:last:<service>`. That is what lets a second browser session (or a CLI
user watching the dashboard) follow an action another session started: the progress lives in the store, not in
one process's memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.store import AuditEntry, OpsRecords

# The event kind written by the actions layer (the outcome of each action, a chart annotation).
ACTION_EVENT = "action"

# Audit results.
OK = "ok"
NOOP = "noop"
FAILED = "failed"
REFUSED = "refused"
STARTED = "started"


class PrincipalLike(Protocol):
    """What the audit needs of actions.auth.Principal (kept structural so this module has no auth import)."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def via(self) -> str: ...


def op_key(op_id: str) -> str:
    return f"op:{op_id}"


def last_op_key(service: str) -> str:
    return f"op:last:{service}"


ProgressCallback = Callable[[str, str], None]  # (op_id, message)


@dataclass
class Operation:
    """One running action: its identity, its progress log and the audit bookkeeping around it."""

    store: OpsRecords
    op_id: str
    principal: PrincipalLike
    action: str
    service: str
    target: str  # "<service>" or "<service>/<instance_id>"
    params: dict[str, Any]
    on_progress: ProgressCallback | None = None
    started_at: float = field(default_factory=time.time)
    steps: list[dict[str, Any]] = field(default_factory=list)
    _monotonic_start: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._monotonic_start

    def _status(self, state: str, message: str, **extra: Any) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "action": self.action,
            "service": self.service,
            "target": self.target,
            "who": self.principal.name,
            "role": self.principal.role,
            "via": self.principal.via,
            "params": self.params,
            "state": state,  # running | ok | noop | failed | refused
            "message": message,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "steps": self.steps[-50:],  # bounded: the KV value stays small
            **extra,
        }

    def progress(self, message: str, step: str = "", **details: Any) -> None:
        """Record one step: store event (for other sessions), KV status, and the caller's callback (terminal)."""
        entry = {"ts": time.time(), "t_s": round(self.elapsed_s, 3), "step": step, "message": message}
        self.steps.append(entry)
        self.store.add_progress(
            self.op_id,
            self.target,
            message,
            {"op_id": self.op_id, "action": self.action, "step": step, "who": self.principal.name, **details},
        )
        self.store.put_kv(op_key(self.op_id), self._status("running", message))
        if self.on_progress is not None:
            self.on_progress(self.op_id, message)

    def begin(self, before: dict[str, Any]) -> None:
        """The preflight passed: audit the start (so even a crash mid-action leaves a trace) and publish the op."""
        self.store.put_kv(last_op_key(self.service), {"op_id": self.op_id})
        self.store.put_kv(op_key(self.op_id), self._status("running", "started"))
        self.store.append_audit(self._entry(STARTED, before, {}, None, 0.0))

    def finish(self, result: str, detail: str, before: dict[str, Any], after: dict[str, Any],
               error: str | None = None) -> None:
        """Audit the outcome, annotate the charts and publish the final status."""
        duration = self.elapsed_s
        self.store.append_audit(self._entry(result, before, after, error, duration))
        self.store.add_event(
            ACTION_EVENT,
            self.target,
            f"{self.action} {self.target} by {self.principal.name}: {result}" + (f" ({error})" if error else ""),
            {"op_id": self.op_id, "action": self.action, "who": self.principal.name, "role": self.principal.role,
             "result": result, "params": self.params, "duration_s": round(duration, 3)},
        )
        self.store.put_kv(op_key(self.op_id), self._status(result, error or detail, finished_at=time.time(),
                                                           duration_s=round(duration, 3), after=after))
        if self.on_progress is not None:
            self.on_progress(self.op_id, f"{result}: {error or detail}")

    def _entry(self, result: str, before: dict[str, Any], after: dict[str, Any], error: str | None,
               duration_s: float) -> AuditEntry:
        return AuditEntry(
            id=None,
            ts=time.time(),
            op_id=self.op_id,
            who=self.principal.name,
            role=self.principal.role,
            action=self.action,
            params={**self.params, "target": self.target, "via": self.principal.via},
            before=before,
            after=after,
            result=result,
            error=error,
            duration_s=round(duration_s, 3),
        )


def operation_status(store: OpsRecords, op_id: str) -> dict[str, Any] | None:
    """The current status of an operation as published by `Operation` (None when unknown)."""
    return store.get_kv(op_key(op_id))


def last_operation(store: OpsRecords, service: str) -> dict[str, Any] | None:
    """The status of the latest operation started on `service`, running or finished."""
    pointer = store.get_kv(last_op_key(service))
    if not pointer or "op_id" not in pointer:
        return None
    return operation_status(store, str(pointer["op_id"]))


def progress_events(store: OpsRecords, op_id: str, since: float | None = None) -> list[dict[str, Any]]:
    """The progress lines of one operation, oldest first."""
    start = since if since is not None else time.time() - 6 * 3600
    return [{"ts": line.ts, "target": line.target, "message": line.message, **line.details}
            for line in store.progress(op_id, since=start)]
