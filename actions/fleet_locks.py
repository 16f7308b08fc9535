"""`fleetdeck down` and the per-service action locks: down never cuts a running action short unannounced.

`down` takes every local service's lock (the same lock scale, drain, restart and limits take). While an action
holds one, `down` waits up to `--wait` seconds for it to finish; then it refuses with "busy: ..." and changes
nothing. `--force` stops the fleet anyway: the action whose replica is stopped under it fails (it re-checks its
replica) and the forced `down` is audited with the holder it overrode (docs/operations.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from actions import audit
from actions.backends.base import FleetError
from core.store import Store

DOWN = "down"
POLL_S = 0.5
DEFAULT_WAIT_S = 30.0
# long enough for the slowest stop (every replica's stop grace); an expired lock is simply taken over
LOCK_TTL_S = 600.0


class FleetBusy(FleetError):
    """An action holds a service lock and `down` was not forced."""


def format_holder(holder: dict[str, Any]) -> str:
    since = holder.get("acquired_at")
    when = time.strftime("%H:%M:%S", time.localtime(float(since))) if since else "?"
    return f"{holder.get('action', '?')} by {holder.get('who', '?')} since {when} (op {holder.get('op_id', '?')})"


class DownLocks:
    """The locks one `down` holds, and its audit entry."""

    def __init__(self, store: Store, principal: Any, services: list[str], *, wait_s: float, force: bool,
                 say: Callable[[str], None]) -> None:
        self.store = store
        self.principal = principal
        self.services = services
        self.wait_s = wait_s
        self.force = force
        self.say = say
        self.op_id = f"down-{uuid.uuid4().hex[:12]}"
        self.held: list[str] = []
        self.overridden: dict[str, dict[str, Any]] = {}
        self.op = audit.Operation(store, self.op_id, principal, DOWN, ",".join(services) or "fleet", "fleet",
                                  {"wait_s": wait_s, "force": force})

    def acquire(self) -> None:
        """Take every lock, waiting up to wait_s in all; raise FleetBusy (audited) unless forced."""
        deadline = time.monotonic() + self.wait_s
        for service in self.services:
            announced = False
            while True:
                got, holder = self.store.acquire_lock(service, DOWN, self.principal.name, self.op_id, LOCK_TTL_S)
                if got:
                    self.held.append(service)
                    break
                if time.monotonic() >= deadline:
                    if self.force:
                        self.overridden[service] = holder
                        self.say(f"{service}: FORCED: stopping it although {format_holder(holder)} is running;"
                                 " that action will fail")
                        break
                    self.release()
                    message = (f"busy: {service}: {format_holder(holder)}; `down` waited {self.wait_s:g}s and"
                               " changed nothing. Retry when it is done, or use --force (the action then fails)")
                    self.op.finish(audit.REFUSED, message, {}, {}, message)
                    raise FleetBusy(message)
                if not announced:
                    self.say(f"{service}: waiting up to {self.wait_s:g}s for {format_holder(holder)} to finish")
                    announced = True
                time.sleep(POLL_S)
        self.op.begin({"overridden": self.overridden})

    def release(self) -> None:
        for service in self.held:
            self.store.release_lock(service, self.op_id)
        self.held = []

    def finish(self, summary: dict[str, Any], error: str | None = None) -> None:
        self.release()
        detail = ("forced " if self.overridden else "") + ("fleet stopped" if error is None else f"failed: {error}")
        self.op.finish(audit.OK if error is None else audit.FAILED, detail, {"overridden": self.overridden},
                       summary, error)
