"""Instances: every replica's health in one sortable table, and one replica in detail."""

from __future__ import annotations

import time

import streamlit as st

from actions import replica_logs
from actions.autoscale import advice_lines
from core.redact import redact
from dashboard import fleet_state, queries, ranges, ui
from dashboard.action_panel import describe_lock
from dashboard.instance_actions import render_instance_actions_on_demand, render_service_actions
from dashboard.safe_text import md, md_code

config = ui.fleet_config()
store = ui.store()
STATUS_BADGE = {"UP": "green", "WARN": "orange", "DRAINING": "orange", "FAIL": "red", "DOWN": "red",
                "STALE": "red", "UNKNOWN": "gray"}
LOG_KEY = "fd_log_open"  # the log expander's open state
ROTATION_BADGE = {fleet_state.IN_ROTATION: "blue", fleet_state.NOT_ANSWERING: "red", "draining": "orange",
                  fleet_state.OUT: "violet"}


def rotation_badge(rotation: object) -> str:
    """ ":violet-badge[out of rotation]" — empty when the instance is not behind a load balancer we read."""
    if not isinstance(rotation, str) or not rotation:
        return ""
    text = "out of rotation" if rotation == "out" else rotation
    return f" :{ROTATION_BADGE.get(rotation, 'gray')}-badge[{text}]"


st.title("Instances")


@ui.live
def instances_panel() -> None:
    data = ui.panel_data(store)
    stale = ui.stale_after(config, "instance")
    ui.freshness(store, "instance", data.now, stale)
    state = fleet_state.fleet_state(store, data.now)
    frame = queries.instances_table(store, data.now, data.window, stale, state)
    if frame.empty:
        ui.no_data("instance")
        return
    # badges are real DOM text ("web/web-1 DOWN out of rotation"), so a browser test (or a human) can find a
    # dead or drained replica
    st.markdown("  ".join(f"`{md_code(row.instance)}` :{STATUS_BADGE.get(row.status, 'gray')}-badge[{md(row.status)}]"
                          f"{rotation_badge(row.rotation)}" for row in frame.itertuples()))
    # PM2's columns only when some instance runs under PM2
    frame = frame.drop(columns=[c for c in ("pm2_status", "restarts", "unstable_restarts") if frame[c].isna().all()])
    ui.table(frame, "instances", "instances", status_column="status", formats={
        "latency_ms": "{:.0f} ms", "memory_mb": "{:.0f} MB", "cpu_percent": "{:.1f} %", "loop_lag_ms": "{:.1f} ms",
        "in_flight": "{:.0f}", "pool_total": "{:.0f}", "pool_idle": "{:.0f}", "pool_waiting": "{:.0f}",
        "restarts": "{:.0f}", "unstable_restarts": "{:.0f}",
        "uptime_min": "{:.0f} min", "last_scraped_s": "{:.0f} s ago",
    }, column_config={
        "latency_ms": "latency", "memory_mb": "memory", "cpu_percent": "CPU", "loop_lag_ms": "loop lag",
        "in_flight": "in flight", "pool_total": "pool total", "pool_idle": "pool idle", "pool_waiting": "pool waiting",
        "uptime_min": "uptime", "last_scraped_s": "last scraped", "pm2_status": "PM2",
        "unstable_restarts": "unstable restarts",
        # wide enough for "in nginx, not answering" and "process gone": a cut word would hide the state
        "rotation": st.column_config.TextColumn("rotation", width="medium"),
        "health": st.column_config.TextColumn("health", width="medium"),
    })


instances_panel()
for line in advice_lines(config, store):  # the autoscaler's recommendation and why (docs/autoscaling.md)
    st.caption(md(line))  # service names and stored decision texts: shown as text
render_service_actions(config)


def render_log(target: str) -> None:
    """The replica's log: the last N lines, or the last N containing a text (read fresh on every rerun while the
    expander is open; closed, it reads nothing and the browser draws nothing but its label)."""
    box = st.expander("Log of this instance", icon=":material/article:", key=LOG_KEY, on_change="rerun")
    if not box.open:
        return
    with box:
        lines_col, search_col, _ = st.columns([1, 2, 1])
        lines = lines_col.selectbox("Lines", [50, 200, 1000], index=1, key="fd_log_lines")
        search = search_col.text_input("Search (case-insensitive)", key="fd_log_search", max_chars=200)
        view = replica_logs.replica_log(config, ui.live_store(), target, int(lines), search)
        if view.error:
            st.caption(view.error)
            return
        found = f"{len(view.lines)} line(s) containing “{search.strip()}”" if search.strip() else \
            f"last {len(view.lines)} line(s)"
        st.caption(f"{found} of the last {view.scanned_lines} in {view.source}")
        # st.code escapes: log lines are untrusted text
        st.code("\n".join(view.lines) or "(nothing)", language=None, height=400 if len(view.lines) > 15 else "content")


st.subheader("Instance detail")
_state_now = fleet_state.fleet_state(store, time.time())
# a replica an action removed is history now: the picker offers the live ones
targets = sorted(_state_now.keep(row.series.target for row in store.latest(source="instance", metric="up")))
if not targets:
    st.caption("Instances appear here once the collectors have scraped them.")
else:
    selected = ui.query_picker("Instance", targets, "fd_instance", "instance") or targets[0]
    # drain / undrain / restart in an expander drawn only while open (dashboard/instance_actions.py)
    render_instance_actions_on_demand(st.container(), config, store, selected)

    @ui.live
    def detail_panel(target: str) -> None:
        data = ui.panel_data(store)
        state = fleet_state.fleet_state(store, data.now)
        detail = queries.instance_detail(store, target, data.window, ui.stale_after(config, "instance"), state)
        colour = STATUS_BADGE.get(detail.status, "gray")
        st.markdown(f"**{md(target)}** :{colour}-badge[{md(detail.status)}]{rotation_badge(detail.rotation)}")
        st.caption(ranges.freshness(detail.last_ts, data.now))
        busy = describe_lock(store, target.partition("/")[0])
        if busy:  # the action widgets may be closed: a running action is said here, refreshed with the panel
            st.info(md(busy), icon=":material/hourglass_top:")
        if detail.error:
            last_ok = (f"last success {ranges.format_clock(detail.last_ok_ts)} "
                       f"({ranges.format_age(data.now - detail.last_ok_ts)})" if detail.last_ok_ts else "never reached")
            st.error(f"Last error: {md(redact(detail.error))} — {last_ok}", icon=":material/error:")
        left, right = st.columns([1, 2])
        with left:
            # a replica that stopped answering still has its last body stored: "status: pass" must not read as now
            st.markdown("**Last health response**, from before it stopped answering" if detail.error
                        else "**Health response**")
            if detail.health_json is None:
                st.caption("No health body stored yet.")
            elif isinstance(detail.health_json, dict | list):
                st.json(detail.health_json, expanded=1)
            else:
                st.code(str(detail.health_json))
            st.markdown("**Recent events**")
            if detail.events:
                for event in reversed(detail.events[-10:]):
                    st.caption(f"{ranges.format_clock(event.ts)} · {md(event.kind)} · {md(event.message)}")
            else:
                st.caption("No events for this instance in the range.")
        with right:
            ui.charts_grid(detail.charts, data, key_prefix=f"detail-{target}", per_row=2)

    detail_panel(selected)
    render_log(selected)
