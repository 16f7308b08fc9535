"""Redis clients shared by the bullmq and redis collectors.

- :func:`make_client`: a redis-py asyncio client for the redis INFO collector (one command per tick).
- :class:`RespConnection`: a bare RESP2 pipeline connection for the bullmq collector. Its tick sends ~13 O(1)
  commands per queue for hundreds of queues; through redis-py, packing each command and parsing each reply in
  Python cost ~15 µs per command, far more than Redis itself spends. Here the caller packs the per-queue commands
  once per discovery (:func:`pack`), sends one prepared byte string and gets the replies back from a small parser
  (integers, bulk strings as bytes, arrays, errors as :class:`RespError` values).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.retry import Retry

CLIENT_NAME = "fleetdeck-monitor"


def make_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that fails fast: no retries (the next tick is the retry), short socket timeouts, a small pool."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        max_connections=4,
        client_name=CLIENT_NAME,
    )


class RespError(Exception):
    """An error reply (``-ERR ...``, ``-WRONGTYPE ...``)."""


class RedisConnectError(ConnectionError):
    """The connection could not be opened (or was lost); the text names the server."""


def pack(*args: str | bytes | int) -> bytes:
    """One command in RESP2 (array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _NeedMore(Exception):
    """The buffer ends inside a reply."""


_NEED_MORE = _NeedMore()
_COLON, _DOLLAR, _STAR, _PLUS, _MINUS = 58, 36, 42, 43, 45


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply at ``pos``: (value, position after it); raises _NeedMore when it is not all there yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _NEED_MORE
    kind = buf[pos]
    if kind == _COLON:
        return int(buf[pos + 1 : end]), end + 2
    if kind == _DOLLAR:
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if stop + 2 > len(buf):
            raise _NEED_MORE
        return buf[end + 2 : stop], stop + 2
    if kind == _STAR:
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(count):
            item, at = _parse(buf, at)
            items.append(item)
        return items, at
    if kind == _PLUS:
        return buf[pos + 1 : end].decode(), end + 2
    if kind == _MINUS:
        return RespError(buf[pos + 1 : end].decode(errors="replace")), end + 2
    raise RedisConnectError(f"unexpected RESP type byte {bytes([kind])!r}")


class RespConnection:
    """One Redis connection that sends prepared pipelines; reconnects lazily after any failure.

    Every exchange holds a lock (one pipeline in flight on the connection) and a deadline; a failure or a
    cancellation in the middle of an exchange closes the connection, so a late reply can never be read as the
    answer to the next pipeline. Read-only use is assumed: a pipeline that finds a kept connection closed by the
    server before any reply byte arrived (Redis restarted, idle timeout) is sent once more on a fresh connection.
    """

    def __init__(self, url: str, timeout_s: float, client_name: str = CLIENT_NAME) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._params = parse_url(url)
        self._client_name = client_name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    @property
    def _where(self) -> str:
        params = self._params
        if "path" in params:
            return str(params["path"])
        return f"{params.get('host', 'localhost')}:{params.get('port', 6379)}"

    async def _connect(self) -> None:
        params = self._params
        connection_class = params.get("connection_class")
        try:
            if connection_class is UnixDomainSocketConnection:
                reader, writer = await asyncio.open_unix_connection(params["path"], limit=1 << 20)
            else:
                context = ssl.create_default_context() if connection_class is SSLConnection else None
                host = params.get("host", "localhost")
                reader, writer = await asyncio.open_connection(
                    host, params.get("port", 6379), ssl=context, limit=1 << 20
                )
        except OSError as exc:
            raise RedisConnectError(f"cannot connect to redis {self._where}: {exc}") from exc
        self._reader, self._writer = reader, writer
        setup = []
        if params.get("password") is not None:
            username = params.get("username")
            setup.append(pack("AUTH", username, params["password"]) if username else pack("AUTH", params["password"]))
        setup.append(pack("CLIENT", "SETNAME", self._client_name))
        if params.get("db"):
            setup.append(pack("SELECT", int(params["db"])))
        for reply in await self._roundtrip(b"".join(setup), len(setup), reused=False):
            if isinstance(reply, RespError):
                raise reply

    def _drop(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # a connection on a closed loop or already reset
                self._writer.close()
        self._reader = self._writer = None

    async def pipeline(self, payload: bytes, count: int) -> list[Any]:
        """Send ``payload`` (``count`` packed commands) and return the ``count`` replies in order.

        Error replies come back as :class:`RespError` values in their place (the caller decides).
        """
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    reused = self._writer is not None
                    if reused and (self._writer.is_closing() or self._reader.at_eof()):  # type: ignore[union-attr]
                        self._drop()
                        reused = False
                    if not reused:
                        await self._connect()
                    try:
                        return await self._roundtrip(payload, count, reused)
                    except _StaleConnection:
                        self._drop()
                        await self._connect()
                        return await self._roundtrip(payload, count, reused=False)
            except BaseException:  # timeout, cancellation, protocol or network error: the stream is unusable
                self._drop()
                raise

    async def execute(self, *args: str | bytes | int) -> Any:
        """One command; an error reply is raised."""
        reply = (await self.pipeline(pack(*args), 1))[0]
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def scan(self, match: str, count: int = 1000) -> list[str]:
        """Every key matching ``match`` (SCAN, never KEYS), decoded; may repeat keys as SCAN may."""
        keys: list[str] = []
        cursor = b"0"
        while True:
            cursor, batch = await self.execute("SCAN", cursor, "MATCH", match, "COUNT", count)
            keys.extend(key.decode("utf-8", "replace") for key in batch)
            if cursor == b"0":
                return keys

    async def _roundtrip(self, payload: bytes, count: int, reused: bool) -> list[Any]:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        try:
            writer.write(payload)
            buf = await reader.read(1 << 20)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if reused:
                raise _StaleConnection from exc
            raise RedisConnectError(f"connection to redis {self._where} lost: {exc}") from exc
        if not buf:
            if reused:
                raise _StaleConnection
            raise RedisConnectError(f"connection to redis {self._where} closed by the server")
        replies: list[Any] = []
        append = replies.append
        pos = 0
        while True:
            try:
                while len(replies) < count:
                    value, pos = _parse(buf, pos)
                    append(value)
                break
            except _NeedMore:
                more = await reader.read(1 << 20)
                if not more:
                    raise RedisConnectError(f"connection to redis {self._where} closed mid-reply") from None
                buf = buf[pos:] + more
                pos = 0
            except (ValueError, IndexError) as exc:
                raise RedisConnectError(f"unparseable reply from redis {self._where}: {exc}") from None
        if pos != len(buf):  # more bytes than replies: the stream is out of step, never reuse it
            self._drop()
        return replies

    async def aclose(self) -> None:
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _StaleConnection(Exception):
    """A kept connection was closed by the server before any reply byte arrived."""
