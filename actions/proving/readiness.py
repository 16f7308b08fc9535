"""The readiness suite: every rule (docs/design-notes.md#readiness) measured against the live fleet, stored as a Fact.

Each check talks to the real system — the load balancer, every replica directly, Redis, Postgres — and returns a
status (pass | warn | fail | unknown), the observed value in one line, and the evidence (per-instance answers,
numbers, thresholds) that lets a reader re-check the verdict. Nothing is self-attested: a fleet that keeps
sessions in memory *fails* "stateless sessions" because another instance answers 401 to the cookie.

Disruptive checks (a canary job while an instance restarts, a drain under load, load steps for N+1) go through the
actions layer with the caller's principal, so they are role-checked, locked and audited like any operator action.
A check that cannot run (no queues, no Redis, no drain action) is `unknown` with the reason, never a silent pass.

Size (~740 lines): one check function per readiness rule, read rule by rule against docs/design-notes.md
(like a test module); the shared fleet handle and the rule table are what ties them together.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from actions.backends import LOCAL, backend_for
from actions.backends.base import LIVE_STATES, Replica
from actions.operations import FleetActions
from actions.proving.scorecard import (
    FAIL,
    PASS,
    RULES_BY_ID,
    UNKNOWN,
    WARN,
    Rule,
    Scorecard,
    parse_rule_selection,
    score,
)
from core.config import FleetConfig, ServiceConfig
from core.store import Fact, Store

log = logging.getLogger(__name__)

RUN_PREFIX = "readiness-"
CAPACITY_HEADROOM = 0.8  # N+1: the peak share per instance must stay under 80% of its saturation point
POOL_BUDGET_RATIO = 0.8  # DB pool demand ≤ 80% of the connection budget
SCRAPE_SUCCESS_MIN = 0.99
EFFICIENCY_MIN = 0.8
CANARY_JOBS = 4
CANARY_SLEEP_MS = 1500

ProgressFn = Callable[[dict[str, Any]], None]


class CheckOutcome(NamedTuple):
    status: str
    observed: str
    evidence: dict[str, Any]
    target: str = ""


@dataclass
class ReadinessOptions:
    service: str | None = None  # default: the load balancer's service, else the first service
    http_timeout_s: float = 3.0
    disruptive: bool = True  # restart an instance for the canary job, drain one under load
    load_path: str = "/work/cpu?ms=2"  # the request of the saturation step (N+1)
    load_method: str = "GET"
    load_seconds: float = 2.0
    load_connections: int = 16
    peak_rps: float | None = None  # N+1: the peak to plan for; default: the highest nginx rate in the store
    drain_rate: float = 40.0  # zero-downtime drain: the constant POST rate during the drain
    canary_timeout_s: float = 45.0
    scrape_window_s: float = 3600.0


@dataclass
class ReadinessReport:
    run_id: str
    scorecard: Scorecard
    facts: list[Fact] = field(default_factory=list)
    cancelled: bool = False

    @property
    def passed(self) -> bool:
        """True when every rule measured in this run passed (the CI gate)."""
        return not self.cancelled and bool(self.facts) and all(f.status == PASS for f in self.facts)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "passed": self.passed, "cancelled": self.cancelled,
                "scorecard": self.scorecard.as_dict(),
                "facts": [f._asdict() for f in self.facts]}


# ----------------------------------------------------------------------------------------------------- HTTP


class HttpAnswer(NamedTuple):
    status: int  # 0: no answer (the error says why)
    headers: dict[str, str]
    body: bytes
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def http_call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              timeout_s: float = 3.0) -> HttpAnswer:
    """One request on a fresh connection (no keep-alive reuse can blur which instance answered)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    except (OSError, http.client.HTTPException) as error:
        return HttpAnswer(0, {}, b"", f"{type(error).__name__}: {error}")
    finally:
        connection.close()


def _short(answer: HttpAnswer) -> str:
    return f"HTTP {answer.status}" if answer.status else answer.error


# ------------------------------------------------------------------------------------------------- context


class Fleet:
    """What the checks need to know about the fleet, resolved once per run from the config."""

    def __init__(self, config: FleetConfig, store: Store, options: ReadinessOptions, principal: Any,
                 cancel: threading.Event) -> None:
        self.config = config
        self.store = store
        self.options = options
        self.principal = principal
        self.cancel = cancel
        name = options.service or (config.load_balancer.service if config.load_balancer else config.services[0].name)
        self.service: ServiceConfig = config.service(name)
        self._actions: FleetActions | None = None

    # -- endpoints

    @property
    def lb_url(self) -> str | None:
        lb = self.config.load_balancer
        if lb is None or lb.service != self.service.name:
            return None
        from actions.backends.nginx import loopback_url

        return loopback_url(lb.listen, "").rstrip("/")

    def instances(self) -> list[Replica]:
        """Live replicas in instance-id order (local backend: the orchestrator; others: the store's registry)."""
        if self.service.backend == LOCAL:
            replicas = backend_for(self.service, self.config, self.store).list(self.service)
        else:
            replicas = [Replica(r.service, r.instance_id, r.host, r.port, r.pid, r.state, r.started_at, r.ref)
                        for r in self.store.replicas(self.service.name)]
        return sorted((r for r in replicas if r.state in LIVE_STATES), key=lambda r: r.instance_id)

    def actions(self) -> FleetActions:
        """The FleetActions of the actions layer (scale, drain, restart), made on first use."""
        if self._actions is None:
            self._actions = FleetActions(self.config, self.store)
        return self._actions

    # -- backing services

    @property
    def redis_url(self) -> str | None:
        return self.service.env.get("REDIS_URL") or (self.config.redis[0].url if self.config.redis else None)

    @property
    def queue_prefix(self) -> str:
        if "BULLMQ_PREFIX" in self.service.env:
            return self.service.env["BULLMQ_PREFIX"]
        return self.config.redis[0].queue_prefixes[0] if self.config.redis else "bull"

    @property
    def queues(self) -> list[str] | None:
        """The queues the service's workers consume; None when unknown (then discovered from worker names)."""
        if "QUEUES" in self.service.env:
            return [q.strip() for q in self.service.env["QUEUES"].split(",") if q.strip()]
        if self.config.redis and self.config.redis[0].queues:
            return list(self.config.redis[0].queues)
        return None

    @property
    def pg_dsn(self) -> str | None:
        return self.service.env.get("DATABASE_URL") or (self.config.postgres[0].dsn if self.config.postgres else None)

    def get(self, replica: Replica, path: str, **kwargs: Any) -> HttpAnswer:
        return http_call("GET", replica.base_url + path, timeout_s=self.options.http_timeout_s, **kwargs)

    def health(self, replica: Replica) -> HttpAnswer:
        return self.get(replica, self.service.health.path)


# --------------------------------------------------------------------------------------------------- checks


def check_lb_health_checks(fleet: Fleet) -> CheckOutcome:
    instances = fleet.instances()
    answers: dict[str, str] = {}
    for replica in instances:
        answer = fleet.health(replica)
        body = answer.json() if answer.status else None
        word = str(body.get("status", "?")) if isinstance(body, dict) else "-"
        answers[replica.instance_id] = f"{_short(answer)} {word}".strip()
    healthy = [i for i, text in answers.items() if text.startswith("HTTP 200")]
    evidence: dict[str, Any] = {"health_path": fleet.service.health.path, "instances": answers}
    lb = fleet.config.load_balancer
    if lb is None or lb.service != fleet.service.name:
        return CheckOutcome(FAIL, "no load balancer in front of the service", evidence, fleet.service.name)
    from actions.backends.nginx import ManagedNginx

    nginx = ManagedNginx(fleet.config, fleet.store)
    upstream_file = nginx.prefix / "upstream.conf" if lb.mode == "managed" else fleet.config.resolve(
        lb.include_path or "")
    try:
        rendered = upstream_file.read_text()
    except OSError as error:
        evidence["upstream_error"] = str(error)
        return CheckOutcome(FAIL, f"cannot read the rendered upstream {upstream_file}", evidence, "nginx")
    servers = [line.strip() for line in rendered.splitlines()
               if line.strip().startswith("server ") and "placeholder" not in line]
    unchecked = [s for s in servers if "max_fails=" not in s or "fail_timeout=" not in s or "max_fails=0" in s]
    routed = {s.split()[1] for s in servers}
    missing = [r.instance_id for r in instances if r.address not in routed]
    evidence.update(upstream_file=str(upstream_file), servers=servers, without_passive_checks=unchecked,
                    not_in_upstream=missing)
    observed = (f"{len(healthy)}/{len(instances)} instances answer {fleet.service.health.path}; "
                f"{len(servers) - len(unchecked)}/{len(servers)} upstream servers with max_fails/fail_timeout")
    if not instances:
        return CheckOutcome(FAIL, "no live instances", evidence, fleet.service.name)
    if len(healthy) < len(instances) or unchecked or not servers:
        return CheckOutcome(FAIL, observed, evidence, fleet.service.name)
    if missing:
        return CheckOutcome(WARN, observed + f"; not routed: {', '.join(missing)}", evidence, fleet.service.name)
    return CheckOutcome(PASS, observed, evidence, fleet.service.name)


def check_stateless_sessions(fleet: Fleet) -> CheckOutcome:
    instances = fleet.instances()
    lb_url = fleet.lb_url
    if lb_url is None:
        return CheckOutcome(UNKNOWN, "no load balancer to log in through", {}, fleet.service.name)
    user = f"fleetdeck-readiness-{uuid.uuid4().hex[:8]}"
    login = http_call("POST", lb_url + "/api/login", json.dumps({"user": user}).encode(),
                      {"Content-Type": "application/json"}, fleet.options.http_timeout_s)
    cookie = SimpleCookie()
    cookie.load(login.headers.get("set-cookie", ""))
    evidence: dict[str, Any] = {"login": _short(login), "login_instance": login.headers.get("x-instance-id"),
                                "user": user}
    if login.status != 200 or "sid" not in cookie:
        return CheckOutcome(FAIL, f"login via the LB failed ({_short(login)})", evidence, fleet.service.name)
    header = {"Cookie": f"sid={cookie['sid'].value}"}
    answers: dict[str, str] = {}
    for replica in instances:
        answer = fleet.get(replica, "/api/me", headers=header)
        body = answer.json()
        same_user = isinstance(body, dict) and body.get("user") == user
        answers[replica.instance_id] = _short(answer) + ("" if same_user or answer.status != 200 else " other user")
    holding = [i for i, text in answers.items() if text == "HTTP 200"]
    evidence["me_per_instance"] = answers
    observed = f"session holds on {len(holding)}/{len(instances)} instances"
    if len(holding) < len(instances) or not instances:
        return CheckOutcome(FAIL, observed, evidence, fleet.service.name)
    if len(instances) < 2:
        return CheckOutcome(WARN, observed + " (one instance proves nothing)", evidence, fleet.service.name)
    return CheckOutcome(PASS, observed, evidence, fleet.service.name)


def check_no_local_disk_uploads(fleet: Fleet) -> CheckOutcome:
    instances = fleet.instances()
    if not instances:
        return CheckOutcome(FAIL, "no live instances", {}, fleet.service.name)
    writer = instances[0]
    payload = f"fleetdeck readiness canary {uuid.uuid4().hex}".encode() + os.urandom(64)
    # multipart with a `file` field: what a multer-based Express app (upload.single("file")) expects
    boundary = f"fleetdeck{uuid.uuid4().hex}"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="readiness.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    created = http_call("POST", writer.base_url + "/api/uploads?filename=readiness.bin", form,
                        {"Content-Type": f"multipart/form-data; boundary={boundary}"}, fleet.options.http_timeout_s)
    body = created.json()
    evidence: dict[str, Any] = {"uploaded_on": writer.instance_id, "upload": _short(created), "bytes": len(payload)}
    if created.status != 201 or not isinstance(body, dict) or "id" not in body:
        return CheckOutcome(FAIL, f"upload on {writer.instance_id} failed ({_short(created)})", evidence,
                            fleet.service.name)
    upload_id = str(body["id"])
    evidence["upload_id"] = upload_id
    answers: dict[str, str] = {}
    for reader in instances[1:]:
        answer = fleet.get(reader, f"/api/uploads/{upload_id}")
        answers[reader.instance_id] = _short(answer) + (" different bytes" if answer.status == 200
                                                         and answer.body != payload else "")
    evidence["read_back"] = answers
    good = [i for i, text in answers.items() if text == "HTTP 200"]
    observed = f"upload from {writer.instance_id} readable on {len(good)}/{len(answers)} other instances"
    if len(instances) < 2:
        return CheckOutcome(WARN, "one instance: no other instance to read the upload back", evidence,
                            fleet.service.name)
    return CheckOutcome(PASS if len(good) == len(answers) else FAIL, observed, evidence, fleet.service.name)


def worker_names(client_list: Sequence[dict[str, Any]], prefix: str, queues: Sequence[str] | None) -> dict[str,
                                                                                                           set[str]]:
    """Queue → distinct worker names from CLIENT LIST: `<prefix>:<queue>:w:<name>` (Python bullmq) or
    `<prefix>:<base64(queue)>:w:<name>` (Node BullMQ); a connection without `:w:` is a queue client, not a worker."""
    found: dict[str, set[str]] = {q: set() for q in queues or []}
    for client in client_list:
        name = str(client.get("name") or "")
        if not name.startswith(prefix + ":") or ":w:" not in name:
            continue
        queue_part, _, worker = name[len(prefix) + 1:].rpartition(":w:")
        queue = queue_part
        if queues is not None and queue not in queues:
            try:
                decoded = base64.b64decode(queue_part, validate=True).decode()
            except ValueError:
                continue
            if decoded not in queues:
                continue
            queue = decoded
        found.setdefault(queue, set()).add(worker)
    return found


def check_distributed_queue_workers(fleet: Fleet) -> CheckOutcome:
    import redis

    url = fleet.redis_url
    if not url:
        return CheckOutcome(UNKNOWN, "no Redis configured for the service", {}, fleet.service.name)
    client = redis.Redis.from_url(url, socket_timeout=fleet.options.http_timeout_s)
    try:
        try:
            policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        except redis.ResponseError:  # CONFIG may be renamed away (managed Redis): INFO still says it
            policy = str(client.info("memory").get("maxmemory_policy", ""))
        workers = worker_names(client.client_list(), fleet.queue_prefix, fleet.queues)
        where = urlsplit(url)
        evidence: dict[str, Any] = {"redis": f"{where.hostname}:{where.port or 6379}{where.path}",
                                    "prefix": fleet.queue_prefix, "maxmemory_policy": policy,
                                    "workers": {q: sorted(names) for q, names in workers.items()}}
        if not workers:
            return CheckOutcome(UNKNOWN, "no queues configured and no workers seen", evidence, fleet.service.name)
        thin = {q: len(names) for q, names in workers.items() if len(names) < 2}
        observed = (", ".join(f"{q}: {len(n)} workers" for q, n in sorted(workers.items()))
                    + f"; maxmemory-policy {policy or '?'}")
        problems = []
        if thin:
            problems.append("fewer than 2 workers on " + ", ".join(sorted(thin)))
        if policy != "noeviction":
            problems.append(f"maxmemory-policy is {policy!r}, BullMQ needs 'noeviction'")
        canary = _queue_canary(fleet, client, sorted(workers)[0]) if not thin else {"skipped": "too few workers"}
        evidence["canary"] = canary
        observed += f"; canary {canary.get('verdict', 'skipped')}"
        if problems or canary.get("verdict") == "failed":
            evidence["problems"] = problems
            return CheckOutcome(FAIL, observed, evidence, fleet.service.name)
        if canary.get("verdict") != "completed":
            return CheckOutcome(UNKNOWN if canary.get("verdict") is None else WARN, observed, evidence,
                                fleet.service.name)
        return CheckOutcome(PASS, observed, evidence, fleet.service.name)
    except redis.RedisError as error:
        return CheckOutcome(UNKNOWN, f"Redis unreachable: {error}", {"error": str(error)}, fleet.service.name)
    finally:
        client.close()


def _queue_canary(fleet: Fleet, client: Any, queue: str) -> dict[str, Any]:
    """Enqueue canary jobs, restart the instance working one of them, and require every job to complete."""
    lb_url = fleet.lb_url
    instances = fleet.instances()
    if lb_url is None or not instances:
        return {"verdict": None, "reason": "no load balancer or no instances"}
    ids: list[str] = []
    marker = uuid.uuid4().hex[:8]
    for index in range(CANARY_JOBS):
        answer = http_call("POST", f"{lb_url}/api/jobs/{queue}?name=fleetdeck-canary",
                           json.dumps({"sleep_ms": CANARY_SLEEP_MS, "canary": f"{marker}-{index}"}).encode(),
                           {"Content-Type": "application/json"}, fleet.options.http_timeout_s)
        body = answer.json()
        if answer.status != 201 or not isinstance(body, dict):
            return {"verdict": "failed", "reason": f"enqueue failed: {_short(answer)}"}
        ids.append(str(body["jobId"]))
    result: dict[str, Any] = {"queue": queue, "jobs": ids}
    if fleet.options.disruptive:
        victim: str | None = None
        # the worker holding an active canary job: BullMQ's job hash keeps the worker name in `pb`
        deadline = time.monotonic() + 5
        while victim is None and time.monotonic() < deadline:
            for job_id in ids:
                processed_by = client.hget(f"{fleet.queue_prefix}:{queue}:{job_id}", "pb")
                names = {r.instance_id for r in instances}
                if processed_by and processed_by.decode() in names:
                    victim = processed_by.decode()
                    break
            time.sleep(0.1)
        victim = victim or instances[0].instance_id
        outcome = fleet.actions().restart(fleet.principal, victim)
        result["restart"] = f"{victim}: {outcome.result} ({outcome.detail})"
        if not outcome.ok:
            result.update(verdict=None, reason=f"could not restart {victim}: {outcome.detail}")
            return result
        result["restarted"] = victim
    deadline = time.monotonic() + fleet.options.canary_timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline and not fleet.cancel.is_set():
        for job_id in ids:
            if states.get(job_id) in ("completed", "failed"):
                continue
            answer = http_call("GET", f"{lb_url}/api/jobs/{queue}/{job_id}", timeout_s=fleet.options.http_timeout_s)
            body = answer.json()
            states[job_id] = str(body.get("state")) if isinstance(body, dict) else _short(answer)
        if all(states.get(j) in ("completed", "failed") for j in ids):
            break
        time.sleep(0.25)
    result["states"] = states
    done = sum(1 for j in ids if states.get(j) == "completed")
    if done < len(ids):
        result["verdict"] = "failed"
    else:
        result["verdict"] = "completed" if "restarted" in result else "completed-undisturbed"
    return result


def _pg_budget(dsn: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name="fleetdeck-readiness") as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " coalesce(current_setting('reserved_connections', true), '0')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'fleetdeck%%'"
            "   AND backend_type = 'client backend')::int"
        ).fetchone()
    assert row is not None
    return {"max_connections": row[0], "superuser_reserved_connections": row[1], "reserved_connections": row[2],
            "fleetdeck_connections": row[3]}


def check_db_pool_headroom(fleet: Fleet) -> CheckOutcome:
    instances = fleet.instances()
    dsn = fleet.pg_dsn
    if not dsn:
        return CheckOutcome(UNKNOWN, "no Postgres configured for the service", {}, fleet.service.name)
    pools: dict[str, dict[str, Any]] = {}
    for replica in instances:
        body = fleet.health(replica).json()
        pool = body.get("database", {}).get("pool") if isinstance(body, dict) else None
        if isinstance(pool, dict):
            pools[replica.instance_id] = pool
    evidence: dict[str, Any] = {"pools": pools}
    if not pools or any("max" not in p for p in pools.values()):
        return CheckOutcome(UNKNOWN, "instances do not report database.pool.max in /health", evidence,
                            fleet.service.name)
    budget_info = _pg_budget(dsn)
    budget = (budget_info["max_connections"] - budget_info["superuser_reserved_connections"]
              - budget_info["reserved_connections"])
    per_instance = max(int(p["max"]) for p in pools.values())
    # the collector's one monitoring connection, this check's own, and any other fleetdeck process seen now
    monitors = max(2, budget_info["fleetdeck_connections"])
    waiters = sum(int(p.get("waitingCount", 0) or 0) for p in pools.values())
    n_plus_one = len(instances) + 1
    at_max = max(fleet.service.max_replicas, n_plus_one)
    ratios = {f"N+1={n_plus_one}": (n_plus_one * per_instance + monitors) / budget,
              f"max={at_max}": (at_max * per_instance + monitors) / budget}
    evidence.update(budget_info, budget=budget, pool_max_per_instance=per_instance, monitors=monitors,
                    pool_waiters=waiters, demand_ratio={k: round(v, 3) for k, v in ratios.items()},
                    threshold=POOL_BUDGET_RATIO)
    worst = max(ratios.values())
    observed = (f"demand {', '.join(f'{k}: {v:.0%}' for k, v in ratios.items())} of {budget} connections;"
                f" {waiters} pool waiters")
    ok = worst <= POOL_BUDGET_RATIO and waiters == 0
    return CheckOutcome(PASS if ok else FAIL, observed, evidence, fleet.service.name)


def _observed_peak_rps(fleet: Fleet) -> float | None:
    """The highest nginx request rate the store has seen for this load balancer over the last 7 days."""
    series = [s for s in fleet.store.find_series(source="nginx", metric="requests_per_s") if "/" not in s.target]
    if not series:
        return None
    now = time.time()
    points = fleet.store.query([s.id for s in series], now - 7 * 86400, now, max_points=2000)
    peaks = [max(p.vmax for p in pts) for pts in points.values() if pts]
    return max(peaks) if peaks else None


def saturation_step(fleet: Fleet, replica: Replica) -> dict[str, Any]:
    """A short closed-loop load straight at one instance: its throughput is the saturation point."""
    from actions.proving.loadgen import LoadSpec, run_load

    spec = LoadSpec(url=replica.base_url + fleet.options.load_path, method=fleet.options.load_method,
                    connections=fleet.options.load_connections, duration_s=fleet.options.load_seconds,
                    max_requests=200_000, timeout_s=5.0)
    result = run_load(spec, cancel=fleet.cancel, handle_sigint=False)
    return {"instance": replica.instance_id, "rps": result.rps, "ok": result.ok, "errors": result.errors,
            "p95_ms": result.latency_ms.get("p95"), "generator_cpu": result.cpu_utilization,
            "generator_saturated": result.saturated, "url": spec.url}


def check_n_plus_one_capacity(fleet: Fleet) -> CheckOutcome:
    instances = fleet.instances()
    n = len(instances)
    evidence: dict[str, Any] = {"instances": n}
    if n < 2:
        return CheckOutcome(FAIL, f"N={n}: no spare instance to lose", evidence, fleet.service.name)
    peak = fleet.options.peak_rps
    evidence["peak_source"] = "given" if peak is not None else "nginx requests_per_s (store, 7 days)"
    if peak is None:
        peak = _observed_peak_rps(fleet)
    if peak is None:
        return CheckOutcome(UNKNOWN, "no peak load known: give --peak-rps or let the nginx collector record traffic",
                            evidence, fleet.service.name)
    step = saturation_step(fleet, instances[0])
    saturation = step["rps"] * (1 - step["errors"] / max(step["ok"] + step["errors"], 1))
    share = peak / (n - 1)
    evidence.update(peak_rps=peak, per_instance_at_n_minus_1=round(share, 2), saturation_rps=round(saturation, 2),
                    headroom_threshold=CAPACITY_HEADROOM, load_step=step)
    observed = f"peak {peak:.1f} req/s over N−1={n - 1}: {share:.1f} req/s per instance vs saturation {saturation:.1f}"
    if saturation <= 0:
        return CheckOutcome(FAIL, "the saturation step got no successful responses", evidence, fleet.service.name)
    if share <= CAPACITY_HEADROOM * saturation:
        status = PASS
    elif share < saturation:
        status = WARN
    else:
        status = FAIL
    return CheckOutcome(status, observed, evidence, fleet.service.name)


def check_zero_downtime_drain(fleet: Fleet) -> CheckOutcome:
    actions = fleet.actions()
    if not fleet.options.disruptive:
        return CheckOutcome(UNKNOWN, "skipped: disruptive checks are off", {}, fleet.service.name)
    lb_url = fleet.lb_url
    instances = fleet.instances()
    if lb_url is None or len(instances) < 2:
        return CheckOutcome(FAIL, f"cannot drain without a load balancer and ≥2 instances (N={len(instances)})",
                            {"instances": len(instances)}, fleet.service.name)
    from actions.proving.loadgen import LoadSpec, run_load

    victim = instances[-1].instance_id
    # POST: nginx retries idempotent GETs on the next upstream and would hide drops
    # (docs/design-notes.md#load-generation)
    spec = LoadSpec(url=lb_url + "/work/echo?ms=20", method="POST", body=b'{"readiness":"drain"}',
                    headers=(("Content-Type", "application/json"),), connections=8, duration_s=120.0,
                    rate=fleet.options.drain_rate, max_requests=20_000, timeout_s=10.0)
    stop_load = threading.Event()
    holder: dict[str, Any] = {}

    def load() -> None:
        try:
            holder["result"] = run_load(spec, cancel=stop_load, handle_sigint=False)
        except Exception as error:  # reported as evidence below
            holder["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=load, name="readiness-drain-load", daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        drained = actions.drain(fleet.principal, victim)
        time.sleep(0.5)
        undrained = actions.undrain(fleet.principal, victim) if drained.ok else None
        time.sleep(1.0)
    finally:
        stop_load.set()
        thread.join(timeout=30)
    evidence: dict[str, Any] = {"instance": victim, "drain": f"{drained.result}: {drained.detail}",
                                "undrain": f"{undrained.result}: {undrained.detail}" if undrained else "not run"}
    result = holder.get("result")
    if result is None:
        evidence["load_error"] = holder.get("error", "the load did not finish")
        return CheckOutcome(UNKNOWN, "the drain load failed to run", evidence, victim)
    reload_closed = result.errors_by_kind.get("closed_on_reuse", 0)
    failed = result.errors - reload_closed
    evidence.update(requests=result.requests, ok=result.ok, errors_by_kind=result.errors_by_kind,
                    reload_closed_keepalives=reload_closed, idle_closes=result.idle_closes,
                    in_flight_at_stop=result.cancelled, instances_seen=result.instances,
                    p95_ms=result.latency_ms.get("p95"))
    observed = (f"{failed} failed of {result.requests} POSTs while draining {victim}"
                f" ({reload_closed} reload-closed keep-alives counted apart)")
    if not drained.ok:
        return CheckOutcome(FAIL, f"drain of {victim} failed: {drained.detail}", evidence, victim)
    if undrained is not None and not undrained.ok:
        return CheckOutcome(FAIL, observed + f"; undrain failed: {undrained.detail}", evidence, victim)
    if result.requests == 0:
        return CheckOutcome(UNKNOWN, "no requests were sent during the drain", evidence, victim)
    return CheckOutcome(PASS if failed == 0 else FAIL, observed, evidence, victim)


def check_linear_scaling(fleet: Fleet) -> CheckOutcome:
    from actions.proving.scaling import latest_scaling_run

    run = latest_scaling_run(fleet.store, fleet.service.name)
    if run is None:
        return CheckOutcome(UNKNOWN, "no completed scaling test: run `fleetdeck test scaling`", {},
                            fleet.service.name)
    steps = [s for s in run.get("steps", []) if s.get("in_fit") and s.get("efficiency") is not None]
    evidence = {"scaling_run": run.get("run_id"), "finished_at": run.get("finished_at"),
                "efficiency": {str(s["replicas"]): round(s["efficiency"], 3) for s in steps},
                "p95_ms": {str(s["replicas"]): s.get("p95_ms") for s in steps},
                "fit": run.get("fit"), "threshold": EFFICIENCY_MIN}
    measured = [s for s in steps if s["replicas"] > 1]
    if not measured:
        return CheckOutcome(UNKNOWN, "the last scaling test has no usable step above 1 replica", evidence,
                            fleet.service.name)
    worst = min(measured, key=lambda s: s["efficiency"])
    observed = f"min E(n) = {worst['efficiency']:.2f} at n={worst['replicas']}" + (
        f"; USL n* ≈ {run['fit']['peak_n']:.1f}" if run.get("fit") and run["fit"].get("peak_n") else "")
    status = PASS if worst["efficiency"] >= EFFICIENCY_MIN else FAIL
    return CheckOutcome(status, observed, evidence, fleet.service.name)


def _scrape_success(fleet: Fleet) -> tuple[float | None, dict[str, float]]:
    """Share of stored `up` samples equal to 1 per instance target, over the scrape window."""
    now = time.time()
    series = [s for s in fleet.store.find_series(source="instance", metric="up")
              if s.target.startswith(fleet.service.name + "/")]
    if not series:
        return None, {}
    points = fleet.store.query([s.id for s in series], now - fleet.options.scrape_window_s, now, max_points=100_000)
    per_target: dict[str, float] = {}
    total = good = 0.0
    for info in series:
        values = [p.value for p in points.get(info.id, [])]
        if values:
            per_target[info.target] = sum(values) / len(values)
            total += len(values)
            good += sum(values)
    return (good / total if total else None), per_target


def check_observability(fleet: Fleet) -> CheckOutcome:
    instances = fleet.instances()
    metrics_path = fleet.service.health.metrics
    answers: dict[str, dict[str, str]] = {}
    for replica in instances:
        health = fleet.health(replica)
        entry = {"health": _short(health)}
        if metrics_path:
            metrics = fleet.get(replica, metrics_path)
            text = metrics.body.decode(errors="replace")
            prometheus = "# TYPE" in text or metrics.status != 200
            entry["metrics"] = _short(metrics) + ("" if prometheus else " not Prometheus")
        else:
            entry["metrics"] = "no metrics path configured"
        answers[replica.instance_id] = entry
    serving = [i for i, e in answers.items() if e["health"] == "HTTP 200" and e["metrics"] == "HTTP 200"]
    ratio, per_target = _scrape_success(fleet)
    evidence: dict[str, Any] = {"endpoints": answers, "scrape_success": ratio,
                                "scrape_success_per_target": {k: round(v, 4) for k, v in per_target.items()},
                                "window_s": fleet.options.scrape_window_s, "threshold": SCRAPE_SUCCESS_MIN}
    observed = f"{len(serving)}/{len(instances)} instances serve /health and /metrics; scrape success " + (
        f"{ratio:.2%}" if ratio is not None else "unknown (no stored `up` samples)")
    if not instances or len(serving) < len(instances):
        return CheckOutcome(FAIL, observed, evidence, fleet.service.name)
    if ratio is None:
        return CheckOutcome(WARN, observed, evidence, fleet.service.name)
    return CheckOutcome(PASS if ratio >= SCRAPE_SUCCESS_MIN else FAIL, observed, evidence, fleet.service.name)


CHECKS: dict[str, Callable[[Fleet], CheckOutcome]] = {
    "lb_health_checks": check_lb_health_checks,
    "stateless_sessions": check_stateless_sessions,
    "no_local_disk_uploads": check_no_local_disk_uploads,
    "distributed_queue_workers": check_distributed_queue_workers,
    "db_pool_headroom": check_db_pool_headroom,
    "n_plus_one_capacity": check_n_plus_one_capacity,
    "zero_downtime_drain": check_zero_downtime_drain,
    "linear_scaling": check_linear_scaling,
    "observability": check_observability,
}
assert set(CHECKS) == set(RULES_BY_ID), "every rule of the catalogue needs a check"


# --------------------------------------------------------------------------------------------------- runner


def new_run_id(prefix: str = RUN_PREFIX) -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_readiness(
    config: FleetConfig,
    store: Store,
    principal: Any,
    rules: str | Sequence[str] | None = None,
    options: ReadinessOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    run_id: str | None = None,
) -> ReadinessReport:
    """Runs the selected rules in catalogue order; each result is stored as a Fact as soon as it is known.

    The principal needs `start_test` (the suite sends traffic and, when disruptive, restarts and drains).
    """
    from actions.auth import require

    require(principal, "start_test")
    options = options or ReadinessOptions()
    cancel = cancel or threading.Event()
    run_id = run_id or new_run_id()
    selected: list[Rule] = parse_rule_selection(rules)
    fleet = Fleet(config, store, options, principal, cancel)
    facts: list[Fact] = []
    for index, rule in enumerate(selected):
        if cancel.is_set():
            break
        if progress:
            progress({"run_id": run_id, "rule": rule.id, "index": index, "total": len(selected), "state": "running",
                      "message": f"checking {rule.title}"})
        started = time.monotonic()
        try:
            outcome = CHECKS[rule.id](fleet)
        except Exception as error:  # a crashing check is an unknown, with the error as evidence
            log.exception("readiness check %s crashed", rule.id)
            outcome = CheckOutcome(UNKNOWN, f"check error: {type(error).__name__}: {error}",
                                   {"error": f"{type(error).__name__}: {error}"}, fleet.service.name)
        evidence = {**outcome.evidence, "duration_s": round(time.monotonic() - started, 3)}
        fact = Fact(None, run_id, rule.id, rule.level, outcome.target or fleet.service.name, time.time(),
                    outcome.status, outcome.observed, evidence)
        fact = fact._replace(id=store.add_fact(fact))
        facts.append(fact)
        if progress:
            progress({"run_id": run_id, "rule": rule.id, "index": index + 1, "total": len(selected),
                      "state": "running", "status": fact.status, "message": f"{rule.title}: {fact.status} —"
                                                                           f" {fact.observed}"})
    return ReadinessReport(run_id, score(facts, run_id), facts, cancelled=cancel.is_set())
