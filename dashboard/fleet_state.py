"""What the fleet is *supposed* to be, next to what the collectors measured: the replica registry, the
load balancer's rotation and the desired replica count. No Streamlit here.

The live views (tiles, tables, badges, error boxes) use it to tell three cases apart that samples alone cannot:
- a replica that died (registry state `dead`, or its polls fail): DOWN, and it counts as dead;
- a replica an action removed (its last lifecycle event is `replica.stop` and it left the registry): it leaves
  the live views at once and stays only in the charts' history, whose lines end at the action's annotation;
- a replica out of the load balancer's rotation (drained): UP as a process, but `out` (or `draining`);
- a replica nginx still lists while it does not answer (killed, crashed, hung): nginx's file says `up` until an
  action removes it, so its rotation reads `in nginx, not answering`, never `in rotation`.
See docs/architecture.md, "Replica states on the dashboard".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from core.config import FleetConfig
    from core.store import Latest, StoreView

# how far back a `replica.stop` is looked for: longer than the longest time range, so a replica removed within
# the range never comes back into the live views
LIFECYCLE_LOOKBACK_S = 8 * 24 * 3600
LIFECYCLE_KINDS = ("replica.start", "replica.stop")
IN_ROTATION = "in rotation"
# nginx's file still lists the replica as `up`, but it does not answer: nginx tries it, fails (connect refused or
# timeout), counts a passive failure and retries the request on another server; after `max_fails` it skips it for
# `fail_timeout`, then tries it again — so it is listed, not serving (docs/design-notes.md#nginx)
NOT_ANSWERING = "in nginx, not answering"
OUT = "out"
ROTATION_WORDS = {"up": IN_ROTATION, "draining": "draining", "down": OUT}
LIVE_STATES = frozenset({"starting", "running", "draining"})
DEAD = "dead"


class ServiceCount(NamedTuple):
    service: str
    desired: int
    running: int  # registry says live and the last poll answered
    dead: int  # registry says dead, or a live replica whose last poll failed

    @property
    def text(self) -> str:
        return f"{self.running} / {self.desired} running" + (f" · {self.dead} dead" if self.dead else "")


@dataclass
class FleetState:
    registry: dict[str, str] = field(default_factory=dict)  # "<service>/<instance_id>" → registry state
    addresses: dict[str, str] = field(default_factory=dict)  # "<service>/<instance_id>" → "host:port"
    removed: set[str] = field(default_factory=set)  # removed by an action: not shown in the live views
    # target → "in rotation" | "in nginx, not answering" | "draining" | "out"
    rotation: dict[str, str] = field(default_factory=dict)

    def live(self, target: str) -> bool:
        return target not in self.removed

    def keep(self, targets: Iterable[str]) -> list[str]:
        return [t for t in targets if t not in self.removed]


def _registry(store: StoreView) -> tuple[dict[str, str], dict[str, str]]:
    try:
        records = store.replicas()
    except Exception:  # a store without the registry (or briefly unavailable): samples only
        return {}, {}
    states = {f"{r.service}/{r.instance_id}": r.state for r in records}
    addresses = {f"{r.service}/{r.instance_id}": f"{r.host}:{r.port}" for r in records}
    return states, addresses


def removed_targets(store: StoreView, registry: dict[str, str], now: float) -> set[str]:
    """Targets whose newest lifecycle event is a stop and that are no longer in the registry."""
    last: dict[str, tuple[float, str]] = {}
    for kind in LIFECYCLE_KINDS:
        for event in store.events(now - LIFECYCLE_LOOKBACK_S, now + 60, kind=kind):
            seen = last.get(event.target)
            if seen is None or event.ts >= seen[0]:
                last[event.target] = (event.ts, kind)
    return {target for target, (_ts, kind) in last.items() if kind == "replica.stop" and target not in registry}


def is_dead(registry_state: str | None, up: float | None) -> bool:
    """Dead: the backend saw the process gone (registry `dead`), or a live replica whose last poll got no answer
    (`up` 0). None: never polled yet, which is not dead."""
    return registry_state == DEAD or (registry_state in LIVE_STATES and up is not None and up < 1)


def rotation_by_target(nginx_latest: dict[str, dict[str, Latest]], addresses: dict[str, str],
                       dead: Iterable[str] = ()) -> dict[str, str]:
    """Instance target → rotation word, from the nginx collector's `server_state` of each upstream address and
    whether the replica answers: nginx's file alone keeps a dead replica `up` until an action removes it."""
    by_address: dict[str, str] = {}
    for target, metrics in nginx_latest.items():
        if "/" not in target or "server_state" not in metrics:
            continue
        row = metrics["server_state"]
        word = (row.text or "").strip().lower() or {0: "up", 1: "draining", 2: "down"}.get(int(row.value), "down")
        by_address[target.split("/", 1)[1]] = ROTATION_WORDS.get(word, OUT)
    rotation = {target: by_address[address] for target, address in addresses.items() if address in by_address}
    for target in set(dead) & rotation.keys():
        # listed as up: nginx still tries it; draining or down: nothing goes there, and nothing is left to drain
        rotation[target] = NOT_ANSWERING if rotation[target] == IN_ROTATION else OUT
    return rotation


def fleet_state(store: StoreView, now: float, nginx_latest: dict[str, dict[str, Latest]] | None = None,
                up_of: dict[str, float | None] | None = None) -> FleetState:
    """`up_of`: instance target → its last `up` value (read from the store when not given)."""
    from dashboard.queries import latest_by_target, value_of  # queries imports this module for its types

    registry, addresses = _registry(store)
    try:
        removed = removed_targets(store, registry, now)
    except Exception:  # the events table is a nicety here: without it nothing is hidden
        removed = set()
    if nginx_latest is None:
        nginx_latest = latest_by_target(store, "nginx")
    if up_of is None:
        up_of = {t: value_of(m, "up") for t, m in latest_by_target(store, "instance", "up").items()}
    dead = [t for t, state in registry.items() if is_dead(state, up_of.get(t))]
    return FleetState(registry, addresses, removed, rotation_by_target(nginx_latest, addresses, dead))


def desired_count(store: StoreView, config: FleetConfig, service: str) -> int:
    """The count the last scale chose (`desired:<service>`), else the config's `replicas`."""
    chosen = None
    try:
        chosen = (store.get_kv(f"desired:{service}") or {}).get("replicas")
    except Exception:
        chosen = None
    if isinstance(chosen, int) and not isinstance(chosen, bool) and chosen >= 0:
        return chosen
    try:
        return int(config.service(service).replicas)
    except KeyError:
        return 0


def service_counts(store: StoreView, config: FleetConfig, state: FleetState,
                   up_of: dict[str, float | None]) -> list[ServiceCount]:
    """Per configured service with registry rows: desired vs running vs dead.

    `up_of` maps instance target → the last `up` value (None: never polled yet).
    """
    counts = []
    for service in config.services:
        mine = {t: s for t, s in state.registry.items() if t.partition("/")[0] == service.name}
        if not mine:
            continue
        running = sum(1 for t, s in mine.items() if s in LIVE_STATES and (up_of.get(t) or 0) >= 1)
        dead = sum(1 for t, s in mine.items() if is_dead(s, up_of.get(t)))
        counts.append(ServiceCount(service.name, desired_count(store, config, service.name), running, dead))
    return counts
