"""Streamlit glue shared by every page: cached config and store, the sidebar pickers, live panels, and the
standard ways to show a chart, a table, tiles, freshness and unreachable sources.

Pages stay thin: they pick what to show from `queries` and hand it to these helpers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from core.config import ConfigError, FleetConfig, config_path, load_config
from core.redact import redact, url_password
from core.spreadsheet import neutralise_frame
from core.store import Event, ReadOnlyView, Store, StoreView, TargetStatus, open_store
from dashboard import fault_panels, figures, queries, ranges
from dashboard.queries import Chart, Tile
from dashboard.safe_text import md, md_code
from dashboard.store_cache import CachedStore

RANGE_KEY = "fd_range"
REFRESH_KEY = "fd_refresh"
# a target not sampled for this many collection intervals is reported stale instead of with its last value
STALE_INTERVALS = 4.0

_collector_lock = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


# ------------------------------------------------------------------------------------------- cached resources


@st.cache_resource(show_spinner=False)
def _config_at(path: str) -> FleetConfig:
    return load_config(path)


@st.cache_resource(show_spinner=False)
def _store_at(path: str) -> Store:
    """The store of the config at `path`, opened the way every process opens it (with its `store` settings)."""
    return open_store(_config_at(path))


@st.cache_resource(show_spinner=False)
def _cached_store_at(path: str) -> ReadOnlyView:
    """One read cache per store for all sessions of this process (see store_cache.py), behind a view that has
    only the read methods: a page cannot write, not even by mistake (core/store/view.py)."""
    return ReadOnlyView(CachedStore(_store_at(path)))


def fleet_config() -> FleetConfig:
    """The config named by FLEETDECK_CONFIG (else ./fleet.yaml); a broken file stops the page with its message."""
    path = str(config_path())
    try:
        return _config_at(path)
    except ConfigError as error:
        # a fenced block shows the text literally; only a fence inside it could end the block early
        shown = redact(error)[:4000].replace("```", "'''")
        st.error(f"Cannot load the configuration.\n\n```\n{shown}\n```")
        st.stop()
        raise  # st.stop() raises; this keeps type checkers honest


def store() -> StoreView:
    """The store behind a shared read cache: the read-only view the pages get (writes go through the actions;
    the view has no write method)."""
    fleet_config()  # a broken file stops the page with its message first
    return _opened_or_stop(lambda: _cached_store_at(str(config_path())))


def _opened_or_stop(opener: Callable[[], T]) -> T:
    """The opened store; an unreachable one stops the page with a message that names it, password hidden."""
    try:
        return opener()
    except Exception as error:  # an unreachable Postgres store must not become a stack trace
        config = fleet_config()
        secret = url_password(config.store_url)
        where, why = redact(config.store_url), redact(error, (secret,) if secret else ())
        st.error(f"Cannot open the store at `{md_code(where)}`: {md(why)}")
        st.stop()
        raise


def live_store() -> Store:
    """The store without the read cache, for actions: their locks and progress must be read fresh."""
    fleet_config()  # a broken file stops the page with its message first
    return _opened_or_stop(lambda: _store_at(str(config_path())))


@st.cache_resource(show_spinner=False)
def _start_collectors(path: str) -> str | None:
    """One background scheduler per dashboard process (cache_resource + a lock: two first sessions racing)."""
    with _collector_lock:
        from collectors.scheduler import start_embedded

        config = _config_at(path)
        try:
            start_embedded(config, _store_at(path))
        except Exception as error:  # the dashboard still shows what the store holds
            return f"Embedded collectors failed to start: {error}"
        return None


def start_embedded_collectors() -> None:
    config = fleet_config()
    if not config.dashboard.embedded_collector:
        return
    notice = _start_collectors(str(config_path()))
    if notice:
        st.sidebar.info(notice)


# ------------------------------------------------------------------------------------------------- the sidebar


RANGE_PARAM = "range"
REFRESH_PARAM = "refresh"
# a range dragged on a chart (Grafana's drag-to-zoom), kept in the URL as unix seconds: ?from=…&to=…
ZOOM_FROM, ZOOM_TO = "from", "to"


def query_picker(label: str, options: Sequence[str], key: str, param: str, default: str | None = None,
                 container: Any = None, help: str | None = None) -> str | None:
    """A selectbox whose choice lives in the URL (`?param=value`), so a copied link reproduces the view.

    The URL wins when the session has no choice yet (a shared link, a reload); afterwards the widget does and the
    URL follows it. A value from the URL that is not an option is ignored (it is untrusted text).
    """
    if not options:
        return None
    wanted = st.query_params.get(param)
    if key not in st.session_state or (wanted in options and wanted != st.session_state.get(key)
                                       and st.session_state.get(f"{key}-from-url") != wanted):
        chosen = wanted if wanted in options else (default if default in options else options[0])
        st.session_state[key] = chosen
        st.session_state[f"{key}-from-url"] = wanted
    elif st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    value = (container or st).selectbox(label, list(options), key=key, help=help)
    if st.query_params.get(param) != value:
        st.query_params[param] = value
    st.session_state[f"{key}-from-url"] = value
    return str(value) if value is not None else None


def sidebar_controls() -> None:
    """Time range and auto-refresh pickers; rendered by app.py on every page, read through session state and
    kept in the URL (`?range=1 h&refresh=10 s`)."""
    before = st.session_state.get(RANGE_KEY)
    chosen = query_picker("Time range", list(ranges.TIME_RANGES), RANGE_KEY, RANGE_PARAM, ranges.DEFAULT_RANGE,
                          st.sidebar)
    if before is not None and chosen != before:
        clear_zoom()  # picking a range leaves a dragged one
    zoomed = zoom()
    if zoomed is not None:
        st.sidebar.caption(f"Zoomed: {ranges.format_clock(zoomed.start)} – {ranges.format_clock(zoomed.end)}")
        st.sidebar.button("Back to the live range", on_click=clear_zoom, icon=":material/zoom_out:",
                          key="fd_zoom_reset")
    query_picker("Auto-refresh", list(ranges.REFRESH_INTERVALS), REFRESH_KEY, REFRESH_PARAM, ranges.DEFAULT_REFRESH,
                 st.sidebar, help="How often the live panels redraw (only the panels, not the whole page).")


def zoom() -> ranges.Window | None:
    """The dragged range from the URL, if any (validated: it is untrusted text)."""
    return ranges.zoom_window(st.query_params.get(ZOOM_FROM), st.query_params.get(ZOOM_TO))


ZOOM_GENERATION_KEY = "fd_zoom_generation"


def clear_zoom() -> None:
    for param in (ZOOM_FROM, ZOOM_TO):
        if param in st.query_params:
            del st.query_params[param]
    _next_zoom_generation()


def _next_zoom_generation() -> None:
    """Charts get fresh keys, so the box a chart still holds from the last drag cannot zoom again."""
    st.session_state[ZOOM_GENERATION_KEY] = int(st.session_state.get(ZOOM_GENERATION_KEY, 0)) + 1


def range_label() -> str:
    return str(st.session_state.get(RANGE_KEY, ranges.DEFAULT_RANGE))


def live(function: F) -> F:
    """Run `function` as a fragment that reruns itself at the chosen auto-refresh interval."""
    interval = ranges.refresh_seconds(str(st.session_state.get(REFRESH_KEY, ranges.DEFAULT_REFRESH)))
    return st.fragment(run_every=interval)(function)


def stale_after(config: FleetConfig, source: str) -> float:
    intervals = config.collectors
    per_source = {
        "instance": intervals.instances_s, "nginx": intervals.nginx_s, "bullmq": intervals.bullmq_s,
        "redis": intervals.redis_s, "postgres": intervals.postgres_s,
    }
    return max(30.0, STALE_INTERVALS * per_source.get(source, intervals.instances_s))


# --------------------------------------------------------------------------------------------------- displays


@dataclass
class PanelData:
    """What every live panel needs: the moment it was drawn, the window and the window's events."""

    now: float
    window: ranges.Window
    events: list[Event]


def panel_data(store_: StoreView) -> PanelData:
    """Computed at the start of every (fragment) run, so the window moves with the refresh."""
    now = time.time()
    window = zoom() or ranges.window(range_label(), now)
    try:
        events = queries.events_in(store_, window)
    except Exception:  # annotations are a nicety; a failing events query must not blank the charts
        events = []
    return PanelData(now, window, events)


def freshness(store_: StoreView, source: str, now: float, stale_after_s: float) -> None:
    """The caption under a panel title: how old the newest sample is; a warning when collection stalled."""
    newest = queries.source_newest_ts(store_, source)
    text = ranges.freshness(newest, now)
    if newest is not None and now - newest > stale_after_s:
        reason = fault_panels.stall_reason(fleet_config(), now)
        st.warning(f"{md(text)}: {md(source)} collection looks stalled: {md(reason)}.", icon=":material/schedule:")
    else:
        st.caption(text)


def freshness_by_source(store_: StoreView, config: FleetConfig, sources: Sequence[str], now: float) -> None:
    """One caption for a panel fed by several sources: each source's age; a warning names the stalled ones."""
    parts, stalled, stamps = [], [], []
    for source in sources:
        newest = queries.source_newest_ts(store_, source)
        if newest is None:
            continue
        stamps.append(newest)
        parts.append(f"{source} {ranges.format_age(now - newest)}")
        if now - newest > stale_after(config, source):
            stalled.append(source)
    if not parts:
        st.caption(ranges.freshness(None))
        return
    # absolute times too: with auto-refresh off, "2 s ago" alone would stay on screen for hours
    st.caption(f"Data as of {ranges.format_clock(max(stamps))}, drawn at {ranges.format_clock(now)}: "
               + md(" · ".join(parts)))
    if stalled:
        st.warning(f"Collection looks stalled for: {md(', '.join(stalled))}:"
                   f" {md(fault_panels.stall_reason(config, now))}.", icon=":material/schedule:")


def unreachable(statuses: Sequence[TargetStatus], now: float) -> None:
    """One error box per unreachable target: the error, and when it last answered."""
    for status in statuses:
        last_ok = (f"last success {ranges.format_clock(status.last_ok_ts)} "
                   f"({ranges.format_age(now - status.last_ok_ts)})" if status.last_ok_ts else "never reached")
        st.error(f"**{md(status.source)} {md(status.target)} is unreachable**:"
                 f" {md(redact(status.error or 'no answer'))}"
                 f" — {last_ok}",
                 icon=":material/cloud_off:")


def no_data(what: str) -> None:
    st.info(f"No {what} data yet. The collectors write it every few seconds once the source is configured and up.",
            icon=":material/hourglass_empty:")


def tiles(items: Sequence[Tile], per_row: int = 4) -> None:
    for first in range(0, len(items), per_row):
        columns = st.columns(per_row)
        for column, tile in zip(columns, items[first : first + per_row], strict=False):
            # a red "needs attention" delta is the on-call's cue; healthy tiles carry none
            column.metric(tile.label, tile.value, help=tile.help, border=True,
                          delta=(tile.note or "needs attention") if tile.bad else None, delta_color="red",
                          delta_arrow="off")


def chart(spec: Chart, data: PanelData, key: str | None = None, height: int = 260) -> None:
    figure = figures.time_chart(
        spec.traces, spec.title, spec.unit, events=data.events, x_range=(data.window.start, data.window.end),
        stacked=spec.stacked, reference_lines=spec.reference_lines, height=height,
    )
    # drag on a chart to zoom every chart of the dashboard to that span (Grafana's gesture): the box selection
    # comes back to the script, which puts it in the URL; "Back to the live range" in the sidebar undoes it
    figure.update_layout(dragmode="select", selectdirection="h")
    # Plotly reports a box only with the points inside it, and lines alone have none: invisible markers on a
    # sample of the data make any drag select some (one on every sample cost the browser seconds per page)
    figures.add_zoom_handles(figure)
    generation = int(st.session_state.get(ZOOM_GENERATION_KEY, 0))
    event = st.plotly_chart(figure, theme="streamlit", key=f"{key}-z{generation}" if key else None,
                            config={"displaylogo": False}, on_select="rerun", selection_mode="box")
    selection = event.get("selection") if isinstance(event, dict) else None
    boxes = (selection.get("box") or []) if isinstance(selection, dict) else []
    if boxes:
        xs = boxes[0].get("x") or []
        picked = ranges.zoom_window(*(ranges.axis_to_unix(x) for x in xs[:2])) if len(xs) >= 2 else None
        if picked is not None:
            st.query_params[ZOOM_FROM] = f"{picked.start:.0f}"
            st.query_params[ZOOM_TO] = f"{picked.end:.0f}"
            _next_zoom_generation()
            st.rerun()


def charts_grid(specs: Sequence[Chart], data: PanelData, key_prefix: str, per_row: int = 2) -> None:
    for first in range(0, len(specs), per_row):
        columns = st.columns(per_row)
        for offset, (column, spec) in enumerate(zip(columns, specs[first : first + per_row], strict=False)):
            with column:
                chart(spec, data, key=f"{key_prefix}-{first + offset}")


STATUS_COLOURS = {"UP": figures.GREEN, "up": figures.GREEN, "WARN": "#F58518", "DRAINING": "#F58518",
                  "draining": "#F58518"}


def status_style(value: object) -> str:
    """CSS for a status cell: green when healthy, orange when draining/warning, red otherwise."""
    if value is None or value != value:  # None or NaN: nothing known, no colour
        return ""
    return f"color: {STATUS_COLOURS.get(str(value), figures.RED)}; font-weight: 600"


def csv_export(frame: pd.DataFrame) -> bytes:
    """The table as CSV: list-valued (sparkline) columns left out, formula-like text cells neutralised."""
    exportable = frame[[c for c in frame.columns if frame[c].map(lambda v: not isinstance(v, list)).all()]]
    # CRLF (RFC 4180): the csv writer then quotes any cell holding a CR or LF, so no text can break a row
    return neutralise_frame(exportable).to_csv(index=False, lineterminator="\r\n").encode()


def table(frame: pd.DataFrame, name: str, key: str, column_config: dict[str, Any] | None = None,
          height: int | str = "auto", formats: dict[str, str] | None = None, status_column: str | None = None
          ) -> None:
    """A sortable table with its CSV download (list-valued sparkline columns are left out of the CSV).

    `formats` (column → format string) and `status_column` go through a pandas Styler, the one way to colour a
    cell in st.dataframe; the CSV keeps the raw numbers.
    """
    shown: Any = frame
    if formats or status_column:
        styler = frame.style.format(formats or {}, na_rep="—")
        if status_column:
            styler = styler.map(status_style, subset=[status_column])
        shown = styler
    # "auto": every row visible up to ~20 (Streamlit's auto height stops at 10 and scrolls): 35 px a row + header
    pixels = min(38 + 35 * max(len(frame), 1), 740) if height == "auto" else int(height)
    st.dataframe(shown, hide_index=True, column_config=column_config, key=f"{key}-table", height=pixels)
    st.download_button(
        f"Download {name} (CSV)", csv_export(frame), file_name=f"fleetdeck-{key}.csv",
        mime="text/csv", key=f"{key}-csv", icon=":material/download:",
    )
