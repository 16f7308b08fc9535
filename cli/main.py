"""Router of the `fleetdeck` CLI.

Each verb group lives in its own module exposing `register(subparsers)`; a verb's handler takes the parsed
arguments and returns the process exit code. Configuration errors print the message and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from core.config import ConfigError

# Verb modules, imported lazily so `fleetdeck --help` stays fast and one broken area cannot hide the others.
VERB_MODULES = (
    "cli.fleet_verbs",  # up, down, status
    "cli.collect_verbs",  # collect
    "cli.action_verbs",  # scale, drain, undrain, restart, hash-password
    "cli.test_verbs",  # test load|readiness|scaling
    "cli.queue_verbs",  # queue ls|jobs|job|reasons|retry|remove|promote|pause|resume|clean|drain|obliterate
    "cli.alert_verbs",  # silence add|list|expire, notifications
    "cli.autoscale_verbs",  # autoscale status|decisions|simulate
    "cli.audit_verbs",  # audit verify
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetdeck",
        description="Ops control plane for a horizontally scaled web app: watch, act, test.",
    )
    parser.add_argument(
        "--config",
        help="configuration file (default: $FLEETDECK_CONFIG, else fleet.yaml at the repository root)",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue  # that verb group is not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as error:
        print(f"fleetdeck: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fleetdeck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fleetdeck status | head`: the reader went away. Like any Unix filter, stop quietly; point stdout at
        # /dev/null so the interpreter's final flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a filter killed by the pipe


if __name__ == "__main__":  # `python -m cli.main`, e.g. in the Docker image, which has no console script
    sys.exit(main())
