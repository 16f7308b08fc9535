"""Test runs (load, readiness, scaling) that outlive a page view: a background thread writes progress to the store.

The dashboard page only reads `testrun:<id>` documents and writes a cancel request; the thread that owns the run
lives in this plain module, so a rerun of the page (or another browser session, or another dashboard process on
the same store) sees the same progress and can cancel it. The CLI runs the same `execute()` in the foreground,
so its runs are listed on the page too.

Document `testrun:<id>`: {run_id, kind, params, who, state (running|done|failed|cancelled), started_at,
updated_at, finished_at, progress (0..1), message, timeline [{elapsed_s, rps, p95_ms, errors, ...}], steps
[scaling steps], result {...}, passed, error}. `testruns:index` keeps the newest ids.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

from actions.guarded import START_TEST, STOP_TEST, authorize, guarded
from core.config import FleetConfig
from core.store import RecordsReader, Store

log = logging.getLogger(__name__)

KINDS = ("load", "readiness", "scaling")
INDEX_KEY = "testruns:index"
INDEX_KEEP = 200
TIMELINE_KEEP = 1200  # points (~10 min at 0.5 s)
SAVE_EVERY_S = 0.5
CANCEL_POLL_S = 0.3

_index_lock = threading.Lock()
_threads: dict[str, tuple[threading.Thread, threading.Event]] = {}


def doc_key(run_id: str) -> str:
    return f"testrun:{run_id}"


def cancel_key(run_id: str) -> str:
    return f"testrun:{run_id}:cancel"


def get_run(store: RecordsReader, run_id: str) -> dict[str, Any] | None:
    return store.get_kv(doc_key(run_id))


def list_runs(store: RecordsReader, limit: int = 50, kind: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    ids = (store.get_kv(INDEX_KEY) or {}).get("ids", [])
    runs = []
    for run_id in reversed(ids):
        doc = get_run(store, run_id)
        if doc and (kind is None or doc.get("kind") == kind):
            runs.append(doc)
        if len(runs) >= limit:
            break
    return runs


def request_cancel(store: Store, run_id: str, principal: Any) -> None:
    """Ask a run to stop (any process); its owner notices within ~0.3 s and restores what it changed.

    Needs the stop_test permission; the request (or its refusal) is audited.
    """

    def ask() -> None:
        store.put_kv(cancel_key(run_id), {"by": principal.name, "ts": time.time()})
        entry = _threads.get(run_id)
        if entry:
            entry[1].set()

    guarded(store, principal, STOP_TEST, f"test/{run_id}", {"run_id": run_id}, ask)


def _register(store: Store, run_id: str) -> None:
    with _index_lock:
        ids = (store.get_kv(INDEX_KEY) or {}).get("ids", [])
        ids = [*ids, run_id][-INDEX_KEEP:]
        store.put_kv(INDEX_KEY, {"ids": ids})


class Recorder:
    """Keeps one run's document up to date in the store, throttled so a fast progress stream stays cheap."""

    def __init__(self, store: Store, run_id: str, kind: str, params: dict[str, Any], who: str) -> None:
        self.store = store
        now = time.time()
        self.doc: dict[str, Any] = {"run_id": run_id, "kind": kind, "params": params, "who": who,
                                    "state": "running", "started_at": now, "updated_at": now, "finished_at": None,
                                    "progress": 0.0, "message": "starting", "timeline": [], "steps": [],
                                    "result": None, "passed": None, "error": None}
        self._last_save = 0.0
        self._lock = threading.Lock()
        _register(store, run_id)
        self.save(force=True)

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.doc.update(fields)
        self.save()

    def point(self, point: dict[str, Any]) -> None:
        with self._lock:
            timeline = self.doc["timeline"]
            timeline.append(point)
            del timeline[:-TIMELINE_KEEP]
        self.save()

    def save(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_save < SAVE_EVERY_S:
            return
        with self._lock:
            self.doc["updated_at"] = now
            snapshot = dict(self.doc)
        self._last_save = now
        try:
            self.store.put_kv(doc_key(snapshot["run_id"]), snapshot)
        except Exception:  # progress is best effort; the final save is forced and retried by the caller
            log.exception("could not save test run progress")

    def finish(self, state: str, **fields: Any) -> None:
        self.update(state=state, finished_at=time.time(), **fields)
        self.save(force=True)


def new_run_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _watch_cancel(store: Store, run_id: str, cancel: threading.Event, done: threading.Event) -> None:
    while not done.wait(CANCEL_POLL_S):
        with contextlib.suppress(Exception):
            if store.get_kv(cancel_key(run_id)):
                cancel.set()
                return


def execute(config: FleetConfig, store: Store, principal: Any, kind: str, params: dict[str, Any], *,
            run_id: str | None = None, cancel: threading.Event | None = None,
            echo: Any = None) -> dict[str, Any]:
    """Runs one test to the end in this thread, recording it; returns the final document.

    `echo(event: dict)` additionally receives every progress event (the CLI prints them).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown test kind {kind!r}; known: {', '.join(KINDS)}")
    run_id = run_id or new_run_id(kind)
    return guarded(store, principal, START_TEST, f"test/{run_id}", {"kind": kind, "run_id": run_id, **params},
                   lambda: _execute(config, store, principal, kind, params, run_id, cancel, echo),
                   after=lambda doc: {"state": doc.get("state"), "passed": doc.get("passed")})


def _execute(config: FleetConfig, store: Store, principal: Any, kind: str, params: dict[str, Any], run_id: str,
             cancel: threading.Event | None, echo: Any) -> dict[str, Any]:
    cancel = cancel or threading.Event()
    recorder = Recorder(store, run_id, kind, params, getattr(principal, "name", str(principal)))
    done = threading.Event()
    watcher = threading.Thread(target=_watch_cancel, args=(store, run_id, cancel, done), daemon=True,
                               name=f"testrun-cancel-{run_id}")
    watcher.start()
    try:
        if kind == "load":
            result, passed = _run_load(config, recorder, params, cancel, echo)
        elif kind == "readiness":
            result, passed = _run_readiness(config, store, principal, recorder, params, cancel, echo)
        else:
            result, passed = _run_scaling(config, store, principal, recorder, params, cancel, echo)
        state = "cancelled" if cancel.is_set() else ("failed" if result.get("state") == "failed" else "done")
        recorder.finish(state, result=result, passed=passed and state == "done", progress=1.0,
                        message=f"{state}: {'pass' if passed else 'not passed'}", error=result.get("error"))
    except Exception as error:
        log.exception("test run %s failed", run_id)
        recorder.finish("failed", error=f"{type(error).__name__}: {error}", passed=False,
                        message=f"failed: {error}")
    finally:
        done.set()
    return recorder.doc


def start(config: FleetConfig, store: Store, principal: Any, kind: str, params: dict[str, Any]) -> str:
    """Starts a run in a background thread of this process and returns its id at once (role checked first)."""
    if kind not in KINDS:
        raise ValueError(f"unknown test kind {kind!r}; known: {', '.join(KINDS)}")
    run_id = new_run_id(kind)
    authorize(store, principal, START_TEST, f"test/{run_id}", {"kind": kind, "run_id": run_id, **params})
    cancel = threading.Event()
    thread = threading.Thread(target=execute, args=(config, store, principal, kind, params),
                              kwargs={"run_id": run_id, "cancel": cancel}, daemon=True, name=f"testrun-{run_id}")
    _threads[run_id] = (thread, cancel)
    thread.start()
    return run_id


def wait(run_id: str, timeout_s: float) -> bool:
    """Joins a run started by start() in this process; True when it has ended."""
    entry = _threads.get(run_id)
    if entry is None:
        return True
    entry[0].join(timeout_s)
    return not entry[0].is_alive()


# ------------------------------------------------------------------------------------------------ the three kinds


def _emit(echo: Any, event: dict[str, Any]) -> None:
    if echo is not None:
        echo(event)


def load_spec_from(config: FleetConfig, params: dict[str, Any]) -> Any:
    """A LoadSpec from page/CLI parameters: url (default: through the LB + path), shape, rate, duration..."""
    from actions.backends.nginx import loopback_url
    from actions.proving.loadgen import LoadSpec, parse_shape

    url = params.get("url")
    if not url:
        if config.load_balancer is None:
            raise ValueError("no load_balancer in the configuration: give a url")
        url = loopback_url(config.load_balancer.listen, params.get("path", "/work/echo"))
    shape = parse_shape(params["shape"]) if params.get("shape") else None
    duration = float(params.get("duration_s") or (shape.duration_s if shape else 10.0))
    method = str(params.get("method", "POST" if "/work/echo" in url else "GET")).upper()
    body = str(params.get("body", "{}" if method in ("POST", "PUT", "PATCH") else "")).encode()
    headers = (("Content-Type", "application/json"),) if body else ()
    return LoadSpec(url=url, method=method, body=body, headers=headers,
                    connections=int(params.get("connections", 16)), duration_s=duration,
                    max_requests=int(params.get("max_requests", 1_000_000)),
                    rate=float(params["rate"]) if params.get("rate") and shape is None else None, shape=shape,
                    workers=int(params.get("workers", 1)), timeout_s=float(params.get("timeout_s", 5.0)))


def _run_load(config: FleetConfig, recorder: Recorder, params: dict[str, Any], cancel: threading.Event,
              echo: Any) -> tuple[dict[str, Any], bool]:
    from actions.proving.loadgen import run_load

    spec = load_spec_from(config, params)
    recorder.update(params={**params, "url": spec.url, "method": spec.method})

    def on_progress(point: Any) -> None:
        data = point.to_dict()
        recorder.doc["progress"] = min(1.0, data["elapsed_s"] / spec.duration_s)
        recorder.doc["message"] = f"{data['rps']:.0f} req/s, p95 {data['p95_ms']:.1f} ms, {data['errors']} errors"
        recorder.point(data)
        _emit(echo, {"kind": "load", **data})

    result = run_load(spec, progress=on_progress, cancel=cancel, handle_sigint=False)
    data = result.to_dict()
    data.pop("histogram", None)
    data.pop("timeline", None)
    max_error_ratio = float(params.get("max_error_ratio", 0.0))
    p95_limit = params.get("max_p95_ms")
    passed = result.requests > 0 and result.errors <= max_error_ratio * result.requests and (
        p95_limit is None or result.latency_ms.get("p95", 0.0) <= float(p95_limit))
    return data, passed


def _run_readiness(config: FleetConfig, store: Store, principal: Any, recorder: Recorder, params: dict[str, Any],
                   cancel: threading.Event, echo: Any) -> tuple[dict[str, Any], bool]:
    from actions.proving.readiness import ReadinessOptions, run_readiness

    options = ReadinessOptions(**{k: v for k, v in params.items() if k in ReadinessOptions.__dataclass_fields__})

    def on_progress(event: dict[str, Any]) -> None:
        recorder.update(progress=event["index"] / max(event["total"], 1), message=event["message"])
        _emit(echo, {"kind": "readiness", **event})

    report = run_readiness(config, store, principal, params.get("rules"), options, progress=on_progress,
                           cancel=cancel, run_id=f"readiness-{recorder.doc['run_id'].split('-', 1)[1]}")
    return report.as_dict(), report.passed


def _run_scaling(config: FleetConfig, store: Store, principal: Any, recorder: Recorder, params: dict[str, Any],
                 cancel: threading.Event, echo: Any) -> tuple[dict[str, Any], bool]:
    from actions.proving.scaling import ScalingOptions, run_scaling

    options = ScalingOptions(**{k: v for k, v in params.items() if k in ScalingOptions.__dataclass_fields__})
    steps: list[dict[str, Any]] = []

    def on_progress(event: dict[str, Any]) -> None:
        total = max(int(event.get("total_steps", 1)), 1)
        fields: dict[str, Any] = {"message": event.get("message", recorder.doc["message"])}
        if "step" in event:
            live = event.get("live")
            within = min(1.0, live["elapsed_s"] / options.step_seconds) if live else 0.0
            fields["progress"] = min(1.0, (event["step"] + (within if event.get("phase") == "load" else 0)) / total)
        if event.get("phase") == "step_done":
            steps.append(event["result"])
            fields["steps"] = list(steps)
        if event.get("live"):
            recorder.point({**event["live"], "replicas": event.get("replicas")})
        recorder.update(**fields)
        _emit(echo, {"kind": "scaling", **event})

    report = run_scaling(config, store, principal, options, progress=on_progress, cancel=cancel,
                         run_id=f"scaling-{recorder.doc['run_id'].split('-', 1)[1]}")
    data = report.as_dict()
    recorder.update(steps=report.steps)
    return data, report.passed


__all__ = ["KINDS", "execute", "get_run", "list_runs", "load_spec_from", "request_cancel", "start", "wait"]
