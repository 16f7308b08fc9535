"""The PM2 backend (`backend: pm2`), fork mode: every replica is one PM2 process on its own port behind
fleetdeck's nginx, so list, scale, drain, undrain, restart and rolling restart go through the same actions,
audit and guard rails as the local backend.

PM2 runs from the project's own install (`compose/expressapp/node_modules/.bin/pm2`, pinned in its package.json
and installed by `npm ci`) with `PM2_HOME=<state_dir>/pm2`, so it never touches a user's own PM2 daemon. Each
replica is a PM2 app named after its instance id (`web-1`), started with the service's command and env (the same
placeholders as the local backend: `{port}`, `{instance_id}`, ...), `--kill-timeout` = stop_grace_s (PM2's own
1.6 s default is too short for a graceful drain) and its log in `<state_dir>/logs/<instance_id>.log`. The
replica record keeps PM2's name in `ref`; the state comes from `pm2 jlist` (online → alive). PM2 stops an app
with SIGINT, which the reference Express app treats like SIGTERM.

Cluster mode (`pm2_exec_mode: cluster`): one PM2 app named after the service whose instances share the first
port of the range and are balanced by PM2 itself; nginx has one server. Scaling is `pm2 scale`, a rolling restart
is `pm2 reload` (zero-downtime: a new worker listens before an old one is stopped); per-instance drain and restart
are refused, because nginx cannot take one instance of a shared port out of rotation.

An existing ecosystem file is adopted at configuration time (`pm2_ecosystem`, core/pm2_ecosystem.py): its app's
script, instances, exec_mode, env (increment_var → one port per replica) and cwd fill the service's keys, so this
backend sees an ordinary service.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

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
from actions.backends.local import LocalOrchestrator
from core.config import REPO_ROOT, FleetConfig, ServiceConfig
from core.process import http_get, port_is_free
from core.replica_process import MARKER_VAR, ReplicaProcess, fleet_key, new_marker, stop_processes
from core.store import OpsRecords, ReplicaRecord

log = logging.getLogger(__name__)

BACKEND = "pm2"
PM2_BINARY = REPO_ROOT / "compose" / "expressapp" / "node_modules" / ".bin" / "pm2"
# PM2 prints banners on stdout besides the JSON; jlist output is bounded before parsing.
JLIST_LIMIT = 8 << 20


CLUSTER_DRAIN_REFUSED = (
    "per-instance {action} is refused for '{service}': PM2 cluster mode runs every instance on one port and"
    " balances them itself, so nginx cannot take one instance out of rotation; scale the service or use a rolling"
    " restart (pm2 reload), or run it in fork mode (pm2_exec_mode: fork) for per-instance drains"
)


def is_cluster(service: ServiceConfig) -> bool:
    return service.backend == BACKEND and service.pm2_exec_mode == "cluster"


def _pid_of(entry: dict[str, Any] | None) -> int | None:
    pid = (entry or {}).get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


class Pm2Orchestrator(LocalOrchestrator):
    """Replicas as PM2 fork-mode apps (one per port). Naming, ports, health waits and probes are the local
    backend's; starting, listing and stopping go through the pm2 CLI against fleetdeck's own PM2_HOME."""

    backend = BACKEND

    def __init__(self, config: FleetConfig, store: OpsRecords, binary: Path | None = None) -> None:
        super().__init__(config, store)
        self.home = config.state_path / "pm2"
        self.binary = binary or PM2_BINARY

    # -- the pm2 CLI

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != MARKER_VAR}
        env.update({"PM2_HOME": str(self.home), "PM2_SILENT": "true", "PM2_DISABLE_VERSION_CHECK": "true"})
        env.update(extra or {})
        return env

    def pm2(self, *args: str, extra_env: dict[str, str] | None = None, timeout_s: float = 60.0) -> str:
        if not self.binary.exists():
            raise BackendError(f"pm2 is not installed at {self.binary} (run `make express-app`)")
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=timeout_s,
                                  env=self._env(extra_env), cwd=str(REPO_ROOT), check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(f"pm2 {' '.join(args[:2])} did not answer within {timeout_s:g}s") from None
        if done.returncode != 0:
            raise BackendError(f"pm2 {' '.join(args[:2])} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return done.stdout

    def ensure_daemon(self) -> None:
        """Start the PM2 daemon with a clean environment first: later `pm2 start` calls carry a replica's
        marker, and a daemon spawned by one of them would inherit it (and be taken for that replica)."""
        self.pm2("ping")

    def jlist(self) -> builtins.list[dict[str, Any]]:
        """PM2's process list (the JSON line of `pm2 jlist`, banners skipped)."""
        if not (self.home / "pm2.pid").exists():
            return []  # no daemon of ours: asking would start one
        out = self.pm2("jlist")[:JLIST_LIMIT]
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("["):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                return [entry for entry in data if isinstance(entry, dict)]
        raise BackendError("pm2 jlist printed no process list")

    def daemon_pid(self) -> int | None:
        try:
            return int((self.home / "pm2.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def kill_daemon(self) -> bool:
        """`pm2 kill`: stops every app and the daemon of fleetdeck's PM2_HOME; False when none ran."""
        if self.daemon_pid() is None:
            return False
        self.pm2("kill", timeout_s=120)
        return True

    # -- Orchestrator protocol

    def _records(self, service: ServiceConfig) -> builtins.list[ReplicaRecord]:
        return [r for r in self.store.replicas(service.name) if r.backend == BACKEND]

    def list(self, service: ServiceConfig) -> builtins.list[Replica]:
        if is_cluster(service):
            return self._cluster_list(service)
        apps = {str(entry.get("name")): entry for entry in self.jlist()}
        replicas: builtins.list[Replica] = []
        for record in self._records(service):
            entry = apps.get(record.ref)
            env: dict[str, Any] = (entry or {}).get("pm2_env") or {}
            status = str(env.get("status", "missing"))
            pid = int(entry["pid"]) if entry and isinstance(entry.get("pid"), int) and entry["pid"] > 0 else None
            if record.state in LIVE_STATES and status not in ("online", "launching"):
                log.warning("pm2 app %s is %s; marking it dead", record.ref, status)
                record = record._replace(state=DEAD)
                self.store.upsert_replica(record)
                self.store.add_event("replica.dead", f"{service.name}/{record.instance_id}", f"pm2 status {status}",
                                     {"pid": record.pid, "port": record.port})
            elif pid is not None and pid != record.pid:
                record = record._replace(pid=pid)  # PM2 restarted it: a new pid for the same app
                self.store.upsert_replica(record)
            replicas.append(self._to_replica(record))
        return sorted(replicas, key=lambda r: (self._instance_number(service, r.instance_id) or 0, r.instance_id))

    def _taken_ports(self) -> set[int]:
        taken: set[int] = set()
        for svc in self.config.services:
            if svc.backend in (BACKEND, "local"):
                taken.update(r.port for r in (self.live(svc) if svc.backend == BACKEND else
                                              LocalOrchestrator(self.config, self.store).live(svc)))
        return taken

    def start(self, service: ServiceConfig) -> Replica:
        if is_cluster(service):
            return self._cluster_start(service)
        live = [r for r in self.list(service) if r.state in LIVE_STATES]
        if len(live) >= service.max_replicas:
            raise Refused(f"service '{service.name}' already runs {len(live)} replicas"
                          f" (max_replicas {service.max_replicas})")
        live_numbers = {self._instance_number(service, r.instance_id) for r in live}
        number = next(n for n in range(1, service.max_replicas + len(live_numbers) + 2) if n not in live_numbers)
        instance_id = self.instance_id(service, number)
        taken = self._taken_ports()
        port = next((p for p in service.ports.ports() if p not in taken and port_is_free(service.host, p)), None)
        if port is None:
            raise Refused(f"no free port for '{service.name}' in {service.ports.start}-{service.ports.end}")
        argv = self.render_command(service, port, instance_id)
        marker = new_marker(fleet_key(self.config.state_path), service.name, instance_id)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path(instance_id)
        with log_file.open("ab") as handle:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            handle.write(f"\n=== fleetdeck pm2 start {stamp} {shlex.join(argv)}\n".encode())
        self.ensure_daemon()
        # a leftover app of the same name (an earlier fleetdeck crashed mid-stop) would make `pm2 start` fail
        if any(str(e.get("name")) == instance_id for e in self.jlist()):
            self.pm2("delete", instance_id)
        script, interpreter, args = _pm2_script(argv)
        options = ["--name", instance_id, "--kill-timeout", str(int(service.stop_grace_s * 1000)),
                   "--log", str(log_file), "--time", "--max-restarts", "3", "--interpreter", interpreter,
                   *_cwd_option(service)]
        env = {"SERVICE_NAME": service.name, **self.render_env(service, port, instance_id), MARKER_VAR: marker}
        self.pm2("start", script, *options, *(["--", *args] if args else []), extra_env=env)
        entry = next((e for e in self.jlist() if str(e.get("name")) == instance_id), None)
        pid = int(entry["pid"]) if entry and isinstance(entry.get("pid"), int) and entry["pid"] > 0 else None
        record = ReplicaRecord(service=service.name, instance_id=instance_id, backend=BACKEND, host=service.host,
                               port=port, pid=pid, state=STARTING, started_at=time.time(), ref=instance_id)
        self.store.upsert_replica(record)
        self.store.add_event("replica.start", f"{service.name}/{instance_id}",
                             f"pm2 started {instance_id} (pid {pid}) on port {port}",
                             {"pid": pid, "port": port, "command": argv, "backend": BACKEND})
        return self._to_replica(record)

    def stop(self, service: ServiceConfig, instance_id: str, grace_s: float | None = None) -> Replica:
        record = next((r for r in self._records(service) if r.instance_id == instance_id), None)
        if record is None:
            raise Refused(f"'{instance_id}' is not a pm2 replica of '{service.name}'")
        if is_cluster(service):
            return self._cluster_stop(service, record, grace_s)
        outcome = "gone"
        if any(str(e.get("name")) == record.ref for e in self.jlist()):
            # `pm2 delete` = SIGINT, wait kill_timeout (stop_grace_s, set at start), SIGKILL
            self.pm2("delete", record.ref, timeout_s=(grace_s or service.stop_grace_s) + 60)
            outcome = "deleted"
        # anything of this replica PM2 did not account for (a child that left its group) still goes
        stray = stop_processes(ReplicaProcess(0, None, fleet_key(self.config.state_path) + f"/{service.name}/"
                                              f"{instance_id}/"), 2.0)
        if stray.survivors:
            raise BackendError(f"{instance_id}: pid(s) {', '.join(map(str, stray.survivors))} survived SIGKILL")
        self.store.remove_replica(service.name, instance_id)
        self.store.add_event("replica.stop", f"{service.name}/{instance_id}", f"pm2 {outcome}",
                             {"pid": record.pid, "port": record.port, "outcome": outcome, "backend": BACKEND})
        return self._to_replica(record, STOPPED)

    def wait_healthy(self, service: ServiceConfig, replica: Replica, timeout_s: float | None = None) -> Replica:
        """The local backend's readiness wait, with PM2's status instead of the pid: an app PM2 marks errored or
        stopped fails at once, with the end of its log."""
        timeout = service.boot_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        paths = [p for p in (service.health.ready, service.health.path) if p]
        while time.monotonic() < deadline:
            entry = self._entry_of(service, replica.ref)
            status = str(((entry or {}).get("pm2_env") or {}).get("status", "missing"))
            if status in ("errored", "stopped", "missing"):
                raise ReplicaUnhealthy(f"{replica.instance_id} is {status} in pm2", replica.instance_id,
                                       self.log_tail(replica.instance_id))
            for path in paths:
                code, _ = http_get(f"{replica.base_url}{path}", min(2.0, service.health.timeout_s))
                if code == 200:
                    self.mark(service, replica.instance_id, RUNNING)
                    return replica._replace(state=RUNNING)
                if code != 404:
                    break
            time.sleep(0.3)
        raise ReplicaUnhealthy(f"{replica.instance_id} did not become healthy within {timeout:.0f}s",
                               replica.instance_id, self.log_tail(replica.instance_id))


    def _entry_of(self, service: ServiceConfig, ref: str) -> dict[str, Any] | None:
        """The jlist entry of a replica: by app name (fork) or by pm_id (cluster: `pm2-cluster:<pm_id>`)."""
        if ref.startswith("pm2-cluster:"):
            pm_id = ref.split(":", 1)[1]
            return next((e for e in self.jlist() if str(e.get("pm_id")) == pm_id), None)
        return next((e for e in self.jlist() if str(e.get("name")) == ref), None)

    # -- cluster mode

    def _cluster_entries(self, service: ServiceConfig) -> builtins.list[dict[str, Any]]:
        return [e for e in self.jlist() if str(e.get("name")) == service.name]

    def _cluster_list(self, service: ServiceConfig) -> builtins.list[Replica]:
        """The instances PM2 runs for the service, mirrored into the replica table (so the collectors see them)."""
        present: dict[str, ReplicaRecord] = {}
        for entry in self._cluster_entries(service):
            env: dict[str, Any] = entry.get("pm2_env") or {}
            index = env.get("NODE_APP_INSTANCE", entry.get("pm_id", 0))
            instance_id = f"{service.name}-{int(index) + 1 if str(index).isdigit() else index}"
            status = str(env.get("status", "unknown"))
            state = RUNNING if status == "online" else STARTING if status == "launching" else DEAD
            uptime = env.get("pm_uptime")
            present[instance_id] = ReplicaRecord(
                service=service.name, instance_id=instance_id, backend=BACKEND, host=service.host,
                port=service.ports.start, pid=_pid_of(entry), state=state,
                started_at=float(uptime) / 1000.0 if isinstance(uptime, int | float) else time.time(),
                ref=f"pm2-cluster:{entry.get('pm_id')}",
            )
        for record in self._records(service):
            if record.instance_id not in present:
                self.store.remove_replica(service.name, record.instance_id)
            elif record == present[record.instance_id]:
                del present[record.instance_id]  # unchanged: no write
        for record in present.values():
            self.store.upsert_replica(record)
        replicas = [self._to_replica(r) for r in self._records(service)]
        return sorted(replicas, key=lambda r: (self._instance_number(service, r.instance_id) or 0, r.instance_id))

    def _cluster_start(self, service: ServiceConfig) -> Replica:
        """One more instance: `pm2 start -i 1` the first time, `pm2 scale <service> N+1` after that."""
        before = {r.instance_id for r in self._cluster_list(service)}
        if len(before) >= service.max_replicas:
            raise Refused(f"service '{service.name}' already runs {len(before)} instances"
                          f" (max_replicas {service.max_replicas})")
        if not before:
            port = service.ports.start
            argv = self.render_command(service, port, service.name)
            script, interpreter, args = _pm2_script(argv)
            if interpreter != "node":
                raise BackendError("PM2 cluster mode runs node scripts only: the command must be `node <script>`")
            log_file = self.log_path(service.name)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.ensure_daemon()
            env = {"SERVICE_NAME": service.name, **self.render_env(service, port, service.name),
                   MARKER_VAR: new_marker(fleet_key(self.config.state_path), service.name, service.name)}
            self.pm2("start", script, "--name", service.name, "-i", "1", "--kill-timeout",
                     str(int(service.stop_grace_s * 1000)), "--log", str(log_file), "--time",
                     *_cwd_option(service), *(["--", *args] if args else []), extra_env=env)
        else:
            self.pm2("scale", service.name, str(len(before) + 1))
        deadline = time.monotonic() + service.boot_timeout_s
        while True:
            now = self._cluster_list(service)
            fresh = [r for r in now if r.instance_id not in before]
            if fresh:
                replica = fresh[-1]
                self.store.add_event("replica.start", f"{service.name}/{replica.instance_id}",
                                     f"pm2 cluster instance {replica.ref} (pid {replica.pid})",
                                     {"pid": replica.pid, "backend": BACKEND, "mode": "cluster"})
                return replica
            if time.monotonic() > deadline:
                raise BackendError(
                    f"pm2 did not add an instance to '{service.name}' within {service.boot_timeout_s:g}s")
            time.sleep(0.2)

    def _cluster_stop(self, service: ServiceConfig, record: ReplicaRecord, grace_s: float | None) -> Replica:
        pm_id = record.ref.split(":", 1)[1] if record.ref.startswith("pm2-cluster:") else record.ref
        if self._entry_of(service, record.ref) is not None:
            self.pm2("delete", pm_id, timeout_s=(grace_s or service.stop_grace_s) + 60)
        self.store.remove_replica(service.name, record.instance_id)
        self.store.add_event("replica.stop", f"{service.name}/{record.instance_id}", f"pm2 deleted {pm_id}",
                             {"pid": record.pid, "backend": BACKEND, "mode": "cluster"})
        return self._to_replica(record, STOPPED)

    def cluster_scale(self, service: ServiceConfig, count: int) -> builtins.list[Replica]:
        """`pm2 scale <service> <count>`, then wait until PM2 lists that many online instances."""
        if not self._cluster_entries(service):
            self._cluster_start(service)
        self.pm2("scale", service.name, str(count), timeout_s=service.boot_timeout_s + 60)
        return self._cluster_wait_online(service, count)

    def cluster_reload(self, service: ServiceConfig) -> builtins.list[Replica]:
        """`pm2 reload <service>`: each instance replaced by a new one that listens before the old one stops."""
        count = len(self._cluster_entries(service))
        self.pm2("reload", service.name, timeout_s=count * (service.boot_timeout_s + service.stop_grace_s) + 60)
        return self._cluster_wait_online(service, count)

    def _cluster_wait_online(self, service: ServiceConfig, count: int) -> builtins.list[Replica]:
        deadline = time.monotonic() + service.boot_timeout_s
        while True:
            replicas = self._cluster_list(service)
            online = [r for r in replicas if r.state == RUNNING]
            if len(online) == count == len(replicas):
                return replicas
            if time.monotonic() > deadline:
                states = ", ".join(f"{r.instance_id} {r.state}" for r in replicas) or "none"
                raise BackendError(f"pm2 shows {len(online)} of {count} instances online ({states})")
            time.sleep(0.2)


def _cwd_option(service: ServiceConfig) -> list[str]:
    """`--cwd` for an app whose working directory is configured (an adopted ecosystem file's `cwd`, or its
    directory, as pm2 itself would use)."""
    return ["--cwd", str(service.pm2_cwd)] if service.pm2_cwd else []


def _pm2_script(argv: list[str]) -> tuple[str, str, list[str]]:
    """(script, interpreter, arguments) for `pm2 start`: `node app.js a b` runs app.js under node; anything
    else runs the program itself (`--interpreter none`)."""
    if Path(argv[0]).name in ("node", "nodejs") and len(argv) > 1 and not argv[1].startswith("-"):
        return argv[1], "node", argv[2:]
    return argv[0], "none", argv[1:]
