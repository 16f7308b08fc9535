"""The real thing: `streamlit run dashboard/app.py` on a free port, headless Chromium opens every page.

Screenshots land in test-artifacts/screenshots/ (git-ignored); the main ones are copied to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright_sync
import pytest

from core.samples import Sample
from core.store import Store
from dashboard import sample_data
from dashboard.sample_data import FleetShape
from tests.support import PYTHON, REPO_ROOT, free_port, wait_http
from tests.test_dashboard_pages import write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOTS = Path(REPO_ROOT) / "test-artifacts" / "screenshots"
README_SHOTS = Path(REPO_ROOT) / "docs" / "screenshots"
# url path (st.navigation derives it from the file name) → page title; "" is the default page
PAGES = {"": "Overview", "instances": "Instances", "load_balancer": "Load balancer", "queues": "Queues",
         "database": "Database", "redis": "Redis"}
README_PAGES = {"", "instances", "queues", "database"}
HOSTILE_QUEUE = "![pixel](http://203.0.113.9/pixel.png)"


@pytest.fixture(scope="module")
def dashboard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def dashboard_url(dashboard_dir: Path) -> Iterator[str]:
    directory = dashboard_dir
    db = directory / "fleetdeck.db"
    config = write_config(directory)  # the same store-only config the AppTest pages use
    store = Store(f"sqlite:///{db}")
    # web-2 is down: the Instances page must show it red ("DOWN") in the DOM
    sample_data.seed(store, FleetShape(instances=3, span_s=3600, step_s=10, down=(2,)), time.time())
    store.close()
    port = free_port()
    log = (directory / "streamlit.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO_ROOT, env={**os.environ, "FLEETDECK_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def open_and_settle(page: object, url: str) -> None:
    """Load a page and wait until Streamlit has drawn its charts and stopped running the script."""
    page.goto(url, wait_until="domcontentloaded")  # type: ignore[attr-defined]
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"] [data-testid=\"stSpinner\"]')"
        " && document.querySelectorAll('.js-plotly-plot .main-svg').length > 0",
        timeout=60_000,
    )
    page.wait_for_timeout(1500)  # type: ignore[attr-defined]  # plotly's resize pass after the first draw


LOCAL_URL = re.compile(r"^(?:https?|wss?)://(?:127\.\d+\.\d+\.\d+|localhost)(?::\d+)?/|^(?:data|blob|about):")


def refuse_external_requests(context: object) -> list[str]:
    """Every request the pages make that would leave 127.0.0.1 is recorded and aborted (air-gapped network)."""
    external: list[str] = []

    def handle(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if LOCAL_URL.match(url):
            route.continue_()  # type: ignore[attr-defined]
        else:
            external.append(url)
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", handle)  # type: ignore[attr-defined]
    return external


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_renders_in_chromium(dashboard_url: str, browser: object, path: str) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})  # type: ignore[attr-defined]
    external = refuse_external_requests(context)
    page = context.new_page()
    try:
        open_and_settle(page, f"{dashboard_url}/{path}")
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_role("heading", name=PAGES[path]).first.is_visible()
        assert page.locator(".js-plotly-plot").count() >= 1
        if path == "instances":
            # the dead replica is red and says so in text, so the lead's kill test can assert it from the DOM
            assert page.get_by_text("DOWN", exact=True).first.is_visible()
            assert page.get_by_text("web/web-2").first.is_visible()
        if path == "":
            assert page.get_by_text("2 / 3").first.is_visible()  # instances up
        assert external == [], f"requests leaving 127.0.0.1: {external}"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"{path or 'overview'}.png"
        page.screenshot(path=str(shot), full_page=True)
        if path in README_PAGES:
            README_SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, README_SHOTS / shot.name)
    finally:
        context.close()


def test_dark_theme_follows_the_system(dashboard_url: str, browser: object) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="dark")  # type: ignore
    page = context.new_page()
    try:
        open_and_settle(page, dashboard_url)
        assert page.locator('[data-testid="stException"]').count() == 0
        background = page.evaluate(
            "() => getComputedStyle(document.querySelector('[data-testid=\"stApp\"]')).backgroundColor")
        red, green, blue = (int(c) for c in background[background.index("(") + 1 : -1].split(",")[:3])
        assert red + green + blue < 200, background  # dark, and the charts drew on it without errors
        shot = SCREENSHOTS / "overview-dark.png"
        page.screenshot(path=str(shot), full_page=True)
        shutil.copy(shot, README_SHOTS / shot.name)
    finally:
        context.close()


def test_outside_strings_make_the_browser_fetch_nothing(dashboard_url: str, dashboard_dir: Path,
                                                         browser: object) -> None:
    """A queue named like a Markdown image (written last, so the screenshots above stay clean) is shown as text;
    no page request leaves 127.0.0.1."""
    hostile = f"main/bull:{HOSTILE_QUEUE}"  # nobody consumes it: the page names it in an error box
    store = Store(f"sqlite:///{dashboard_dir / 'fleetdeck.db'}")
    now = time.time()
    store.write_samples([Sample("bullmq", hostile, "waiting", 3, now, "count"),
                         Sample("bullmq", hostile, "workers", 0, now, "count")])
    store.close()
    context = browser.new_context(viewport={"width": 1440, "height": 1000})  # type: ignore[attr-defined]
    external = refuse_external_requests(context)
    page = context.new_page()
    try:
        open_and_settle(page, f"{dashboard_url}/queues")
        assert page.get_by_text(HOSTILE_QUEUE, exact=False).first.is_visible()
        assert page.locator('img[src*="203.0.113.9"]').count() == 0
        assert external == [], f"requests leaving 127.0.0.1: {external}"
    finally:
        context.close()
