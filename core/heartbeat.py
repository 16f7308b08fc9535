"""Where the collector's heartbeat lives and how to read it (written by collectors/self_health.py).

It is a small JSON file under the state directory, outside the store, so a failing store can still be reported
by `fleetdeck status` and the dashboard (docs/operations.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEALTH_FILE = "collector-health.json"
READ_LIMIT = 10_000  # the file is ours, but a bounded read costs nothing


def health_path(state_dir: Path) -> Path:
    return state_dir / HEALTH_FILE


def read_health(state_dir: Path) -> dict[str, Any] | None:
    """The last heartbeat, None when no collector ever wrote one (or it is unreadable)."""
    try:
        data = json.loads(health_path(state_dir).read_text()[:READ_LIMIT])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
