"""`fleetdeck scale|drain|undrain|restart|limits|hash-password`: the operator actions on the command line.

The CLI acts as the OS user, with the role `auth.cli_roles` gives that user; the role check itself happens in
the actions layer (actions/operations/frame.py), so the CLI cannot do more than the dashboard would allow.

Exit codes: 0 success (including a no-op), 1 the action failed (nginx still serves its last good config),
2 configuration error, 3 refused (permission, busy, bad input, not confirmed) — nothing was changed.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from core.config import load_config

if TYPE_CHECKING:
    from actions.auth import Principal
    from actions.operations import FleetActions, OnTimeout, OperationResult, Plan

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 3


# the outcome line an operation sends last ("refused: …", "ok: …"): `_exit_code` prints the outcome once itself
# (stderr for refused/failed), so the progress stream leaves it out
OUTCOME_PREFIXES = ("ok: ", "noop: ", "failed: ", "refused: ")


def _say(op_id: str, message: str) -> None:
    if message.startswith(OUTCOME_PREFIXES):
        return
    print(f"{time.strftime('%H:%M:%S')} [{op_id}] {message}", flush=True)


def _actions(args: argparse.Namespace) -> tuple[FleetActions, Principal]:
    from actions.auth import cli_principal
    from actions.operations import FleetActions
    from core.store import open_store

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    store = open_store(config)
    return FleetActions(config, store, on_progress=_say), cli_principal(config.auth)


def _exit_code(result: OperationResult) -> int:
    if result.refused:
        print(f"fleetdeck: refused: {result.error or result.detail}", file=sys.stderr)
        return EXIT_REFUSED
    if not result.ok:
        print(f"fleetdeck: failed: {result.error or result.detail}", file=sys.stderr)
        return EXIT_FAILED
    print(result.detail)
    return EXIT_OK


def _confirmed(args: argparse.Namespace, plan: Plan) -> bool:
    """Typed confirmation of a disruptive action, unless --yes; a refused plan needs none (the action refuses)."""
    if args.yes or not plan.allowed or plan.noop or not plan.disruptive:
        return True
    print(plan.render())
    if not sys.stdin.isatty():
        print("fleetdeck: this action is disruptive; confirm with --yes (no terminal to ask on)", file=sys.stderr)
        return False
    try:
        typed = input(f"type '{plan.confirm_text}' to confirm: ").strip()
    except EOFError:
        typed = ""
    if typed != plan.confirm_text:
        print("fleetdeck: not confirmed; nothing was changed", file=sys.stderr)
        return False
    return True


def _dry_run(plan: Plan) -> int:
    print(plan.render())
    return EXIT_OK if plan.allowed else EXIT_REFUSED


def _perform(args: argparse.Namespace, kind: str, target: str, params: dict[str, Any],
             actions: tuple[FleetActions, Principal] | None = None, confirm: bool = True) -> int:
    """The one path of every action verb: plan → --dry-run or typed confirmation → execute → exit code."""
    from actions.operations import OPERATIONS

    fleet_actions, principal = actions or _actions(args)
    operation = OPERATIONS[kind]
    plan = operation.plan(fleet_actions, target, params, principal)
    if args.dry_run:
        return _dry_run(plan)
    if confirm and not _confirmed(args, plan):
        return EXIT_REFUSED
    return _exit_code(operation.execute(fleet_actions, principal, target, params))


def _scale(args: argparse.Namespace) -> int:
    return _perform(args, "scale", args.service, {"replicas": args.replicas})


def _ask_on_timeout(situation: str) -> OnTimeout:
    if not sys.stdin.isatty():
        return "abort"
    try:
        answer = input(f"{situation}: [a]bort (back in rotation) or [f]orce (admin)? ").strip().lower()
    except EOFError:
        return "abort"
    return "force" if answer.startswith("f") else "abort"


def _drain(args: argparse.Namespace) -> int:
    on_timeout = "force" if args.force else _ask_on_timeout
    return _perform(args, "drain", args.instance, {"timeout_s": args.timeout, "on_timeout": on_timeout})


def _undrain(args: argparse.Namespace) -> int:
    return _perform(args, "undrain", args.instance, {}, confirm=False)


def _restart(args: argparse.Namespace) -> int:
    return _perform(args, "rolling_restart" if args.rolling else "restart", args.target, {})


def _limits(args: argparse.Namespace) -> int:
    """Show the effective limits (no --min/--max), or change them (admin); one of the two defaults to the current."""
    from actions.operations import limits_of

    actions, principal = _actions(args)
    try:
        service = actions.config.service(args.service)
    except KeyError as error:
        print(f"fleetdeck: refused: {error.args[0]}", file=sys.stderr)
        return EXIT_REFUSED
    current = limits_of(actions.store, service)
    if args.min is None and args.max is None and not args.reset:
        print(f"{service.name}: min {current.min_replicas}, max {current.max_replicas} ({current.describe()})")
        if current.source != "config":
            print(f"  config: min {service.min_replicas}, max {service.max_replicas}")
        return EXIT_OK
    if args.reset and (args.min is not None or args.max is not None):
        print("fleetdeck: refused: --reset goes back to the config's bounds; it takes no --min/--max", file=sys.stderr)
        return EXIT_REFUSED
    if args.reset:
        low, high = str(service.min_replicas), str(service.max_replicas)
    else:
        low = args.min if args.min is not None else str(current.min_replicas)
        high = args.max if args.max is not None else str(current.max_replicas)
    return _perform(args, "set_limits", service.name, {"min_replicas": low, "max_replicas": high},
                    (actions, principal))


def _hash_password(args: argparse.Namespace) -> int:
    from actions.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("fleetdeck: the passwords differ", file=sys.stderr)
            return EXIT_REFUSED
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("fleetdeck: empty password", file=sys.stderr)
        return EXIT_REFUSED
    print(hash_password(password))
    return EXIT_OK


def _common(parser: argparse.ArgumentParser, confirm: bool = True) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan (upstream diff, replicas) and exit")
    if confirm:
        parser.add_argument("--yes", "-y", action="store_true", help="skip the typed confirmation")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scale = subparsers.add_parser("scale", help="scale a service to N replicas within [min_replicas, max_replicas]")
    scale.add_argument("service")
    scale.add_argument("replicas", metavar="N", help="the replica count wanted")
    _common(scale)
    scale.set_defaults(handler=_scale)

    drain = subparsers.add_parser("drain", help="take an instance out of rotation and wait until it is idle")
    drain.add_argument("instance", help="instance id (web-2) or service/instance (web/web-2)")
    drain.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: drain_timeout_s)")
    drain.add_argument("--force", action="store_true", help="on timeout, take it down anyway (admin)")
    _common(drain)
    drain.set_defaults(handler=_drain)

    undrain = subparsers.add_parser("undrain", help="put a drained instance back in rotation")
    undrain.add_argument("instance")
    # --yes is accepted like on every action verb (scripts pass it uniformly); putting an instance back in
    # rotation is not disruptive, so there is nothing to confirm
    _common(undrain)
    undrain.set_defaults(handler=_undrain)

    restart = subparsers.add_parser("restart", help="restart an instance, or --rolling a whole service")
    restart.add_argument("target", metavar="INSTANCE|SERVICE")
    restart.add_argument("--rolling", action="store_true", help="restart every replica of SERVICE, one at a time")
    _common(restart)
    restart.set_defaults(handler=_restart)

    limits = subparsers.add_parser(
        "limits", help="show a service's replica limits, or change them with --min/--max (admin)")
    limits.add_argument("service")
    # strings, not type=int: the actions layer validates them, so a bad value is refused *and audited*
    limits.add_argument("--min", metavar="N", default=None, help="new min_replicas (default: the current one)")
    limits.add_argument("--max", metavar="M", default=None, help="new max_replicas (default: the current one)")
    limits.add_argument("--reset", action="store_true", help="back to the config file's bounds (drops the override)")
    _common(limits)
    limits.set_defaults(handler=_limits)

    hashing = subparsers.add_parser("hash-password", help="read a password (stdin or prompt), print its argon2 hash")
    hashing.set_defaults(handler=_hash_password)
