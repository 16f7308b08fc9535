"""The network clients the collectors share, built once per collecting process and injected.

The scheduler and `fleetdeck collect --once` make one :class:`CollectorClients` and hand it to every collector they
build (collectors/registry.py); a collector made without one (a test, a benchmark) makes its own and closes it
with itself. A test can pass its own clients, real ones, e.g. with a different in-flight bound.

- :meth:`CollectorClients.http`: the bounded keep-alive HTTP client (collectors/http_client.py), one for the
  instance and the nginx collectors: its in-flight limit bounds the process's concurrent polls;
- :meth:`CollectorClients.redis`: a redis-py asyncio client (its own small connection pool) per Redis target, for
  the INFO collector; :meth:`CollectorClients.resp`: a bare RESP pipeline connection per Redis target, for the
  bullmq collector (collectors/redis_common.py says why both);
- :attr:`CollectorClients.connect_postgres`: how a Postgres session is opened (psycopg's async connect); the
  postgres collector keeps its session per target itself.

Connections belong to the event loop that opened them: when the running loop changes (a CLI run after another, a
restarted scheduler), the clients start over, as each collector did before they were shared. Every method is
called on the collectors' one event loop (scheduler.py), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psycopg
import redis.asyncio as aioredis

from collectors.http_client import HttpClient
from collectors.redis_common import RespConnection, make_client

# What every HTTP poll sends: instances answer health JSON when asked for it; nginx ignores Accept.
REQUEST_HEADERS = {"User-Agent": "fleetdeck-collector", "Accept": "application/health+json, application/json"}
HTTP_MAX_IN_FLIGHT = 256

PostgresConnector = Callable[..., Awaitable["psycopg.AsyncConnection[Any]"]]


class CollectorClients:
    def __init__(
        self,
        http_max_in_flight: int = HTTP_MAX_IN_FLIGHT,
        http_headers: Mapping[str, str] = REQUEST_HEADERS,
        connect_postgres: PostgresConnector = psycopg.AsyncConnection.connect,
    ) -> None:
        self.http_max_in_flight = http_max_in_flight
        self.http_headers = dict(http_headers)
        self.connect_postgres = connect_postgres
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: HttpClient | None = None
        self._redis: dict[str, aioredis.Redis] = {}
        self._resp: dict[str, RespConnection] = {}

    def _on_running_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # connections belong to the loop that opened them: a new loop (CLI run, restarted scheduler) starts over
            self._http = None
            self._redis = {}
            self._resp = {}
            self._loop = loop

    def http(self) -> HttpClient:
        """The shared HTTP client (one per event loop)."""
        self._on_running_loop()
        if self._http is None:
            self._http = HttpClient(headers=self.http_headers, max_in_flight=self.http_max_in_flight)
        return self._http

    def redis(self, key: str, url: str, timeout_s: float) -> aioredis.Redis:
        """The redis-py client of one target (by its key), made on first use."""
        self._on_running_loop()
        client = self._redis.get(key)
        if client is None:
            client = self._redis[key] = make_client(url, timeout_s)
        return client

    def resp(self, key: str, url: str, timeout_s: float) -> RespConnection:
        """The RESP pipeline connection of one target (by its key), made on first use."""
        self._on_running_loop()
        connection = self._resp.get(key)
        if connection is None:
            connection = self._resp[key] = RespConnection(url, timeout_s)
        return connection

    async def aclose(self) -> None:
        """Close every connection (on the loop they belong to); the clients can be used again afterwards."""
        http, redis_clients, resp_connections = self._http, list(self._redis.values()), list(self._resp.values())
        self._http, self._redis, self._resp = None, {}, {}
        closing: list[Callable[[], Awaitable[Any]]] = [client.aclose for client in redis_clients]
        closing += [connection.aclose for connection in resp_connections]
        if http is not None:
            closing.append(http.aclose)
        for close in closing:
            with contextlib.suppress(Exception):  # closing a dead connection must not mask anything
                await close()


__all__ = ["HTTP_MAX_IN_FLIGHT", "REQUEST_HEADERS", "CollectorClients", "PostgresConnector"]
