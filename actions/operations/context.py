"""What an operation acts through: the config, the store, the backends of each service and the lookups and checks
every operation shares (find an instance, who is serving, min_healthy, apply an upstream, wait until idle)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from actions import audit
from actions.backends import backend_for
from actions.backends.base import (
    DOWN,
    DRAINING,
    LIVE_STATES,
    UP,
    ApplyResult,
    FleetdeckActionError,
    LoadBalancer,
    Orchestrator,
    Refused,
    Replica,
    UpstreamServer,
)
from actions.drain_evidence import DrainWatch
from actions.operations.limits import limits_of, with_effective_limits
from actions.operations.types import (
    DRAIN_POLL_S,
    PROGRESS_EVERY_S,
    QUIET_POLLS,
    Health,
    HealthProbe,
    Refusal,
    probe_health,
    servers_dicts,
    state_of,
    whole_number,
)
from core.config import FleetConfig, ServiceConfig
from core.store import OpsRecords


def replica_stopped_under(orchestrator: Orchestrator, service: ServiceConfig, replica: Replica) -> str | None:
    """Why `replica` no longer runs (stopped, dead or replaced while an action waited on it), else None."""
    current = next((r for r in orchestrator.list(service) if r.instance_id == replica.instance_id), None)
    if current is None:
        return f"{replica.instance_id} was stopped while the action ran (by another command, e.g. `fleetdeck down`)"
    if current.state not in LIVE_STATES:
        return f"{replica.instance_id} is {current.state} (stopped while the action ran)"
    if replica.ref and current.ref and current.ref != replica.ref:
        return f"{replica.instance_id} was replaced by another process while the action ran"
    return None


class OperationContext:
    """The backends and shared checks of the operations. One instance per process is fine; it holds no
    per-action state.

    `orchestrator`, `balancer` and `health_probe` may be injected (tests wrap the real ones, the fast tier passes
    in-memory fakes); by default the service's backend, the managed nginx of `config.load_balancer` and an HTTP
    GET of the health path are used.
    """

    def __init__(
        self,
        config: FleetConfig,
        store: OpsRecords,
        *,
        orchestrator: Orchestrator | None = None,
        balancer: LoadBalancer | None = None,
        on_progress: audit.ProgressCallback | None = None,
        health_probe: HealthProbe = probe_health,
    ) -> None:
        self.config = config
        self._health_probe = health_probe
        self.store = store
        self._orchestrator = orchestrator
        self._backends: dict[str, Orchestrator] = {}
        self._balancer = balancer
        self.on_progress = on_progress

    # -- backends --------------------------------------------------------------------------------------------

    def orchestrator(self, service: ServiceConfig) -> Orchestrator:
        if self._orchestrator is not None:
            return self._orchestrator
        if service.backend not in self._backends:
            # one per backend, kept: a docker/swarm orchestrator holds the daemon connection
            self._backends[service.backend] = backend_for(service, self.config, self.store)
        return self._backends[service.backend]

    def balancer(self, service: ServiceConfig) -> LoadBalancer | None:
        """The load balancer in front of `service`, or None when nginx does not route to it."""
        lb = self.config.load_balancer
        if lb is None or lb.service != service.name:
            return None
        if self._balancer is None:
            from actions.backends.nginx import ManagedNginx

            self._balancer = ManagedNginx(self.config, self.store)
        return self._balancer

    def health(self, replica: Replica, service: ServiceConfig, timeout_s: float = 1.0) -> Health:
        """One health probe of one replica (the operations decide on its status, in-flight count, draining)."""
        return self._health_probe(replica, service, timeout_s)

    # -- lookups ---------------------------------------------------------------------------------------------

    def service(self, name: str) -> ServiceConfig:
        """The named service with its effective limits applied (see `with_effective_limits`), or Refusal."""
        try:
            service = self.config.service(name)
        except KeyError as error:
            raise Refusal(str(error.args[0])) from None
        return with_effective_limits(self.store, service)

    def live(self, service: ServiceConfig) -> list[Replica]:
        return [r for r in self.orchestrator(service).list(service) if r.state in LIVE_STATES]

    def find_instance(self, instance: str) -> tuple[ServiceConfig, Replica]:
        """`web-2` or `web/web-2` → (service, replica); refused when unknown or not running."""
        wanted_service, _, instance_id = instance.rpartition("/")
        services = [self.service(wanted_service)] if wanted_service else list(self.config.services)
        known: list[str] = []
        for service in services:
            try:
                replicas = self.orchestrator(service).list(service)
            except FleetdeckActionError:
                continue  # that backend is unreachable: the instance may still be found in another service
            for replica in replicas:
                known.append(replica.instance_id)
                if replica.instance_id == instance_id:
                    if replica.state not in LIVE_STATES:
                        raise Refusal(f"instance '{instance_id}' is {replica.state}, not running")
                    return service, replica
        raise Refusal(f"unknown instance '{instance}'; known: {', '.join(known) or 'none'}")

    def target_of(self, instance: str) -> str:
        """`<service>/<instance>` for the audit, even when the operator typed only the instance id."""
        if "/" in instance:
            return instance
        with contextlib.suppress(Refusal, Refused, FleetdeckActionError):
            service, replica = self.find_instance(instance)
            return f"{service.name}/{replica.instance_id}"
        return f"?/{instance}"

    def upstream(self, service: ServiceConfig) -> list[UpstreamServer]:
        balancer = self.balancer(service)
        return list(balancer.current()) if balancer else []

    def snapshot(self, service: ServiceConfig) -> dict[str, Any]:
        """The before/after record of the audit: replicas with their health and upstream state."""
        upstream = self.upstream(service)
        replicas = []
        for replica in self.live(service):
            health = self.health(replica, service, 0.5)
            replicas.append({
                "instance_id": replica.instance_id, "address": replica.address, "state": replica.state,
                "health": health.status, "upstream": state_of(upstream, replica),
            })
        generation = None
        balancer = self.balancer(service)
        if balancer is not None:
            generation = balancer.generation()
        return {"replicas": replicas, "count": len(replicas), "generation": generation,
                "upstream": servers_dicts(upstream)}

    # -- shared checks -----------------------------------------------------------------------------------------

    def serving(self, service: ServiceConfig, upstream: list[UpstreamServer], exclude: set[str]) -> list[str]:
        """Instance ids that are healthy and in rotation (upstream `up`, or no LB at all), minus `exclude`."""
        balancer = self.balancer(service)
        serving = []
        for replica in self.live(service):
            if replica.instance_id in exclude:
                continue
            if balancer is not None and state_of(upstream, replica) != UP:
                continue
            if self.health(replica, service, 1.0).healthy:
                serving.append(replica.instance_id)
        return serving

    def check_min_healthy(self, service: ServiceConfig, upstream: list[UpstreamServer], removing: set[str]) -> None:
        # Never take the last serving replica out, whatever min_healthy says: that would be an outage, not a drain.
        need = max(service.min_healthy, 1)
        remaining = self.serving(service, upstream, removing)
        if len(remaining) < need:
            raise Refusal(
                f"refused: taking {', '.join(sorted(removing))} out of '{service.name}' would leave"
                f" {len(remaining)} healthy serving replica(s) ({', '.join(remaining) or 'none'});"
                f" min_healthy is {service.min_healthy}" + (" and the last one is never drained" if need == 1 else "")
            )

    def parse_count(self, service: ServiceConfig, replicas: int | str) -> int:
        """N as a whole number within the service's effective limits, or Refusal naming where the bounds come from."""
        count = whole_number(replicas, "N")
        limits = limits_of(self.store, self.config.service(service.name))
        if not limits.min_replicas <= count <= limits.max_replicas:
            where = ("min_replicas, max_replicas in the config" if limits.source == "config"
                     else f"limits {limits.describe()}; see `fleetdeck limits {service.name}`")
            raise Refusal(
                f"N={count} is outside '{service.name}' bounds [{limits.min_replicas}, {limits.max_replicas}]"
                f" ({where})"
            )
        return count

    def pick_victims(self, service: ServiceConfig, live: list[Replica], upstream: list[UpstreamServer],
                     count: int) -> list[Replica]:
        """Which replicas to remove: already out of rotation first, then unhealthy, then the newest."""

        def cost(replica: Replica) -> tuple[int, int, float]:
            state = state_of(upstream, replica)
            out_of_rotation = 0 if state in (DOWN, DRAINING) else 1
            unhealthy = 0 if not self.health(replica, service, 0.5).healthy else 1
            return out_of_rotation, unhealthy, -replica.started_at

        return sorted(live, key=cost)[:count]

    # -- shared steps ------------------------------------------------------------------------------------------

    def apply(self, op: audit.Operation, service: ServiceConfig, servers: list[UpstreamServer],
              why: str) -> ApplyResult:
        balancer = self.balancer(service)
        assert balancer is not None
        op.progress(f"{why}: nginx -t, reload, verify", "apply")
        result = balancer.apply(servers)
        if not result.ok:
            op.progress(f"nginx apply failed, previous config kept: {result.detail}", "apply_failed")
            result.raise_for_failure()
        op.progress(result.detail, "applied", generation=result.generation)
        return result

    def wait_healthy(self, service: ServiceConfig, replica: Replica) -> Replica:
        return self.orchestrator(service).wait_healthy(service, replica)

    def wait_idle(self, op: audit.Operation, service: ServiceConfig, replica: Replica,
                  timeout_s: float) -> tuple[bool, str]:
        """Until the load balancer shows the replica idle on QUIET_POLLS polls in a row (actions/drain_evidence.py:
        no old nginx worker, no open upstream connection to it, no new request logged); the app's own in-flight
        count is extra evidence: above what our probe explains (1) it keeps the drain waiting."""
        watch = DrainWatch.for_balancer(self.balancer(service), replica.address)
        deadline = time.monotonic() + timeout_s
        quiet = 0
        last_report = 0.0
        why = ""
        while True:
            health = self.health(replica, service)
            # An unreachable replica has nothing in flight (it is gone).
            evidence = watch.poll(0 if health.status == "unreachable" else health.in_flight)
            if evidence.idle():
                quiet += 1
                if quiet >= QUIET_POLLS:
                    op.progress(f"{replica.instance_id} is idle: {evidence.describe()}", "idle",
                                **evidence.as_dict())
                    return True, "idle"
            else:
                quiet = 0
            why = evidence.describe()
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                op.progress(f"waiting for {replica.instance_id}: {why}", "waiting", **evidence.as_dict())
                last_report = now
            if now >= deadline:
                return False, why
            time.sleep(DRAIN_POLL_S)

    def old_nginx_workers(self, service: ServiceConfig) -> int:
        """nginx workers of an older generation still finishing requests (they may still hit the target)."""
        balancer = self.balancer(service)
        return balancer.old_generation_workers() if balancer is not None else 0

    def record_desired(self, service: ServiceConfig) -> None:
        """Remember the live count as the service's desired count (what `fleetdeck up` restores)."""
        self.store.put_kv(f"desired:{service.name}", {"replicas": len(self.live(service)), "ts": time.time()})
