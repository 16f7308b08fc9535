"""`fleetdeck autoscale status|decisions|simulate`: what the autoscaler decides, decided, and would have decided.

The policies live in fleet.yaml (`autoscale:`, docs/autoscaling.md); the loop runs in the collector process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import yaml

from core.config import ConfigError, load_config
from core.config_alerts import parse_duration


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("autoscale", help="autoscaling: latest decisions, history, simulation",
                                   description="Show the autoscaler's decisions, or replay stored metrics "
                                   "through a policy to see what it would have done.")
    verbs = parser.add_subparsers(dest="autoscale_verb", metavar="status|decisions|simulate", required=True)
    status = verbs.add_parser("status", help="the latest decision per service, explained")
    status.add_argument("service", nargs="?")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=handle_status)
    history = verbs.add_parser("decisions", help="the stored decisions of a service (the timeline)")
    history.add_argument("service")
    history.add_argument("--last", default="1h", help="how far back: 30m, 24h, 7d (default 1h)")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=handle_decisions)
    simulate = verbs.add_parser("simulate", help="replay stored metrics through the service's policy",
                                description="Replay the stored series of the last period through the policy of "
                                "the service (as if it had acted on every decision) and print what it would have "
                                "done. --set overrides policy keys to tune it before switching it on.")
    simulate.add_argument("service")
    simulate.add_argument("--last", default="24h", help="the period to replay: 30m, 24h, 7d (default 24h)")
    simulate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a policy key, e.g. --set rps_per_replica=30 --set scale_down_window=10m")
    simulate.add_argument("--json", action="store_true")
    simulate.set_defaults(handler=handle_simulate)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from core.store import open_store

    config = load_config(args.config)
    return config, open_store(config)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _explain(record: dict[str, Any]) -> str:
    lines = [f"{record['service']} ({record['mode']}) at {_when(record['ts'])} UTC: {record['summary']}"]
    if record.get("acted"):
        lines.append(f"    acted: scale -> {record['desired']}: {record['result']} (op {record['op_id']})")
    if record.get("why_not"):
        lines.append(f"    not acted: {record['why_not']}")
    return "\n".join(lines)


def handle_status(args: argparse.Namespace) -> int:
    from actions.autoscale import latest_decision

    config, store = _open(args)
    try:
        names = [args.service] if args.service else list(config.autoscale)
        records = {name: latest_decision(store, name) for name in names}
    finally:
        store.close()
    if args.json:
        json.dump(records, sys.stdout, default=str)
        sys.stdout.write("\n")
        return 0
    if not names:
        print("no autoscale policies in the configuration (see docs/autoscaling.md)")
    for name, record in records.items():
        mode = config.autoscale[name].mode if name in config.autoscale else "no policy"
        print(_explain(record) if record else f"{name} ({mode}): no decision yet")
    return 0


def handle_decisions(args: argparse.Namespace) -> int:
    from actions.autoscale import decisions

    _, store = _open(args)
    try:
        now = time.time()
        found = decisions(store, args.service, now - parse_duration(args.last), now)
    finally:
        store.close()
    if args.json:
        json.dump(found, sys.stdout, default=str)
        sys.stdout.write("\n")
        return 0
    for record in found:
        print(_explain(record))
    if not found:
        print(f"no decisions for {args.service} in the last {args.last}")
    return 0


def _policy(config: Any, service: str, overrides: list[str]) -> Any:
    from core.config_autoscale import AutoscalePolicy

    if service not in config.autoscale:
        raise ConfigError(f"no autoscale policy for '{service}' in the configuration (autoscale.{service})")
    data = config.autoscale[service].model_dump(by_alias=True)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        data[key.strip()] = yaml.safe_load(value)
    try:
        return AutoscalePolicy.model_validate(data)
    except ValueError as error:
        raise ConfigError(f"--set: {error}") from None


def handle_simulate(args: argparse.Namespace) -> int:
    from actions.autoscale import simulate, sparkline

    config, store = _open(args)
    policy = _policy(config, args.service, args.set)
    end = time.time()
    try:
        result = simulate(config, store, args.service, policy, end - parse_duration(args.last), end)
    finally:
        store.close()
    changes = result.changes
    if args.json:
        json.dump({"service": result.service, "start": result.start, "end": result.end,
                   "policy": policy.model_dump(by_alias=True), "changes": changes,
                   "replica_hours": {"actual": result.replica_hours("actual"),
                                     "simulated": result.replica_hours("simulated")},
                   "steps": result.steps}, sys.stdout, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"{args.service}: {len(result.steps)} decisions every {policy.interval_s:g}s over the last {args.last}; "
          f"{len(changes)} change(s)")
    for step in changes:
        print(f"  {_when(step['ts'])}  {step['from']} -> {step['simulated']}  (actual {step['actual']}): "
              f"{step['summary']}")
    simulated = [s["simulated"] for s in result.steps]
    actual = [s["actual"] for s in result.steps]
    if simulated:
        top = max(*simulated, *actual, 1)
        print(f"simulated  {sparkline(simulated, top=top)}  min {min(simulated)} max {max(simulated)}")
        print(f"actual     {sparkline(actual, top=top)}  min {min(actual)} max {max(actual)}")
        print(f"replica-hours: simulated {result.replica_hours('simulated'):.1f}, "
              f"actual {result.replica_hours('actual'):.1f}")
    return 0
