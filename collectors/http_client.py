"""A small HTTP/1.1 keep-alive GET client on asyncio streams, for the collectors' polling.

Why not aiohttp: a health poll of 1,000 targets spent most of its ~200 µs of CPU per target inside aiohttp's request
machinery (aiohttp measured at ~85 µs per request against ~15 µs for a bare stream client with uvloop:
docs/design-notes.md#load-generation). A poller needs very little of it: one prepared GET, the status line and headers,
a body framed by Content-Length, chunked transfer coding (Express sends chunked when a handler streams) or the
connection close, and the connection kept for the next cycle.

Behaviour:
- one persistent connection per (scheme, host, port), reused across cycles; a concurrent second request to the
  same endpoint opens a second connection, and at most ``max_idle_per_host`` idle ones are kept;
- a kept connection that the server closed while idle (keep-alive timeout, restart) is detected before or right
  after the request is written and the GET (idempotent) is retried once on a fresh connection;
- ``timeout_s`` bounds the whole exchange (connect, request, headers, body) with a single timer;
- any failure or cancellation in the middle of an exchange closes that connection: a half-read response must never
  be parsed as the next one;
- every body is bounded: ``max_body_bytes`` (per client, or per request) caps the bytes on the wire AND, for a
  gzip/deflate body, the decompressed size: decompression is incremental and stops one byte past the cap, so a
  1 MiB "bomb" that inflates to 1 GiB costs at most the cap in memory and time (docs/security.md);
- errors are :class:`HttpError` subclasses whose text names the endpoint (they end up in ``up=0`` samples).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_MAX_BODY = 8 << 20  # a /metrics page is ~10-500 KiB; a runaway body must not eat the collector's memory
_HEAD_LIMIT = 1 << 16  # StreamReader limit: longest header block (and chunk-size line) accepted
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"


class HttpError(Exception):
    """Any failure of an exchange; the message names the endpoint."""


class HttpConnectError(HttpError, ConnectionError):
    """The TCP (or TLS) connection could not be opened."""


class HttpTimeoutError(HttpError, TimeoutError):
    """No complete response within the request's timeout."""


class HttpProtocolError(HttpError):
    """The peer closed mid-response or sent something that is not HTTP/1.x."""


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def text(self, default_charset: str = "utf-8") -> str:
        charset = default_charset
        ctype = self.content_type
        if ctype and "charset=" in ctype:
            charset = ctype.split("charset=", 1)[1].split(";", 1)[0].strip().strip('"') or default_charset
        try:
            return self.body.decode(charset, "replace")
        except LookupError:  # an unknown charset name from the server
            return self.body.decode(default_charset, "replace")


class _Endpoint(NamedTuple):
    key: tuple[str, str, int]  # (scheme, host, port): what a connection may be reused for
    host: str
    port: int
    tls: bool
    request: bytes  # the whole GET, prepared once per URL
    label: str  # "host:port/path" for error texts


class _StaleConnection(Exception):
    """A reused connection turned out closed before a single response byte arrived."""


class _Conn:
    __slots__ = ("expired", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.expired = False

    def expire(self) -> None:
        """The request's deadline passed: drop the connection so the pending read ends now."""
        self.expired = True
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing on a loop that is already gone must not mask anything
            self.writer.close()


class HttpClient:
    """Keep-alive GETs; one instance per event loop (connections belong to the loop that opened them)."""

    def __init__(
        self,
        headers: Mapping[str, str] | None = None,
        max_in_flight: int = 256,
        max_idle_per_host: int = 2,
        max_body_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._extra_headers = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._slots = asyncio.Semaphore(max_in_flight)  # bounds a cycle's concurrency (sockets, server load)
        self._max_idle_per_host = max_idle_per_host
        self._max_body = max_body_bytes
        self._endpoints: dict[str, _Endpoint] = {}
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _endpoint(self, url: str) -> _Endpoint:
        found = self._endpoints.get(url)
        if found is not None:
            return found
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise HttpError(f"{url}: only http:// and https:// URLs are supported")
        if not parts.hostname:
            raise HttpError(f"{url}: no host in the URL")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n{self._extra_headers}\r\n".encode("latin-1")
        endpoint = _Endpoint((parts.scheme, host, port), host, port, tls, request, f"{shown}:{port}{path}")
        if len(self._endpoints) > 100_000:  # targets come and go (replicas); never grow without bound
            self._endpoints.clear()
        self._endpoints[url] = endpoint
        return endpoint

    async def get(self, url: str, timeout_s: float, max_body_bytes: int | None = None) -> HttpResponse:
        """GET ``url``; raises :class:`HttpError` (connect, timeout, protocol) with the endpoint in the text.

        ``max_body_bytes`` (default: the client's) bounds the body on the wire and once decompressed.
        """
        if self._closed:
            raise HttpError("client is closed")
        endpoint = self._endpoint(url)
        cap = self._max_body if max_body_bytes is None else max_body_bytes
        async with self._slots:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            idle = self._idle.get(endpoint.key)
            while idle:
                conn = idle.pop()
                if not conn.usable():  # closed by the server while idle: seen before writing anything
                    conn.close()
                    continue
                try:
                    return await self._timed_roundtrip(loop, conn, endpoint, deadline, timeout_s, cap, reused=True)
                except _StaleConnection:
                    break  # closed by the server just as we reused it; a GET is safe to send again
            timer = asyncio.timeout_at(deadline)  # connecting is the rare path: the plain (costlier) timeout is fine
            try:
                async with timer:
                    conn = await self._connect(endpoint)
            except TimeoutError:
                if timer.expired():
                    raise HttpTimeoutError(f"timeout after {timeout_s:g}s connecting to {endpoint.label}") from None
                raise
            return await self._timed_roundtrip(loop, conn, endpoint, deadline, timeout_s, cap, reused=False)

    async def _timed_roundtrip(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Conn,
        endpoint: _Endpoint,
        deadline: float,
        timeout_s: float,
        cap: int,
        reused: bool,
    ) -> HttpResponse:
        # A bare timer that aborts the transport, not asyncio.timeout(): this is the per-poll hot path and the
        # Timeout context manager (task lookup, rescheduling, state checks) cost more than the rest of the request
        # bookkeeping here. The abort wakes the pending read with EOF, which is then reported as the timeout.
        watchdog = loop.call_at(deadline, conn.expire)
        try:
            return await self._roundtrip(conn, endpoint, cap, reused)
        except Exception:
            if conn.expired:
                raise HttpTimeoutError(f"timeout after {timeout_s:g}s waiting for {endpoint.label}") from None
            raise
        finally:
            watchdog.cancel()

    async def _connect(self, endpoint: _Endpoint) -> _Conn:
        context: ssl.SSLContext | None = None
        if endpoint.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            reader, writer = await asyncio.open_connection(
                endpoint.host,
                endpoint.port,
                ssl=context,
                server_hostname=endpoint.host if context is not None else None,
                limit=_HEAD_LIMIT,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError is an OSError)
            raise HttpConnectError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc}") from exc
        return _Conn(reader, writer)

    async def _roundtrip(self, conn: _Conn, endpoint: _Endpoint, cap: int, reused: bool) -> HttpResponse:
        reader = conn.reader
        try:
            conn.writer.write(endpoint.request)
            try:
                head = await reader.readuntil(_HEAD_END)
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _StaleConnection from exc
                raise HttpProtocolError(f"connection closed before a response from {endpoint.label}") from exc
            except (ConnectionResetError, BrokenPipeError) as exc:
                if reused:
                    raise _StaleConnection from exc
                raise
            status, headers, keep_alive = _parse_head(head, endpoint)
            while 100 <= status < 200:  # interim responses (100 Continue, 103 Early Hints): the real one follows
                head = await reader.readuntil(_HEAD_END)
                status, headers, keep_alive = _parse_head(head, endpoint)
            body, keep_alive = await self._body(reader, status, headers, keep_alive, endpoint, cap)
        except asyncio.IncompleteReadError as exc:
            conn.close()
            raise HttpProtocolError(f"connection closed mid-response from {endpoint.label}") from exc
        except asyncio.LimitOverrunError as exc:
            conn.close()
            raise HttpProtocolError(f"header or chunk line too long from {endpoint.label}") from exc
        except OSError as exc:
            conn.close()
            raise HttpProtocolError(f"{type(exc).__name__}: {exc} on {endpoint.label}") from exc
        except BaseException:  # our errors, timeouts, cancellation: the connection is in an unknown state
            conn.close()
            raise
        encoding = headers.get("content-encoding")
        if encoding and body:
            try:
                body = _decode(body, encoding, endpoint, cap)
            except HttpError:
                conn.close()  # the framing was fine, but a server that sends bombs does not get its connection kept
                raise
        if keep_alive and not self._closed:
            idle = self._idle.setdefault(endpoint.key, [])
            if len(idle) < self._max_idle_per_host:
                idle.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return HttpResponse(status, headers, body)

    async def _body(
        self,
        reader: asyncio.StreamReader,
        status: int,
        headers: dict[str, str],
        keep_alive: bool,
        endpoint: _Endpoint,
        cap: int,
    ) -> tuple[bytes, bool]:
        """The body framed as RFC 9112 §6.3 says, and whether the connection can carry the next request."""
        if status in (204, 304):
            return b"", keep_alive
        transfer = headers.get("transfer-encoding")
        if transfer is not None:
            if transfer.rsplit(",", 1)[-1].strip().lower() == "chunked":
                return await self._chunked(reader, endpoint, cap), keep_alive
            return await self._until_close(reader, endpoint, cap), False
        length_text = headers.get("content-length")
        if length_text is not None:
            try:
                length = int(length_text)
            except ValueError:
                raise HttpProtocolError(f"bad Content-Length {length_text!r} from {endpoint.label}") from None
            if length < 0 or length > cap:
                raise HttpProtocolError(f"Content-Length {length} out of bounds from {endpoint.label}")
            return (await reader.readexactly(length) if length else b""), keep_alive
        return await self._until_close(reader, endpoint, cap), False

    async def _chunked(self, reader: asyncio.StreamReader, endpoint: _Endpoint, cap: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(_CRLF)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)  # chunk extensions after ';' are ignored
            except ValueError:
                raise HttpProtocolError(f"bad chunk size line {line[:40]!r} from {endpoint.label}") from None
            if size == 0:
                break
            total += size
            if size < 0 or total > cap:
                raise HttpProtocolError(f"chunked body over {cap} bytes from {endpoint.label}")
            data = await reader.readexactly(size + 2)
            if data[-2:] != _CRLF:
                raise HttpProtocolError(f"chunk not terminated by CRLF from {endpoint.label}")
            chunks.append(data[:-2])
        trailer_bytes = 0
        while (line := await reader.readuntil(_CRLF)) != _CRLF:  # trailer fields, up to the empty line
            trailer_bytes += len(line)
            if trailer_bytes > _HEAD_LIMIT:
                raise HttpProtocolError(f"trailer fields over {_HEAD_LIMIT} bytes from {endpoint.label}")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _until_close(self, reader: asyncio.StreamReader, endpoint: _Endpoint, cap: int) -> bytes:
        data = await reader.read(cap + 1)  # read(n) returns early: keep going until EOF
        parts = [data]
        total = len(data)
        while data:
            if total > cap:
                raise HttpProtocolError(f"body over {cap} bytes from {endpoint.label}")
            data = await reader.read(cap + 1 - total)
            parts.append(data)
            total += len(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Close every idle connection; later requests raise."""
        self._closed = True
        writers = []
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                writers.append(conn.writer)
        self._idle.clear()
        for writer in writers:
            with contextlib.suppress(Exception):  # a peer that already reset the connection is fine
                await writer.wait_closed()


def _parse_head(head: bytes, endpoint: _Endpoint) -> tuple[int, dict[str, str], bool]:
    """(status, headers, keep-alive) from a header block ending in CRLFCRLF."""
    text = head[:-4].decode("latin-1")
    lines = text.split("\r\n")
    status_line = lines[0]
    if not status_line.startswith("HTTP/1.") or len(status_line) < 12 or status_line[12:13] not in ("", " "):
        raise HttpProtocolError(f"not an HTTP/1.x response from {endpoint.label}: {status_line[:40]!r}")
    try:
        status = int(status_line[9:12])
    except ValueError:
        raise HttpProtocolError(f"bad status line from {endpoint.label}: {status_line[:40]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpProtocolError(f"bad header line from {endpoint.label}: {line[:40]!r}")
        name = name.strip().lower()
        value = value.strip()
        if name in headers:
            headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    connection = headers.get("connection")
    if status_line[7] == "0":  # HTTP/1.0 closes unless it says keep-alive
        keep_alive = connection is not None and "keep-alive" in connection.lower()
    else:
        keep_alive = connection is None or "close" not in connection.lower()
    return status, headers, keep_alive


def _decode(body: bytes, encoding: str, endpoint: _Endpoint, cap: int) -> bytes:
    """Undo gzip/deflate (we never ask for it, but a misconfigured compression middleware may send it anyway).

    Incremental: at most ``cap + 1`` bytes are ever produced, so a decompression bomb costs the cap, not its
    expanded size; over the cap is an error, never a silently truncated body.
    """
    coding = encoding.strip().lower()
    try:
        if coding in ("gzip", "x-gzip"):
            return _inflate(body, 16 + zlib.MAX_WBITS, coding, endpoint, cap)
        if coding == "deflate":
            try:
                return _inflate(body, zlib.MAX_WBITS, coding, endpoint, cap)
            except zlib.error:  # raw deflate without the zlib header, as some servers send it
                return _inflate(body, -zlib.MAX_WBITS, coding, endpoint, cap)
    except zlib.error as exc:
        raise HttpProtocolError(f"bad {coding} body from {endpoint.label}: {exc}") from None
    return body  # identity or an unknown coding: the raw bytes are the best we have


def _inflate(body: bytes, wbits: int, coding: str, endpoint: _Endpoint, cap: int) -> bytes:
    """Raises zlib.error for a corrupt or truncated stream, HttpProtocolError past the cap."""
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, cap + 1)  # stops producing at cap + 1 bytes: the rest stays unconsumed
    if len(out) > cap or inflater.unconsumed_tail:
        raise HttpProtocolError(f"{coding} body over {cap} bytes once decompressed from {endpoint.label}")
    if not inflater.eof:
        raise zlib.error("truncated stream")
    return out


__all__ = [
    "HttpClient",
    "HttpConnectError",
    "HttpError",
    "HttpProtocolError",
    "HttpResponse",
    "HttpTimeoutError",
]
