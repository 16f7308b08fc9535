"""Browsing BullMQ queues: job lists per state, one job in full, failure reasons, per-minute throughput.

Reads only, and every read is bounded, because a queue may hold 100,000 failed jobs and every string in it comes
from someone else's code:

- a job list page reads one range (``LRANGE``/``ZREVRANGE`` of ``limit`` ids, newest first as BullMQ's
  ``getJobs(asc=false)`` orders them) and the page's job fields through one small read-only Lua script that
  returns each string cut to a size bound (Redis has no substring for hash fields, so without a script a
  multi-megabyte ``failedReason`` would cross the wire whole);
- a search by job name or id walks the state in chunks (at most ``SCAN_CHUNK`` ids, sized so each Redis call
  stays near 3 ms: collectors/bullmq_scripts.py ``Batcher``) and stops after ``scan_budget`` jobs, saying how
  many it looked at;
- the job view returns every field cut to ``max_bytes`` with its full size (the UI notes the truncation), the
  last log lines and a bounded sample of the job's children.

Key layout and field names: docs/queues.md.

Size (~565 lines, above the ~500 the codebase aims for): the queue browser's whole read API (counts, job pages,
search, one job, failure reasons, per-minute throughput) over the same bounded-read helpers (``_text``,
``_int``, ``state_key``, the chunked walk); one page of the dashboard and the queue actions read it as one module.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collectors.bullmq_scripts import LIST_STATES, STATES, ZSET_STATES, Batcher, QueueClient, QueueRef
from core.config import FleetConfig

SCAN_CHUNK = 1000  # at most this many ids per Redis call when searching or grouping failure reasons
FIELD_BYTES = 200  # per string field in a job list row
VIEW_BYTES = 64 * 1024  # per field in the job view
LOG_LINES = 50
CHILDREN = 50

# One list page: ARGV[1] the queue's key prefix, ARGV[2] the byte bound, ARGV[3..] job ids. Per job: exists flag,
# name, timestamp, processedOn, finishedOn, attemptsMade, attempts allowed (from opts), progress, the first line
# of failedReason — strings cut to the bound.
PAGE_LUA = b"""
local prefix, bound = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local f = redis.call("HMGET", prefix .. ARGV[i], "name", "timestamp", "processedOn", "finishedOn", "atm",
                       "attemptsMade", "opts", "progress", "failedReason")
  local row = {ARGV[i], f[1] and 1 or 0}
  row[3] = f[1] and string.sub(f[1], 1, bound) or ""
  row[4] = f[2] or ""
  row[5] = f[3] or ""
  row[6] = f[4] or ""
  row[7] = f[5] or f[6] or ""
  local attempts = ""
  if f[7] then attempts = string.match(string.sub(f[7], 1, 4096), '"attempts":%s*(%d+)') or "" end
  row[8] = attempts
  row[9] = f[8] and string.sub(f[8], 1, 64) or ""
  local reason = ""
  if f[9] then
    reason = string.sub(f[9], 1, bound * 4)
    local nl = string.find(reason, "\\n", 1, true)
    if nl then reason = string.sub(reason, 1, nl - 1) end
    reason = string.sub(reason, 1, bound)
  end
  row[10] = reason
  out[#out + 1] = row
end
return out
"""

# One chunk of a state, newest first: KEYS[1] the state key; ARGV[1] prefix, ARGV[2] "list"|"zset", ARGV[3] start,
# ARGV[4] stop, ARGV[5] "search"|"reasons", ARGV[6] lower-case needle, ARGV[7] byte bound.
# search → {scanned, {ids whose id or name contains the needle}}; reasons → {scanned, {id, first line, ...}}.
CHUNK_LUA = b"""
local ids
if ARGV[2] == "list" then
  ids = redis.call("LRANGE", KEYS[1], ARGV[3], ARGV[4])
else
  ids = redis.call("ZREVRANGE", KEYS[1], ARGV[3], ARGV[4])
end
local prefix, needle, bound = ARGV[1], ARGV[6], tonumber(ARGV[7])
local out = {}
if ARGV[5] == "search" then
  for _, id in ipairs(ids) do
    if string.find(string.lower(id), needle, 1, true) then
      out[#out + 1] = id
    else
      local name = redis.call("HGET", prefix .. id, "name")
      if name and string.find(string.lower(string.sub(name, 1, bound)), needle, 1, true) then
        out[#out + 1] = id
      end
    end
  end
else
  for _, id in ipairs(ids) do
    local reason = redis.call("HGET", prefix .. id, "failedReason")
    if reason then
      reason = string.sub(reason, 1, bound * 4)
      local nl = string.find(reason, "\\n", 1, true)
      if nl then reason = string.sub(reason, 1, nl - 1) end
      out[#out + 1] = id
      out[#out + 1] = string.sub(reason, 1, bound)
    end
  end
end
return {#ids, out}
"""

VIEW_FIELDS = ("name", "data", "opts", "timestamp", "delay", "priority", "processedOn", "finishedOn", "atm",
               "attemptsMade", "ats", "stc", "pb", "failedReason", "stacktrace", "returnvalue", "progress",
               "parentKey", "parent", "rjk", "deid")  # fmt: skip

# One job: KEYS[1] the job key; ARGV[1] byte bound, ARGV[2] log lines, ARGV[3] children, ARGV[4..] fields.
# → nil when the job does not exist, else {{field, full size or -1, cut value}..., log count, {last log lines},
#   {pending children}, {processed children}, {failed children}, {ignored/unsuccessful children}}.
VIEW_LUA = b"""
if redis.call("EXISTS", KEYS[1]) == 0 then return false end
local bound, lines, kids = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local names = {}
for i = 4, #ARGV do names[#names + 1] = ARGV[i] end
local values = redis.call("HMGET", KEYS[1], unpack(names))
local fields = {}
for i, name in ipairs(names) do
  local v = values[i]
  if v then
    fields[#fields + 1] = {name, #v, string.sub(v, 1, bound)}
  else
    fields[#fields + 1] = {name, -1, ""}
  end
end
local logs_key = KEYS[1] .. ":logs"
local log_count = redis.call("LLEN", logs_key)
local logs = {}
for _, line in ipairs(redis.call("LRANGE", logs_key, -lines, -1)) do logs[#logs + 1] = string.sub(line, 1, 1024) end
local function sample_set(key)
  if redis.call("TYPE", key).ok ~= "set" then return {} end
  return redis.call("SSCAN", key, 0, "COUNT", kids)[2]
end
local function sample_hash(key)
  if redis.call("TYPE", key).ok ~= "hash" then return {} end
  local pairs_ = redis.call("HSCAN", key, 0, "COUNT", kids)[2]
  local out = {}
  for i = 1, #pairs_, 2 do out[#out + 1] = pairs_[i] end
  return out
end
local function sample_zset(key)
  if redis.call("TYPE", key).ok ~= "zset" then return {} end
  return redis.call("ZRANGE", key, 0, kids - 1)
end
return {fields, log_count, logs, sample_set(KEYS[1] .. ":dependencies"), sample_hash(KEYS[1] .. ":processed"),
        sample_hash(KEYS[1] .. ":failed"), sample_zset(KEYS[1] .. ":unsuccessful")}
"""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(float(_text(value))) if _text(value) else None
    except ValueError:
        return None


def state_key(ref: QueueRef, state: str) -> tuple[str, str]:
    """(key, "list"|"zset") of a state; ValueError for an unknown state."""
    if state in LIST_STATES:
        return ref.key(LIST_STATES[state]), "list"
    if state in ZSET_STATES:
        return ref.key(ZSET_STATES[state]), "zset"
    raise ValueError(f"unknown job state '{state}'; known: {', '.join(STATES)}")


# ------------------------------------------------------------------------------------------------ queues


def discover(config: FleetConfig, timeout_s: float = 5.0) -> list[QueueRef]:
    """Every queue of every configured Redis: the configured names plus ``SCAN MATCH <prefix>:*:meta``."""
    found: set[QueueRef] = set()
    for cfg in config.redis:
        prefixes = cfg.queue_prefixes or ["bull"]
        found.update(QueueRef(cfg.name, cfg.url, prefixes[0], queue) for queue in cfg.queues)
        with QueueClient(QueueRef(cfg.name, cfg.url, prefixes[0], ""), timeout_s) as client:
            for prefix in prefixes:
                for key in client.redis.scan_iter(match=f"{prefix}:*:meta", count=1000):
                    queue = _text(key)[len(prefix) + 1 : -len(":meta")]
                    if queue and not queue.endswith(":metrics"):
                        found.add(QueueRef(cfg.name, cfg.url, prefix, queue))
    return sorted(found)


@dataclass
class QueueCounts:
    """What ``getJobCounts`` would say, read with O(1) commands (see collectors/bullmq.py), plus the pause flag."""

    waiting: int = 0
    active: int = 0
    delayed: int = 0
    prioritized: int = 0
    waiting_children: int = 0
    completed: int = 0
    failed: int = 0
    paused_list: int = 0  # the v5 `paused` list (jobs of a paused v5 queue); v6 keeps them in `wait`
    paused: bool = False
    oldest_waiting_age_s: float | None = None
    metrics_completed: int | None = None
    metrics_failed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting, "active": self.active, "delayed": self.delayed,
            "prioritized": self.prioritized, "waiting-children": self.waiting_children,
            "completed": self.completed, "failed": self.failed, "paused": self.paused_list,
            "is_paused": self.paused,
        }  # fmt: skip

    def of(self, state: str) -> int:
        return int(self.as_dict()[state])


def _is_marker(value: Any) -> bool:
    return isinstance(value, bytes) and value.startswith(b"0:")


def counts(client: QueueClient) -> QueueCounts:
    ref = client.ref
    replies = client.pipeline("counts", [
        ("LLEN", ref.key("wait")), ("LLEN", ref.key("paused")), ("LLEN", ref.key("active")),
        ("ZCARD", ref.key("delayed")), ("ZCARD", ref.key("prioritized")), ("ZCARD", ref.key("waiting-children")),
        ("ZCARD", ref.key("completed")), ("ZCARD", ref.key("failed")), ("HEXISTS", ref.key("meta"), "paused"),
        ("LINDEX", ref.key("wait"), -1), ("LINDEX", ref.key("paused"), -1),
        ("HGET", ref.key("metrics:completed"), "count"), ("HGET", ref.key("metrics:failed"), "count"),
    ])  # fmt: skip
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    wait_len, paused_len, wait_tail, paused_tail = replies[0], replies[1], replies[9], replies[10]
    if wait_len and _is_marker(wait_tail):  # legacy v5 marker: getJobCounts does not count it
        wait_len, wait_tail = wait_len - 1, None
    if paused_len and _is_marker(paused_tail):
        paused_len, paused_tail = paused_len - 1, None
    oldest = wait_tail if wait_tail is not None else paused_tail
    age = None
    if oldest is not None:
        stamp = client.timed("oldest", "HGET", ref.base + _text(oldest), "timestamp")
        if stamp is not None and _int(stamp) is not None:
            age = max(0.0, time.time() - (_int(stamp) or 0) / 1000.0)
    return QueueCounts(
        waiting=wait_len, active=replies[2], delayed=replies[3], prioritized=replies[4],
        waiting_children=replies[5], completed=replies[6], failed=replies[7], paused_list=paused_len,
        paused=bool(replies[8]), oldest_waiting_age_s=age,
        metrics_completed=_int(replies[11]), metrics_failed=_int(replies[12]),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ job lists


class JobRow(NamedTuple):
    id: str
    name: str
    timestamp: int | None  # ms
    processed_on: int | None
    finished_on: int | None
    attempts_made: int
    attempts: int | None  # allowed (opts.attempts), None when unset (= 1)
    progress: str
    failed_reason: str  # first line, bounded
    exists: bool = True


@dataclass
class JobPage:
    state: str
    offset: int
    limit: int
    total: int  # jobs in the state (all of them, not only the matches of a search)
    rows: list[JobRow]
    search: str = ""
    scanned: int = 0  # jobs a search looked at
    search_complete: bool = True  # False when the search stopped at its budget before the end of the state
    has_more: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state, "offset": self.offset, "limit": self.limit, "total": self.total,
            "search": self.search, "scanned": self.scanned, "search_complete": self.search_complete,
            "has_more": self.has_more, "rows": [row._asdict() for row in self.rows],
        }  # fmt: skip


def _rows(client: QueueClient, ids: list[str]) -> list[JobRow]:
    if not ids:
        return []
    raw = client.lua("page", PAGE_LUA, [], [client.ref.base, FIELD_BYTES, *ids])
    rows = []
    for item in raw:
        job_id = _text(item[0])
        exists = bool(item[1])
        if not exists and job_id.startswith("0:"):
            continue  # a v5 marker in wait, not a job
        rows.append(JobRow(
            id=job_id, name=_text(item[2]), timestamp=_int(item[3]), processed_on=_int(item[4]),
            finished_on=_int(item[5]), attempts_made=_int(item[6]) or 0, attempts=_int(item[7]),
            progress=_text(item[8]), failed_reason=_text(item[9]), exists=exists,
        ))  # fmt: skip
    return rows


def _size(client: QueueClient, key: str, kind: str) -> int:
    return int(client.timed("size", "LLEN" if kind == "list" else "ZCARD", key))


def job_page(client: QueueClient, state: str, offset: int = 0, limit: int = 25, search: str = "",
             scan_budget: int = 20_000) -> JobPage:
    """One page of a state's jobs, newest first; with ``search``, the jobs whose id or name contains it."""
    offset, limit = max(0, int(offset)), max(1, min(int(limit), 500))
    key, kind = state_key(client.ref, state)
    total = _size(client, key, kind)
    needle = search.strip().lower()[:200]
    if not needle:
        command = "LRANGE" if kind == "list" else "ZREVRANGE"
        ids = [_text(i) for i in client.timed("range", command, key, offset, offset + limit - 1)]
        return JobPage(state, offset, limit, total, _rows(client, ids), has_more=offset + limit < total)
    matches: list[str] = []
    scanned = 0
    start = 0
    wanted = offset + limit + 1  # one more than the page: tells whether there is a next page
    batcher = Batcher(SCAN_CHUNK)
    while start < total and scanned < scan_budget and len(matches) < wanted:
        stop = start + min(batcher.size, scan_budget - scanned) - 1
        began = time.perf_counter()
        seen, found = client.lua("chunk", CHUNK_LUA, [key],
                                 [client.ref.base, kind, start, stop, "search", needle, FIELD_BYTES])
        batcher.observe(int(seen), (time.perf_counter() - began) * 1000)
        if not seen:
            break
        scanned += int(seen)
        matches.extend(_text(i) for i in found)
        start = stop + 1
    complete = start >= total or len(matches) >= wanted
    page_ids = matches[offset : offset + limit]
    return JobPage(state, offset, limit, total, _rows(client, page_ids), search=search, scanned=scanned,
                   search_complete=complete, has_more=len(matches) > offset + limit)


# ------------------------------------------------------------------------------------------------ one job


@dataclass
class FieldValue:
    text: str  # possibly cut to the bound
    size: int  # full size in bytes

    @property
    def truncated(self) -> bool:
        return self.size > len(self.text.encode())


@dataclass
class JobView:
    id: str
    state: str
    fields: dict[str, FieldValue]
    log_count: int
    logs: list[str]
    children_pending: list[str] = field(default_factory=list)
    children_processed: list[str] = field(default_factory=list)
    children_failed: list[str] = field(default_factory=list)
    children_ignored: list[str] = field(default_factory=list)

    def text(self, name: str) -> str:
        value = self.fields.get(name)
        return value.text if value else ""

    def number(self, name: str) -> int | None:
        return _int(self.text(name))

    @property
    def parent(self) -> str:
        """The parent job's key (``<prefix>:<queue>:<id>``) or ''."""
        return self.text("parentKey")

    def pretty(self, name: str) -> str:
        """A JSON field pretty-printed; as stored when it was cut or is not JSON."""
        value = self.fields.get(name)
        if value is None or value.size < 0:
            return ""
        if value.truncated:
            return value.text
        try:
            return json.dumps(json.loads(value.text), indent=2, ensure_ascii=False, sort_keys=True)
        except ValueError:
            return value.text

    def stacktrace(self) -> list[str]:
        """BullMQ stores the stack traces of every failed attempt as a JSON list; the latest is last."""
        value = self.fields.get("stacktrace")
        if value is None or value.size < 0:
            return []
        if not value.truncated:
            try:
                parsed = json.loads(value.text)
                if isinstance(parsed, list):
                    return [str(item) for item in parsed if item is not None]
            except ValueError:
                pass
        return [value.text]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state,
            "fields": {k: {"value": v.text, "size": v.size, "truncated": v.truncated}
                       for k, v in self.fields.items() if v.size >= 0},
            "log_count": self.log_count, "logs": self.logs,
            "children": {"pending": self.children_pending, "processed": self.children_processed,
                         "failed": self.children_failed, "ignored": self.children_ignored},
        }  # fmt: skip


def job_state(client: QueueClient, job_id: str) -> str:
    """Which state holds the job: ZSCORE in the sets, LPOS (bounded) in the lists; 'unknown' when none does."""
    ref = client.ref
    commands: list[tuple[Any, ...]] = [("ZSCORE", ref.key(suffix), job_id) for suffix in ZSET_STATES.values()]
    commands += [("LPOS", ref.key(suffix), job_id, "MAXLEN", 100_000) for suffix in LIST_STATES.values()]
    replies = client.pipeline("state", commands)
    for state, reply in zip([*ZSET_STATES, *LIST_STATES], replies, strict=True):
        if reply is not None and not isinstance(reply, Exception):
            return state
    return "unknown"


def job_view(client: QueueClient, job_id: str, max_bytes: int = VIEW_BYTES) -> JobView | None:
    """The job's fields (each cut to ``max_bytes``, with its size), last log lines and children; None if gone."""
    raw = client.lua("view", VIEW_LUA, [client.ref.base + job_id],
                     [max_bytes, LOG_LINES, CHILDREN, *VIEW_FIELDS])
    if not raw:
        return None
    fields = {
        _text(name): FieldValue(_text(value), int(size)) for name, size, value in raw[0]
    }
    if fields.get("atm") and fields["atm"].size < 0 and "attemptsMade" in fields:
        fields["atm"] = fields["attemptsMade"]  # older jobs spell it out
    return JobView(
        id=job_id, state=job_state(client, job_id), fields=fields, log_count=int(raw[1]),
        logs=[_text(line) for line in raw[2]],
        children_pending=[_text(k) for k in raw[3]], children_processed=[_text(k) for k in raw[4]],
        children_failed=[_text(k) for k in raw[5]], children_ignored=[_text(k) for k in raw[6]],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ failures


class FailureReason(NamedTuple):
    reason: str  # first line of failedReason, bounded
    count: int  # type: ignore[assignment]  # shadows tuple.count on purpose: the field reads best as `count`
    newest_id: str  # the newest failed job with this reason


@dataclass
class FailureReasons:
    reasons: list[FailureReason]
    scanned: int  # failed jobs looked at (the newest ones)
    total: int  # failed jobs in the queue

    @property
    def complete(self) -> bool:
        return self.scanned >= self.total


def failure_reasons(client: QueueClient, sample: int = 10_000, top: int = 20) -> FailureReasons:
    """The newest ``sample`` failed jobs grouped by the first line of their failedReason, most frequent first."""
    key = client.ref.key("failed")
    total = _size(client, key, "zset")
    grouped: Counter[str] = Counter()
    newest: dict[str, str] = {}
    scanned = 0
    for _start, seen, pairs in _reason_chunks(client, key, min(total, sample)):
        scanned += seen
        for index in range(0, len(pairs), 2):
            reason = _text(pairs[index + 1])
            grouped[reason] += 1
            newest.setdefault(reason, _text(pairs[index]))
    reasons = [FailureReason(reason, count, newest[reason]) for reason, count in grouped.most_common(top)]
    return FailureReasons(reasons, scanned, total)


def failed_ids_with_reason(client: QueueClient, reason: str) -> tuple[list[str], int]:
    """Every failed job whose failedReason's first line equals ``reason`` (bounded the same way): (ids, scanned).

    Walks the whole failed set, ``SCAN_CHUNK`` ids per call (each call short), newest first.
    """
    key = client.ref.key("failed")
    total = _size(client, key, "zset")
    wanted = reason[:FIELD_BYTES]
    ids: list[str] = []
    scanned = 0
    for _start, seen, pairs in _reason_chunks(client, key, total):
        scanned += seen
        ids.extend(_text(pairs[i]) for i in range(0, len(pairs), 2) if _text(pairs[i + 1]) == wanted)
    return ids, scanned


def _reason_chunks(client: QueueClient, key: str, count: int) -> Iterator[tuple[int, int, list[Any]]]:
    """(start, jobs seen, [id, first line, ...]) over the newest ``count`` failed jobs, chunk by chunk."""
    batcher = Batcher(SCAN_CHUNK)
    start = 0
    while start < count:
        stop = min(start + batcher.size, count) - 1
        began = time.perf_counter()
        seen, pairs = client.lua("chunk", CHUNK_LUA, [key],
                                 [client.ref.base, "zset", start, stop, "reasons", "", FIELD_BYTES])
        batcher.observe(int(seen), (time.perf_counter() - began) * 1000)
        if not seen:
            return
        yield start, int(seen), pairs
        start = stop + 1


# ------------------------------------------------------------------------------------------------ throughput


class MinutePoint(NamedTuple):
    ts: float  # the minute's end, seconds
    completed: int
    failed: int


def metrics_minutes(client: QueueClient, minutes: int = 60) -> list[MinutePoint] | None:
    """Per-minute completed/failed counts from BullMQ's metrics keys (kept when workers run with
    ``metrics.maxDataPoints``), oldest first; None when no worker records them.

    How workers keep them: ``count`` grows with every finished job; when a job finishes in a later minute than
    ``prevTS``, the jobs since ``prevCount`` are pushed at the head of the ``:data`` list as the minute(s) before,
    and ``prevTS``/``prevCount`` move on. So the current minute is ``count - prevCount`` and the list's head is
    the minute before ``prevTS``'s.
    """
    ref = client.ref
    commands: list[tuple[Any, ...]] = []
    for kind in ("completed", "failed"):
        commands.append(("HMGET", ref.key(f"metrics:{kind}"), "count", "prevCount", "prevTS"))
        commands.append(("LRANGE", ref.key(f"metrics:{kind}:data"), 0, minutes - 2))
    replies = client.pipeline("metrics", commands)
    if any(isinstance(r, Exception) for r in replies):
        return None
    by_minute: dict[float, list[int]] = {}
    seen = False
    for column, (head, data) in enumerate(((replies[0], replies[1]), (replies[2], replies[3]))):
        count, prev_count, prev_ts = (_int(v) for v in head)
        if prev_ts is None:
            continue
        seen = True
        anchor = (prev_ts // 60_000) * 60.0
        by_minute.setdefault(anchor, [0, 0])[column] += max(0, (count or 0) - (prev_count or 0))
        for index, value in enumerate(data):
            by_minute.setdefault(anchor - 60.0 * (index + 1), [0, 0])[column] += _int(value) or 0
    if not seen:
        return None
    newest = max(by_minute)
    return [MinutePoint(ts, *by_minute.get(ts, [0, 0]))
            for ts in (newest - 60.0 * i for i in range(minutes - 1, -1, -1)) if ts >= min(by_minute)]
