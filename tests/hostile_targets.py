"""A hostile-target HTTP server for the collector tests and bench/bench_hostile.py (no tests here).

``python tests/hostile_targets.py <healthy count> <bomb MiB>`` listens on one loopback port per hostile kind plus
``<healthy count>`` well-behaved ports, prints ``{"hostile": {kind: port}, "healthy": [port, ...]}`` as one JSON
line, and serves until killed (by its PID). Every kind is what a broken or malicious instance can send:

- ``gzip_bomb`` / ``deflate_bomb``: a JSON health body compressed from ``<bomb MiB>`` MiB of spaces (48 MiB
  is ~48 KiB on the wire, inside the 64 KiB health cap: only the decompressed-size cap stops it);
- ``endless_chunked``: a chunked body that never ends; ``trickle``: one byte every 0.2 s;
- ``huge_headers``: header lines without end; ``invalid_json``, ``non_utf8``, ``deep_nesting``: bodies with a
  JSON content type that are not usable JSON;
- ``huge_metrics``: a healthy /health but an 8 MiB /metrics; ``labels_10k``: a /metrics sample with 10,000 labels.

Healthy ports answer /health with Express-style JSON and /metrics with a real prom-client page (tests/data).
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
HEALTHY_JSON = json.dumps(
    {"status": "ok", "uptime": 12.5, "version": "1.0.0", "memory": {"rss": 50_000_000}, "inFlight": 0}
).encode()
HOSTILE_KINDS = (
    "gzip_bomb",
    "deflate_bomb",
    "endless_chunked",
    "trickle",
    "huge_headers",
    "invalid_json",
    "non_utf8",
    "deep_nesting",
    "huge_metrics",
    "labels_10k",
)


def _response(body: bytes, ctype: str = "application/json", extra: str = "", status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _bomb(mib: int, wbits: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * (1 << 20)
    parts = [packer.compress(b'{"status":"ok","pad":"')]
    parts.extend(packer.compress(block) for _ in range(mib))
    parts.append(packer.compress(b'"}'))
    parts.append(packer.flush())
    return b"".join(parts)


class Pages:
    def __init__(self, bomb_mib: int) -> None:
        metrics = (DATA / "promclient-15.1.3-default.txt").read_bytes()
        self.healthy = _response(HEALTHY_JSON)
        self.metrics = _response(metrics, "text/plain; version=0.0.4; charset=utf-8")
        self.gzip_bomb = _response(_bomb(bomb_mib, 16 + zlib.MAX_WBITS), extra="Content-Encoding: gzip\r\n")
        self.deflate_bomb = _response(_bomb(bomb_mib, zlib.MAX_WBITS), extra="Content-Encoding: deflate\r\n")
        self.invalid_json = _response(b'{"status": "ok", "version": ')
        self.non_utf8 = _response(b'{"status": "ok", "version": "\xff\xfe\xfa"}')
        self.deep_nesting = _response(b"[" * 30_000 + b"]" * 30_000)  # 60 KB: inside the 64 KiB health cap
        huge = b"# HELP filler x\n" + b"filler_total 1\n" * (8 << 16)  # ~8 MiB
        self.huge_metrics = _response(huge, "text/plain; version=0.0.4")
        labels = ",".join(f'l{i}="v{i}"' for i in range(10_000))
        self.labels_10k = _response(f"http_requests_total{{{labels}}} 1\n".encode(), "text/plain; version=0.0.4")


async def _serve(kind: str, pages: Pages, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
            is_metrics = path.startswith("/metrics")
            if kind == "healthy" or (kind in ("huge_metrics", "labels_10k") and not is_metrics):
                writer.write(pages.metrics if is_metrics else pages.healthy)
            elif kind in ("huge_metrics", "labels_10k"):
                writer.write(getattr(pages, kind))
            elif kind == "endless_chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
                while True:
                    writer.write(chunk * 16)
                    await writer.drain()
                    await asyncio.sleep(0.001)
            elif kind == "trickle":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.2)
            elif kind == "huge_headers":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                while True:
                    writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.001)
            else:
                writer.write(getattr(pages, kind))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(healthy_count: int, bomb_mib: int) -> None:
    pages = Pages(bomb_mib)
    ports: dict[str, object] = {"hostile": {}, "healthy": []}
    for kind in (*HOSTILE_KINDS, *(["healthy"] * healthy_count)):
        server = await asyncio.start_server(
            lambda r, w, k=kind: _serve(k, pages, r, w), "127.0.0.1", 0, limit=1 << 16, backlog=128
        )
        port = server.sockets[0].getsockname()[1]
        if kind == "healthy":
            ports["healthy"].append(port)  # type: ignore[union-attr]
        else:
            ports["hostile"][kind] = port  # type: ignore[index]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
