"""The collector protocol and the per-collector metric registry.

A collector is a class with:

- ``name``: the collector's name (``instances``, ``nginx``, ``bullmq``, ``redis``, ``postgres``), used in the
  self-metrics target ``<name>/<target key>`` and the scheduler's job ids;
- ``source``: the ``Sample.source`` it writes;
- ``registry``: a :class:`MetricRegistry` declaring every metric it may emit, once, with its unit;
- ``targets() -> list[T]``: what to measure right now (may read the store, e.g. the replica table);
- ``async collect(target: T) -> list[Sample]``: measure one target. It may raise: the runner
  (collectors/runner.py) is the firewall that turns any exception or timeout into an ``up=0`` sample.
  On success the first two samples are ``up`` (1) and ``latency_ms`` for ``target.key``;
- ``async aclose()``: release connections.

Every collector class derives from :class:`CollectorBase`: its constructor takes the config, the shared network
clients (collectors/clients.py: built once by the scheduler or ``collect --once`` and injected; a collector made
without them makes its own and closes them in ``aclose``) and optional fixed targets (tests, benchmarks).

Every collect is a coroutine so all network I/O of all collectors shares one event loop (one thread, see
scheduler.py). Blocking libraries are not used inside collect: redis.asyncio (and
collectors/redis_common.py's RESP connection), psycopg's AsyncConnection and collectors/http_client.py are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

from collectors.clients import CollectorClients
from core.config import FleetConfig
from core.samples import Labels, Sample


class TargetGone(Exception):
    """Raised by ``collect`` when its target was removed on purpose (e.g. a replica stopped by a scale-down)
    between the scheduler's target refreshes: the runner then writes no sample at all, so a planned removal
    never shows as an ``up=0`` outage nor fires ``instance_down``."""


class MetricSpec(NamedTuple):
    name: str
    unit: str
    help: str


class MetricRegistry:
    """The metrics a collector may emit. ``sample()`` refuses an undeclared name, so units cannot drift."""

    def __init__(self, source: str, specs: Iterable[MetricSpec]) -> None:
        self.source = source
        self.specs: dict[str, MetricSpec] = {}
        for spec in specs:
            if spec.name in self.specs:
                raise ValueError(f"metric {spec.name!r} declared twice for source {source!r}")
            self.specs[spec.name] = spec

    def sample(
        self,
        target: str,
        metric: str,
        value: float,
        ts: float,
        labels: Labels = (),
        text: str | None = None,
    ) -> Sample:
        spec = self.specs[metric]  # KeyError here means a metric was not declared: a bug, caught by tests
        return Sample(self.source, target, metric, float(value), ts, spec.unit, labels, text)

    def unit(self, metric: str) -> str:
        return self.specs[metric].unit


# `up` and `latency_ms` are declared by every collector with the same units.
UP = MetricSpec("up", "bool", "1 when the target answered as expected, 0 otherwise (text = error)")
LATENCY = MetricSpec("latency_ms", "ms", "wall time of the collection round trip")


@runtime_checkable
class HasKey(Protocol):
    @property
    def key(self) -> str: ...


T = TypeVar("T", bound=HasKey)
T_contra = TypeVar("T_contra", bound=HasKey, contravariant=True)


@runtime_checkable
class Collector(Protocol[T]):
    name: str
    source: str
    registry: MetricRegistry

    def targets(self) -> list[T]: ...

    async def collect(self, target: T) -> list[Sample]: ...

    async def aclose(self) -> None: ...


class CollectorBase(Generic[T]):
    """What every collector is constructed from: its config, the shared clients, optional fixed targets.

    ``targets``/``collect`` stay each collector's own; ``aclose`` releases the collector's own state
    (:meth:`release`) and closes the clients only when the collector made them itself.
    """

    # set by each collector class (plain annotations, as the Collector protocol declares them)
    name: str
    source: str
    registry: MetricRegistry

    def __init__(
        self,
        config: FleetConfig | None = None,
        clients: CollectorClients | None = None,
        fixed_targets: Sequence[T] | None = None,
        own_clients: Callable[[], CollectorClients] = CollectorClients,
    ) -> None:
        self.config = config
        self.fixed_targets = list(fixed_targets) if fixed_targets is not None else None
        self.owns_clients = clients is None
        self.clients = clients if clients is not None else own_clients()

    async def release(self) -> None:
        """Drop what this collector holds besides the shared clients (sessions, file handles)."""

    async def aclose(self) -> None:
        await self.release()
        if self.owns_clients:
            await self.clients.aclose()


ERROR_TEXT_LIMIT = 500


def rate(previous: tuple[float, float] | None, value: float, ts: float) -> float | None:
    """Per-second rate of a monotonic counter from the previous (value, ts); None on the first reading or a reset."""
    if previous is None:
        return None
    prev_value, prev_ts = previous
    elapsed = ts - prev_ts
    if elapsed <= 0 or value < prev_value:
        return None
    return (value - prev_value) / elapsed


def error_text(error: BaseException) -> str:
    """A one-line error description that names the type even when the message is empty (timeouts)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    text = f"{name}: {message}" if message else name
    # error texts can quote what a target sent; they are stored and shown, so they are bounded like every field
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"
