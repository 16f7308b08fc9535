"""The ops-records store: events (chart annotations), the replica registry, the append-only audit log, the
per-service action locks, scorecard facts and a small key-value table."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import (
    CursorResult,
    delete,
    select,
)
from sqlalchemy.exc import DBAPIError

from core import audit_chain
from core.store.records import (
    AuditEntry,
    Event,
    Fact,
    Progress,
    ReplicaRecord,
)
from core.store.schema import (
    Database,
    action_lock_table,
    audit_head_table,
    audit_table,
    event_table,
    fact_table,
    kv_table,
    progress_table,
    replica_table,
)


class _ChainMoved(Exception):
    """Another writer appended to the audit chain between our read of its head and our update."""


class OpsStore(Database):
    """Everything the store keeps that is not a time series. See the module docstring."""

    # -- events ---------------------------------------------------------------------------------------------------

    def add_event(
        self, kind: str, target: str, message: str, details: dict | None = None, ts: float | None = None
    ) -> int:
        row = {
            "ts": time.time() if ts is None else float(ts),
            "kind": kind,
            "target": target,
            "message": message,
            "details": json.dumps(details or {}, default=str),
        }
        with self._engine.begin() as conn:
            return _new_id(conn.execute(event_table.insert().values(row)))

    def events(self, start: float, end: float, kind: str | None = None, target: str | None = None) -> list[Event]:
        e = event_table.c
        stmt = select(event_table).where(e.ts >= start, e.ts <= end).order_by(e.ts, e.id)
        if kind is not None:
            stmt = stmt.where(e.kind == kind)
        if target is not None:
            stmt = stmt.where(e.target == target)
        with self._engine.connect() as conn:
            return [
                Event(int(r.id), float(r.ts), r.kind, r.target, r.message, json.loads(r.details))
                for r in conn.execute(stmt)
            ]

    # -- action progress --------------------------------------------------------------------------------------------

    def add_progress(self, op_id: str, target: str, message: str, details: dict | None = None,
                     ts: float | None = None) -> int:
        """One step of a running action (actions/audit.py)."""
        row = {
            "op_id": op_id,
            "ts": time.time() if ts is None else float(ts),
            "target": target,
            "message": message,
            "details": json.dumps(details or {}, default=str),
        }
        with self._engine.begin() as conn:
            return _new_id(conn.execute(progress_table.insert().values(row)))

    def progress(self, op_id: str, since: float | None = None) -> list[Progress]:
        """The steps of one operation, oldest first (since `since` when given)."""
        p = progress_table.c
        stmt = select(progress_table).where(p.op_id == op_id).order_by(p.ts, p.id)
        if since is not None:
            stmt = stmt.where(p.ts >= since)
        with self._engine.connect() as conn:
            return [
                Progress(int(r.id), r.op_id, float(r.ts), r.target, r.message, json.loads(r.details))
                for r in conn.execute(stmt)
            ]

    # -- replicas registry ----------------------------------------------------------------------------------------

    def upsert_replica(self, rec: ReplicaRecord) -> None:
        row = rec._asdict()
        stmt = self._insert(replica_table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["service", "instance_id"],
            set_={k: stmt.excluded[k] for k in row if k not in ("service", "instance_id")},
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)

    def remove_replica(self, service: str, instance_id: str) -> bool:
        r = replica_table.c
        with self._engine.begin() as conn:
            return (
                conn.execute(delete(replica_table).where(r.service == service, r.instance_id == instance_id)).rowcount
                > 0
            )

    def replicas(self, service: str | None = None) -> list[ReplicaRecord]:
        r = replica_table.c
        stmt = select(replica_table).order_by(r.service, r.instance_id)
        if service is not None:
            stmt = stmt.where(r.service == service)
        with self._engine.connect() as conn:
            return [
                ReplicaRecord(
                    row.service,
                    row.instance_id,
                    row.backend,
                    row.host,
                    int(row.port),
                    None if row.pid is None else int(row.pid),
                    row.state,
                    float(row.started_at),
                    row.ref,
                )
                for row in conn.execute(stmt)
            ]

    # -- audit (append-only: there is deliberately no update or delete) --------------------------------------------

    def append_audit(self, entry: AuditEntry) -> int:
        """Append one row, chained to the previous one (core/audit_chain.py).

        The head is advanced by compare-and-set in the same transaction as the insert, so two writers (two
        processes) never chain to the same row: the loser sees 0 rows updated (or a busy database) and retries.
        """
        row = entry._asdict()
        row.pop("id")
        for key in ("params", "before", "after"):
            row[key] = json.dumps(row[key] or {}, default=str, sort_keys=True)
        row["ts"], row["duration_s"] = float(row["ts"]), float(row["duration_s"])
        head_id = audit_head_table.c.id == 1
        for attempt in range(50):
            try:
                with self._engine.begin() as conn:
                    head = conn.execute(select(audit_head_table.c.hash).where(head_id)).scalar()
                    previous = head or audit_chain.GENESIS
                    new_hash = audit_chain.row_hash(previous, row)
                    if head is None:
                        conn.execute(self._insert(audit_head_table).values(id=1, hash=new_hash)
                                     .on_conflict_do_nothing())
                        advanced = conn.execute(select(audit_head_table.c.hash).where(head_id)).scalar() == new_hash
                    else:
                        moved = conn.execute(audit_head_table.update().where(
                            head_id, audit_head_table.c.hash == previous).values(hash=new_hash))
                        advanced = moved.rowcount == 1
                    if not advanced:
                        raise _ChainMoved  # leaves the block: the transaction rolls back
                    values = {**row, "prev_hash": previous, "row_hash": new_hash}
                    return _new_id(conn.execute(audit_table.insert().values(values)))
            except _ChainMoved:
                pass
            except DBAPIError:  # SQLite: another writer got in between our read and write; read again
                if attempt == 49:
                    raise
            time.sleep(0.01 * (attempt % 5 + 1))
        raise RuntimeError("could not append to the audit chain: too much contention")

    def audit_chain(self) -> audit_chain.ChainReport:
        """Check the audit hash chain (every row, oldest first) against the stored head."""
        with self._engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(select(audit_table).order_by(audit_table.c.id))]
            head = conn.execute(select(audit_head_table.c.hash).where(audit_head_table.c.id == 1)).scalar()
        for row in rows:
            row["ts"], row["duration_s"] = float(row["ts"]), float(row["duration_s"])
        return audit_chain.verify_rows(rows, head)

    def audit(
        self,
        start: float | None = None,
        end: float | None = None,
        action: str | None = None,
        who: str | None = None,
        op_id: str | None = None,
    ) -> list[AuditEntry]:
        a = audit_table.c
        stmt = select(audit_table).order_by(a.ts, a.id)
        if start is not None:
            stmt = stmt.where(a.ts >= start)
        if end is not None:
            stmt = stmt.where(a.ts <= end)
        if action is not None:
            stmt = stmt.where(a.action == action)
        if who is not None:
            stmt = stmt.where(a.who == who)
        if op_id is not None:
            stmt = stmt.where(a.op_id == op_id)
        with self._engine.connect() as conn:
            return [
                AuditEntry(
                    int(r.id),
                    float(r.ts),
                    r.op_id,
                    r.who,
                    r.role,
                    r.action,
                    json.loads(r.params),
                    json.loads(r.before),
                    json.loads(r.after),
                    r.result,
                    r.error,
                    float(r.duration_s),
                )
                for r in conn.execute(stmt)
            ]

    # -- action locks ---------------------------------------------------------------------------------------------

    def acquire_lock(
        self, service: str, action: str, who: str, op_id: str, ttl_s: float, now: float | None = None
    ) -> tuple[bool, dict]:
        """Take the per-service action lock; (True, our lock) or (False, the current holder).

        One atomic statement, so two processes racing cannot both win: INSERT, and on conflict take the row over
        only when it has expired (or is already ours, which refreshes it).
        """
        now = time.time() if now is None else now
        row = {
            "service": service,
            "action": action,
            "who": who,
            "op_id": op_id,
            "acquired_at": now,
            "expires_at": now + ttl_s,
        }
        lk = action_lock_table.c
        stmt = self._insert(action_lock_table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["service"],
            set_={k: stmt.excluded[k] for k in row if k != "service"},
            where=(lk.expires_at <= now) | (lk.op_id == op_id),
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)
            # read back inside the same transaction: whoever holds the row now is the winner
            holder = conn.execute(select(action_lock_table).where(lk.service == service)).mappings().one()
        holder_dict = dict(holder)
        return holder_dict["op_id"] == op_id, holder_dict

    def release_lock(self, service: str, op_id: str) -> bool:
        """Release the lock if `op_id` holds it; a lock someone else took over after expiry is left alone."""
        lk = action_lock_table.c
        with self._engine.begin() as conn:
            return conn.execute(delete(action_lock_table).where(lk.service == service, lk.op_id == op_id)).rowcount > 0

    def locks(self) -> list[dict]:
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(action_lock_table)).mappings()]

    # -- facts (scorecard results) --------------------------------------------------------------------------------

    def add_fact(self, f: Fact) -> int:
        row = f._asdict()
        row.pop("id")
        row["evidence"] = json.dumps(row["evidence"] or {}, default=str, sort_keys=True)
        with self._engine.begin() as conn:
            return _new_id(conn.execute(fact_table.insert().values(row)))

    def facts(self, run_id: str | None = None, rule: str | None = None) -> list[Fact]:
        fc = fact_table.c
        stmt = select(fact_table).order_by(fc.ts, fc.id)
        if run_id is not None:
            stmt = stmt.where(fc.run_id == run_id)
        if rule is not None:
            stmt = stmt.where(fc.rule == rule)
        with self._engine.connect() as conn:
            return [
                Fact(
                    int(r.id),
                    r.run_id,
                    r.rule,
                    r.level,
                    r.target,
                    float(r.ts),
                    r.status,
                    r.observed,
                    json.loads(r.evidence),
                )
                for r in conn.execute(stmt)
            ]

    # -- kv -------------------------------------------------------------------------------------------------------

    def put_kv(self, key: str, value: dict, now: float | None = None) -> None:
        self._put_value(key, value, now)

    def delete_kv(self, key: str) -> bool:
        """Remove `key`; False when it was not there."""
        with self._engine.begin() as conn:
            return bool(conn.execute(kv_table.delete().where(kv_table.c.key == key)).rowcount)

    def get_kv(self, key: str) -> dict | None:
        with self._engine.connect() as conn:
            value = conn.execute(select(kv_table.c.value).where(kv_table.c.key == key)).scalar()
        return None if value is None else json.loads(value)


def _new_id(result: CursorResult[Any]) -> int:
    """The id the database gave the row just inserted."""
    key = result.inserted_primary_key
    assert key is not None  # an INSERT of one row into a table with an autoincrement key always has one
    return int(key[0])
