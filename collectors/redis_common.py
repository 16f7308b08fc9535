"""Redis client construction shared by the bullmq and redis collectors."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry


def make_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that fails fast: no retries (the next tick is the retry), short socket timeouts, a small pool."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        max_connections=4,
        client_name="fleetdeck-monitor",
    )
