"""Fixtures every test area shares: a throwaway Postgres database and a Redis key prefix per run."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.support import PG_ADMIN_DSN, REDIS_URL, unique_name
from tests.support_apps import launch  # noqa: F401  (a fixture: both sample apps as real processes)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh database on the machine's Postgres for this test session, dropped afterwards."""
    name = unique_name("fdtest")
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = unique_name("fdt")
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(batch), 500):
            client.delete(*batch[start : start + 500])
    finally:
        client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test not marked `fast` is in the integration tier (`pytest -m integration` / `-m fast`)."""
    for item in items:
        if item.get_closest_marker("fast") is None:
            item.add_marker(pytest.mark.integration)
