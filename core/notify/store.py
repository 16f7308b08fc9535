"""The notifier's durable state, in the same database as the store (its own tables, created on first use).

- ``alert_state``: every alert that fired, with when it started and, once it stopped, when it resolved;
- ``notify_group``: per (route, group) what the last notification said and when, so a restart neither forgets a
  group nor re-announces it;
- ``notification``: the outbox. A row is written in the same transaction that updates its group, so a
  notification decided before a crash is delivered after it, and never decided twice (``dedupe_key`` is unique);
- ``notification_attempt``: one row per delivery attempt, successful or not;
- ``silence``: muted rule/subject patterns with an expiry and a reason.

Delivery claims a row with a short lease before sending, so two processes sharing a store never send one row
twice at the same time; a process killed mid-send leaves a lease that expires and the row is retried.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

notify_metadata = MetaData()

alert_state_table = Table(
    "alert_state",
    notify_metadata,
    Column("key", String(600), primary_key=True),  # "<rule>/<subject>" (the alert sample's target)
    Column("rule", String(64), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("status", String(16), nullable=False),  # firing | resolved
    Column("message", Text, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("resolved_at", Double, nullable=True),
    Column("updated_at", Double, nullable=False),
)

notify_group_table = Table(
    "notify_group",
    notify_metadata,
    Column("key", String(700), primary_key=True),  # "<route index>:<receiver>:<group values>"
    Column("receiver", String(64), nullable=False),
    Column("first_seen_at", Double, nullable=True),  # when the group last went from quiet to firing
    Column("last_sent_at", Double, nullable=True),
    Column("notified", Text, nullable=False),  # JSON list of the alert keys the last notification said fire
    Column("seq", Integer, nullable=False),  # notifications decided for this group so far
)

notification_table = Table(
    "notification",
    notify_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(760), nullable=False, unique=True),
    Column("group_key", String(700), nullable=False),
    Column("receiver", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | sent | failed
    Column("created_at", Double, nullable=False),
    Column("next_attempt_at", Double, nullable=False),
    Column("lease_until", Double, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("sent_at", Double, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("payload", Text, nullable=False),  # JSON: status, alerts (firing + resolved), group labels
    Index("ix_notification_due", "status", "next_attempt_at"),
)

notification_attempt_table = Table(
    "notification_attempt",
    notify_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notification_id", Integer, nullable=False, index=True),
    Column("ts", Double, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("duration_s", Double, nullable=False),
    Column("detail", Text, nullable=False),
)

silence_table = Table(
    "silence",
    notify_metadata,
    Column("id", String(32), primary_key=True),
    Column("rule", String(200), nullable=False),  # fnmatch pattern, "*" for every rule
    Column("subject", String(200), nullable=False),  # fnmatch pattern
    Column("created_by", String(128), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("expired_at", Double, nullable=True),  # set when expired early by hand
    Column("reason", Text, nullable=False),
)


class AlertState(NamedTuple):
    key: str
    rule: str
    subject: str
    status: str
    message: str
    started_at: float
    resolved_at: float | None


class GroupState(NamedTuple):
    key: str
    receiver: str
    first_seen_at: float | None
    last_sent_at: float | None
    notified: tuple[str, ...]
    seq: int


class Notification(NamedTuple):
    id: int
    dedupe_key: str
    group_key: str
    receiver: str
    status: str
    created_at: float
    next_attempt_at: float
    attempts: int
    sent_at: float | None
    last_error: str | None
    payload: dict[str, Any]


class Attempt(NamedTuple):
    id: int
    notification_id: int
    ts: float
    ok: bool
    duration_s: float
    detail: str


class Silence(NamedTuple):
    id: str
    rule: str
    subject: str
    created_by: str
    created_at: float
    expires_at: float
    expired_at: float | None
    reason: str

    def active(self, now: float) -> bool:
        return self.expired_at is None and now < self.expires_at


class NotifyStore:
    """Tables of the notifier on the store's engine (SQLite or Postgres, like every other table)."""

    def __init__(self, store: Any) -> None:
        # the store's own engine, so SQLite WAL settings and the Postgres pool are shared (the only thing used of
        # the Store: these tables stay independent of how the store's own tables are split)
        self.engine = store._engine
        self._dialect = self.engine.dialect.name
        notify_metadata.create_all(self.engine, checkfirst=True)

    def _insert(self, table: Table) -> Any:
        """An INSERT that supports ON CONFLICT (both dialects spell it the same in SQLAlchemy)."""
        return (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(table)

    # -- alerts -----------------------------------------------------------------------------------------------------

    def alert_states(self) -> dict[str, AlertState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(alert_state_table)).all()
        return {
            r.key: AlertState(r.key, r.rule, r.subject, r.status, r.message, float(r.started_at),
                              None if r.resolved_at is None else float(r.resolved_at))
            for r in rows
        }

    def put_alert_state(self, state: AlertState, now: float) -> None:
        row = {**state._asdict(), "updated_at": now}
        insert = self._insert(alert_state_table).values(row)
        stmt = insert.on_conflict_do_update(
            index_elements=["key"], set_={k: insert.excluded[k] for k in row if k != "key"}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def forget_resolved(self, before: float, keep: set[str]) -> int:
        """Drop alerts resolved before `before` that no group still refers to."""
        a = alert_state_table.c
        with self.engine.begin() as conn:
            keys = [r.key for r in conn.execute(select(a.key).where(a.status == "resolved", a.resolved_at < before))]
            gone = [k for k in keys if k not in keep]
            for key in gone:
                conn.execute(alert_state_table.delete().where(a.key == key))
        return len(gone)

    # -- groups and the outbox --------------------------------------------------------------------------------------

    def groups(self) -> dict[str, GroupState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(notify_group_table)).all()
        return {
            r.key: GroupState(r.key, r.receiver, r.first_seen_at, r.last_sent_at, tuple(json.loads(r.notified)),
                              int(r.seq))
            for r in rows
        }

    def put_group(self, group: GroupState, notification: dict[str, Any] | None = None) -> int | None:
        """Save the group and, in the same transaction, queue its notification; the new row's id (None if none).

        If the same notification was already queued (a second process decided it too), nothing is written."""
        row = {**group._asdict(), "notified": json.dumps(list(group.notified))}
        insert = self._insert(notify_group_table).values(row)
        stmt = insert.on_conflict_do_update(
            index_elements=["key"], set_={k: insert.excluded[k] for k in row if k != "key"}
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt)
                if notification is None:
                    return None
                result = conn.execute(notification_table.insert().values(
                    dedupe_key=f"{group.key}#{group.seq}",
                    group_key=group.key,
                    receiver=group.receiver,
                    status="pending",
                    created_at=notification["created_at"],
                    next_attempt_at=notification["created_at"],
                    lease_until=None,
                    attempts=0,
                    payload=json.dumps(notification, default=str),
                ))
                return int(result.inserted_primary_key[0])
        except IntegrityError:
            return None

    def claim_due(self, now: float, lease_s: float, limit: int = 20) -> list[Notification]:
        """Pending notifications whose time has come, each leased to this caller (others skip them)."""
        n = notification_table.c
        free = or_(n.lease_until.is_(None), n.lease_until < now)
        with self.engine.connect() as conn:
            ids = [r.id for r in conn.execute(
                select(n.id).where(n.status == "pending", n.next_attempt_at <= now, free)
                .order_by(n.next_attempt_at, n.id).limit(limit)
            )]
        claimed: list[int] = []
        for notification_id in ids:
            with self.engine.begin() as conn:
                got = conn.execute(
                    update(notification_table)
                    .where(and_(n.id == notification_id, n.status == "pending", free))
                    .values(lease_until=now + lease_s)
                ).rowcount
            if got:
                claimed.append(notification_id)
        return self.notifications(ids=claimed) if claimed else []

    def record_attempt(self, notification: Notification, ts: float, ok: bool, duration_s: float, detail: str,
                       next_attempt_at: float | None) -> None:
        """One attempt: its record, and the row's new state (sent, retry at `next_attempt_at`, or failed)."""
        attempts = notification.attempts + 1
        if ok:
            values: dict[str, Any] = {"status": "sent", "sent_at": ts, "last_error": None}
        elif next_attempt_at is None:
            values = {"status": "failed", "last_error": detail}
        else:
            values = {"next_attempt_at": next_attempt_at, "last_error": detail}
        with self.engine.begin() as conn:
            conn.execute(notification_attempt_table.insert().values(
                notification_id=notification.id, ts=ts, ok=ok, duration_s=duration_s, detail=detail[:2000]
            ))
            conn.execute(update(notification_table).where(notification_table.c.id == notification.id)
                         .values(attempts=attempts, lease_until=None, **values))

    def notifications(self, status: str | None = None, limit: int = 1000,
                      ids: list[int] | None = None) -> list[Notification]:
        """The newest `limit` notifications (or exactly `ids`), oldest first."""
        n = notification_table.c
        stmt = select(notification_table).order_by(n.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(n.status == status)
        if ids is not None:
            stmt = stmt.where(n.id.in_(ids))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            Notification(int(r.id), r.dedupe_key, r.group_key, r.receiver, r.status, float(r.created_at),
                         float(r.next_attempt_at), int(r.attempts), r.sent_at, r.last_error, json.loads(r.payload))
            for r in reversed(rows)
        ]

    def attempts(self, notification_id: int | None = None) -> list[Attempt]:
        a = notification_attempt_table.c
        stmt = select(notification_attempt_table).order_by(a.id)
        if notification_id is not None:
            stmt = stmt.where(a.notification_id == notification_id)
        with self.engine.connect() as conn:
            return [Attempt(int(r.id), int(r.notification_id), float(r.ts), bool(r.ok), float(r.duration_s), r.detail)
                    for r in conn.execute(stmt)]

    # -- silences ---------------------------------------------------------------------------------------------------

    def add_silence(self, silence: Silence) -> None:
        with self.engine.begin() as conn:
            conn.execute(silence_table.insert().values(silence._asdict()))

    def expire_silence(self, silence_id: str, now: float) -> bool:
        s = silence_table.c
        with self.engine.begin() as conn:
            return bool(conn.execute(
                update(silence_table).where(s.id == silence_id, s.expired_at.is_(None), s.expires_at > now)
                .values(expired_at=now)
            ).rowcount)

    def silences(self, active_at: float | None = None) -> list[Silence]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(silence_table).order_by(silence_table.c.created_at)).all()
        found = [Silence(r.id, r.rule, r.subject, r.created_by, float(r.created_at), float(r.expires_at),
                         r.expired_at, r.reason) for r in rows]
        return found if active_at is None else [s for s in found if s.active(active_at)]
