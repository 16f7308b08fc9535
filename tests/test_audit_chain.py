"""The audit log's hash chain (core/audit_chain.py), `fleetdeck audit verify`, and private store files."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import yaml

from core.store import AuditEntry, Store
from tests.support import REPO_ROOT


def add(store: Store, n: int, who: str = "olga") -> None:
    store.append_audit(AuditEntry(None, time.time(), f"op-{n}", who, "operator", "scale", {"replicas": n},
                                  {"n": n - 1}, {"n": n}, "ok", None, 0.25))


def verify_cli(tmp_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": f"sqlite:///{db}"}, "services": [
        {"name": "web", "command": "x {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}]}))
    return subprocess.run([os.path.join(REPO_ROOT, "fleetdeck"), "--config", str(config), "audit", "verify"],
                          capture_output=True, text=True, timeout=60, check=False)


def tamper(db: Path, *statements: str) -> None:
    """What someone with the file can do: drop the append-only triggers, then rewrite history."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in statements:
            conn.execute(statement)


def test_edit_delete_and_truncation_break_the_chain(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = Store(f"sqlite:///{db}")
    for n in range(1, 7):
        add(store, n)
    intact = verify_cli(tmp_path, db)
    assert intact.returncode == 0 and "intact: 6 row(s)" in intact.stdout, intact.stderr
    assert store.audit_chain().ok

    tamper(db, "UPDATE audit SET who = 'mallory' WHERE id = 2")
    edited = verify_cli(tmp_path, db)
    assert edited.returncode == 3 and "row 2: content does not match" in edited.stderr, edited.stderr

    tamper(db, "UPDATE audit SET who = 'olga' WHERE id = 2", "DELETE FROM audit WHERE id = 4")
    removed = store.audit_chain()
    assert not removed.ok and removed.problems == [
        "row 5: previous-hash link broken (a row before it was changed or removed)"]

    fresh = tmp_path / "truncated.db"
    truncated_store = Store(f"sqlite:///{fresh}")
    for n in range(1, 4):
        add(truncated_store, n)
    tamper(fresh, "DELETE FROM audit WHERE id = 3")
    report = truncated_store.audit_chain()
    assert not report.ok and "removed from the end" in report.problems[0]


def test_concurrent_writers_keep_one_chain(pg_dsn: str) -> None:
    """Two writers racing (threads here; processes behave the same, the head is compare-and-set in SQL)."""
    stores = [Store(pg_dsn), Store(pg_dsn)]
    threads = [threading.Thread(target=lambda s=s, k=k: [add(s, k * 100 + i, f"w{k}") for i in range(15)])
               for k, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    report = stores[0].audit_chain()
    assert report.ok, report.problems
    assert report.rows == len(stores[0].audit()) >= 30


def test_store_directory_and_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "new" / "data" / "fleetdeck.db"
    store = Store(f"sqlite:///{db}")
    add(store, 1)  # WAL and shared-memory files exist once something was written
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.parent.parent.stat().st_mode) == 0o700
    files = [db, *db.parent.glob("fleetdeck.db-*")]
    assert len(files) >= 2
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}


def test_state_directories_are_created_private(tmp_path: Path) -> None:
    from actions.backends.nginx import ManagedNginx
    from core.config import parse_config

    config = parse_config({"state_dir": "state", "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                           "services": [{"name": "web", "command": "x {port} {instance_id}",
                                         "ports": {"start": 20000, "end": 20010}}],
                           "load_balancer": {"service": "web"}}, "test", tmp_path)
    ManagedNginx(config)._prepare_dirs()
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [config.state_path, *config.state_path.rglob("*")] if p.is_dir()}
    # 0711: nginx's workers (another user when the master is root) pass through to their temp directories
    assert modes == {"state": 0o711, "state/nginx": 0o711, "state/nginx/logs": 0o700, "state/nginx/tmp": 0o711}
