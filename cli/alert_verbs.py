"""`fleetdeck silence add|list|expire` and `fleetdeck notifications`: alert silences and the delivery record.

Silences are created and expired through actions/silences.py (operator role, audited), as the OS user with the
role `auth.cli_roles` gives it. Exit codes: 0 ok, 2 configuration error, 3 refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from core.config import load_config
from core.config_alerts import parse_duration

EXIT_OK = 0
EXIT_REFUSED = 3


def register(subparsers: Any) -> None:
    silence = subparsers.add_parser("silence", help="mute alert notifications (add, list, expire)",
                                    description="Mute notifications of alerts whose rule and subject match the "
                                    "patterns (shell-style: *, ?), for a while, with a reason. Audited.")
    verbs = silence.add_subparsers(dest="silence_verb", metavar="add|list|expire", required=True)
    add = verbs.add_parser("add", help="create a silence")
    add.add_argument("--rule", default="*", help="rule name or pattern (default: every rule)")
    add.add_argument("--subject", default="*", help="subject pattern, e.g. 'web/*' or 'postgres:main'")
    add.add_argument("--for", dest="duration", required=True, help="how long: 30m, 2h, 1d, or seconds")
    add.add_argument("--reason", required=True, help="why (kept with the silence and in the audit log)")
    add.set_defaults(handler=handle_add)
    listing = verbs.add_parser("list", help="the active silences (--all: expired ones too)")
    listing.add_argument("--all", action="store_true")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)
    expire = verbs.add_parser("expire", help="end a silence now")
    expire.add_argument("id")
    expire.set_defaults(handler=handle_expire)

    notifications = subparsers.add_parser("notifications", help="queued and sent alert notifications, with attempts",
                                          description="The outbox of the notifier: every notification, its state "
                                          "(pending, sent, failed) and every delivery attempt.")
    notifications.add_argument("--limit", type=int, default=20)
    notifications.add_argument("--json", action="store_true")
    notifications.set_defaults(handler=handle_notifications)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from actions.auth import cli_principal
    from core.store import open_store

    config = load_config(args.config)
    return open_store(config), cli_principal(config.auth)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _result(result: dict[str, Any]) -> int:
    if not result["ok"]:
        print(f"fleetdeck: refused: {result['detail']}", file=sys.stderr)
        return EXIT_REFUSED
    print(result["detail"])
    return EXIT_OK


def handle_add(args: argparse.Namespace) -> int:
    from actions.silences import create_silence

    try:
        duration_s = parse_duration(args.duration)
    except ValueError as error:
        print(f"fleetdeck: refused: --for: {error}", file=sys.stderr)
        return EXIT_REFUSED
    store, principal = _open(args)
    try:
        return _result(create_silence(store, principal, args.rule, args.subject, duration_s, args.reason))
    finally:
        store.close()


def handle_expire(args: argparse.Namespace) -> int:
    from actions.silences import expire_silence

    store, principal = _open(args)
    try:
        return _result(expire_silence(store, principal, args.id))
    finally:
        store.close()


def handle_list(args: argparse.Namespace) -> int:
    from actions.silences import list_silences

    store, _ = _open(args)
    try:
        silences = list_silences(store, include_expired=args.all)
    finally:
        store.close()
    if args.json:
        json.dump([s._asdict() for s in silences], sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    now = time.time()
    for s in silences:
        state = "active" if s.active(now) else "expired"
        print(f"{s.id}  {state:7}  {s.rule:22} {s.subject:30} until {_when(s.expired_at or s.expires_at)} UTC"
              f"  by {s.created_by}: {s.reason!r}")
    if not silences:
        print("no silences" if args.all else "no active silences")
    return EXIT_OK


def handle_notifications(args: argparse.Namespace) -> int:
    from core.notify.store import NotifyStore

    store, _ = _open(args)
    try:
        db = NotifyStore(store)
        found = db.notifications()[-max(1, args.limit):]
        attempts = {n.id: db.attempts(n.id) for n in found}
    finally:
        store.close()
    if args.json:
        json.dump([{**n._asdict(), "attempt_log": [a._asdict() for a in attempts[n.id]]} for n in found], sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    for n in found:
        alerts = n.payload.get("alerts", [])
        print(f"#{n.id} {_when(n.created_at)} {n.status:7} to {n.receiver}: {n.payload.get('status')} "
              f"{len(alerts)} alert(s) [{n.group_key}] attempts={n.attempts}")
        for a in attempts[n.id]:
            print(f"    {_when(a.ts)} {'ok  ' if a.ok else 'FAIL'} {a.duration_s * 1000:.0f} ms  {a.detail}")
    if not found:
        print("no notifications")
    return EXIT_OK
