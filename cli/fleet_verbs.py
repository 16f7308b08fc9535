"""`fleetdeck up`, `fleetdeck down`, `fleetdeck status`: the whole fleet in one verb each."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from actions.backends.base import FleetdeckActionError
from actions.fleet_locks import FleetBusy
from core.config import config_path, load_config


def _progress(message: str) -> None:
    print(message, flush=True)


def _quiet_logging(verbose: bool) -> None:
    # Progress is printed; logging only adds detail when asked for (and warnings always).
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


EXIT_REFUSED = 3


def _refused(verb: str, error: Exception) -> int:
    print(f"fleetdeck {verb}: refused: {error}", file=sys.stderr)
    print("  (the CLI acts as your OS user with the role auth.cli_roles gives it; see README.md, 'Roles')",
          file=sys.stderr)
    return EXIT_REFUSED


def _up(args: argparse.Namespace) -> int:
    from actions import fleet  # lazily: keeps `fleetdeck --help` fast
    from actions.auth import PermissionDenied, cli_principal

    _quiet_logging(args.verbose)
    config = load_config(args.config)
    try:
        state = fleet.up(
            config, principal=cli_principal(config.auth), config_file=config_path(args.config),
            dashboard=not args.no_dashboard, progress=_progress,
        )
    except PermissionDenied as error:
        return _refused("up", error)
    except FleetdeckActionError as error:
        print(f"fleetdeck up: {error}", file=sys.stderr)
        return 1
    print()
    if state["dashboard"]["running"]:
        print(f"dashboard: {state['dashboard']['url']}")
    if state["nginx"].get("configured"):
        print(f"app:       {state['nginx']['url']}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from actions import fleet
    from actions.auth import PermissionDenied, cli_principal

    _quiet_logging(args.verbose)
    config = load_config(args.config)
    try:
        fleet.down(config, principal=cli_principal(config.auth), progress=_progress, wait_s=args.wait,
                   force=args.force)
    except PermissionDenied as error:
        return _refused("down", error)
    except FleetBusy as error:
        print(f"fleetdeck down: refused: {error}", file=sys.stderr)
        return 3  # refused, like every action that finds its service busy
    except FleetdeckActionError as error:
        print(f"fleetdeck down: {error}", file=sys.stderr)
        return 1
    return 0


def _age(started_at: float) -> str:
    seconds = max(0, int(time.time() - started_at))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _print_status(state: dict[str, Any]) -> None:
    for name, service in state["services"].items():
        print(f"service {name} ({service['backend']}): {service['running']}/{service['desired']} running")
        if service.get("note"):
            print(f"  {service['note']}")
        for replica in service["replicas"]:
            print(
                f"  {replica['instance_id']:<12} {replica['address']:<21} pid {replica['pid'] or '-':<8}"
                f" {replica['state']:<9} health {replica['health']:<12} up {_age(replica['started_at'])}"
            )
    nginx = state["nginx"]
    if nginx.get("configured"):
        running = {True: "running", False: "stopped", None: "external"}[nginx["running"]]
        print(
            f"nginx ({nginx['mode']}) {nginx['listen']}: {running}, pid {nginx['pid'] or '-'},"
            f" generation {nginx['generation']} (serving {nginx['served_generation']})"
        )
        for server in nginx["servers"]:
            print(f"  {server['address']:<21} {server['state']:<9} {server['instance_id']}")
        process = nginx.get("process") or {}
        if process.get("orphaned_workers"):
            print(f"  master gone: orphaned worker(s) {', '.join(map(str, process['orphaned_workers']))} still"
                  " serving the last configuration")
    board = state["dashboard"]
    print(f"dashboard {board['url']}: {'running, pid ' + str(board['pid']) if board['running'] else 'stopped'}")
    _print_processes(state)


def _print_processes(state: dict[str, Any]) -> None:
    print("fleetdeck processes:")
    for process in state.get("processes", []):
        line = f"  {process['name']:<13} pid {process['pid'] or '-':<8} {process['state']}"
        print(line + (f" — {process['detail']}" if process["detail"] else ""))
    heartbeat = state.get("collector", {}).get("heartbeat")
    if heartbeat:
        written = heartbeat.get("last_write_ok_ts")
        print(f"  collector heartbeat {heartbeat['age_s']:.0f}s ago ({heartbeat.get('kind')}, pid"
              f" {heartbeat.get('pid')}): last store write {_ago(written)}, buffered {heartbeat.get('buffered', 0)},"
              f" dropped {heartbeat.get('dropped_total', 0)}")
    for problem in state.get("problems", []):
        print(f"PROBLEM: {problem}")


def _ago(ts: float | None) -> str:
    return "never" if not ts else f"{max(0.0, time.time() - ts):.0f}s ago"


def _status(args: argparse.Namespace) -> int:
    from actions import fleet

    _quiet_logging(args.verbose)
    config = load_config(args.config)
    try:
        state = fleet.status(config)
    except FleetdeckActionError as error:
        print(f"fleetdeck status: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the store cannot be opened (e.g. its Postgres is down): say what still can be said
        fallback = fleet.status_without_store(config, error)
        if args.json:
            print(json.dumps(fallback, indent=2, default=str))
        else:
            _print_processes(fallback)
        return PROBLEM_EXIT
    autoscale = _autoscale_status(config)
    if args.json:
        print(json.dumps({**dict(state), "autoscale": autoscale["records"]} if autoscale else state, indent=2,
                         default=str))
    else:
        _print_status(dict(state))
        for line in autoscale.get("lines", []):
            print(line)
    # a process that should run and does not (a killed collector, nginx workers without master) is a failure
    return PROBLEM_EXIT if state["problems"] else 0


PROBLEM_EXIT = 3


def _autoscale_status(config: Any) -> dict[str, Any]:
    """The autoscaler's latest decision per service with a policy (docs/autoscaling.md)."""
    if not config.autoscale:
        return {}
    from actions.autoscale import advice_lines, latest_decision
    from core.store import open_store

    store = open_store(config)
    try:
        return {"records": {name: latest_decision(store, name) for name in config.autoscale},
                "lines": advice_lines(config, store)}
    finally:
        store.close()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser(
        "up",
        help="start the fleet: replicas, nginx and the dashboard (idempotent)",
        description="Create the demo database if missing, start the missing replicas (live ones are adopted),"
        " wait until they are healthy, apply nginx and start the dashboard. Running it twice duplicates nothing.",
    )
    up.add_argument("--no-dashboard", action="store_true", help="do not start the Streamlit dashboard")
    up.add_argument("-v", "--verbose", action="store_true", help="log every step")
    up.set_defaults(handler=_up)

    down = subparsers.add_parser(
        "down",
        help="stop the dashboard, every replica (gracefully) and nginx",
        description="Stop everything `up` started, by PID, and remove the pid files. A running action (scale,"
        " drain, restart) is waited for up to --wait seconds; then `down` refuses (busy) unless --force.",
    )
    down.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                      help="how long to wait for a running scale/drain/restart to finish (default 30)")
    down.add_argument("--force", action="store_true",
                      help="stop the fleet even while an action runs (that action fails; audited)")
    down.add_argument("-v", "--verbose", action="store_true", help="log every step")
    down.set_defaults(handler=_down)

    status = subparsers.add_parser(
        "status",
        help="show replicas, their health, nginx and the dashboard",
        description="Probe every replica's health endpoint and report what runs, fleetdeck's own processes"
        " included. Exits 3 when one that should run does not (a killed collector, nginx workers left without"
        " their master).",
    )
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    status.add_argument("-v", "--verbose", action="store_true", help="log every step")
    status.set_defaults(handler=_status)
