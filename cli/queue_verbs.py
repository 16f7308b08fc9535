"""`fleetdeck queue ls|jobs|job|reasons|retry|remove|promote|pause|resume|clean|drain|obliterate`.

Read verbs (ls, jobs, job, reasons) need no role beyond the CLI user's and take ``--json``. Action verbs go through
actions/queue_ops.py: the role check (operator; obliterate admin), the queue lock, the audit with counts before
and after, batches of ``--batch`` jobs per Redis call with progress lines. ``--dry-run`` prints the plan;
destructive verbs (remove, clean, drain, obliterate) ask to type the queue name (or job id) unless ``--yes``.
Exit codes as for the other actions: 0 ok (or nothing to do), 1 failed, 2 configuration error, 3 refused.

QUEUE is ``[redis/][prefix:]name`` (defaults: the first configured Redis and its first prefix). Job names, data
and error texts come from other programs: control characters are escaped before they reach the terminal.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from typing import Any

from cli.action_verbs import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, _confirmed, _dry_run, _exit_code, _say
from core.config import load_config

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def safe(text: str, keep_newlines: bool = False) -> str:
    """Untrusted text for a terminal: control and bidi characters escaped (no cursor tricks, no fake lines)."""
    out = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                       text)
    return out if keep_newlines else out.replace("\n", "\\n").replace("\t", " ")


def parse_age(text: str) -> int:
    """`90`, `90s`, `15m`, `2h`, `7d` → seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (use 90, 90s, 15m, 2h or 7d)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _client(args: argparse.Namespace) -> Any:
    from collectors.bullmq_scripts import QueueClient, UnknownQueue, parse_ref

    config = load_config(args.config)
    try:
        ref = parse_ref(config, args.queue)
    except UnknownQueue as error:
        print(f"fleetdeck: refused: {error}", file=sys.stderr)
        return None
    return QueueClient(ref)


def _reading(handler: Any) -> Any:
    """A read verb: an unreachable Redis (or a key of the wrong type) is a failure message and exit 1."""

    def run(args: argparse.Namespace) -> int:
        import redis

        try:
            return int(handler(args))
        except (redis.exceptions.RedisError, OSError) as error:
            print(f"fleetdeck: failed: {safe(f'{type(error).__name__}: {error}')}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=True, default=str))


# ------------------------------------------------------------------------------------------------ reads


def _ls(args: argparse.Namespace) -> int:
    from collectors import bullmq_jobs
    from collectors.bullmq_scripts import QueueClient

    config = load_config(args.config)
    rows = []
    for ref in bullmq_jobs.discover(config):
        with QueueClient(ref) as client:
            counts = bullmq_jobs.counts(client)
        rows.append({"queue": ref.name, **counts.as_dict(), "oldest_waiting_age_s": counts.oldest_waiting_age_s})
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("no queues found")
        return EXIT_OK
    header = ("queue", "paused", "waiting", "active", "delayed", "prioritized", "waiting-children", "completed",
              "failed", "oldest wait")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        age = row["oldest_waiting_age_s"]
        lines.append((safe(row["queue"]), "yes" if row["is_paused"] else "", *(str(row[k]) for k in header[2:9]),
                      f"{age:.0f} s" if age is not None else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def _jobs(args: argparse.Namespace) -> int:
    from collectors import bullmq_jobs

    client = _client(args)
    if client is None:
        return EXIT_REFUSED
    with client:
        try:
            page = bullmq_jobs.job_page(client, args.state, args.offset, args.limit, args.search or "")
        except ValueError as error:
            print(f"fleetdeck: refused: {error}", file=sys.stderr)
            return EXIT_REFUSED
    if args.json:
        _print_json({"queue": client.ref.name, **page.as_dict()})
        return EXIT_OK
    shown = f"{page.offset + 1}-{page.offset + len(page.rows)}" if page.rows else "none"
    print(f"{safe(client.ref.name)} {page.state}: {page.total} job(s), showing {shown} (newest first)")
    if page.search:
        print(f"  search {safe(page.search)!r}: looked at {page.scanned} job(s)"
              + ("" if page.search_complete else " — stopped at the search budget; narrow it down"))
    for row in page.rows:
        attempts = f"{row.attempts_made}/{row.attempts or 1}"
        print(f"  {safe(row.id)[:40]:<12} {safe(row.name)[:40]:<24} added {_when(row.timestamp)}"
              f" finished {_when(row.finished_on)} attempts {attempts}"
              + (f" progress {safe(row.progress)}" if row.progress else "")
              + (f"\n      {safe(row.failed_reason)}" if row.failed_reason else ""))
    if page.has_more:
        print(f"  more: --offset {page.offset + page.limit}")
    return EXIT_OK


def _job(args: argparse.Namespace) -> int:
    from collectors import bullmq_jobs

    client = _client(args)
    if client is None:
        return EXIT_REFUSED
    with client:
        view = bullmq_jobs.job_view(client, args.job_id, args.max_bytes)
    if view is None:
        print(f"fleetdeck: no job {safe(args.job_id)!r} in {safe(client.ref.name)}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        _print_json({"queue": client.ref.name, **view.as_dict()})
        return EXIT_OK
    print(f"job {safe(view.id)} of {safe(client.ref.name)}: {view.state}, name {safe(view.text('name'))!r}")
    print(f"  added {_when(view.number('timestamp'))}, processed {_when(view.number('processedOn'))},"
          f" finished {_when(view.number('finishedOn'))}, attempts made {view.number('atm') or 0}")
    for title, name in (("data", "data"), ("opts", "opts"), ("return value", "returnvalue")):
        value = view.fields.get(name)
        if value is None or value.size < 0:
            continue
        shown = len(value.text.encode())
        note = f" (truncated: {value.size:,} bytes, first {shown:,} shown)" if value.truncated else ""
        print(f"{title}{note}:")
        print("  " + safe(view.pretty(name), keep_newlines=True).replace("\n", "\n  "))
    if view.text("failedReason"):
        print(f"failed reason: {safe(view.text('failedReason'), keep_newlines=True)}")
    traces = view.stacktrace()
    if traces:
        print(f"stack trace (latest of {len(traces)}):")
        print("  " + safe(traces[-1], keep_newlines=True).replace("\n", "\n  "))
    if view.parent:
        print(f"parent: {safe(view.parent)}")
    for title, keys in (("children pending", view.children_pending), ("children processed", view.children_processed),
                        ("children failed", view.children_failed), ("children ignored", view.children_ignored)):
        if keys:
            print(f"{title}: {', '.join(safe(k) for k in keys)}")
    if view.log_count:
        print(f"logs (last {len(view.logs)} of {view.log_count}):")
        for line in view.logs:
            print(f"  {safe(line)}")
    return EXIT_OK


def _reasons(args: argparse.Namespace) -> int:
    from collectors import bullmq_jobs

    client = _client(args)
    if client is None:
        return EXIT_REFUSED
    with client:
        found = bullmq_jobs.failure_reasons(client, args.sample)
    if args.json:
        _print_json({"queue": client.ref.name, "scanned": found.scanned, "total": found.total,
                     "reasons": [r._asdict() for r in found.reasons]})
        return EXIT_OK
    print(f"{safe(client.ref.name)}: top failure reasons of the newest {found.scanned} of {found.total} failed job(s)")
    for reason in found.reasons:
        print(f"  {reason.count:>7}  {safe(reason.reason)}  (newest: {safe(reason.newest_id)})")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ actions


def _act(args: argparse.Namespace, action: str, **params: Any) -> int:
    from actions.auth import cli_principal
    from actions.queue_ops import QueueActions
    from core.store import open_store

    config = load_config(args.config)
    actions = QueueActions(config, open_store(config), on_progress=_say, batch=args.batch)
    principal = cli_principal(config.auth)
    plan = actions.plan(action, args.queue, principal, **params)
    if args.dry_run:
        return _dry_run(plan)
    if not _confirmed(args, plan):
        return EXIT_REFUSED
    started = time.perf_counter()
    result = actions.run(principal, action, args.queue, **params)
    code = _exit_code(result)
    after = result.after or {}
    if "max_call_ms" in after:
        print(f"  {after.get('jobs', 0)} job(s) in {time.perf_counter() - started:.2f} s;"
              f" {after.get('calls')} Redis call(s), the longest {after.get('max_call_ms')} ms")
    return code


def _retry(args: argparse.Namespace) -> int:
    from actions.queue_ops import RETRY, RETRY_ALL

    if args.job_id and (args.all or args.reason):
        print("fleetdeck: refused: give a job id, or --all [--reason TEXT], not both", file=sys.stderr)
        return EXIT_REFUSED
    if args.job_id:
        return _act(args, RETRY, job_id=args.job_id)
    if not args.all:
        print("fleetdeck: refused: give a job id, or --all to retry every failed job", file=sys.stderr)
        return EXIT_REFUSED
    return _act(args, RETRY_ALL, reason=args.reason or "")


def _promote(args: argparse.Namespace) -> int:
    from actions.queue_ops import PROMOTE, PROMOTE_ALL

    if bool(args.job_id) == bool(args.all):
        print("fleetdeck: refused: give a job id or --all", file=sys.stderr)
        return EXIT_REFUSED
    return _act(args, PROMOTE, job_id=args.job_id) if args.job_id else _act(args, PROMOTE_ALL)


def _simple(action_name: str, **fixed: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        import actions.queue_ops as queue_ops

        params = {name: getattr(args, attr) for name, attr in fixed.items()}
        return _act(args, getattr(queue_ops, action_name), **params)

    return handler


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = subparsers.add_parser("queue", help="browse BullMQ queues and act on their jobs (retry, clean, ...)")
    verbs = queue.add_subparsers(dest="queue_verb", metavar="VERB", required=True)

    def reader(name: str, help_text: str, with_queue: bool = True) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        if with_queue:
            parser.add_argument("queue", metavar="QUEUE", help="[redis/][prefix:]name")
        parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    def actor(name: str, help_text: str, confirm: bool = True) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        parser.add_argument("queue", metavar="QUEUE", help="[redis/][prefix:]name")
        parser.add_argument("--dry-run", action="store_true", help="print the plan (how many jobs) and exit")
        parser.add_argument("--batch", type=int, default=1000, help="jobs per Redis call (default 1000, max 5000)")
        if confirm:
            parser.add_argument("--yes", "-y", action="store_true", help="skip the typed confirmation")
        else:
            parser.set_defaults(yes=True)
        return parser

    reader("ls", "every queue with its counts per state", with_queue=False).set_defaults(handler=_reading(_ls))

    jobs = reader("jobs", "one page of a state's jobs, newest first")
    jobs.add_argument("state", choices=["waiting", "active", "delayed", "prioritized", "waiting-children",
                                        "completed", "failed", "paused"])
    jobs.add_argument("--offset", type=int, default=0)
    jobs.add_argument("--limit", type=int, default=25)
    jobs.add_argument("--search", default="", help="job name or id contains this (case-insensitive)")
    jobs.set_defaults(handler=_reading(_jobs))

    job = reader("job", "one job: data, opts, return value, failure, stack trace, logs, parent/children")
    job.add_argument("job_id")
    job.add_argument("--max-bytes", type=int, default=64 * 1024, help="cut each field to this size")
    job.set_defaults(handler=_reading(_job))

    reasons = reader("reasons", "failed jobs grouped by the first line of their failure reason")
    reasons.add_argument("--sample", type=int, default=10_000, help="how many of the newest failed jobs to read")
    reasons.set_defaults(handler=_reading(_reasons))

    retry = actor("retry", "retry one failed job, or --all of them (optionally only --reason TEXT)", confirm=False)
    retry.add_argument("job_id", nargs="?")
    retry.add_argument("--all", action="store_true")
    retry.add_argument("--reason", default="", help="with --all: only jobs whose failure's first line is this")
    retry.set_defaults(handler=_retry)

    remove = actor("remove", "remove one job (not while a worker holds it)")
    remove.add_argument("job_id")
    remove.set_defaults(handler=_simple("REMOVE", job_id="job_id"))

    promote = actor("promote", "run one delayed job now, or --all of them", confirm=False)
    promote.add_argument("job_id", nargs="?")
    promote.add_argument("--all", action="store_true")
    promote.set_defaults(handler=_promote)

    actor("pause", "pause the queue (workers take no new job)", confirm=False).set_defaults(
        handler=_simple("PAUSE"))
    actor("resume", "resume a paused queue", confirm=False).set_defaults(handler=_simple("RESUME"))

    clean = actor("clean", "delete completed or failed jobs older than an age, at most --limit")
    clean.add_argument("--state", required=True, choices=["completed", "failed"])
    clean.add_argument("--older-than", type=parse_age, default=0, help="age: 90, 90s, 15m, 2h, 7d (default 0)")
    clean.add_argument("--limit", type=int, default=10_000, help="delete at most this many (default 10,000)")
    clean.set_defaults(handler=_simple("CLEAN", state="state", older_than_s="older_than", limit="limit"))

    drain = actor("drain", "delete the waiting (and prioritized) jobs; --delayed also the delayed ones")
    drain.add_argument("--delayed", action="store_true")
    drain.set_defaults(handler=_simple("DRAIN", delayed="delayed"))

    obliterate = actor("obliterate", "destroy the queue and all its jobs (admin)")
    obliterate.add_argument("--force", action="store_true", help="even with active jobs")
    obliterate.set_defaults(handler=_simple("OBLITERATE", force="force"))
