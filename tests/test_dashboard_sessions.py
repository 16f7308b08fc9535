"""Sessions that survive a browser reload (issue 13): `streamlit run dashboard/server.py` (what `fleetdeck up`
runs) on a free port, a real login in Chromium, a reload, the cookie's flags, logout invalidating the session on
the server (the old cookie replayed is refused), the idle timeout. Plus the cookie primitives without a browser."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright_sync
import pytest
import yaml

from actions.auth import Principal, hash_password
from core.config import load_config
from core.store import Store
from dashboard import session_cookie
from tests.support import PYTHON, REPO_ROOT, free_port, wait_http
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

IDLE_S = 6.0


def config_file(directory: Path, idle_s: float = IDLE_S) -> Path:
    data = {
        "state_dir": str(directory / "run"),
        "store": {"url": f"sqlite:///{directory}/fleetdeck.db"},
        "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
        "auth": {"users": [{"name": "olga", "role": "operator", "password_hash": hash_password("s3cret")}]},
        "dashboard": {"embedded_collector": False, "session_idle_timeout_s": idle_s},
    }
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cookie_is_signed_and_the_session_expires_and_ends(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    store = Store(config.store_url)
    olga = Principal("olga", "operator", "dashboard")
    token = session_cookie.create_session(store, olga, now=1000.0)
    cookie = session_cookie.sign(config, token)
    assert session_cookie.verify(config, cookie) == token
    assert session_cookie.verify(config, cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None  # forged
    assert session_cookie.verify(config, "x" * 500) is None
    assert oct((Path(config.state_path) / "session.key").stat().st_mode & 0o777) == "0o600"
    assert session_cookie.lookup(config, store, token, now=1000.0 + IDLE_S / 2) == olga
    # sliding: seen at +IDLE/2 (written only after TOUCH_EVERY_S, so here the idle clock still runs from 1000)
    assert session_cookie.lookup(config, store, token, now=1000.0 + IDLE_S + 1) is None
    assert session_cookie.lookup(config, store, token, now=1000.0) is None  # deleted when found expired
    ticket = session_cookie.new_ticket(store, olga, "//evil.example/x", now=2000.0)
    assert session_cookie.redeem_ticket(store, ticket, now=2001.0)["next"] == "/"
    assert session_cookie.redeem_ticket(store, ticket, now=2001.0) is None  # single use
    late = session_cookie.new_ticket(store, olga, "/instances", now=3000.0)
    assert session_cookie.redeem_ticket(store, late, now=3000.0 + session_cookie.TICKET_TTL_S + 1) is None
    other = session_cookie.create_session(store, olga)
    session_cookie.end_session(store, other)
    assert session_cookie.lookup(config, store, other) is None
    store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("sessions")
    config = config_file(directory)
    port = free_port()
    log = (directory / "streamlit.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "-m", "streamlit", "run", "dashboard/server.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO_ROOT, env={**os.environ, "FLEETDECK_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", timeout_s=60)
        yield f"http://127.0.0.1:{port}", config
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def signed_in(page: playwright_sync.Page) -> bool:
    page.wait_for_selector('[data-testid="stSidebar"]', timeout=60_000)
    try:
        page.get_by_text("Signed in as olga").first.wait_for(timeout=8_000)
    except playwright_sync.TimeoutError:
        return False
    return True


def test_login_survives_reload_and_logout_invalidates_it(server: tuple[str, Path]) -> None:
    base, _config = server
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{base}/instances?range=6%20h")
            page.wait_for_selector('[data-testid="stSidebar"]', timeout=60_000)
            page.get_by_text("Log in", exact=True).first.click()
            page.get_by_label("User").fill("olga")
            page.get_by_role("textbox", name="Password").fill("s3cret")
            page.get_by_role("button", name="Log in").click()
            assert signed_in(page)
            # the page then makes a trip through /__fleetdeck/session, which sets the cookie and comes back
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(c["name"] == session_cookie.COOKIE
                                                           for c in context.cookies()):
                page.wait_for_timeout(200)
            cookie = next(c for c in context.cookies() if c["name"] == session_cookie.COOKIE)
            page.wait_for_url("**/instances?**range=6*", timeout=30_000)  # back on the same view
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > time.time()
            page.reload()
            assert signed_in(page), "a reload logged the user out"
            assert "range=6" in page.url
            page.get_by_role("button", name="Log out").click()
            page.wait_for_function("() => !document.cookie.includes('fd_session')", timeout=30_000)
            page.wait_for_timeout(1000)
            assert not any(c["name"] == session_cookie.COOKIE for c in context.cookies())
            # the old cookie replayed from another browser: the server ended that session
            replay = browser.new_context()
            replay.add_cookies([{"name": cookie["name"], "value": cookie["value"], "url": base}])
            replayed = replay.new_page()
            replayed.goto(f"{base}/")
            assert not signed_in(replayed)
        finally:
            browser.close()


def test_idle_session_is_not_restored(server: tuple[str, Path]) -> None:
    base, config_path = server
    config = load_config(config_path)
    store = Store(config.store_url)
    token = session_cookie.create_session(store, Principal("olga", "operator", "dashboard"),
                                          now=time.time() - IDLE_S - 5)
    store.close()
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": session_cookie.COOKIE, "value": session_cookie.sign(config, token),
                                  "url": base}])
            page = context.new_page()
            page.goto(f"{base}/")
            assert not signed_in(page)
        finally:
            browser.close()
