"""Collectors are built from one base with their network clients injected (collectors/base.py, clients.py).

Fast tier: no services. The one poll below goes over loopback to an asyncio HTTP server inside the test, through
the real HTTP client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collectors.base import CollectorBase
from collectors.bullmq import BullMQCollector, RedisTarget
from collectors.clients import CollectorClients
from collectors.instances import InstanceCollector, InstanceTarget
from collectors.nginx import NginxCollector
from collectors.postgres import PostgresCollector, PostgresTarget
from collectors.redis_info import RedisInfoCollector
from collectors.registry import build_collectors
from tests.fakes import fast_config

pytestmark = pytest.mark.fast

HEALTH = b'{"status": "pass", "version": "1.2.3"}'


async def _health_server() -> tuple[asyncio.Server, int]:
    """A keep-alive HTTP/1.1 server answering every request with a passing health body."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/health+json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(HEALTH), HEALTH))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_the_registry_builds_every_collector_from_the_base_with_the_given_clients(tmp_path: Path) -> None:
    shared = CollectorClients()
    collectors = build_collectors(fast_config(str(tmp_path)), clients=shared)
    assert [c.name for c in collectors] == ["instances", "nginx", "bullmq", "redis", "postgres"]
    for collector in collectors:
        assert isinstance(collector, CollectorBase)
        assert collector.clients is shared
        assert not collector.owns_clients


def test_without_clients_each_collector_owns_its_own(tmp_path: Path) -> None:
    collectors = build_collectors(fast_config(str(tmp_path)))
    assert all(isinstance(c, CollectorBase) and c.owns_clients for c in collectors)
    assert len({id(c.clients) for c in collectors if isinstance(c, CollectorBase)}) == len(collectors)


def test_a_poll_goes_through_the_injected_client_which_the_collector_does_not_close() -> None:
    async def scenario() -> None:
        server, port = await _health_server()
        shared = CollectorClients(http_max_in_flight=1)
        instances = InstanceCollector(clients=shared, fixed_targets=[
            InstanceTarget("web/web-1", "web", f"http://127.0.0.1:{port}", "/health", None, 5.0)])
        nginx = NginxCollector(clients=shared)
        try:
            http = shared.http()
            assert nginx.clients.http() is http  # one HTTP client for both collectors
            samples = await instances.collect(instances.targets()[0])
            by_metric = {s.metric: s for s in samples}
            assert by_metric["up"].value == 1
            assert by_metric["health_status"].text == "pass"
            assert by_metric["version"].text == "1.2.3"
            await instances.aclose()
            await nginx.aclose()
            assert shared.http() is http  # still open: the clients belong to whoever injected them
            again = await instances.collect(instances.targets()[0])
            assert {s.metric: s.value for s in again}["up"] == 1
        finally:
            await shared.aclose()
            server.close()
            await server.wait_closed()
        assert shared.http() is not http  # closed: the next use starts over

    asyncio.run(scenario())


def test_redis_and_resp_clients_are_kept_per_target_and_per_event_loop() -> None:
    shared = CollectorClients()
    bullmq = BullMQCollector(clients=shared, timeout_s=1.0)
    info = RedisInfoCollector(clients=shared, timeout_s=1.0)
    target = RedisTarget("main", "main", "redis://127.0.0.1:1/0", ("bull",), ())

    async def clients_seen() -> tuple[object, object, object, object]:
        # made on first use, no connection opened yet
        return (bullmq._client(target), bullmq._client(target), info._client(target),
                shared.redis("other", target.url, 1.0))

    first = asyncio.run(clients_seen())
    assert first[0] is first[1]
    assert first[2] is not first[3]  # one per target key
    second = asyncio.run(clients_seen())  # a new event loop: connections of the old one are not reused
    assert second[0] is not first[0] and second[2] is not first[2]


def test_the_postgres_connector_is_injectable() -> None:
    opened: list[str] = []

    async def refusing_connect(dsn: str, **options: object) -> object:
        opened.append(dsn)  # a test's own connector: here one that records the DSN and refuses
        raise ConnectionRefusedError("no database in the fast tier")

    clients = CollectorClients(connect_postgres=refusing_connect)  # type: ignore[arg-type]
    collector = PostgresCollector(clients=clients, timeout_s=1.0)
    target = PostgresTarget("postgres:main", "main", "postgresql://127.0.0.1:1/none", None)
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(collector.collect(target))
    assert opened == ["postgresql://127.0.0.1:1/none"]
