"""The metric catalogue: every (source, metric) a collector may write, with its unit, gathered from the collectors'
own declarations (their `MetricRegistry`). The dashboard's queries name metrics through `metric()`, so a metric
the collectors do not declare fails on first use, and tests/test_metric_catalogue.py checks every name the
dashboard reads against this catalogue.
"""

from __future__ import annotations

from collectors import alerts, bullmq, containers, instances, nginx, pm2, postgres, redis_info, runner
from collectors.base import MetricRegistry, MetricSpec

REGISTRIES: tuple[MetricRegistry, ...] = (
    instances.REGISTRY,
    containers.REGISTRY,
    containers.CONTAINER_REGISTRY,
    pm2.REGISTRY,
    pm2.INSTANCE_REGISTRY,
    nginx.REGISTRY,
    bullmq.REGISTRY,
    redis_info.REGISTRY,
    postgres.REGISTRY,
    alerts.REGISTRY,
    runner.SELF_REGISTRY,
)


def _catalogue() -> dict[str, dict[str, MetricSpec]]:
    merged: dict[str, dict[str, MetricSpec]] = {}
    for registry in REGISTRIES:
        for name, spec in registry.specs.items():
            known = merged.setdefault(registry.source, {}).get(name)
            if known is not None and known.unit != spec.unit:
                raise ValueError(f"{registry.source}/{name} declared with two units: {known.unit}, {spec.unit}")
            merged[registry.source][name] = spec
    return merged


CATALOGUE: dict[str, dict[str, MetricSpec]] = _catalogue()


def declared(source: str, name: str) -> bool:
    return name in CATALOGUE.get(source, {})


def metric(source: str, name: str) -> str:
    """`name`, after checking that collectors of `source` declare it (KeyError naming both otherwise)."""
    if not declared(source, name):
        raise KeyError(f"metric {name!r} of source {source!r} is not declared by any collector")
    return name


def sources() -> list[str]:
    return sorted(CATALOGUE)
