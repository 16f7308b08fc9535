"""The local orchestrator: replicas are OS processes on loopback ports, recorded in the store.

A replica is started from the service's command template in its own session (so a stop signals its whole
process group), logs to `<state_dir>/logs/<instance_id>.log` and is recorded in the store's replica table.
Because the store outlives fleetdeck, a later fleetdeck process re-adopts the replicas. A recorded replica counts
as alive only while the process fleetdeck spawned still runs — same pid *and* same start time, so a pid the
kernel recycled for another program is never adopted (or signalled); the command line plays no part, so any
wrapper works (`env PORT={port} node app.js`, `sh -c`, `npm start`). Stopping signals the whole process group
and every process carrying the replica's environment marker (core/replica_process.py; docs/architecture.md,
"Replica identity").
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from actions.backends.base import (
    DEAD,
    LIVE_STATES,
    RUNNING,
    STARTING,
    STOPPED,
    BackendError,
    Refused,
    Replica,
    ReplicaUnhealthy,
)
from core.config import REPO_ROOT, FleetConfig, ServiceConfig
from core.private_paths import TRAVERSE_ONLY, private_dir
from core.process import (
    VENV_PYTHON,
    ProcessControlError,
    http_get,
    pid_alive,
    port_is_free,
    process_matches,
    tail,
    terminate,
)
from core.replica_process import MARKER_VAR, ReplicaProcess, StopReport, fleet_key, new_marker, stop_processes
from core.store import OpsRecords, ReplicaRecord

log = logging.getLogger(__name__)

BACKEND = "local"

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(port|instance_id|service|python|root)\}")


def render_template(text: str, values: dict[str, str]) -> str:
    """Substitute {port}, {instance_id}, {service}, {python}, {root}; `{{`/`}}` are literal braces and any other
    brace text is left alone (an env value may well hold JSON)."""

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _PLACEHOLDER.sub(one, text)


# --- the orchestrator --------------------------------------------------------------------------------------


class LocalOrchestrator:
    """Runs a service's replicas as local processes; the store is the source of truth across restarts."""

    def __init__(self, config: FleetConfig, store: OpsRecords) -> None:
        self.config = config
        self.store = store
        self.log_dir = config.state_path / "logs"
        # Popen handles of replicas this process started: kept so their exit status can be reaped.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    @staticmethod
    def port_capacity(service: ServiceConfig) -> int | None:
        """One port of the service's range per replica: the range bounds how many can run."""
        return len(service.ports.ports())

    # -- naming and rendering

    @staticmethod
    def instance_id(service: ServiceConfig, number: int) -> str:
        return f"{service.name}-{number}"

    @staticmethod
    def _instance_number(service: ServiceConfig, instance_id: str) -> int | None:
        stem, _, number = instance_id.rpartition("-")
        return int(number) if stem == service.name and number.isdigit() else None

    @staticmethod
    def placeholders(service: ServiceConfig, port: int, instance_id: str) -> dict[str, str]:
        python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
        return {"port": str(port), "instance_id": instance_id, "service": service.name, "python": python,
                "root": str(REPO_ROOT)}

    def render_command(self, service: ServiceConfig, port: int, instance_id: str) -> list[str]:
        if not service.command:
            raise BackendError(f"service '{service.name}' has no command for the local backend")
        argv = shlex.split(render_template(service.command, self.placeholders(service, port, instance_id)))
        if not argv:
            raise BackendError(f"service '{service.name}' has an empty command")
        return argv

    def render_env(self, service: ServiceConfig, port: int, instance_id: str) -> dict[str, str]:
        """The service's env with the same placeholders as the command, so an app configured by its environment
        (PORT, INSTANCE_ID) gets its own values per replica."""
        values = self.placeholders(service, port, instance_id)
        return {key: render_template(value, values) for key, value in service.env.items()}

    def log_path(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        return tail(self.log_path(instance_id), lines)

    # -- identity

    @property
    def fleet_marker_prefix(self) -> str:
        """The start of the environment marker of every replica process this fleet (state_dir) spawned."""
        return fleet_key(self.config.state_path) + "/"

    @staticmethod
    def identity(record: ReplicaRecord) -> ReplicaProcess | None:
        return ReplicaProcess.decode(record.ref, record.pid)

    def _is_ours(self, service: ServiceConfig, record: ReplicaRecord) -> bool:
        """The process fleetdeck spawned for this record still runs (same pid and start time).

        Records from before replica identities (their ref is the bare pid) are checked the old way: the pid is
        alive and its command line names the port (and the instance id when the command templated it).
        """
        identity = self.identity(record)
        if identity is not None:
            return identity.leader_alive()
        needles = [str(record.port)]
        if service.command and "{instance_id}" in service.command:
            needles.append(record.instance_id)
        return process_matches(record.pid, *needles)

    def _why_gone(self, record: ReplicaRecord) -> str:
        identity = self.identity(record)
        if identity is None:
            return "process is gone (or no longer runs this replica's command)"
        code = self._exit_code_text(identity.pid)  # before pid_alive(), which would reap the child
        if code or not pid_alive(identity.pid):
            return f"process exited{code}"
        return "pid now belongs to another process (its start time differs)"

    @staticmethod
    def _to_replica(record: ReplicaRecord, state: str | None = None) -> Replica:
        return Replica(
            service=record.service,
            instance_id=record.instance_id,
            host=record.host,
            port=record.port,
            pid=record.pid,
            state=state or record.state,
            started_at=record.started_at,
            ref=record.ref,
        )

    # -- Orchestrator protocol

    def list(self, service: ServiceConfig) -> list[Replica]:
        """Every recorded replica; those whose process is gone (or was replaced) are reported dead."""
        replicas: list[Replica] = []
        for record in self.store.replicas(service.name):
            if record.backend != BACKEND:
                continue
            if record.state in LIVE_STATES and not self._is_ours(service, record):
                why = self._why_gone(record)
                log.warning("replica %s (pid %s): %s; marking it dead", record.instance_id, record.pid, why)
                record = record._replace(state=DEAD)
                self.store.upsert_replica(record)
                self.store.add_event(
                    "replica.dead", f"{service.name}/{record.instance_id}", why,
                    {"pid": record.pid, "port": record.port},
                )
            replicas.append(self._to_replica(record))
        return sorted(replicas, key=lambda r: (self._instance_number(service, r.instance_id) or 0, r.instance_id))

    def live(self, service: ServiceConfig) -> builtins.list[Replica]:
        return [r for r in self.list(service) if r.state in LIVE_STATES]

    def _taken_ports(self) -> set[int]:
        """Ports of live replicas of every local service, so two services sharing a range never collide."""
        taken: set[int] = set()
        for svc in self.config.services:
            if svc.backend == BACKEND:
                taken.update(r.port for r in self.live(svc))
        return taken

    def start(self, service: ServiceConfig) -> Replica:
        current = self.list(service)
        live = [r for r in current if r.state in LIVE_STATES]
        if len(live) >= service.max_replicas:
            raise Refused(
                f"service '{service.name}' already runs {len(live)} replicas (max_replicas {service.max_replicas})"
            )
        live_numbers = {self._instance_number(service, r.instance_id) for r in live}
        number = next(n for n in range(1, service.max_replicas + len(live_numbers) + 2) if n not in live_numbers)
        instance_id = self.instance_id(service, number)
        taken = self._taken_ports()
        port = next((p for p in service.ports.ports() if p not in taken and port_is_free(service.host, p)), None)
        if port is None:
            raise Refused(
                f"no free port for '{service.name}' in {service.ports.start}-{service.ports.end}"
                " (all used by replicas or other programs)"
            )
        argv = self.render_command(service, port, instance_id)
        marker = new_marker(fleet_key(self.config.state_path), service.name, instance_id)
        # SERVICE_NAME lets the app report its service in /health; the config's env wins when it sets it. The
        # marker comes last: it is how fleetdeck finds every process of this replica, whatever the command.
        env = {**os.environ, "SERVICE_NAME": service.name, **self.render_env(service, port, instance_id),
               "PYTHONUNBUFFERED": "1", MARKER_VAR: marker}
        private_dir(self.config.state_path, TRAVERSE_ONLY)
        private_dir(self.log_dir)
        log_file = self.log_path(instance_id)
        with log_file.open("ab") as handle:
            handle.write(f"\n=== fleetdeck start {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
            handle.flush()
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(REPO_ROOT),
                    start_new_session=True,  # own process group: stop() signals the whole tree
                    close_fds=True,
                )
            except OSError as error:
                raise BackendError(f"cannot start {instance_id}: {argv[0]}: {error.strerror}") from None
        self._children[process.pid] = process
        identity = ReplicaProcess.of_spawn(process.pid, marker)
        started_at = time.time()
        record = ReplicaRecord(
            service=service.name,
            instance_id=instance_id,
            backend=BACKEND,
            host=service.host,
            port=port,
            pid=process.pid,
            state=STARTING,
            started_at=started_at,
            ref=identity.encode(),
        )
        self.store.upsert_replica(record)
        self.store.add_event(
            "replica.start", f"{service.name}/{instance_id}", f"started pid {process.pid} on port {port}",
            {"pid": process.pid, "port": port, "command": argv},
        )
        log.info("started %s pid %s on %s:%s", instance_id, process.pid, service.host, port)
        return self._to_replica(record)

    def stop(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica:
        record = next((r for r in self.store.replicas(service.name) if r.instance_id == instance_id), None)
        if record is None or record.backend != BACKEND:
            raise Refused(f"'{instance_id}' is not a local replica of '{service.name}'")
        grace = service.stop_grace_s if grace_s is None else grace_s
        report = self._stop_processes(service, record, grace)
        if record.pid:
            child = self._children.pop(record.pid, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1)
        details = {"pid": record.pid, "port": record.port, "grace_s": grace, "outcome": report.outcome,
                   "signalled": report.signalled, "survivors": report.survivors}
        if report.survivors:
            # keep the record: the processes still run, and a later stop or `down` must find them again
            self.store.add_event("replica.stop", f"{service.name}/{instance_id}",
                                 f"could not stop pid(s) {report.survivors}", details)
            raise BackendError(f"{instance_id}: pid(s) {', '.join(map(str, report.survivors))} survived SIGKILL")
        self.store.remove_replica(service.name, instance_id)
        self.store.add_event("replica.stop", f"{service.name}/{instance_id}", f"stopped ({report.outcome})", details)
        log.info("stopped %s pid %s (%s)", instance_id, record.pid, report.outcome)
        return self._to_replica(record, STOPPED)

    def _stop_processes(self, service: ServiceConfig, record: ReplicaRecord, grace_s: float) -> StopReport:
        """Stop every process of the replica, whatever state its record says (dead replicas may leave children).

        Only provably-ours processes are signalled: the spawned pid with its start time, its group, and processes
        carrying the replica's marker. A legacy record (no identity) is signalled only when its cmdline matches.
        """
        identity = self.identity(record)
        if identity is not None:
            return stop_processes(identity, grace_s)
        if record.pid and self._is_ours(service, record):
            try:
                return StopReport(terminate(record.pid, grace_s), [record.pid], [])
            except ProcessControlError as error:
                raise BackendError(str(error)) from None
        return StopReport("gone", [], [])

    def stop_strays(self, grace_s: float = 5.0) -> StopReport:
        """Stop processes carrying this fleet's marker that no record accounts for (a lost record, a child that
        detached from its group): `down` calls it last so nothing the fleet started keeps running."""
        strays = ReplicaProcess(0, None, self.fleet_marker_prefix)
        return stop_processes(strays, grace_s)

    # -- health

    def mark(self, service: ServiceConfig, instance_id: str, state: str) -> None:
        for record in self.store.replicas(service.name):
            if record.instance_id == instance_id and record.state != state:
                self.store.upsert_replica(record._replace(state=state))

    def wait_healthy(self, service: ServiceConfig, replica: Replica, timeout_s: float | None = None) -> Replica:
        """Poll the ready path (falling back to the health path) until 200; marks the replica running.

        Raises ReplicaUnhealthy with the log tail when the process exits or the timeout passes.
        """
        timeout = service.boot_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        paths = [p for p in (service.health.ready, service.health.path) if p]
        last = "no answer"
        while time.monotonic() < deadline:
            exit_code = self._exit_code_text(replica.pid)  # before pid_alive(), which would reap the child
            if exit_code or not pid_alive(replica.pid):
                raise ReplicaUnhealthy(
                    f"{replica.instance_id} exited during start-up{exit_code}",
                    replica.instance_id, self.log_tail(replica.instance_id),
                )
            for path in paths:
                status, _body = http_get(f"{replica.base_url}{path}", min(2.0, service.health.timeout_s))
                if status == 200:
                    self.mark(service, replica.instance_id, RUNNING)
                    return replica._replace(state=RUNNING)
                if status == 404:
                    continue  # the app has no such path: try the next one
                last = f"{path} answered {status}" if status else f"{path}: no answer"
                if status:
                    break  # e.g. 503 from /readyz while starting: the health path would not tell more
            time.sleep(0.2)
        raise ReplicaUnhealthy(
            f"{replica.instance_id} did not become healthy within {timeout:.0f}s ({last})",
            replica.instance_id, self.log_tail(replica.instance_id),
        )

    def _exit_code_text(self, pid: int | None) -> str:
        child = self._children.get(pid) if pid else None
        code = child.poll() if child is not None else None
        return f" (exit code {code})" if code is not None else ""

    def probe(self, service: ServiceConfig, replica: Replica, timeout_s: float = 1.0) -> str:
        """One /health probe: pass | warn | fail | unreachable (the word the app reports, normalised)."""
        status, body = http_get(f"{replica.base_url}{service.health.path}", timeout_s)
        if status == 0:
            return "unreachable"
        word = ""
        with contextlib.suppress(ValueError, AttributeError):
            word = str(json.loads(body).get("status", "")).lower()
        if status >= 400:
            return "warn" if word == "warn" else "fail"
        return {"ok": "pass", "up": "pass", "pass": "pass", "warn": "warn"}.get(word, "pass" if not word else "fail")
