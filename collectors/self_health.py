"""The collector's own health: samples that cannot be written are kept, and a heartbeat file says how it goes.

When the store refuses a write (read-only file, full disk, Postgres store unreachable), the batch goes to a
bounded in-memory backlog and is written, oldest first, as soon as a write succeeds again. When the backlog is
full the oldest samples are dropped and counted. Every flush also rewrites a small JSON heartbeat file under the
state directory, outside the store, so `fleetdeck status` and the dashboard can tell "the store is failing" from
"the collector is gone" even when the store itself cannot be read or written (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.heartbeat import health_path
from core.redact import redact
from core.samples import Sample
from core.store import TimeSeries

log = logging.getLogger(__name__)

# ~ 10 minutes of a 100-replica fleet's samples; a Sample is a small tuple (a few hundred bytes)
MAX_BACKLOG_SAMPLES = 200_000
WRITE_CHUNK = 20_000
ERROR_TEXT_LIMIT = 500


class BufferedWriter:
    """Writes batches to the store through a bounded backlog, and reports on itself in a heartbeat file."""

    def __init__(self, store: TimeSeries, state_dir: Path | None, kind: str,
                 max_backlog: int = MAX_BACKLOG_SAMPLES) -> None:
        self.store = store
        self.path = health_path(state_dir) if state_dir is not None else None
        self.kind = kind  # embedded (inside the dashboard) | standalone (`fleetdeck collect`)
        self.max_backlog = max_backlog
        self.backlog: deque[Sample] = deque()
        self.dropped_total = 0
        self.written_total = 0
        self.last_write_ok_ts: float | None = None
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.last_batch_ts: float | None = None
        self.started_at = time.time()

    def write(self, batch: Sequence[Sample]) -> int:
        """Queue `batch` behind what is waiting and write as much as the store takes; the number written."""
        if batch:
            self.last_batch_ts = time.time()
        self.backlog.extend(batch)
        overflow = len(self.backlog) - self.max_backlog
        if overflow > 0:
            for _ in range(overflow):
                self.backlog.popleft()
            self.dropped_total += overflow
            log.error("store backlog full: dropped the %d oldest samples (%d dropped in all)",
                      overflow, self.dropped_total)
        written = 0
        while self.backlog:
            chunk = [self.backlog[i] for i in range(min(WRITE_CHUNK, len(self.backlog)))]
            try:
                self.store.write_samples(chunk)
            except Exception as error:  # the store's problem must never stop collection
                # shown on the dashboard and written to the heartbeat file: no password (core/redact.py)
                self.last_error = redact(f"{type(error).__name__}: {error}")[:ERROR_TEXT_LIMIT]
                self.last_error_ts = time.time()
                log.error("writing %d samples failed, %d kept for later: %s",
                          len(chunk), len(self.backlog), self.last_error)
                break
            for _ in range(len(chunk)):
                self.backlog.popleft()
            written += len(chunk)
            self.written_total += len(chunk)
            self.last_write_ok_ts = time.time()
            if self.last_error is not None and not self.backlog:
                log.warning("store writable again; the backlog is written")
                self.last_error = None
        self.heartbeat()
        return written

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "kind": self.kind,
            "ts": time.time(),
            "started_at": self.started_at,
            "last_batch_ts": self.last_batch_ts,
            "last_write_ok_ts": self.last_write_ok_ts,
            "last_error": self.last_error,
            "last_error_ts": self.last_error_ts,
            "buffered": len(self.backlog),
            "dropped_total": self.dropped_total,
            "written_total": self.written_total,
            "max_backlog": self.max_backlog,
        }

    def heartbeat(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):  # a full disk must not stop collection either
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.new")
            tmp.write_text(json.dumps(self.snapshot()))
            os.replace(tmp, self.path)
