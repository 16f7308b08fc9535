"""The notifier: alert samples in, notifications out, the way Alertmanager does it (docs/alerts.md).

Three steps, all driven by the collector process:

1. :meth:`Notifier.observe` reads the ``alert`` samples of each flushed batch and records in the store when an
   alert starts firing and when it resolves;
2. :meth:`Notifier.dispatch` (every second) walks the routes: each route picks alerts by rule and severity,
   groups them (by rule, subject and/or severity), leaves out silenced ones and decides per group with
   :func:`decide` whether a notification is due — ``group_wait`` after a quiet group starts firing,
   ``group_interval`` after the last one when the set changed (new alerts, resolved ones), ``repeat_interval``
   while nothing changed. A due notification is queued in the outbox in the same transaction that updates the
   group, so it is decided exactly once, even across a restart;
3. :meth:`Notifier.deliver` sends what is due, records every attempt, and retries failures with exponential
   backoff up to ``alerts.delivery.max_attempts`` (a permanent rejection fails at once).

Delivery is at-least-once: a crash after the receiver accepted a message but before the outcome is committed
(a window of milliseconds) resends it once, with the same ``X-Fleetdeck-Notification-Id`` / Message-ID so the
receiver can drop it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from core.config import FleetConfig
from core.config_alerts import SEVERITY_RANK, AlertsConfig, Receiver, Route
from core.notify import payloads, senders
from core.notify.store import AlertState, GroupState, Notification, NotifyStore, Silence
from core.samples import Sample

log = logging.getLogger(__name__)

FORGET_RESOLVED_AFTER_S = 7 * 86400.0
Sender = Callable[[Receiver, dict[str, Any], float, int], str]


def silenced_by(alert: AlertState, silences: Iterable[Silence]) -> Silence | None:
    for silence in silences:
        if fnmatch.fnmatchcase(alert.rule, silence.rule) and fnmatch.fnmatchcase(alert.subject, silence.subject):
            return silence
    return None


def group_values(route: Route, alert: AlertState, severity: str) -> tuple[tuple[str, str], ...]:
    fields = {"rule": alert.rule, "subject": alert.subject, "severity": severity}
    return tuple((name, fields[name]) for name in route.group_by)


def group_key(index: int, route: Route, values: tuple[tuple[str, str], ...]) -> str:
    text = f"{index}:{route.receiver}:" + "|".join(f"{k}={v}" for k, v in values)
    if len(text) <= 600:
        return text
    return text[:560] + "#" + hashlib.sha256(text.encode()).hexdigest()[:32]


def decide(route: Route, group: GroupState, firing: list[str], resolved: list[str],
           now: float) -> tuple[GroupState, bool]:
    """The group's next state and whether a notification is due now (pure: tested directly).

    `firing`: the group's firing, unsilenced alert keys now; `resolved`: keys the last notification announced as
    firing that have resolved since."""
    notified = set(group.notified)
    current = set(firing)
    new_firing = current - notified
    if not route.send_resolved:
        resolved = []
    first_seen = group.first_seen_at if current else None
    if current and first_seen is None:
        first_seen = now
    if not new_firing and not resolved:
        if not current:
            # quiet (or only silenced alerts left): forget what was announced, without a message
            return group._replace(first_seen_at=None, notified=()), False
        if current != notified:  # announced alerts left without a notice (silenced, or send_resolved is off)
            group = group._replace(notified=tuple(sorted(current)))
        due_at = (group.last_sent_at if group.last_sent_at is not None else now) + route.repeat_interval_s
    elif new_firing and not notified:
        due_at = (first_seen if first_seen is not None else now) + route.group_wait_s
    else:
        due_at = (group.last_sent_at or 0.0) + route.group_interval_s
    if now < due_at:
        return group._replace(first_seen_at=first_seen), False
    sent = group._replace(first_seen_at=first_seen, last_sent_at=now, notified=tuple(sorted(firing)),
                          seq=group.seq + 1)
    return sent, True


class Notifier:
    def __init__(self, config: FleetConfig, store: Any, senders_by_kind: dict[str, Sender] | None = None) -> None:
        self.config: AlertsConfig = config.alerts
        self.db = NotifyStore(store)
        self.states = self.db.alert_states()  # the store is the truth; this process is its only writer
        self._lock = threading.Lock()  # observe (flush job) and dispatch (notify loop) run in different threads
        self._last_seen: dict[str, float] = {}  # alert key -> ts of its latest firing sample
        self.senders: dict[str, Sender] = senders_by_kind or {
            "webhook": lambda r, n, t, b: senders.send_webhook(r.webhook, n, t, b),  # type: ignore[arg-type]
            "email": lambda r, n, t, b: senders.send_email(r.email, n, t, b),  # type: ignore[arg-type]
        }

    def severity_of(self, rule: str) -> str:
        try:
            return self.config.rules.rule(rule).severity
        except KeyError:
            return "warning"

    # -- 1. observe --------------------------------------------------------------------------------------------

    def observe(self, samples: Iterable[Sample]) -> int:
        """Record firing/resolved transitions of the batch's alert samples; the number of transitions."""
        with self._lock:
            return self._observe(samples)

    def _observe(self, samples: Iterable[Sample]) -> int:
        changes = 0
        for sample in samples:
            if sample.source != "alert" or sample.metric != "firing":
                continue
            key = sample.target
            known = self.states.get(key)
            if sample.value >= 1:
                self._last_seen[key] = sample.ts
            if sample.value >= 1 and (known is None or known.status != "firing"):
                rule, _, subject = key.partition("/")
                state = AlertState(key, rule, subject, "firing", payloads.cut(sample.text), sample.ts, None)
            elif sample.value < 1 and known is not None and known.status == "firing":
                state = known._replace(status="resolved", resolved_at=sample.ts)
            else:
                continue
            self.db.put_alert_state(state, time.time())
            self.states[key] = state
            changes += 1
        return changes

    # -- 2. dispatch -------------------------------------------------------------------------------------------

    def dispatch(self, now: float | None = None) -> int:
        """Queue every notification that is due; the number queued."""
        with self._lock:
            return self._dispatch(time.time() if now is None else now)

    def _dispatch(self, now: float) -> int:
        self._expire_unseen(now)
        silences = self.db.silences(active_at=now)
        groups = self.db.groups()
        queued = 0
        for index, route in enumerate(self.config.routes):
            members: dict[str, tuple[tuple[tuple[str, str], ...], list[AlertState]]] = {}
            for alert in self.states.values():
                severity = self.severity_of(alert.rule)
                if route.rules and alert.rule not in route.rules:
                    continue
                if SEVERITY_RANK[severity] < SEVERITY_RANK[route.min_severity]:
                    continue
                values = group_values(route, alert, severity)
                members.setdefault(group_key(index, route, values), (values, []))[1].append(alert)
            prefix = f"{index}:{route.receiver}:"
            for key in [k for k in groups if k.startswith(prefix) and k not in members]:
                members[key] = ((), [])  # a group whose alerts were forgotten: let it go quiet
            for key, (values, alerts) in members.items():
                if self._dispatch_group(index, route, key, values, alerts, groups.get(key), silences, now):
                    queued += 1
        self.db.forget_resolved(now - FORGET_RESOLVED_AFTER_S,
                                {k for g in self.db.groups().values() for k in g.notified})
        return queued

    def _dispatch_group(self, index: int, route: Route, key: str, values: tuple[tuple[str, str], ...],
                        alerts: list[AlertState], group: GroupState | None, silences: list[Silence],
                        now: float) -> bool:
        group = group or GroupState(key, route.receiver, None, None, (), 0)
        by_key = {a.key: a for a in alerts}
        firing = sorted(a.key for a in alerts if a.status == "firing" and silenced_by(a, silences) is None)
        resolved = sorted(k for k in group.notified if k in by_key and by_key[k].status == "resolved")
        after, due = decide(route, group, firing, resolved, now)
        if not due:
            if after != group:
                self.db.put_group(after)
            return False
        chosen = [by_key[k] for k in firing] + [by_key[k] for k in resolved]
        limit = self.config.delivery.max_alerts_per_message
        notification = {
            "id": f"{key}#{after.seq}",
            "status": "firing" if firing else "resolved",
            "group_key": key,
            "receiver": route.receiver,
            "group_labels": dict(values),
            "created_at": now,
            "truncated": max(0, len(chosen) - limit),
            "alerts": [
                {"key": a.key, "rule": a.rule, "subject": a.subject, "severity": self.severity_of(a.rule),
                 "status": a.status, "message": a.message, "started_at": a.started_at, "resolved_at": a.resolved_at}
                for a in chosen[:limit]
            ],
        }
        return self.db.put_group(after, notification) is not None

    def _expire_unseen(self, now: float) -> None:
        """Resolve firing alerts nobody evaluates any more (a removed replica, a target dropped from the config)."""
        for key, state in list(self.states.items()):
            if state.status != "firing":
                continue
            seen = self._last_seen.setdefault(key, now)  # after a restart: a full timeout from now
            if now - seen > self.config.resolve_timeout_s:
                resolved = state._replace(status="resolved", resolved_at=now,
                                          message=payloads.cut(f"{state.message} (no longer evaluated)"))
                self.db.put_alert_state(resolved, time.time())
                self.states[key] = resolved

    # -- 3. deliver --------------------------------------------------------------------------------------------

    def backoff_s(self, attempts: int) -> float:
        delivery = self.config.delivery
        return float(min(delivery.backoff_max_s, delivery.backoff_initial_s * 2 ** max(0, attempts - 1)))

    def deliver(self, now: float | None = None) -> int:
        """Send every due notification once; the number delivered."""
        delivery = self.config.delivery
        now = time.time() if now is None else now
        delivered = 0
        for notification in self.db.claim_due(now, lease_s=delivery.timeout_s * 2 + 5):
            delivered += 1 if self._attempt(notification, now) else 0
        return delivered

    def _attempt(self, notification: Notification, now: float) -> bool:
        delivery = self.config.delivery
        started = time.monotonic()
        permanent = False
        try:
            receiver = self.config.receiver(notification.receiver)
        except KeyError:
            ok, detail, permanent = False, f"receiver '{notification.receiver}' is no longer configured", True
        else:
            kind = "webhook" if receiver.webhook is not None else "email"
            try:
                detail = self.senders[kind](receiver, notification.payload, delivery.timeout_s,
                                            delivery.max_body_bytes)
                ok = True
            except senders.DeliveryError as error:
                ok, detail, permanent = False, str(error), error.permanent
            except Exception as error:  # a sender bug must not stop the other notifications
                ok, detail = False, f"{type(error).__name__}: {error}"[:300]
        ended = now + (time.monotonic() - started)  # on the caller's clock, so tests can drive time
        attempts = notification.attempts + 1
        retry_at = None if ok or permanent or attempts >= delivery.max_attempts else ended + self.backoff_s(attempts)
        self.db.record_attempt(notification, ended, ok, time.monotonic() - started, detail, retry_at)
        if not ok:
            log.warning("notification %s to %s: attempt %d failed: %s", notification.dedupe_key,
                        notification.receiver, attempts, detail)
        return ok

    def tick(self, now: float | None = None) -> tuple[int, int]:
        return self.dispatch(now), self.deliver(now)
