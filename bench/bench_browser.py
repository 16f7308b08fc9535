"""Browser benchmark: what a person waits for in Chromium, against the floor of Streamlit itself.

    PYTHONPATH=. python bench/bench_browser.py [--hours 24] [--instances 20] [--step 5] [--runs 3]
        [--pages overview,instances]

Seeds a day of a 20-instance fleet (as bench_dashboard.py does), starts the dashboard (`streamlit run
dashboard/server.py`, what `fleetdeck up` runs) and, in the same run, a bare Streamlit app drawing the same number
of Plotly charts of 300 points (the floor: Streamlit's bundle, its websocket round trips and the Plotly
component, none of our code). Then, per page, with headless Chromium (median of --runs):

- cold open → first chart, → all charts: a fresh browser context (empty cache) loads the page URL; for a page
  with tables (st.dataframe), a second floor draws the same number of tables above its charts ("floor+tables"):
  the data grid's own code adds ~0.2-0.5 s to a cold open, and that part is Streamlit's;
- in-app navigation → first chart: a click on the page's sidebar link from another page;
- range change → redrawn: picking another time range until the first chart's x axis moved.

Goals on an idle machine: cold open ≤ 1.2× the floor; in-app switch and range change ≤ 1 s to the first redrawn
chart; all charts ≤ 1 s after the first. Nothing is asserted: the figures are printed next to their floor.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

from core.store import Store
from dashboard import sample_data
from dashboard.sample_data import FleetShape

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
# url path → sidebar link text; "" is the default page (Overview)
PAGES = {"overview": ("", "Overview"), "instances": ("instances", "Instances"),
         "load_balancer": ("load_balancer", "Load balancer"), "queues": ("queues", "Queues"),
         "database": ("database", "Database"), "redis": ("redis", "Redis")}
TIMEOUT_MS = 120_000
SETTLE_MS = 1500  # no new chart for this long after the last one: the page has drawn all it will

# A bare Streamlit app with N Plotly charts of 300 points each on two pages (and, with ?t=T, T tables of 20 rows
# above them), and a range picker that moves the x axis: exactly the work the floor is made of (Streamlit, Plotly,
# the data grid), none of fleetdeck's.
FLOOR_APP = '''
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

def charts(page_name):
    n = int(st.session_state.get("n") or st.query_params.get("n", "8"))
    st.session_state["n"] = n
    tables = int(st.query_params.get("t", "0"))
    span = {"1 h": 3600, "6 h": 6 * 3600, "24 h": 24 * 3600}[st.sidebar.selectbox("Time range", ["1 h", "6 h", "24 h"],
                                                                                key="range")]
    st.title(page_name)
    for t in range(tables):
        values = np.round(np.random.default_rng(t).random((20, 12)) * 100, 1)
        st.dataframe(pd.DataFrame(values, columns=[f"column {c}" for c in range(12)]), key=f"t{t}")
    x = np.linspace(-span, 0, 300)
    columns = st.columns(2)
    for i in range(n):
        figure = go.Figure(go.Scatter(x=x, y=np.sin(x / 600 + i) + i, mode="lines"))
        figure.update_layout(height=260, margin={"l": 40, "r": 10, "t": 30, "b": 30}, title=f"chart {i}",
                             xaxis={"range": [-span, 0]})
        columns[i % 2].plotly_chart(figure, key=f"c{i}")

page = st.navigation([st.Page(lambda: charts("Floor A"), title="Floor A", url_path="a", default=True),
                      st.Page(lambda: charts("Floor B"), title="Floor B", url_path="b")])
page.run()
'''

# charts drawn: a Plotly div holds several .main-svg layers, so count the divs that have one
CHART_COUNT = "[...document.querySelectorAll('.js-plotly-plot')].filter(e => e.querySelector('.main-svg')).length"
CHART_COUNT_JS = f"() => {CHART_COUNT}"
TABLE_COUNT_JS = "() => document.querySelectorAll('[data-testid=\"stDataFrame\"]').length"
# every chart's x range, as one string: a range change has redrawn the page when any time chart's axis moved (the
# first chart of a page may be a bar that has no time axis)
RANGES_JS = """() => JSON.stringify([...document.querySelectorAll('.js-plotly-plot')].map(
  gd => gd.layout && gd.layout.xaxis && gd.layout.xaxis.range ? gd.layout.xaxis.range[0] : null))"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@contextmanager
def streamlit(script: Path, port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/_stcore/health")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def seed(directory: Path, args: argparse.Namespace) -> Path:
    db = directory / "fleetdeck.db"
    store = Store(f"sqlite:///{db}")
    started = time.perf_counter()
    now = time.time()
    written = sample_data.seed(store, FleetShape(instances=args.instances, span_s=args.hours * 3600, step_s=args.step,
                                                 instance_metrics="lean"), now, batch_rows=200_000)
    store.rollup(now=now)
    store.close()
    print(f"seed: {written:,} samples ({args.hours:g} h × {args.instances} instances at {args.step:g} s) in "
          f"{time.perf_counter() - started:.0f} s; db {db.stat().st_size / 1e6:.0f} MB")
    config = directory / "fleet.yaml"
    config.write_text(f"""
state_dir: {directory / "run"}
services:
  - name: web
    command: "true {{port}} {{instance_id}}"
    ports: {{start: 20000, end: 20040}}
    max_replicas: 40
store: {{url: "sqlite:///{db}"}}
dashboard: {{embedded_collector: false}}
""")
    return config


def wait_charts(page: Page, started: float, expected: int | None = None) -> tuple[float, float, int]:
    """(seconds to the first drawn chart, to the last one, how many) — the last = no new chart for SETTLE_MS."""
    page.wait_for_function(f"() => {CHART_COUNT} > 0", timeout=TIMEOUT_MS)
    first = time.perf_counter() - started
    count = page.evaluate(CHART_COUNT_JS)
    last = time.perf_counter() - started
    quiet_since = time.perf_counter()
    while (time.perf_counter() - quiet_since) * 1000 < SETTLE_MS:
        now_count = page.evaluate(CHART_COUNT_JS)
        if now_count != count:
            count = now_count
            last = time.perf_counter() - started
            quiet_since = time.perf_counter()
        if expected is not None and count >= expected:
            break
        page.wait_for_timeout(50)
    return first, last, int(count)


def cold_open(browser: Browser, url: str, expected: int | None = None) -> tuple[float, float, int]:
    first, last, charts, _tables = cold_open_counting_tables(browser, url, expected)
    return first, last, charts


def cold_open_counting_tables(browser: Browser, url: str, expected: int | None = None
                              ) -> tuple[float, float, int, int]:
    """cold_open, and how many tables (st.dataframe) the page showed once its charts had settled."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        first, last, charts = wait_charts(page, started, expected)
        return first, last, charts, int(page.evaluate(TABLE_COUNT_JS))
    finally:
        context.close()


def navigate(browser: Browser, from_url: str, link_text: str) -> float:
    """Open `from_url`, let it settle, click the sidebar link `link_text`: seconds to the new page's first chart."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(from_url)
        wait_charts(page, time.perf_counter())
        title = page.locator("h1").first.inner_text(timeout=TIMEOUT_MS)
        started = time.perf_counter()
        page.locator('[data-testid="stSidebarNav"]').get_by_text(link_text, exact=True).click()
        # the old page's charts are replaced: wait for the new title, then for a chart under it
        page.wait_for_function(f"() => {{ const h = document.querySelector('h1'); return h && h.innerText !== "
                               f"{title!r}; }}", timeout=TIMEOUT_MS)
        page.wait_for_function(f"() => {CHART_COUNT} > 0", timeout=TIMEOUT_MS)
        return time.perf_counter() - started
    finally:
        context.close()


def range_change(browser: Browser, url: str, choice: str) -> float:
    """Open `url`, pick `choice` in the Time range box: seconds until a chart's x axis has moved (the first
    redrawn chart)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(url)
        wait_charts(page, time.perf_counter())
        before = page.evaluate(RANGES_JS)
        page.get_by_role("combobox", name="Time range").click(timeout=TIMEOUT_MS)
        started = time.perf_counter()
        page.get_by_role("option", name=choice, exact=True).click(timeout=TIMEOUT_MS)
        page.wait_for_function(f"() => ({RANGES_JS})() !== {before!r}", timeout=TIMEOUT_MS)
        return time.perf_counter() - started
    finally:
        context.close()


def median(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=24)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--step", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated, of {', '.join(PAGES)}")
    args = parser.parse_args()
    pages = [p.strip() for p in args.pages.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="fd-bench-browser-") as tmp:
        directory = Path(tmp)
        config = seed(directory, args)
        floor_script = directory / "floor.py"
        floor_script.write_text(FLOOR_APP)
        with streamlit(ROOT / "dashboard" / "server.py", free_port(), {"FLEETDECK_CONFIG": str(config)},
                       directory / "dashboard.log") as app_url, \
                streamlit(floor_script, free_port(), {}, directory / "floor.log") as floor_url, \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                cold_open(browser, app_url)  # the first request of each server compiles/caches things once
                cold_open(browser, floor_url + "/?n=8")
                print(f"\n{'page':<14} {'charts':>6} {'cold→first':>11} {'cold→all':>9} {'all−first':>10} "
                      f"{'nav→first':>10} {'range→redraw':>13}   (median of {args.runs}, seconds)")
                for name in pages:
                    path, link = PAGES[name]
                    url = f"{app_url}/{path}"
                    opens = [cold_open_counting_tables(browser, url) for _ in range(args.runs)]
                    first = statistics.median(o[0] for o in opens)
                    last = statistics.median(o[1] for o in opens)
                    charts = max(o[2] for o in opens)
                    tables = max(o[3] for o in opens)
                    other = f"{app_url}/instances" if name == "overview" else f"{app_url}/"
                    nav = median(args.runs, lambda other=other, link=link: navigate(browser, other, link))
                    moved = median(args.runs, lambda url=url: range_change(browser, url, "6 h"))
                    floor_opens = [cold_open(browser, f"{floor_url}/?n={charts}", charts) for _ in range(args.runs)]
                    floor_first = statistics.median(o[0] for o in floor_opens)
                    floor_last = statistics.median(o[1] for o in floor_opens)
                    floor_nav = median(args.runs, lambda charts=charts: navigate(browser, f"{floor_url}/?n={charts}",
                                                                                 "Floor B"))
                    floor_moved = median(args.runs, lambda charts=charts: range_change(
                        browser, f"{floor_url}/?n={charts}", "6 h"))
                    print(f"{name:<14} {charts:>6} {first:>11.2f} {last:>9.2f} {last - first:>10.2f} {nav:>10.2f} "
                          f"{moved:>13.2f}")
                    print(f"{'  floor':<14} {charts:>6} {floor_first:>11.2f} {floor_last:>9.2f} "
                          f"{floor_last - floor_first:>10.2f} {floor_nav:>10.2f} {floor_moved:>13.2f}")
                    print(f"{'  ratio':<14} {'':>6} {first / floor_first:>10.2f}× {last / floor_last:>8.2f}× "
                          f"{'':>10} {nav / floor_nav:>9.2f}× {moved / floor_moved:>12.2f}×")
                    if tables:
                        with_tables = [cold_open(browser, f"{floor_url}/?n={charts}&t={tables}", charts)
                                       for _ in range(args.runs)]
                        tables_first = statistics.median(o[0] for o in with_tables)
                        tables_last = statistics.median(o[1] for o in with_tables)
                        print(f"{'  floor+tables':<14} {charts:>6} {tables_first:>11.2f} {tables_last:>9.2f} "
                              f"{tables_last - tables_first:>10.2f}   ({tables} table(s) above the charts)")
                        print(f"{'  ratio':<14} {'':>6} {first / tables_first:>10.2f}× {last / tables_last:>8.2f}×")
            finally:
                browser.close()
    print("\ngoals: cold open ≤ 1.2× floor; nav and range change ≤ 1 s to the first redrawn chart; all charts ≤ 1 s"
          " after the first")


if __name__ == "__main__":
    main()
