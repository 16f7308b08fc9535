#!/usr/bin/env python3
"""fleetdeck's sample app: a small web service mirroring the reference Express stack (docs/shared DESIGN §1).

Run it straight from the repo, no install step:

    .venv/bin/python compose/sampleapp/app.py --port 9101 --instance-id web-1 [--host 127.0.0.1] [--misbehave]

Configuration comes from the environment (see `Settings.from_env`). The app is deliberately "stateless" the way
the reference stack claims to be: sessions in Postgres or Redis, uploads base64 in Postgres, jobs on BullMQ.
`--misbehave` keeps sessions and uploads in this process / on this instance's local disk instead, so fleetdeck's
readiness scorecard has something real to catch.

Size (~870 lines, above the ~500 the codebase aims for): one self-contained file on purpose — it is fleetdeck's
stand-in for a customer's app, run straight from the repo as a script and copied, with only its requirements,
into its own image (compose/Dockerfile.sampleapp); it imports nothing from fleetdeck.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from bullmq import Queue, Worker
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool, PoolTimeout

try:  # uvloop roughly halves the per-request overhead; the app still runs without it
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in requirements.txt, this is for odd platforms
    uvloop = None  # type: ignore[assignment]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Probe endpoints do not count as in-flight work: a drain polls /health until inFlight reaches 0, and the
# poll itself must not keep that number above zero.
PROBE_PATHS = frozenset({"/health", "/livez", "/readyz", "/metrics"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SCHEMA_LOCK_KEY = 7_311_202_401  # any constant: serialises CREATE TABLE when several replicas boot together
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS sessions (
    sid    varchar      NOT NULL PRIMARY KEY,
    sess   json         NOT NULL,
    expire timestamp(6) NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expire_idx ON sessions (expire);
CREATE TABLE IF NOT EXISTS uploads (
    id           text        NOT NULL PRIMARY KEY,
    filename     text,
    content_type text        NOT NULL,
    size         integer     NOT NULL,
    data         text        NOT NULL,
    instance_id  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
"""
INDEX_HTML = (
    "<!doctype html><html><head><meta charset='utf-8'><title>fleetdeck sample app</title></head>"
    "<body><h1>fleetdeck sample app</h1><p>instance {instance} · version {version}</p></body></html>"
)


def log(message: str) -> None:
    """Start/stop/error lines only: per-request logging would slow the load tests down."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f"{stamp} sampleapp {message}", file=sys.stderr, flush=True)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    instance_id: str
    host: str
    port: int
    misbehave: bool
    database_url: str
    redis_url: str
    bullmq_prefix: str
    session_store: str  # postgres | redis
    session_prefix: str  # Redis key prefix for sessions (connect-redis uses "sess:")
    session_secret: str  # signs the sid cookie; every replica must share it, like express-session's secret
    session_ttl_s: int
    version: str
    service_name: str
    queues: tuple[str, ...]
    worker_concurrency: int
    worker_rate_max: int  # jobs per worker_rate_duration_ms; 0 disables the BullMQ limiter
    worker_rate_duration_ms: int
    worker_metrics_points: int  # BullMQ metrics:* data points (one per minute); 0 disables them
    job_keep: int  # completed/failed jobs kept per queue so states stay queryable without growing forever
    keepalive_timeout_s: float
    pool_min: int
    pool_max: int
    pool_timeout_s: float
    check_timeout_s: float
    shutdown_timeout_s: float
    drain_delay_s: float  # keep serving (readyz 503) this long after SIGTERM before closing the listener
    max_body_bytes: int

    @classmethod
    def from_env(cls, args: argparse.Namespace) -> Settings:
        store = os.environ.get("SESSION_STORE", "postgres").strip().lower() or "postgres"
        if store not in ("postgres", "redis"):
            raise SystemExit(f"SESSION_STORE must be postgres or redis, got {store!r}")
        queues = tuple(q.strip() for q in os.environ.get("QUEUES", "emails,reports").split(",") if q.strip())
        return cls(
            instance_id=args.instance_id,
            host=args.host,
            port=args.port,
            misbehave=args.misbehave,
            database_url=os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/postgres"),
            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            bullmq_prefix=os.environ.get("BULLMQ_PREFIX", "bull") or "bull",
            session_store=store,
            session_prefix=os.environ.get("SESSION_PREFIX", "sess:"),
            session_secret=os.environ.get("SESSION_SECRET", "fleetdeck-sample-secret"),
            session_ttl_s=_env_int("SESSION_TTL_S", 86400),
            version=os.environ.get("APP_VERSION", "0.0.0-dev"),
            service_name=os.environ.get("SERVICE_NAME", "web") or "web",
            queues=queues,
            worker_concurrency=max(1, _env_int("WORKER_CONCURRENCY", 10)),
            worker_rate_max=_env_int("WORKER_RATE_MAX", 0),
            worker_rate_duration_ms=_env_int("WORKER_RATE_DURATION_MS", 60000),
            worker_metrics_points=_env_int("WORKER_METRICS_POINTS", 60),
            job_keep=_env_int("JOB_KEEP", 10000),
            keepalive_timeout_s=_env_float("KEEPALIVE_TIMEOUT_S", 5.0),
            pool_min=_env_int("POOL_MIN", 1),
            pool_max=max(1, _env_int("POOL_MAX", 5)),
            pool_timeout_s=_env_float("POOL_TIMEOUT_S", 5.0),
            check_timeout_s=_env_float("HEALTH_CHECK_TIMEOUT_S", 1.5),
            shutdown_timeout_s=_env_float("SHUTDOWN_TIMEOUT_S", 20.0),
            drain_delay_s=_env_float("DRAIN_DELAY_S", 0.0),
            max_body_bytes=_env_int("MAX_BODY_BYTES", 10 * 1024 * 1024),
        )


# --------------------------------------------------------------------------------------------------- metrics
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Duration of HTTP requests in seconds",
    ["method", "route", "status_code"],
    buckets=(0.001, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests being served (probes excluded)")
EVENTLOOP_LAG = Gauge("eventloop_lag_seconds", "Event loop lag in seconds: worst timer overshoot of the last 5 s")
JOBS_PROCESSED = Counter("bullmq_jobs_processed_total", "Jobs this instance's workers finished", ["queue", "result"])
APP_INFO = Gauge("app_info", "Constant 1, labelled with the build and instance", ["version", "instance_id", "service"])


class PoolCollector(Collector):
    """node-postgres style pool gauges, read from psycopg_pool at scrape time (get_stats omits zero keys)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> list[GaugeMetricFamily]:  # type: ignore[override]
        stats = self.state.pool_stats()
        return [
            GaugeMetricFamily("db_pool_total", "Connections the pool holds", value=stats["totalCount"]),
            GaugeMetricFamily("db_pool_idle", "Idle connections in the pool", value=stats["idleCount"]),
            GaugeMetricFamily("db_pool_waiting", "Requests waiting for a pool connection", value=stats["waitingCount"]),
            GaugeMetricFamily("db_pool_max", "Maximum pool size", value=stats["max"]),
        ]


# --------------------------------------------------------------------------------------------------- state
class AppState:
    """Everything one instance owns; created before the listener opens, filled in by the start-up task."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.pool = AsyncConnectionPool(
            conninfo=settings.database_url,
            min_size=min(settings.pool_min, settings.pool_max),
            max_size=settings.pool_max,
            timeout=settings.pool_timeout_s,
            kwargs={"application_name": settings.instance_id, "autocommit": True},
            name=f"sampleapp-{settings.instance_id}",
            open=False,
        )
        self.redis = aioredis.from_url(
            settings.redis_url, socket_timeout=settings.check_timeout_s * 2, socket_connect_timeout=2
        )
        self.queues: dict[str, Queue] = {}
        self.workers: list[Worker] = []
        # --misbehave state: lives in this process / on this instance's disk only
        self.memory_sessions: dict[str, dict[str, Any]] = {}
        self.local_upload_dir: Path | None = None
        self.lag_s = 0.0
        self._duration_children: dict[tuple[str, str, int], Any] = {}

    def pool_stats(self) -> dict[str, int]:
        stats = self.pool.get_stats()
        return {
            "totalCount": int(stats.get("pool_size", 0)),
            "idleCount": int(stats.get("pool_available", 0)),
            "waitingCount": int(stats.get("requests_waiting", 0)),
            "max": self.settings.pool_max,
        }

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        # labels() costs a lock and a dict build per call; cache the children (bounded: routes × methods × statuses)
        key = (method, route, status)
        child = self._duration_children.get(key)
        if child is None:
            child = HTTP_DURATION.labels(method=method, route=route, status_code=str(status))
            self._duration_children[key] = child
        child.observe(seconds)


STATE_KEY = web.AppKey("state", AppState)


def state_of(request: web.Request) -> AppState:
    return request.app[STATE_KEY]


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# --------------------------------------------------------------------------------------------------- middleware
@web.middleware
async def instrument(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Times every request, counts in-flight work, and turns backend outages into clean 503s."""
    state = state_of(request)
    is_probe = request.path in PROBE_PATHS
    if not is_probe:
        state.in_flight += 1
        HTTP_IN_FLIGHT.inc()
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log(f"error {request.method} {request.path}: database unavailable: {exc}")
            response = json_error(503, f"database unavailable: {type(exc).__name__}")
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log(f"error {request.method} {request.path}: redis unavailable: {exc}")
            response = json_error(503, f"redis unavailable: {type(exc).__name__}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log(f"error {request.method} {request.path}: {type(exc).__name__}: {exc}")
            response = json_error(500, "internal error")
        status = response.status
        return response
    finally:
        if not is_probe:
            state.in_flight -= 1
            HTTP_IN_FLIGHT.dec()
        matched = request.match_info.route.resource
        route = matched.canonical if matched is not None else "unmatched"  # unknown paths must not add labels
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        state.observe(method, route, status, time.perf_counter() - started)


async def add_identity_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, error pages included, names the instance and echoes the request id."""
    response.headers["X-Instance-Id"] = request.app[STATE_KEY].settings.instance_id
    request_id = request.headers.get("X-Request-Id")
    if request_id:
        response.headers["X-Request-Id"] = request_id


# --------------------------------------------------------------------------------------------------- probes
def memory_usage() -> dict[str, int]:
    try:
        with open("/proc/self/statm") as statm:
            vms_pages, rss_pages = (int(x) for x in statm.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        rss, vms = rss_pages * page, vms_pages * page
    except OSError:  # not Linux: fall back to the peak, which is the best getrusage offers
        rss = vms = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss": rss, "vms": vms, "maxRss": max_rss}


async def timed_check(name: str, component_type: str, probe: Awaitable[Any], timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    entry: dict[str, Any] = {"componentId": name, "componentType": component_type, "observedUnit": "ms"}
    try:
        await asyncio.wait_for(probe, timeout_s)
        entry["status"] = "pass"
    except Exception as exc:
        entry["status"] = "fail"
        entry["output"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    entry["observedValue"] = round((time.perf_counter() - started) * 1000, 3)
    entry["time"] = datetime.now(UTC).isoformat()
    return entry


async def postgres_ping(state: AppState) -> None:
    async with state.pool.connection(timeout=state.settings.check_timeout_s) as conn:
        await conn.execute("SELECT 1")


async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    settings = state.settings
    pg_check, redis_check = await asyncio.gather(
        timed_check("postgres", "datastore", postgres_ping(state), settings.check_timeout_s),
        timed_check("redis", "datastore", state.redis.ping(), settings.check_timeout_s),
    )
    # Liveness, readiness and dependencies are separate answers (like Kubernetes' liveness/readiness probes):
    # a ready instance that loses Redis or Postgres is still alive and still serves what it can, so it reports
    # `warn` with the failing check named, not `fail` — restarting it would not bring the dependency back.
    # `fail` (HTTP 503) is for an instance that cannot do its job on its own account: it never became ready.
    dependencies = "fail" if "fail" in (pg_check["status"], redis_check["status"]) else "pass"
    readiness = "pass" if state.ready and not state.draining else "fail"
    if dependencies == "fail" and not state.ready and not state.draining:
        status = "fail"
    elif dependencies == "fail" or state.draining or not state.ready:
        status = "warn"  # IETF: warn is healthy but degraded; HTTP stays 200 so the body is still read
    else:
        status = "pass"
    failed = status == "fail"
    body = {
        "status": status,
        "liveness": "pass",  # this process answers: what /livez says
        "readiness": readiness,  # what /readyz says: not starting, not draining
        "dependencies": dependencies,  # the worst of `checks`
        "version": settings.version,
        "releaseId": settings.version,
        "serviceId": settings.service_name,
        "instanceId": settings.instance_id,
        "description": "fleetdeck sample app",
        "pid": os.getpid(),
        "uptime": round(time.time() - state.started_at, 3),
        "inFlight": state.in_flight,
        "draining": state.draining,
        "ready": state.ready,
        "misbehave": settings.misbehave,
        "eventLoopLag": round(state.lag_s, 6),
        "memory": memory_usage(),
        "database": {"pool": state.pool_stats()},
        "checks": {"postgres:responseTime": [pg_check], "redis:responseTime": [redis_check]},
    }
    return web.json_response(body, status=503 if failed else 200, content_type="application/health+json")


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "pass", "instanceId": state_of(request).settings.instance_id})


async def readyz(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.draining:
        return web.json_response({"status": "draining", "ready": False}, status=503)
    if not state.ready:
        return web.json_response({"status": "starting", "ready": False}, status=503)
    return web.json_response({"status": "ready", "ready": True})


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(REGISTRY)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --------------------------------------------------------------------------------------------------- sessions
def sign_sid(secret: str, sid: str) -> str:
    mac = hmac.new(secret.encode(), sid.encode(), hashlib.sha256).digest()[:18]
    return f"{sid}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def unsign_sid(secret: str, cookie: str) -> str | None:
    sid, _, _ = cookie.partition(".")
    return sid if sid and hmac.compare_digest(sign_sid(secret, sid), cookie) else None


async def save_session(state: AppState, sid: str, session: dict[str, Any]) -> None:
    settings = state.settings
    if settings.misbehave:
        state.memory_sessions[sid] = session
    elif settings.session_store == "redis":
        await state.redis.set(settings.session_prefix + sid, json.dumps(session), ex=settings.session_ttl_s)
    else:
        async with state.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO sessions (sid, sess, expire) VALUES (%s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (sid) DO UPDATE SET sess = EXCLUDED.sess, expire = EXCLUDED.expire",
                (sid, json.dumps(session), settings.session_ttl_s),
            )


async def load_session(state: AppState, sid: str) -> dict[str, Any] | None:
    settings = state.settings
    if settings.misbehave:
        return state.memory_sessions.get(sid)
    if settings.session_store == "redis":
        raw = await state.redis.get(settings.session_prefix + sid)
        return json.loads(raw) if raw else None
    async with state.pool.connection() as conn:
        cursor = await conn.execute("SELECT sess FROM sessions WHERE sid = %s AND expire >= now()", (sid,))
        row = await cursor.fetchone()
    return row[0] if row else None


async def delete_session(state: AppState, sid: str) -> None:
    settings = state.settings
    if settings.misbehave:
        state.memory_sessions.pop(sid, None)
    elif settings.session_store == "redis":
        await state.redis.delete(settings.session_prefix + sid)
    else:
        async with state.pool.connection() as conn:
            await conn.execute("DELETE FROM sessions WHERE sid = %s", (sid,))


def session_id_of(request: web.Request) -> str | None:
    cookie = request.cookies.get("sid")
    return unsign_sid(state_of(request).settings.session_secret, cookie) if cookie else None


async def login(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await request.json()
    except ValueError:
        return json_error(400, 'expected a JSON body {"user": "..."}')
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not user.strip() or len(user) > 200:
        return json_error(400, 'expected a JSON body {"user": "<1..200 characters>"}')
    sid = secrets.token_urlsafe(24)
    session = {"user": user, "createdBy": state.settings.instance_id, "createdAt": time.time()}
    await save_session(state, sid, session)
    response = web.json_response({"user": user, "instance": state.settings.instance_id})
    response.set_cookie(
        "sid", sign_sid(state.settings.session_secret, sid),
        max_age=state.settings.session_ttl_s, httponly=True, samesite="Lax", path="/",
    )
    return response


async def me(request: web.Request) -> web.Response:
    state = state_of(request)
    sid = session_id_of(request)
    try:
        # bounded: a session store that silently stopped answering must not hold the request for ever
        session = await asyncio.wait_for(load_session(state, sid), state.settings.pool_timeout_s) if sid else None
    except (TimeoutError, psycopg.Error, PoolTimeout, redis.exceptions.RedisError) as exc:
        # "cannot tell right now", not "logged out": a 401 would make clients drop a perfectly valid session
        log(f"error GET /api/me: session store unavailable: {type(exc).__name__}: {exc}")
        response = json_error(503, f"session store unavailable: {type(exc).__name__}")
        response.headers["Retry-After"] = "5"
        return response
    if session is None:
        return json_error(401, "not logged in")
    return web.json_response(
        {"user": session["user"], "instance": state.settings.instance_id, "createdBy": session.get("createdBy")}
    )


async def logout(request: web.Request) -> web.Response:
    sid = session_id_of(request)
    if sid:
        await delete_session(state_of(request), sid)
    response = web.json_response({"ok": True})
    response.del_cookie("sid", path="/")
    return response


# --------------------------------------------------------------------------------------------------- uploads
async def read_upload(request: web.Request) -> tuple[bytes, str, str | None]:
    """Body bytes, content type and file name, from a multipart form (first file part) or a raw body."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if part.filename is not None or part.name in ("file", "upload"):
                data = await part.read(decode=False)  # type: ignore[union-attr]
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                return bytes(data), content_type, part.filename  # type: ignore[union-attr]
        raise web.HTTPBadRequest(text="multipart body holds no file part")
    data = await request.read()
    filename = request.query.get("filename") or request.headers.get("X-Filename")
    return data, request.content_type or "application/octet-stream", filename


async def create_upload(request: web.Request) -> web.Response:
    state = state_of(request)
    data, content_type, filename = await read_upload(request)
    upload_id = uuid.uuid4().hex
    if state.settings.misbehave and state.local_upload_dir is not None:
        # the anti-pattern on purpose: another instance cannot see this instance's disk
        (state.local_upload_dir / upload_id).write_bytes(data)
        (state.local_upload_dir / f"{upload_id}.type").write_text(content_type)
    else:
        async with state.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO uploads (id, filename, content_type, size, data, instance_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (upload_id, filename, content_type, len(data), base64.b64encode(data).decode(),
                 state.settings.instance_id),
            )
    return web.json_response(
        {"id": upload_id, "size": len(data), "instance": state.settings.instance_id}, status=201
    )


async def get_upload(request: web.Request) -> web.Response:
    state = state_of(request)
    upload_id = request.match_info["id"]
    if not upload_id.isalnum() or len(upload_id) > 64:
        return json_error(404, "no such upload")
    if state.settings.misbehave and state.local_upload_dir is not None:
        path = state.local_upload_dir / upload_id
        if not path.is_file():
            return json_error(404, "no such upload")
        type_file = state.local_upload_dir / f"{upload_id}.type"
        content_type = type_file.read_text() if type_file.is_file() else "application/octet-stream"
        return web.Response(body=path.read_bytes(), content_type=content_type)
    async with state.pool.connection() as conn:
        cursor = await conn.execute("SELECT content_type, data FROM uploads WHERE id = %s", (upload_id,))
        row = await cursor.fetchone()
    if row is None:
        return json_error(404, "no such upload")
    return web.Response(body=base64.b64decode(row[1]), content_type=row[0])


# --------------------------------------------------------------------------------------------------- jobs
def queue_of(request: web.Request) -> Queue:
    state = state_of(request)
    name = request.match_info["queue"]
    queue = state.queues.get(name)
    if queue is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"unknown queue {name!r}", "queues": list(state.settings.queues)}),
            content_type="application/json",
        )
    return queue


async def enqueue_job(request: web.Request) -> web.Response:
    state = state_of(request)
    queue = queue_of(request)
    data: Any = {}
    if request.can_read_body:
        try:
            data = await request.json()
        except ValueError:
            return json_error(400, "job data must be JSON")
    if not isinstance(data, dict):
        return json_error(400, "job data must be a JSON object")
    opts: dict[str, Any] = {"removeOnComplete": state.settings.job_keep, "removeOnFail": state.settings.job_keep}
    if "attempts" in request.query:
        opts["attempts"] = max(1, int(request.query["attempts"]))
    if "delay_ms" in request.query:
        opts["delay"] = max(0, int(request.query["delay_ms"]))
    job = await queue.add(request.query.get("name", "job"), data, opts)
    return web.json_response({"jobId": job.id, "queue": queue.name, "instance": state.settings.instance_id}, status=201)


async def job_status(request: web.Request) -> web.Response:
    queue = queue_of(request)
    job = await queue.getJob(request.match_info["id"])
    if job is None:
        return json_error(404, "no such job")
    return web.json_response(
        {
            "jobId": job.id,
            "queue": queue.name,
            "state": await job.getState(),
            "data": job.data,
            "returnvalue": job.returnvalue,
            "failedReason": job.failedReason or None,
            "attemptsMade": job.attemptsMade,
            "finishedOn": job.finishedOn,
        }
    )


def make_processor(state: AppState, queue_name: str) -> Callable[[Any, str], Awaitable[dict[str, Any]]]:
    async def process(job: Any, token: str) -> dict[str, Any]:
        data = job.data if isinstance(job.data, dict) else {}
        sleep_ms = float(data.get("sleep_ms", 50))
        await asyncio.sleep(max(0.0, min(sleep_ms, 600_000)) / 1000)
        if data.get("fail"):
            JOBS_PROCESSED.labels(queue=queue_name, result="failed").inc()
            raise RuntimeError(f"job {job.id} asked to fail")
        JOBS_PROCESSED.labels(queue=queue_name, result="completed").inc()
        return {"instance": state.settings.instance_id, "slept_ms": sleep_ms}

    return process


def start_workers(state: AppState) -> None:
    settings = state.settings
    connection = settings.redis_url
    for name in settings.queues:
        state.queues[name] = Queue(name, {"connection": connection, "prefix": settings.bullmq_prefix})
        opts: dict[str, Any] = {
            "connection": connection,
            "prefix": settings.bullmq_prefix,
            "concurrency": settings.worker_concurrency,
            # the Redis client name becomes <prefix>:<queue>:w:<instance>: fleetdeck counts workers per instance
            "name": settings.instance_id,
        }
        if settings.worker_metrics_points > 0:
            opts["metrics"] = {"maxDataPoints": settings.worker_metrics_points}
        if settings.worker_rate_max > 0:
            opts["limiter"] = {"max": settings.worker_rate_max, "duration": settings.worker_rate_duration_ms}
        worker = Worker(name, make_processor(state, name), opts)
        worker.on("error", lambda err, *_rest, queue=name: log(f"worker {queue} error: {err!r}"))
        state.workers.append(worker)


# --------------------------------------------------------------------------------------------------- load-test routes
async def work_echo(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await request.read()
    delay_ms = request.query.get("ms")
    if delay_ms:
        await asyncio.sleep(min(float(delay_ms), 600_000) / 1000)
    return web.json_response(
        {"instance": state.settings.instance_id, "request_id": request.headers.get("X-Request-Id"), "bytes": len(body)}
    )


async def work_cpu(request: web.Request) -> web.Response:
    # Burns CPU on the event loop on purpose, like synchronous work in a Node handler (visible as loop lag).
    burn_ms = min(float(request.query.get("ms", "10")), 10_000)
    deadline = time.perf_counter() + burn_ms / 1000
    spins = 0
    while time.perf_counter() < deadline:
        spins += 1
    return web.json_response({"instance": state_of(request).settings.instance_id, "ms": burn_ms, "spins": spins})


async def index(request: web.Request) -> web.Response:
    settings = state_of(request).settings
    return web.Response(
        text=INDEX_HTML.format(instance=settings.instance_id, version=settings.version), content_type="text/html"
    )


# --------------------------------------------------------------------------------------------------- lifecycle
def build_app(state: AppState) -> web.Application:
    app = web.Application(middlewares=[instrument], client_max_size=state.settings.max_body_bytes)
    app[STATE_KEY] = state
    app.on_response_prepare.append(add_identity_headers)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_post("/api/uploads", create_upload)
    app.router.add_get("/api/uploads/{id}", get_upload)
    app.router.add_post("/api/jobs/{queue}", enqueue_job)
    app.router.add_get("/api/jobs/{queue}/{id}", job_status)
    app.router.add_post("/work/echo", work_echo)
    app.router.add_get("/work/cpu", work_cpu)
    return app


async def ensure_schema(state: AppState) -> None:
    async with state.pool.connection() as conn, conn.transaction():
        # several replicas often boot together: CREATE ... IF NOT EXISTS still races on the catalog
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        await conn.execute(SCHEMA_SQL)


async def become_ready(state: AppState) -> None:
    """Retries until Postgres answers, so an instance started before its database still comes up."""
    attempt = 0
    while not state.draining:
        try:
            await ensure_schema(state)
            state.ready = True
            log(f"ready instance={state.settings.instance_id} port={state.settings.port}")
            return
        except Exception as exc:
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log(f"error: schema set-up failed (attempt {attempt}), retrying: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)


async def measure_loop_lag(state: AppState, interval_s: float = 0.25, window: int = 20) -> None:
    """Timer overshoot every 250 ms; the reported lag is the worst of the last 5 s, so a collector scraping
    every 5 s still sees a short stall (a CPU-bound handler) instead of the quiet moment after it."""
    loop = asyncio.get_running_loop()
    recent: deque[float] = deque(maxlen=window)
    while True:
        before = loop.time()
        await asyncio.sleep(interval_s)
        recent.append(max(0.0, loop.time() - before - interval_s))
        state.lag_s = max(recent)
        EVENTLOOP_LAG.set(state.lag_s)


async def prune_sessions(state: AppState, every_s: float = 900.0) -> None:
    """connect-pg-simple prunes expired sessions every 15 minutes; so do we (Redis expires them itself)."""
    while True:
        await asyncio.sleep(every_s)
        if state.ready and state.settings.session_store == "postgres" and not state.settings.misbehave:
            try:
                async with state.pool.connection() as conn:
                    await conn.execute("DELETE FROM sessions WHERE expire < now()")
            except Exception as exc:
                log(f"error: session prune failed: {type(exc).__name__}: {exc}")


async def close_workers(state: AppState, timeout_s: float) -> bool:
    """Stops taking jobs and waits for the active ones; True when all finished within the time."""
    if not state.workers:
        return True
    tasks = [asyncio.ensure_future(worker.close()) for worker in state.workers]
    done, pending = await asyncio.wait(tasks, timeout=max(0.1, timeout_s))
    for task in done:
        if task.exception() is not None:
            log(f"error: closing a worker failed: {task.exception()!r}")
    if pending:
        log(f"error: {len(pending)} worker(s) still busy at the shutdown deadline; force-closing")
        for worker in state.workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.close(force=True), 2.0)
        return False
    return True


async def serve(settings: Settings) -> int:
    state = AppState(settings)
    APP_INFO.labels(version=settings.version, instance_id=settings.instance_id, service=settings.service_name).set(1)
    REGISTRY.register(PoolCollector(state))
    if settings.misbehave:
        state.local_upload_dir = Path(tempfile.mkdtemp(prefix=f"sampleapp-{settings.instance_id}-"))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            state.draining = True  # readyz turns 503 at once, before anything else happens
            stop.set()
        else:
            log(f"second signal {signal.Signals(signum).name}: exiting now")
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    # in-flight requests get what is left after the drain delay, minus a second for closing pools
    http_grace_s = max(1.0, settings.shutdown_timeout_s - settings.drain_delay_s - 1.0)
    runner = web.AppRunner(
        build_app(state),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=settings.keepalive_timeout_s,
        shutdown_timeout=http_grace_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    await state.pool.open(wait=False)
    start_workers(state)
    background = [
        asyncio.ensure_future(become_ready(state)),
        asyncio.ensure_future(measure_loop_lag(state)),
        asyncio.ensure_future(prune_sessions(state)),
    ]
    log(
        f"listening http://{settings.host}:{settings.port} instance={settings.instance_id} version={settings.version}"
        f" sessions={'memory' if settings.misbehave else settings.session_store} queues={','.join(settings.queues)}"
        f" misbehave={settings.misbehave} pid={os.getpid()}"
    )

    await stop.wait()
    deadline = time.monotonic() + settings.shutdown_timeout_s
    log(f"draining on {signal.Signals(signals_seen[0]).name}: in_flight={state.in_flight}")
    if settings.drain_delay_s > 0:
        await asyncio.sleep(settings.drain_delay_s)
    # Workers stop fetching now and finish their active jobs while HTTP drains alongside.
    workers_closed = asyncio.ensure_future(close_workers(state, deadline - time.monotonic() - 1.0))
    http_started = time.monotonic()
    await runner.cleanup()  # closes the listener, closes idle keep-alives, waits for in-flight requests
    # aiohttp cancels what is still running after http_grace_s without telling us; the clock does
    http_clean = time.monotonic() - http_started < http_grace_s - 0.05
    if not http_clean:
        log(f"error: in-flight requests were cancelled after {http_grace_s:.1f}s")
    clean = await workers_closed and http_clean
    for task in background:
        task.cancel()
    for queue in state.queues.values():
        with contextlib.suppress(Exception):
            await queue.close()
    with contextlib.suppress(Exception):
        await state.redis.aclose()
    with contextlib.suppress(Exception):
        await state.pool.close(timeout=max(0.5, deadline - time.monotonic()))
    if state.local_upload_dir is not None:
        shutil.rmtree(state.local_upload_dir, ignore_errors=True)
    if time.monotonic() > deadline:
        clean = False
    log(f"stopped instance={settings.instance_id} clean={clean}")
    return 0 if clean else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="fleetdeck sample app (mirrors the reference Express stack)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--misbehave", action="store_true",
        help="keep sessions in process memory and uploads on local disk (breaks horizontal scaling on purpose)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env(parse_args(argv))
    try:
        if uvloop is not None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(serve(settings))
        return asyncio.run(serve(settings))
    except OSError as exc:  # e.g. the port is taken: say so in one line, not a traceback
        log(f"error: cannot start: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
