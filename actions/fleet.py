"""`fleetdeck up/down/status`: bring the whole demo fleet up, take it down, and say what runs.

`up` is idempotent: live replicas recorded in the store are adopted, only the missing ones are started, nginx is
re-applied only when its upstream would change, and a running dashboard is left alone. `down` stops everything
it started by PID (dashboard, replicas, nginx) and removes the pid files. Nothing here prints: progress goes to
the `progress` callback (the CLI prints it) and to logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import psycopg
from psycopg import conninfo

from actions import fleet_locks, self_status
from actions.auth import Principal
from actions.backends import LOCAL, PM2, backend_for
from actions.backends.base import (
    DEAD,
    DRAINING,
    LIVE_STATES,
    RUNNING,
    STOPPED,
    UP,
    FleetdeckActionError,
    FleetError,
    Replica,
    ReplicaUnhealthy,
    UpstreamServer,
)
from actions.backends.local import LocalOrchestrator
from actions.backends.nginx import ManagedNginx, loopback_url, split_listen
from actions.guarded import FLEET_DOWN, FLEET_UP, authorize, guarded
from actions.own_processes import DASHBOARD_APP, Dashboard, StandaloneCollector
from core.config import FleetConfig, ServiceConfig
from core.process import port_is_free
from core.redact import redact, url_password
from core.store import Store, open_store

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class FleetStatus(TypedDict):
    """What runs, as plain JSON-able data (the CLI prints it with --json, the dashboard shows it)."""

    ts: float
    services: dict[str, dict[str, Any]]
    nginx: dict[str, Any]
    dashboard: dict[str, Any]
    collector: dict[str, Any]
    processes: list[dict[str, Any]]  # every fleetdeck process with its state (actions/self_status.py)
    problems: list[str]  # one line per process that should run and does not


# --- Postgres ----------------------------------------------------------------------------------------------


def ensure_database(dsn: str) -> bool:
    """Create the database `dsn` names when the server says it does not exist; True when it was created.

    The demo's DATABASE_URL points at a database nobody made yet; creating it through the server's `postgres`
    database saves a manual step. Any other connection problem is left for the app to report.
    """
    if not dsn.startswith(("postgresql://", "postgres://")):
        return False
    try:
        with psycopg.connect(dsn, connect_timeout=5):
            return False
    except psycopg.OperationalError as error:
        name = conninfo.conninfo_to_dict(dsn).get("dbname")
        if not name or f'database "{name}" does not exist' not in str(error):
            log.warning("cannot check database %s: %s", name, error)
            return False
    admin = conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        try:
            conn.execute(f'CREATE DATABASE "{str(name).replace(chr(34), "")}"')
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently by someone else: fine
    log.info("created database %s", name)
    return True


# --- up / down / status ------------------------------------------------------------------------------------


PROCESS_BACKENDS = (LOCAL, PM2)


def _local_services(config: FleetConfig) -> list[ServiceConfig]:
    """The services whose processes fleetdeck runs on this machine (local backend, or PM2)."""
    others = [s.name for s in config.services if s.backend not in PROCESS_BACKENDS]
    if others:
        log.info("fleet up/down manage local and pm2 services only; skipping %s", ", ".join(others))
    return [s for s in config.services if s.backend in PROCESS_BACKENDS]


def orchestrator_for(config: FleetConfig, store: Store, service: ServiceConfig) -> LocalOrchestrator:
    """The process orchestrator of a local or pm2 service (the PM2 one is a LocalOrchestrator too)."""
    orchestrator = backend_for(service, config, store)
    assert isinstance(orchestrator, LocalOrchestrator), f"{service.backend} is not a process backend"
    return orchestrator


def desired_replicas(store: Store, service: ServiceConfig) -> int:
    """The count the last scale action chose, else the config's `replicas` — within the effective limits.

    Without this a later `up` would silently undo an operator's scale. The bounds are the effective ones (an
    admin's `fleetdeck limits` override wins over the config), so `up` never starts more or fewer than allowed.
    """
    # imported here, not at the top: fleet.py needs only this one rule of the actions API (operations/limits.py)
    from actions.operations import effective_limits

    low, high = effective_limits(store, service)
    chosen = (store.get_kv(f"desired:{service.name}") or {}).get("replicas")
    if isinstance(chosen, int) and not isinstance(chosen, bool) and low <= chosen <= high:
        return chosen
    return min(max(service.replicas, low), high)


def _start_replicas(
    orchestrator: LocalOrchestrator, service: ServiceConfig, desired: int, say: Progress
) -> list[Replica]:
    """Start the missing replicas and wait for every one of them; raise FleetError naming each replica that did not
    become healthy (with the end of its log) when fewer than `desired` end up healthy.

    A replica that fails is stopped (with its whole process group), so a failed `up` leaves only healthy replicas
    behind, which a second `up` adopts.
    """
    live = orchestrator.live(service)
    missing = max(0, desired - len(live))
    say(f"{service.name}: {len(live)} replica(s) running, starting {missing}")
    failures: list[str] = []
    started: list[Replica] = []
    for _ in range(missing):
        try:
            replica = orchestrator.start(service)
        except FleetdeckActionError as error:
            failures.append(f"  could not start a replica: {error}")
            break
        started.append(replica)
        say(f"  {replica.instance_id}: pid {replica.pid} on {replica.address}")
    # Adopted replicas still marked `starting` (a previous `up` was interrupted) are waited for as well.
    waiting = started + [r for r in live if r.state == "starting"]
    for replica in waiting:
        try:
            orchestrator.wait_healthy(service, replica)
        except ReplicaUnhealthy as error:
            failures.append(_unhealthy_report(orchestrator, service, replica, error))
            continue
        say(f"  {replica.instance_id}: healthy")
    healthy = [r for r in orchestrator.live(service) if r.state in (RUNNING, DRAINING)]
    if failures or len(healthy) < desired:
        gone = [r.instance_id for r in orchestrator.list(service) if r.state == DEAD]
        if gone:
            failures.append(f"  replica(s) {', '.join(gone)} exited after start-up")
        raise FleetError(f"{service.name}: {len(healthy)} of {desired} replica(s) healthy\n" + "\n".join(failures))
    return healthy


def _unhealthy_report(orchestrator: LocalOrchestrator, service: ServiceConfig, replica: Replica,
                      error: ReplicaUnhealthy) -> str:
    """One failed replica: why, the end of its log, and whether stopping it worked."""
    stopped = "it was stopped"
    try:
        orchestrator.stop(service, replica.instance_id, grace_s=2.0)
    except FleetdeckActionError as stop_error:
        stopped = f"stopping it failed: {stop_error}"
    log_lines = "\n".join(f"    {line}" for line in (error.log_tail or "(empty log)").splitlines())
    return f"  {error}; {stopped}. Last lines of {orchestrator.log_path(replica.instance_id)}:\n{log_lines}"


def drained_flags(nginx: ManagedNginx, replicas: list[Replica], say: Progress | None = None) -> dict[str, str]:
    """address -> drained state, for the servers whose drain still belongs to the live replica on that address.

    A drained flag belongs to one replica process. When the replica at an address is another instance, or was
    started after the configuration that drained it was applied, the flag is a leftover of a replica that is
    gone: it is dropped, and said, instead of silently keeping the new replica out of rotation.
    """
    applied_at = nginx.state().get("applied_at")
    by_address = {r.address: r for r in replicas}
    kept: dict[str, str] = {}
    for server in nginx.current():
        if server.state == UP:
            continue
        replica = by_address.get(server.address)
        if replica is None:
            continue
        newer = isinstance(applied_at, int | float) and replica.started_at > applied_at
        if (server.instance_id and server.instance_id != replica.instance_id) or newer:
            if say is not None:
                say(f"nginx: {replica.instance_id} is a new replica on {server.address}; the drained flag of the"
                    " previous one is dropped")
            continue
        kept[server.address] = server.state
    return kept


def forget_drained_servers(nginx: ManagedNginx) -> list[str]:
    """After `down` stopped every replica: forget their upstream entries (and drained flags); the ids dropped."""
    servers = nginx.current()
    if not servers:
        return []
    nginx.forget_servers()
    return [s.instance_id or s.address for s in servers if s.state != UP]


def desired_upstream(nginx: ManagedNginx, replicas: list[Replica], say: Progress | None = None
                     ) -> list[UpstreamServer]:
    """Live replicas as upstream servers; a server already drained in nginx stays drained (while it is the
    same replica: see drained_flags)."""
    drained = drained_flags(nginx, replicas, say)
    servers: list[UpstreamServer] = []
    seen: set[str] = set()
    for replica in replicas:
        if replica.address in seen:
            continue  # PM2 cluster mode: every instance shares one port, nginx needs it once
        seen.add(replica.address)
        state = DRAINING if replica.state == DRAINING else drained.get(replica.address, UP)
        servers.append(UpstreamServer(replica.address, state, replica.instance_id))
    return servers


def up(
    config: FleetConfig,
    *,
    principal: Principal,
    config_file: Path | None = None,
    dashboard: bool = True,
    dashboard_app: Path | None = None,
    progress: Progress | None = None,
) -> FleetStatus:
    """Start what the config describes (idempotent); needs the fleet_up permission and is audited."""
    store = open_store(config)
    return guarded(store, principal, FLEET_UP, "fleet", {"dashboard": dashboard},
                   lambda: _up(config, store, config_file, dashboard, dashboard_app, progress or log.info),
                   after=lambda state: {"services": {name: s.get("running") for name, s in state["services"].items()}})


def _up(config: FleetConfig, store: Store, config_file: Path | None, dashboard: bool, dashboard_app: Path | None,
        say: Progress) -> FleetStatus:
    nginx = ManagedNginx(config, store) if config.load_balancer else None

    if nginx and not nginx.external and not nginx.is_running():
        host, port = split_listen(nginx.lb.listen)
        orphans = nginx.process_state()["orphaned_workers"]
        if orphans:
            # our own workers, left serving by a killed master: the apply below replaces them (graceful)
            say(f"nginx: master gone, {len(orphans)} orphaned worker(s) still serving (pid"
                f" {', '.join(map(str, orphans))}); replacing them with a new master")
        elif not port_is_free(host, port):
            raise FleetError(
                f"load_balancer.listen {nginx.lb.listen} is in use by another program; stop it or change the port"
            )

    app = dashboard_app or DASHBOARD_APP
    board = Dashboard(config, app, config_file)
    host, port = config.dashboard.host, config.dashboard.port
    if dashboard and app.exists() and board.pid() is None and not port_is_free(host, port):
        # checked before anything starts, so a busy port fails fast instead of after every replica booted
        raise FleetError(f"dashboard port {host}:{port} is in use by another program; stop it or change dashboard.port")

    from actions.operations import with_effective_limits  # see desired_replicas: the one rule fleet.py needs

    for service in _local_services(config):
        dsn = service.env.get("DATABASE_URL")
        if dsn and ensure_database(dsn):
            say(f"created database {conninfo.conninfo_to_dict(dsn).get('dbname')}")
        # the admin's limits may allow more replicas than the file does: the backend gets the effective bounds
        _start_replicas(orchestrator_for(config, store, service), with_effective_limits(store, service),
                        desired_replicas(store, service), say)

    if nginx:
        routed = config.service(nginx.lb.service)
        replicas = [r for r in orchestrator_for(config, store, routed).list(routed) if r.state in LIVE_STATES]
        servers = desired_upstream(nginx, replicas, say)
        unchanged = nginx.current() == servers and (
            nginx.external or (nginx.is_running() and nginx.served_generation() == nginx.generation())
        )
        if unchanged:
            say(f"nginx: generation {nginx.generation()} already serves {len(servers)} server(s)")
        else:
            result = nginx.apply(servers)
            if not result.ok:
                raise FleetError(f"nginx: {result.detail}")
            say(f"nginx: {result.detail}")

    if not config.dashboard.embedded_collector:
        collector = StandaloneCollector(config, config_file)
        already = collector.pid()
        say(f"collector: {'already running' if already else 'started'}, pid {collector.start()}")

    if dashboard and app.exists():
        already = board.pid()
        pid = board.start()
        say(f"dashboard: {'already running' if already else 'started'}, pid {pid}")
    elif dashboard:
        say(f"dashboard: {app} does not exist yet; not started")

    # what this `up` started: `status` compares against it to call a missing process a problem
    started = {"dashboard": bool(dashboard and app.exists()), "collector": not config.dashboard.embedded_collector,
               "nginx": bool(nginx and not nginx.external)}
    store.add_event("fleet.up", "fleet", "fleet is up", started)
    return status(config, store=store, dashboard_app=app)


def down(config: FleetConfig, *, principal: Principal, progress: Progress | None = None,
         wait_s: float = fleet_locks.DEFAULT_WAIT_S, force: bool = False) -> dict[str, Any]:
    """Stop the dashboard, the standalone collector, every recorded replica (gracefully, whatever state its record
    says) and nginx, all by PID; then any process still carrying this fleet's marker (core/replica_process.py).

    Needs the fleet_down permission (admin: it takes the fleet below min_healthy); a refusal is audited as a
    refused `down`. Then it takes every local service's action lock: a running scale/drain/restart is waited for
    (up to `wait_s`), then `down` refuses with FleetBusy unless `force` (actions/fleet_locks.py), which audits the
    `down` from its start to its end. Raises FleetError naming whatever could not be stopped, after trying
    everything else.
    """
    say: Progress = progress or log.info
    store = open_store(config)
    authorize(store, principal, fleet_locks.DOWN, "fleet", {"wait_s": wait_s, "force": force}, FLEET_DOWN)
    locks = fleet_locks.DownLocks(store, principal, [s.name for s in _local_services(config)],
                                  wait_s=wait_s, force=force, say=say)
    locks.acquire()
    try:
        summary = _down_locked(config, store, say)
    except Exception as error:
        locks.finish({}, f"{type(error).__name__}: {error}")
        raise
    failed = "; ".join(summary["failed"]) or None
    locks.finish(summary, failed)
    if failed:
        raise FleetError("could not stop:\n" + "\n".join(f"  {line}" for line in summary["failed"]))
    return summary


def _down_locked(config: FleetConfig, store: Store, say: Progress) -> dict[str, Any]:
    summary: dict[str, Any] = {"dashboard": False, "collector": False, "replicas": [], "strays": [], "nginx": False,
                               "failed": []}
    summary["dashboard"] = Dashboard(config).stop()
    say(f"dashboard: {'stopped' if summary['dashboard'] else 'was not running'}")
    summary["collector"] = StandaloneCollector(config).stop()
    say(f"collector: {'stopped' if summary['collector'] else 'was not running'}")
    orchestrator = LocalOrchestrator(config, store)
    for service in _local_services(config):
        backend = orchestrator_for(config, store, service)
        for replica in backend.list(service):
            # said first, for every replica: an action still waiting on one (a forced down) sees it is stopping
            backend.mark(service, replica.instance_id, STOPPED)
        for replica in backend.list(service):
            try:
                backend.stop(service, replica.instance_id)
            except FleetdeckActionError as error:
                summary["failed"].append(f"{service.name}/{replica.instance_id}: {error}")
                say(f"{service.name}: could not stop {replica.instance_id}: {error}")
                continue
            summary["replicas"].append(replica.instance_id)
            say(f"{service.name}: stopped {replica.instance_id} ({replica.state})")
    if any(s.backend == PM2 for s in config.services):
        from actions.backends.pm2 import Pm2Orchestrator

        try:
            if Pm2Orchestrator(config, store).kill_daemon():
                say("pm2: daemon stopped")
        except FleetdeckActionError as error:
            summary["failed"].append(f"pm2 daemon: {error}")
    strays = orchestrator.stop_strays()
    summary["strays"] = strays.signalled
    if strays.signalled:
        say(f"stopped {len(strays.signalled)} process(es) of this fleet that no replica record accounted for:"
            f" pid(s) {', '.join(map(str, strays.signalled))} ({strays.outcome})")
    if strays.survivors:
        summary["failed"].append(f"pid(s) {', '.join(map(str, strays.survivors))} survived SIGKILL")
    if config.load_balancer and config.load_balancer.mode == "managed":
        nginx = ManagedNginx(config, store)
        orphans = nginx.process_state()["orphaned_workers"]
        summary["nginx"] = nginx.stop()
        if orphans:
            say(f"nginx: stopped {len(orphans)} orphaned worker(s) of a killed master: pid"
                f" {', '.join(map(str, orphans))}")
        say(f"nginx: {'stopped' if summary['nginx'] else 'was not running'}")
        # the replicas are gone: so are their drained flags (a new replica must never inherit one silently)
        dropped = forget_drained_servers(nginx)
        if dropped:
            say(f"nginx: dropped the drained flag of {', '.join(dropped)} (its replica was stopped)")
    store.add_event("fleet.down", "fleet", "fleet is down" if not summary["failed"] else "fleet down incomplete",
                    summary)
    return summary


def status(config: FleetConfig, *, store: Store | None = None, dashboard_app: Path | None = None) -> FleetStatus:
    store = store or open_store(config)
    orchestrator = LocalOrchestrator(config, store)
    services: dict[str, dict[str, Any]] = {}
    for service in config.services:
        desired = desired_replicas(store, service)
        entry: dict[str, Any] = {"backend": service.backend, "desired": desired, "replicas": []}
        if service.backend in PROCESS_BACKENDS:
            for replica in orchestrator_for(config, store, service).list(service):
                health = orchestrator.probe(service, replica) if replica.state in LIVE_STATES else "down"
                entry["replicas"].append({
                    "instance_id": replica.instance_id,
                    "address": replica.address,
                    "pid": replica.pid,
                    "state": replica.state,
                    "health": health,
                    "started_at": replica.started_at,
                })
        else:
            entry["note"] = f"backend '{service.backend}' is listed by its own module"
        entry["running"] = sum(1 for r in entry["replicas"] if r["state"] in (RUNNING, DRAINING))
        services[service.name] = entry

    nginx_status: dict[str, Any] = {"configured": config.load_balancer is not None}
    if config.load_balancer:
        nginx = ManagedNginx(config, store)
        pid = nginx.master_pid()
        nginx_status.update({
            "mode": nginx.lb.mode,
            "listen": nginx.lb.listen,
            "url": loopback_url(nginx.lb.listen, ""),
            "running": pid is not None if not nginx.external else None,
            "pid": pid,
            "generation": nginx.generation(),
            "served_generation": nginx.served_generation() if pid else None,
            "servers": [s._asdict() for s in nginx.current()],
            "process": nginx.process_state() if not nginx.external else None,
        })
    board = Dashboard(config, dashboard_app)
    standalone = StandaloneCollector(config)
    collector = {"embedded": config.dashboard.embedded_collector, **standalone.status(),
                 "heartbeat": self_status.collector_heartbeat(config)}
    processes = _own_processes(config, store, board, standalone, nginx_status)
    problems = [f"{p['name']}{' pid ' + str(p['pid']) if p['pid'] else ''}: {p['state']} — {p['detail']}"
                for p in processes if p["problem"]]
    heartbeat = collector["heartbeat"]
    # the heartbeat counts only when it comes from the collector process running now (not an old file)
    collecting_pid = board.pid() if config.dashboard.embedded_collector else standalone.pid()
    if heartbeat and heartbeat["problems"] and collecting_pid and heartbeat.get("pid") == collecting_pid:
        problems.append(f"collector ({heartbeat.get('kind')}, pid {heartbeat.get('pid')}): "
                        + "; ".join(heartbeat["problems"]))
    return FleetStatus(
        ts=time.time(), services=services, nginx=nginx_status, dashboard=board.status(), collector=collector,
        processes=processes, problems=problems,
    )


def status_without_store(config: FleetConfig, error: BaseException) -> dict[str, Any]:
    """What `status` can still say when the store cannot be opened: fleetdeck's own processes and the collector's
    heartbeat (it lives outside the store), plus the store's error as a problem."""
    board, standalone = Dashboard(config), StandaloneCollector(config)
    nginx_status: dict[str, Any] = {}
    if config.load_balancer and config.load_balancer.mode == "managed":
        nginx_status["process"] = ManagedNginx(config).process_state()
    processes = _own_processes(config, None, board, standalone, nginx_status)
    heartbeat = self_status.collector_heartbeat(config)
    secret = url_password(config.store_url)
    store_error = redact(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                         (secret,) if secret else ())[:300]
    problems = [f"store {config.store_url.split('@')[-1]}: cannot be opened — {store_error}"]
    problems += [f"{p['name']}{' pid ' + str(p['pid']) if p['pid'] else ''}: {p['state']} — {p['detail']}"
                 for p in processes if p["problem"]]
    return {"ts": time.time(), "store_error": store_error, "processes": processes, "problems": problems,
            "collector": {"embedded": config.dashboard.embedded_collector, "heartbeat": heartbeat}}


def _own_processes(config: FleetConfig, store: Store | None, board: Dashboard, collector: StandaloneCollector,
                   nginx_status: dict[str, Any]) -> list[dict[str, Any]]:
    # without a store nothing says what `up` started: then only a dead pid file or orphaned workers are problems
    expected = self_status.fleet_expected(store) if store is not None else None
    up = expected is not None
    processes = [self_status.background_entry(
        "dashboard", board.pid_path, board.pid(), up and bool(expected and expected.get("dashboard")),
        "`fleetdeck up` starts it again")]
    if not config.dashboard.embedded_collector:
        processes.append(self_status.background_entry(
            "collector", collector.pid_path, collector.pid(), up and bool(expected and expected.get("collector", True)),
            "no samples are collected until `fleetdeck up` starts it again"))
    if nginx_status.get("process") is not None:
        processes.extend(self_status.nginx_entries(
            nginx_status["process"], up and bool(expected and expected.get("nginx", True))))
    return processes

