"""`fleetdeck audit verify`: check the audit log's hash chain (core/audit_chain.py)."""

from __future__ import annotations

import argparse
import json
import sys

from core.config import load_config

EXIT_BROKEN = 3


def _verify(args: argparse.Namespace) -> int:
    from core.store import open_store

    config = load_config(args.config)
    report = open_store(config).audit_chain()
    if args.json:
        print(json.dumps(report._asdict(), sort_keys=True))
    else:
        print(report.describe(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else EXIT_BROKEN


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser("audit", help="check the audit log", description="Audit log tools.")
    verbs = audit.add_subparsers(dest="audit_verb", metavar="AUDIT_VERB", required=True)
    verify = verbs.add_parser(
        "verify",
        help="check the audit log's hash chain; exit 3 when a row was changed, removed or inserted",
        description="Recompute the hash chain over every audit row and compare it with the stored head."
        " Prints the head hash: record it elsewhere to detect a rewrite of the whole chain (docs/security.md).",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_verify)
