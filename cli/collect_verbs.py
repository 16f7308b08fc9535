"""`fleetdeck collect`: the standalone collector process, or one pass printed as JSON."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from core.config import load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="run the collectors (until SIGTERM), or once with --once",
        description="Run every collector on its interval and write to the store until SIGTERM/SIGINT. "
        "With --once: every collector once, every target concurrently; nothing is written.",
    )
    parser.add_argument("--once", action="store_true", help="collect every target once and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print the samples as a JSON array")
    parser.set_defaults(handler=handle_collect)


def handle_collect(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.once:
        return _once(config, as_json=args.json)
    return _forever(config)


def _once(config: Any, as_json: bool) -> int:
    from collectors.scheduler import collect_once
    from core.store import open_store

    store = open_store(config)  # the replica registry for the instance targets (docker services sync it first)
    try:
        samples = collect_once(config, store)
    finally:
        store.close()
    if as_json:
        json.dump([sample._asdict() for sample in samples], sys.stdout, indent=None, default=str)
        sys.stdout.write("\n")
    else:
        for s in samples:
            label = ",".join(f"{k}={v}" for k, v in s.labels)
            text = f"  {s.text[:80]!r}" if s.text else ""
            print(f"{s.source:9} {s.target:40} {s.metric:24}{'{' + label + '}' if label else ''} {s.value:g}{text}")
    down = [s for s in samples if s.metric == "up" and s.value == 0]
    return 1 if down else 0


def _forever(config: Any) -> int:
    from collectors.scheduler import start_embedded, stop_embedded
    from core.store import open_store

    store = open_store(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheduler = start_embedded(config, store, kind="standalone")
    print(f"fleetdeck collect: {len(scheduler.collectors)} collectors running; SIGTERM stops", file=sys.stderr)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        stop_embedded()
        store.close()
    print(f"fleetdeck collect: stopped after writing {scheduler.written} samples", file=sys.stderr)
    return 0
