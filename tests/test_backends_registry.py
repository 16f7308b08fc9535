"""The backend registry: every backend name the config accepts maps to an orchestrator class, and backend_for
builds the service's one. No daemon is needed: only the Docker classes' static policy is asked."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from actions.backends import DOCKER, LOCAL, ORCHESTRATORS, PM2, SWARM, backend_for, orchestrator_class, port_capacity
from actions.backends.local import LocalOrchestrator
from core.config import ServiceConfig, load_config
from core.store import Store
from tests.support import REPO_ROOT

pytestmark = pytest.mark.fast  # no services: the fast tier


def test_every_configurable_backend_is_registered() -> None:
    accepted = set(typing.get_args(ServiceConfig.model_fields["backend"].annotation))
    assert accepted == set(ORCHESTRATORS) == {LOCAL, DOCKER, SWARM, PM2}
    for name in ORCHESTRATORS:
        assert callable(orchestrator_class(name))


def test_unknown_backend_names_the_known_ones() -> None:
    try:
        orchestrator_class("pm3")
    except KeyError as error:
        assert "local" in str(error) and "pm3" in str(error)
    else:
        raise AssertionError("an unknown backend name must raise")


def test_backend_for_builds_the_local_orchestrator(tmp_path: Path) -> None:
    config = load_config(Path(REPO_ROOT) / "fleet.yaml")
    service = config.services[0]
    assert service.backend == LOCAL
    orchestrator = backend_for(service, config, Store(f"sqlite:///{tmp_path}/fleet.db"))
    assert isinstance(orchestrator, LocalOrchestrator)


def test_port_capacity_bounds_only_the_local_backend() -> None:
    service = load_config(Path(REPO_ROOT) / "fleet.yaml").services[0]
    assert port_capacity(service) == len(service.ports.ports())
    for backend in (DOCKER, SWARM):
        other = service.model_copy(update={"backend": backend})
        assert port_capacity(other) is None
