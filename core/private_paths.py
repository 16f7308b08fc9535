"""Directories fleetdeck keeps its state in, created (or tightened) so other local users cannot read them.

The store holds the audit log and every sample; the state directory holds pid files, nginx's files and the
replicas' logs. docs/security.md lists the modes; here is why they are what they are:
- the store's directory 0700, its SQLite file 0600 (core/store.py creates the file before SQLite does);
- the state directory and the nginx prefix 0711: nginx started as root runs its workers as another user, and they
  must reach their temp directories (large request bodies are buffered there); 0711 lets them pass through
  without listing anything, while the logs directories, where the content is, are 0700.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o700
TRAVERSE_ONLY = 0o711


def private_dir(path: Path, mode: int = PRIVATE) -> Path:
    """Create `path` (missing parents private too) with `mode`, whatever the umask says.

    An existing directory is left as it is: it may be shared (state_dir: /srv/...) and is its owner's to set.
    """
    if path.exists():
        return path
    if not path.parent.exists():
        private_dir(path.parent)
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        return path  # another process made it meanwhile
    os.chmod(path, mode)  # mkdir's mode is filtered by the umask; 0711 would lose its x bits under 077
    return path
