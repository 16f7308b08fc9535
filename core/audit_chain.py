"""The audit log's hash chain: every row stores the hash of the row before it, so an edit shows.

The database triggers already refuse UPDATE and DELETE on the audit table; the chain covers whoever gets past
them (dropping the triggers, editing the SQLite file): changing, removing or reordering any row breaks the chain
at that row, which `./fleetdeck audit verify` reports. The head hash is also kept in a one-row table, so cutting
rows off the end shows too. What the chain cannot stop is someone who rewrites the whole chain from the altered
row on: docs/security.md says how to anchor the head hash elsewhere for that.

A row's hash is SHA-256 over the previous row's hash and a canonical JSON of the row's content (ts, op id, who,
role, action, params, before, after, result, error, duration): the JSON texts exactly as stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

GENESIS = "0" * 64  # the "previous hash" of the first chained row
HASHED_FIELDS = ("ts", "op_id", "who", "role", "action", "params", "before", "after", "result", "error",
                 "duration_s")


def row_hash(previous: str, row: Mapping[str, Any]) -> str:
    """The hash of one audit row (its stored column values) chained to `previous`."""
    content = json.dumps([previous, *(row[name] for name in HASHED_FIELDS)], ensure_ascii=True,
                         separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


class ChainReport(NamedTuple):
    ok: bool
    rows: int  # rows checked (chained ones)
    legacy_rows: int  # rows written before the chain existed (no hash), all before the first chained row
    head: str  # the hash of the last row (what to anchor elsewhere)
    problems: list[str]  # one line per broken link, naming the row id

    def describe(self) -> str:
        if self.ok:
            legacy = f" ({self.legacy_rows} older row(s) from before the chain)" if self.legacy_rows else ""
            return f"audit chain intact: {self.rows} row(s){legacy}; head {self.head}"
        shown = self.problems[:20]
        more = f"\n... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        return "audit chain BROKEN:\n" + "\n".join(f"  {line}" for line in shown) + more


def verify_rows(rows: Iterable[Mapping[str, Any]], stored_head: str | None) -> ChainReport:
    """Check rows (ordered by id, with `id`, `prev_hash`, `row_hash` and the hashed columns) against the head."""
    problems: list[str] = []
    previous = GENESIS
    chained = legacy = 0
    started = False
    for row in rows:
        if row.get("row_hash") is None:
            if started:
                problems.append(f"row {row['id']}: has no hash but follows chained rows (inserted around the chain)")
            else:
                legacy += 1
            continue
        started = True
        chained += 1
        if row.get("prev_hash") != previous:
            problems.append(f"row {row['id']}: previous-hash link broken (a row before it was changed or removed)")
        if row_hash(str(row.get("prev_hash")), row) != row["row_hash"]:
            problems.append(f"row {row['id']}: content does not match its hash (the row was changed)")
        previous = str(row["row_hash"])
    if started and stored_head is not None and stored_head != previous:
        problems.append(f"the chain head is {stored_head[:16]}… but the last row hashes to {previous[:16]}…"
                        " (rows were removed from the end)")
    if not started and stored_head not in (None, GENESIS):
        problems.append("the chain head records rows, but no chained row is left (rows were removed)")
    return ChainReport(not problems, chained, legacy, previous, problems)
