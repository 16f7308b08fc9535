"""Silences: mute alert notifications by rule and subject pattern, for a bounded time, with a reason. Audited.

The CLI (`fleetdeck silence`) and any dashboard page call these functions; the permission check (operator) and
the audit entry live here, so every caller gets them. A silence mutes notifications only: the alert samples are
still written and shown. Patterns are shell-style (`*`, `?`, `[abc]`), e.g. rule `instance_down`, subject `web/*`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from actions import audit
from actions.auth import PermissionDenied, require
from actions.operations import new_op_id
from core.config_alerts import RULE_NAMES
from core.notify.store import NotifyStore, Silence

SILENCE = "silence"
MAX_SILENCE_S = 30 * 86400.0
MAX_PATTERN = 200
MAX_REASON = 500


class SilenceResult(dict[str, Any]):
    """`{"ok": bool, "result": ok|refused, "detail": str, "silence": Silence | None, "op_id": str}`."""


def _operation(store: Any, principal: Any, action: str, target: str, params: dict[str, Any]) -> audit.Operation:
    return audit.Operation(store, new_op_id(), principal, action, "alerts", target, params)


def _refused(op: audit.Operation, message: str) -> SilenceResult:
    op.finish(audit.REFUSED, message, {}, {}, message)
    return SilenceResult(ok=False, result=audit.REFUSED, detail=message, silence=None, op_id=op.op_id)


def create_silence(store: Any, principal: Any, rule: str, subject: str, duration_s: float, reason: str,
                   now: float | None = None) -> SilenceResult:
    """Mute `rule`/`subject` (patterns) for `duration_s`; refused without operator role, reason or sane bounds."""
    now = time.time() if now is None else now
    params = {"rule": rule, "subject": subject, "duration_s": duration_s, "reason": reason[:MAX_REASON]}
    op = _operation(store, principal, SILENCE, f"alerts/{rule[:MAX_PATTERN]}/{subject[:MAX_PATTERN]}", params)
    try:
        require(principal, SILENCE)
    except PermissionDenied as error:
        return _refused(op, f"permission denied: {error}")
    problem = _check(rule, subject, duration_s, reason)
    if problem:
        return _refused(op, problem)
    silence = Silence(uuid.uuid4().hex[:12], rule, subject, principal.name[:128], now, now + duration_s, None,
                      reason.strip())
    NotifyStore(store).add_silence(silence)
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(silence.expires_at))
    detail = f"silence {silence.id}: {rule} {subject} until {until} UTC"
    op.finish(audit.OK, detail, {}, {"silence": silence._asdict()})
    return SilenceResult(ok=True, result=audit.OK, detail=detail, silence=silence, op_id=op.op_id)


def _check(rule: str, subject: str, duration_s: float, reason: str) -> str | None:
    if not rule or not subject or len(rule) > MAX_PATTERN or len(subject) > MAX_PATTERN:
        return f"rule and subject patterns are required, at most {MAX_PATTERN} characters"
    if not any(ch in rule for ch in "*?[") and rule not in RULE_NAMES:
        return f"unknown rule '{rule}'; known: {', '.join(RULE_NAMES)} (or a pattern such as '*')"
    if not 0 < duration_s <= MAX_SILENCE_S:
        return f"duration must be within (0, {MAX_SILENCE_S / 86400:g} days]"
    if not reason.strip():
        return "a reason is required (it is shown with the silence and kept in the audit log)"
    if len(reason) > MAX_REASON:
        return f"reason is longer than {MAX_REASON} characters"
    return None


def expire_silence(store: Any, principal: Any, silence_id: str, now: float | None = None) -> SilenceResult:
    """End an active silence now (audited); refused when unknown or already over."""
    now = time.time() if now is None else now
    op = _operation(store, principal, "expire_silence", f"alerts/silence/{silence_id[:64]}", {"id": silence_id[:64]})
    try:
        require(principal, SILENCE)
    except PermissionDenied as error:
        return _refused(op, f"permission denied: {error}")
    db = NotifyStore(store)
    found = next((s for s in db.silences() if s.id == silence_id), None)
    if found is None or not db.expire_silence(silence_id, now):
        return _refused(op, f"no active silence '{silence_id}'")
    detail = f"silence {silence_id} expired"
    op.finish(audit.OK, detail, {"silence": found._asdict()}, {"expired_at": now})
    return SilenceResult(ok=True, result=audit.OK, detail=detail, silence=found._replace(expired_at=now),
                         op_id=op.op_id)


def list_silences(store: Any, include_expired: bool = False, now: float | None = None) -> list[Silence]:
    """Silences, newest first: the active ones, or all of them."""
    now = time.time() if now is None else now
    db = NotifyStore(store)
    found = db.silences() if include_expired else db.silences(active_at=now)
    return sorted(found, key=lambda s: s.created_at, reverse=True)
