"""A dependency outage is not an instance outage (issue 17): Redis and Postgres cut for real behind TCP proxies.

The sample app keeps answering: /livez passes, /health says `warn` with the failing check named, /api/me answers
503 (not 401) while its session store is unreachable; the instance collector records the instance as reachable
with the failing check, and the dashboard's outage summary calls it a dependency outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from streamlit.testing.v1 import AppTest

from collectors.instances import InstanceCollector, InstanceTarget
from core.store import Store
from dashboard import outage
from tests.support import REPO_ROOT
from tests.support_apps import Launcher, call, post_json
from tests.support_faults import TcpProxy

DASHBOARD_APP = Path(REPO_ROOT) / "dashboard" / "app.py"


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
def proxies(pg_dsn: str, redis_url: str) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    pg, rd = urlsplit(pg_dsn), urlsplit(redis_url)
    pg_proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    redis_proxy = TcpProxy(rd.hostname or "127.0.0.1", rd.port or 6379)
    yield pg_proxy, redis_proxy
    pg_proxy.close()
    redis_proxy.close()


def wait_until(condition: object, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def collect(target: InstanceTarget) -> dict[str, object]:
    async def once() -> list:
        collector = InstanceCollector(fixed_targets=[target])
        try:
            return await collector.collect(target)
        finally:
            await collector.aclose()

    return {s.metric: s for s in asyncio.run(once())}


def test_dependency_outage_is_told_apart_from_an_instance_outage(
    launch: Launcher, proxies: tuple[TcpProxy, TcpProxy], pg_dsn: str, redis_url: str, tmp_path: object
) -> None:
    pg_proxy, redis_proxy = proxies
    app = launch("web-f", DATABASE_URL=through(pg_dsn, pg_proxy), REDIS_URL=through(redis_url, redis_proxy),
                 HEALTH_CHECK_TIMEOUT_S="0.5", POOL_TIMEOUT_S="1", SESSION_STORE="postgres")
    target = InstanceTarget("web/web-f", "web", app.base, "/health", None, 3.0)
    login = post_json(f"{app.base}/api/login", {"user": "ann"})
    assert login.status == 200, login.body
    cookie = {"Cookie": login.headers["set-cookie"].split(";", 1)[0]}

    # Redis cut: alive, still serving, a dependency check failing — not DOWN
    redis_proxy.cut()
    wait_until(lambda: call("GET", f"{app.base}/health").json()["dependencies"] == "fail", "redis check to fail")
    health = call("GET", f"{app.base}/health")
    body = health.json()
    assert health.status == 200 and body["status"] == "warn", body
    assert body["liveness"] == "pass" and body["readiness"] == "pass"
    assert body["checks"]["redis:responseTime"][0]["status"] == "fail"
    assert call("GET", f"{app.base}/livez").status == 200
    assert call("GET", f"{app.base}/api/me", headers=cookie).status == 200  # sessions live in Postgres
    samples = collect(target)
    assert samples["up"].value == 1, samples["up"]
    assert samples["failing_checks"].value == 1 and samples["failing_checks"].text == "redis:responseTime"
    redis_proxy.restore()
    wait_until(lambda: call("GET", f"{app.base}/health").json()["status"] == "pass", "redis to be back")

    # Postgres cut: /api/me is "cannot tell now" (503), not "logged out" (401)
    pg_proxy.cut()
    me = call("GET", f"{app.base}/api/me", headers=cookie)
    assert me.status == 503, (me.status, me.body)
    assert call("GET", f"{app.base}/api/me").status == 401  # no cookie at all: logged out, outage or not
    samples = collect(target)
    assert samples["up"].value == 1
    assert "postgres:responseTime" in (samples["failing_checks"].text or "")
    pg_proxy.restore()
    wait_until(lambda: call("GET", f"{app.base}/api/me", headers=cookie).status == 200, "postgres to be back")

    # Postgres silently unreachable (packets dropped): a bounded 503, never a request hanging for ever
    pg_proxy.freeze()
    started = time.monotonic()
    me = call("GET", f"{app.base}/api/me", headers=cookie, timeout=30)
    assert me.status == 503 and time.monotonic() - started < 15, (me.status, me.body)
    assert b"session store unavailable" in me.body
    pg_proxy.restore()
    wait_until(lambda: call("GET", f"{app.base}/api/me", headers=cookie).status == 200, "postgres to be back")


def test_outage_summary_names_the_kind_of_outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's words for each case, from samples as the collectors write them (real SQLite store), on
    every page."""
    from collectors.instances import REGISTRY as INSTANCE
    from collectors.nginx import REGISTRY as NGINX

    store = Store(f"sqlite:///{tmp_path}/store.db")
    now = time.time()
    samples = []
    for name in ("web-1", "web-2"):
        key = f"web/{name}"
        samples += [INSTANCE.sample(key, "up", 1, now), INSTANCE.sample(key, "health_status", 1, now, text="warn"),
                    INSTANCE.sample(key, "failing_checks", 1, now, text="redis:responseTime")]
    samples += [INSTANCE.sample("web/web-3", "up", 0, now, text="ConnectionRefusedError: connect failed")]
    samples += [NGINX.sample("nginx:web/127.0.0.1:9101", "requests_per_s", 12.0, now),
                NGINX.sample("nginx:web/127.0.0.1:9101", "status_5xx_per_s", 0.0, now)]
    store.write_samples(samples)
    summary = outage.summarise(store, now, stale_after_s=30, instance_addresses={"web/web-1": "127.0.0.1:9101"})
    by_instance = {row.instance: row for row in summary.rows}
    assert by_instance["web/web-1"].kind == outage.DEPENDENCY
    assert "redis:responseTime" in by_instance["web/web-1"].detail
    assert "still serving 12.0 req/s" in by_instance["web/web-1"].detail
    assert by_instance["web/web-3"].kind == outage.UNREACHABLE
    assert any("redis:responseTime" in line and "dependency" in line for line in summary.headlines)
    assert any("web/web-3" in line and "no answer" in line for line in summary.headlines)

    config = tmp_path / "fleet.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'run'}\nstore: {{url: 'sqlite:///{tmp_path}/store.db'}}\n"
        "services: [{name: web, command: 'true {port} {instance_id}', ports: {start: 20000, end: 20010}}]\n"
        "dashboard: {embedded_collector: false}\n"
    )
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    app = AppTest.from_file(str(DASHBOARD_APP), default_timeout=60)
    app.run()
    for page in ("overview", "instances", "queues", "audit"):
        app.switch_page(f"app_pages/{page}.py").run()
        assert not app.exception, [e.value for e in app.exception]
        warnings = "\n".join(str(e.value) for e in app.warning)
        errors = "\n".join(str(e.value) for e in app.error)
        assert "Dependency outage: redis:responseTime failing on 2/3 instance(s)" in warnings, (page, warnings)
        assert "Instance outage: web/web-3" in errors, (page, errors)
