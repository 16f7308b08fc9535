"""BullMQ's own Lua scripts, run from fleetdeck with every call timed; and the queue references of the CLI/UI.

The queue actions (actions/queue_ops.py) change queues only through the Lua scripts the Python ``bullmq`` package
ships (``bullmq/commands/*.lua``, the same scripts Node BullMQ v6 runs), so Node and Python workers see exactly
the state BullMQ itself would leave: markers, events, parent dependencies, priority counters. The scripts are
read from the installed package (pinned in requirements.txt) and run with EVALSHA (loaded once per connection).

Every call goes through :class:`QueueClient`, which measures it: the actions report the longest single Redis call
(docs/queues.md: no call may block Redis for more than a few milliseconds, so work is batched).
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.config import FleetConfig, RedisConfig

CLIENT_NAME = "fleetdeck-queues"
# found without importing bullmq (its import pulls in its whole asyncio stack; the CLI only needs the files)
SCRIPTS_DIR = Path(importlib.util.find_spec("bullmq").origin or "bullmq").resolve().parent / "commands"  # type: ignore[union-attr]
# name -> file in bullmq/commands (the number is the script's KEYS count)
SCRIPT_FILES = {
    "moveJobsToWait": "moveJobsToWait-8.lua",
    "reprocessJob": "reprocessJob-9.lua",
    "promote": "promote-9.lua",
    "removeJob": "removeJob-2.lua",
    "pause": "pause-7.lua",
    "cleanJobsInSet": "cleanJobsInSet-3.lua",
    "obliterate": "obliterate-2.lua",
}
# Job states as BullMQ names them, with their key suffix and kind.
LIST_STATES = {"waiting": "wait", "active": "active", "paused": "paused"}
ZSET_STATES = {
    "delayed": "delayed",
    "prioritized": "prioritized",
    "waiting-children": "waiting-children",
    "completed": "completed",
    "failed": "failed",
}
STATES = ("waiting", "active", "delayed", "prioritized", "waiting-children", "completed", "failed", "paused")


class QueueRef(NamedTuple):
    """One queue on one configured Redis: ``<redis>/<prefix>:<queue>`` (the collector's target name)."""

    redis_name: str
    url: str
    prefix: str
    queue: str

    @property
    def name(self) -> str:
        return f"{self.redis_name}/{self.prefix}:{self.queue}"

    @property
    def base(self) -> str:
        """The key prefix every key of this queue starts with (``bull:emails:``)."""
        return f"{self.prefix}:{self.queue}:"

    def key(self, suffix: str) -> str:
        return self.base + suffix


class UnknownQueue(ValueError):
    """A queue reference that names no configured Redis or prefix."""


def parse_ref(config: FleetConfig, text: str) -> QueueRef:
    """``emails``, ``bull:emails``, ``main/emails`` or ``main/bull:emails`` → a QueueRef.

    Without a Redis name the first configured Redis is meant; without a prefix, that Redis's first prefix. A
    queue name may itself contain ':' — only a leading known prefix is split off.
    """
    if not config.redis:
        raise UnknownQueue("no redis is configured (redis: in the config)")
    redis_cfg: RedisConfig = config.redis[0]
    rest = text.strip()
    head, slash, tail = rest.partition("/")
    if slash:
        matches = [r for r in config.redis if r.name == head]
        if not matches:
            known = ", ".join(r.name for r in config.redis)
            raise UnknownQueue(f"unknown redis '{head}'; known: {known}")
        redis_cfg, rest = matches[0], tail
    prefix = redis_cfg.queue_prefixes[0] if redis_cfg.queue_prefixes else "bull"
    for candidate in redis_cfg.queue_prefixes:
        if rest.startswith(candidate + ":") and len(rest) > len(candidate) + 1:
            prefix, rest = candidate, rest[len(candidate) + 1 :]
            break
    if not rest or len(rest) > 512:
        raise UnknownQueue("a queue name is required (1..512 characters)")
    return QueueRef(redis_cfg.name, redis_cfg.url, prefix, rest)


# BullMQ's drain script empties wait, paused, prioritized (and delayed) in ONE call: on a big queue that blocks
# Redis for as long as it takes. drainBatch is drain-5.lua's own functions (removeJob & co., verbatim from the
# installed package) with a bounded main: at most ARGV[2] jobs of one list or zset per call, job-scheduler runs
# kept, exactly as drain keeps them. KEYS[1] the list/zset, KEYS[2] the job schedulers zset ('repeat');
# ARGV[1] the queue key prefix, ARGV[2] the batch size, ARGV[3] "list" | "zset". Returns {taken, removed}.
_DRAIN_MAIN_MARKER = b"-- We must not remove delayed jobs if they are associated to a job scheduler."
_DRAIN_BATCH_MAIN = b"""
-- fleetdeck: bounded main (docs/queues.md)
local max = tonumber(ARGV[2])
local scheduledJobs = {}
local jobSchedulers = rcall("ZRANGE", KEYS[2], 0, -1, "WITHSCORES")
for i = 1, #jobSchedulers, 2 do
  scheduledJobs["repeat:" .. jobSchedulers[i] .. ":" .. jobSchedulers[i + 1]] = true
end
local items
if ARGV[3] == "list" then
  items = rcall("LRANGE", KEYS[1], -max, -1)
else
  items = rcall("ZRANGE", KEYS[1], 0, max - 1)
end
local jobs, kept = {}, {}
for _, id in ipairs(items) do
  if scheduledJobs[id] then kept[#kept + 1] = id else jobs[#jobs + 1] = id end
end
removeJobs(jobs, true, queueBaseKey, max)
if ARGV[3] == "list" then
  rcall("LTRIM", KEYS[1], 0, -(#items) - 1)
  for _, id in ipairs(kept) do rcall("RPUSH", KEYS[1], id) end
elseif #jobs > 0 then
  for from, to in batches(#jobs, 7000) do rcall("ZREM", KEYS[1], unpack(jobs, from, to)) end
end
return {#items, #jobs}
"""


def _drain_batch_source() -> bytes:
    source = (SCRIPTS_DIR / "drain-5.lua").read_bytes()
    head, marker, _main = source.partition(_DRAIN_MAIN_MARKER)
    if not marker:  # a bullmq upgrade changed drain-5.lua: refuse rather than guess
        raise RuntimeError("bullmq's drain-5.lua changed: the batched drain must be re-derived from it")
    return head + _DRAIN_BATCH_MAIN


def _load_script(name: str) -> tuple[bytes, str]:
    source = _drain_batch_source() if name == "drainBatch" else (SCRIPTS_DIR / SCRIPT_FILES[name]).read_bytes()
    return source, hashlib.sha1(source).hexdigest()


class Batcher:
    """Batch sizes that keep every Redis call near ``target_ms``: scripts cost very different amounts per job
    (moving a job is a few µs, deleting one with its keys tens of µs), and a busy machine costs more."""

    def __init__(self, max_size: int, target_ms: float = 3.0, start: int = 100) -> None:
        self.max_size = max(1, max_size)
        self.target_ms = target_ms
        self.size = max(1, min(start, self.max_size))

    def observe(self, jobs: int, elapsed_ms: float) -> None:
        if jobs <= 0:
            return
        per_job = max(elapsed_ms, 0.05) / jobs
        wanted = int(self.target_ms / per_job)
        # grow at most 4x per step (one cheap call must not license a huge one), shrink at once
        self.size = max(1, min(self.max_size, wanted, self.size * 4))


@dataclass
class CallStats:
    """How many Redis calls an operation made and the longest one (client-side wall time, an upper bound)."""

    calls: int = 0
    max_ms: float = 0.0
    max_what: str = ""
    total_ms: float = 0.0
    durations: list[float] = field(default_factory=list)  # the first 100,000 calls, for percentiles

    def add(self, what: str, elapsed_ms: float) -> None:
        self.calls += 1
        self.total_ms += elapsed_ms
        if len(self.durations) < 100_000:
            self.durations.append(elapsed_ms)
        if elapsed_ms > self.max_ms:
            self.max_ms, self.max_what = elapsed_ms, what

    def percentile(self, fraction: float) -> float:
        if not self.durations:
            return 0.0
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "max_call_ms": round(self.max_ms, 3), "max_call": self.max_what,
                "p50_call_ms": round(self.percentile(0.5), 3), "p99_call_ms": round(self.percentile(0.99), 3)}


@dataclass
class QueueClient:
    """A synchronous Redis connection for one queue, with BullMQ's scripts and per-call timing."""

    ref: QueueRef
    timeout_s: float = 5.0
    stats: CallStats = field(default_factory=CallStats)
    _redis: redis.Redis | None = None
    _shas: dict[str, str] = field(default_factory=dict)

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.ref.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                client_name=CLIENT_NAME,
                single_connection_client=True,
            )
            self._redis.ping()  # connect now, so the first timed call measures Redis, not the handshake
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> QueueClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def timed(self, what: str, command: str, *args: Any) -> Any:
        """One Redis command, timed."""
        started = time.perf_counter()
        try:
            return self.redis.execute_command(command, *args)
        finally:
            self.stats.add(what, (time.perf_counter() - started) * 1000.0)

    def pipeline(self, what: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one round trip (each is its own short Redis call; timed as a whole)."""
        started = time.perf_counter()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute(raise_on_error=False)
        finally:
            self.stats.add(what, (time.perf_counter() - started) * 1000.0)

    def sha(self, name: str) -> str:
        """The SHA of a BullMQ script, loaded into this Redis on first use."""
        cached = self._shas.get(name)
        if cached is None:
            source, cached = _load_script(name)
            self.redis.script_load(source)
            self._shas[name] = cached
        return cached

    def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA a BullMQ script (reloaded once when Redis was flushed or restarted)."""
        sha = self.sha(name)
        try:
            return self.timed(name, "EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._shas.pop(name, None)
            return self.timed(name, "EVALSHA", self.sha(name), len(keys), *keys, *args)

    def script_then(self, name: str, keys: list[str], args: list[Any], *then: tuple[Any, ...]) -> list[Any]:
        """A BullMQ script and a few O(1) reads after it (e.g. the ZCARD that counts its progress), one round
        trip; the replies in order, the script's error raised."""
        for attempt in (1, 2):
            replies = self.pipeline(name, [("EVALSHA", self.sha(name), len(keys), *keys, *args), *then])
            if isinstance(replies[0], redis.exceptions.NoScriptError) and attempt == 1:
                self._shas.pop(name, None)
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        raise AssertionError("unreachable")

    def lua(self, what: str, source: bytes, keys: list[str], args: list[Any]) -> Any:
        """Run one of fleetdeck's own read-only scripts (bounded reads; see collectors/bullmq_jobs.py)."""
        sha = self._shas.get(what)
        if sha is None:
            sha = hashlib.sha1(source).hexdigest()
            self.redis.script_load(source)
            self._shas[what] = sha
        try:
            return self.timed(what, "EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.redis.script_load(source)
            return self.timed(what, "EVALSHA", sha, len(keys), *keys, *args)


def now_ms() -> int:
    return int(time.time() * 1000)
