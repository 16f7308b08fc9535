"""`fleetdeck test load|readiness|scaling`: measured tests from the terminal, usable as a CI gate.

Progress goes to the terminal (stderr with --json, so stdout holds only the JSON document). Ctrl-C cancels the
run cleanly: the scaling test still restores the replica count. Runs are recorded in the store like the
dashboard's, so the Scaling tests and Scorecard pages list them.

Exit codes: 0 every tested rule / threshold passed, 1 something did not pass (or the run failed), 2 configuration
error, 3 refused (the role may not start tests, bad input), 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from core.config import load_config

EXIT_OK = 0
EXIT_NOT_PASSED = 1
EXIT_REFUSED = 3
EXIT_CANCELLED = 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = subparsers.add_parser("test", help="load, readiness and scaling tests (exit 0 only when they pass)")
    kinds = test.add_subparsers(dest="test_kind", metavar="KIND", required=True)

    load = kinds.add_parser("load", help="a bounded load through the load balancer (or --url)")
    load.add_argument("--url", help="full loopback URL (default: the load balancer + --path)")
    load.add_argument("--path", default="/work/echo", help="path behind the load balancer (default /work/echo)")
    load.add_argument("--method", help="HTTP method (default POST for /work/echo, else GET)")
    load.add_argument("--shape", help="constant:RATE:SECONDS | ramp:FROM:TO:SECONDS | steps:RATE@S,RATE@S,...")
    load.add_argument("--rate", type=float, help="open loop at this many req/s (default: closed loop)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    load.add_argument("--connections", type=int, default=16)
    load.add_argument("--workers", type=int, default=1, help="generator processes")
    load.add_argument("--max-error-ratio", type=float, default=0.0, help="pass threshold (default 0: no errors)")
    load.add_argument("--max-p95-ms", type=float, help="pass threshold on p95 latency")
    _common(load)
    load.set_defaults(handler=_handle_load)

    ready = kinds.add_parser("readiness",
                             help="measure the readiness rules (docs/design-notes.md#readiness) and store the facts")
    ready.add_argument("--rules", default="all",
                       help="rule ids and/or levels, comma separated: bronze, silver, gold, all (default all);"
                            " a level includes the lower ones")
    ready.add_argument("--service", help="the service to test (default: the load balancer's)")
    ready.add_argument("--no-disruptive", action="store_true",
                       help="skip the instance restart (queue canary) and the drain under load")
    ready.add_argument("--peak-rps", type=float, help="N+1 capacity: the peak load to plan for (req/s)")
    ready.add_argument("--csv", help="also write the facts of this run as CSV")
    ready.add_argument("--html", help="also write the self-contained HTML report")
    ready.add_argument("--pdf", help="also print the report to PDF (headless Chromium)")
    _common(ready)
    ready.set_defaults(handler=_handle_readiness)

    scaling = kinds.add_parser("scaling", help="the same load at 1..N replicas; E(n) and a USL fit")
    scaling.add_argument("--service", help="the service to scale (default: the load balancer's)")
    scaling.add_argument("--max-replicas", type=int, help="N (default: the current replica count, at least 2)")
    scaling.add_argument("--step-seconds", type=float, default=3.0, help="load per step (default 3 s)")
    scaling.add_argument("--connections", type=int, default=16)
    scaling.add_argument("--path", default="/work/cpu?ms=2", help="request path (default /work/cpu?ms=2)")
    _common(scaling)
    scaling.set_defaults(handler=_handle_scaling)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the final result as JSON on stdout")


# -------------------------------------------------------------------------------------------------- handlers


def _handle_load(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"path": args.path, "duration_s": args.duration, "connections": args.connections,
                              "workers": args.workers, "max_error_ratio": args.max_error_ratio}
    for key, value in (("url", args.url), ("method", args.method), ("shape", args.shape), ("rate", args.rate),
                       ("max_p95_ms", args.max_p95_ms)):
        if value is not None:
            params[key] = value
    return _run(args, "load", params)


def _handle_readiness(args: argparse.Namespace) -> int:
    from actions.proving.scorecard import parse_rule_selection

    try:
        parse_rule_selection(args.rules)
    except ValueError as error:
        print(f"fleetdeck: {error}", file=sys.stderr)
        return EXIT_REFUSED
    params: dict[str, Any] = {"rules": args.rules, "disruptive": not args.no_disruptive}
    if args.service:
        params["service"] = args.service
    if args.peak_rps is not None:
        params["peak_rps"] = args.peak_rps
    return _run(args, "readiness", params)


def _handle_scaling(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"step_seconds": args.step_seconds, "connections": args.connections, "path": args.path}
    if args.service:
        params["service"] = args.service
    if args.max_replicas is not None:
        params["max_replicas"] = args.max_replicas
    return _run(args, "scaling", params)


# ------------------------------------------------------------------------------------------------- the frame


def _printer(to_stderr: bool) -> Any:
    stream = sys.stderr if to_stderr else sys.stdout
    last_live = [0.0]

    def echo(event: dict[str, Any]) -> None:
        stamp = time.strftime("%H:%M:%S")
        live = event.get("live") or (event if event.get("kind") == "load" else None)
        if live:
            if time.monotonic() - last_live[0] >= 1.0:  # one line a second is plenty on a terminal
                last_live[0] = time.monotonic()
                where = f"[{event['replicas']} replica(s)] " if "replicas" in event else ""
                print(f"{stamp} {where}{live['elapsed_s']:.1f}s  {live['rps']:.0f} req/s"
                      f"  p95 {live['p95_ms']:.1f} ms  errors {live['errors']}", file=stream, flush=True)
        elif event.get("message"):
            print(f"{stamp} {event['message']}", file=stream, flush=True)

    return echo


def _run(args: argparse.Namespace, kind: str, params: dict[str, Any]) -> int:
    from actions.auth import PermissionDenied, cli_principal, require
    from actions.proving import testruns
    from core.store import open_store

    config = load_config(args.config)
    principal = cli_principal(config.auth)
    try:
        require(principal, "start_test")
    except PermissionDenied as error:
        print(f"fleetdeck: refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    store = open_store(config)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: cancel.set())
    try:
        doc = testruns.execute(config, store, principal, kind, params, cancel=cancel, echo=_printer(args.json))
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(doc, default=str, sort_keys=True))
    else:
        _summary(kind, doc)
    if kind == "readiness" and doc.get("result"):
        _exports(args, store, doc["result"]["run_id"])
    if doc["state"] == "cancelled":
        return EXIT_CANCELLED
    if doc.get("error") and "PermissionDenied" in str(doc["error"]):
        return EXIT_REFUSED
    return EXIT_OK if doc.get("passed") else EXIT_NOT_PASSED


def _summary(kind: str, doc: dict[str, Any]) -> None:
    result = doc.get("result") or {}
    print(f"{kind} run {doc['run_id']}: {doc['state']}, {'PASS' if doc.get('passed') else 'NOT PASSED'}")
    if doc.get("error"):
        print(f"  error: {doc['error']}")
    if kind == "load" and result:
        latency = result.get("latency_ms", {})
        print(f"  {result['requests']} requests in {result['elapsed_s']:.1f}s: {result['rps']:.0f} req/s,"
              f" p50 {latency.get('p50')} ms, p95 {latency.get('p95')} ms, p99 {latency.get('p99')} ms;"
              f" errors {result['errors']} {result['errors_by_kind']}; generator CPU {result['cpu_utilization']:.0%}")
        print(f"  per instance: {result['instances']}")
    elif kind == "readiness" and result:
        card = result["scorecard"]
        print(f"  level {card['level'] or 'none'}, {card['percent']:.0f}% of points")
        for fact in result["facts"]:
            print(f"  {fact['status'].upper():7} {fact['rule']:26} {fact['observed']}")
    elif kind == "scaling" and result:
        for step in result.get("steps", []):
            eff = step.get("efficiency")
            print(f"  n={step['replicas']}: {step['throughput']:.0f} req/s, p95 {step['p95_ms']} ms,"
                  f" E(n) {'—' if eff is None else f'{eff:.2f}'}, generator CPU {step['generator_cpu']:.0%}"
                  f"{'' if step['in_fit'] else ' (left out of the fit)'}")
        fit = result.get("fit")
        if fit:
            peak = f"{fit['peak_n']:.1f}" if fit.get("peak_n") else "∞ (κ = 0)"
            print(f"  USL: λ={fit['lam']:.1f} σ={fit['sigma']:.3f} κ={fit['kappa']:.4f} R²={fit['r2']:.3f}"
                  f" n*={peak}")
        print(f"  restored to {result.get('original_replicas')} replica(s): {result.get('restored')}"
              f" ({result.get('restore_detail')})")


def _exports(args: argparse.Namespace, store: Any, run_id: str) -> None:
    if not (args.csv or args.html or args.pdf):
        return
    from pathlib import Path

    from actions.proving import report, scorecard
    from actions.proving.readiness import RUN_PREFIX

    facts = store.facts(run_id=run_id)
    if args.csv:
        Path(args.csv).write_text(scorecard.facts_csv(facts))
        print(f"facts written to {args.csv}", file=sys.stderr)
    if args.html or args.pdf:
        card = scorecard.score(facts, run_id)
        runs = scorecard.history(store.facts(), RUN_PREFIX)
        text = report.render_html(card, facts, runs)
        if args.html:
            Path(args.html).write_text(text)
            print(f"report written to {args.html}", file=sys.stderr)
        if args.pdf:
            report.print_pdf(text, args.pdf)
            print(f"PDF written to {args.pdf}", file=sys.stderr)
