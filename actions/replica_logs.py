"""One replica's log: the tail, optionally filtered by a search text — for the instance detail of the dashboard.

Local replicas write stdout/stderr to `<state_dir>/logs/<instance_id>.log` (actions/local.py); Docker replicas are
read with the container's own logs. Everything read is untrusted and bounded: at most `MAX_BYTES` from the end of
the file (or of the container's log), at most `MAX_LINE` characters per line, at most `MAX_LINES` lines shown.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from core.config import FleetConfig
    from core.store import Store

MAX_BYTES = 2 * 2**20  # how much of the end of a log is read, search included
MAX_LINES = 1000
MAX_LINE = 2000
MAX_SEARCH = 200


class LogView(NamedTuple):
    lines: list[str]
    source: str  # the file or container the lines come from, for the caption
    scanned_lines: int  # lines read from the end of the log (the search looked at these)
    error: str | None = None


def filter_lines(text: str, search: str, lines: int) -> tuple[list[str], int]:
    """The last `lines` lines of `text` containing `search` (case-insensitive), each cut to MAX_LINE characters."""
    wanted = max(1, min(int(lines), MAX_LINES))
    needle = search.strip()[:MAX_SEARCH].lower()
    every = text.splitlines()
    matching = [line for line in every if needle in line.lower()] if needle else every
    return [line[:MAX_LINE] + (" …" if len(line) > MAX_LINE else "") for line in matching[-wanted:]], len(every)


def _read_end(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        start = max(0, size - MAX_BYTES)
        handle.seek(start)
        data = handle.read(MAX_BYTES)
    if start:
        data = data.split(b"\n", 1)[-1]  # the first line was cut by the byte bound: drop it
    return data.decode(errors="replace")


def replica_log(config: FleetConfig, store: Store, target: str, lines: int = 200, search: str = "") -> LogView:
    """The log of `<service>/<instance_id>`; an error text (never an exception) when there is none to read."""
    service_name, _, instance_id = target.partition("/")
    try:
        service = config.service(service_name)
    except KeyError:
        return LogView([], "", 0, f"'{service_name}' is not a service fleetdeck runs: no log to read")
    record = next((r for r in store.replicas(service_name) if r.instance_id == instance_id), None)
    if service.backend == "local":
        from actions.backends.local import LocalOrchestrator

        path = LocalOrchestrator(config, store).log_path(instance_id)
        try:
            text = _read_end(path)
        except OSError as error:
            return LogView([], str(path), 0, f"cannot read {path}: {error.strerror or error}")
        shown, scanned = filter_lines(text, search, lines)
        return LogView(shown, str(path), scanned)
    if service.backend == "docker" and record is not None:
        try:
            from actions.backends.docker import connect_docker

            client = connect_docker(None)
            try:
                container = client.containers.get(record.ref)
                # the Docker API counts lines, not bytes: ask for a bounded number and cut the bytes too
                raw = container.logs(tail=MAX_LINES * 4)[-MAX_BYTES:]
            finally:
                with contextlib.suppress(Exception):
                    client.close()
        except Exception as error:  # daemon unreachable, container gone: say so on the page
            return LogView([], f"container {record.ref[:12]}", 0, f"cannot read the container's log: {error}")
        shown, scanned = filter_lines(raw.decode(errors="replace"), search, lines)
        return LogView(shown, f"container {record.ref[:12]}", scanned)
    if service.backend == "swarm":
        return LogView([], "", 0, f"Swarm tasks: read them with `docker service logs {service_name}`")
    return LogView([], "", 0, f"no log recorded for {target} (it is not a replica fleetdeck knows)")
