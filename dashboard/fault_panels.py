"""Streamlit panels that say which fault is which (docs/operations.md): fleetdeck's own collector and store,
dependency vs instance outages, and the load balancer's real process state. The wording comes from the plain
modules `outage.py` and `actions/self_status.py`; this file only draws it."""

from __future__ import annotations

import time

import streamlit as st

from actions.self_status import HEARTBEAT_STALE_S, collector_heartbeat
from core.config import FleetConfig
from core.store import StoreView
from dashboard import outage, ranges


def self_health_lines(config: FleetConfig, now: float) -> list[tuple[str, str]]:
    """(level, text) lines about fleetdeck itself: level error | warning | ok."""
    heartbeat = collector_heartbeat(config, now)
    if heartbeat is None:
        return [("warning", "No collector has reported yet (no heartbeat under the state directory): nothing is"
                            " being collected. `fleetdeck up` starts it.")]
    lines: list[tuple[str, str]] = []
    pid = heartbeat.get("pid")
    kind = heartbeat.get("kind", "collector")
    age = float(heartbeat["age_s"])
    if not heartbeat.get("alive"):
        lines.append(("error", f"fleetdeck's collector ({kind}, pid {pid}) is not running: its process is gone"
                               f" (last heartbeat {age:.0f}s ago). Nothing is collected; the data on these pages"
                               " is getting old, the fleet itself may be fine. `fleetdeck up` restarts it."))
    elif age > HEARTBEAT_STALE_S:
        lines.append(("error", f"fleetdeck's collector ({kind}, pid {pid}) stopped reporting {age:.0f}s ago:"
                               " the data on these pages is getting old, the fleet itself may be fine."
                               " `fleetdeck status` names the process; `fleetdeck up` restarts it."))
    if heartbeat.get("last_error"):
        lines.append(("error", f"fleetdeck's store is not accepting writes: {str(heartbeat['last_error'])[:300]}."
                               f" {heartbeat.get('buffered', 0)} sample(s) are buffered in memory and will be"
                               " written when it is back."))
    elif heartbeat.get("buffered"):
        lines.append(("warning", f"{heartbeat['buffered']} buffered sample(s) are being written to the store."))
    if heartbeat.get("dropped_total"):
        lines.append(("warning", f"{heartbeat['dropped_total']} sample(s) were dropped because the store was"
                                 " unavailable longer than the buffer holds: charts have a gap there."))
    if not lines:
        written = heartbeat.get("last_write_ok_ts")
        when = ranges.format_age(now - float(written)) if written else "not yet"
        lines.append(("ok", f"Collector ({kind}, pid {pid}) healthy: heartbeat {age:.0f}s ago, last store write"
                            f" {when}."))
    return lines


def stall_reason(config: FleetConfig, now: float) -> str:
    """Why a source's samples are old, as far as fleetdeck can tell about itself."""
    heartbeat = collector_heartbeat(config, now)
    if heartbeat is None or not heartbeat.get("alive") or float(heartbeat["age_s"]) > HEARTBEAT_STALE_S:
        return "fleetdeck's collector is not running (see above)"
    if heartbeat.get("last_error"):
        return "fleetdeck's store is not accepting writes; samples are buffered (see above)"
    return ("the collector runs and the store takes writes, so these collections themselves are slow or failing"
            " (see the errors on this page)")


def render_self_health(config: FleetConfig) -> None:
    """On every page: fleetdeck's own collector and store (an error box when either fails)."""
    for level, text in self_health_lines(config, time.time()):
        if level == "error":
            st.error(text, icon=":material/report:")
        elif level == "warning":
            st.warning(text, icon=":material/warning:")
        else:
            st.caption(text)


def render_fleet_faults(config: FleetConfig, store: StoreView, stale_after_s: float) -> None:
    """Above every page: fleetdeck's own health, then which kind of outage the fleet has (if any)."""
    render_self_health(config)
    render_outage_summary(store, stale_after_s)


def render_outage_summary(store: StoreView, stale_after_s: float) -> None:
    """Dependency outage vs instance outage vs stale data, in one line each (nothing when all is well)."""
    try:
        summary = outage.summarise(store, time.time(), stale_after_s)
    except Exception as error:  # the summary is an aid; a failing read must not blank the page
        st.caption(f"Outage summary unavailable: {type(error).__name__}")
        return
    for line in summary.headlines:
        if line.startswith("Instance outage"):
            st.error(line, icon=":material/cloud_off:")
        else:
            st.warning(line, icon=":material/link_off:")


def lb_process_lines(store: StoreView, config: FleetConfig) -> list[tuple[str, str]]:
    """The managed nginx's real process state: /proc now, and what the collector last recorded."""
    lb = config.load_balancer
    if lb is None or lb.mode != "managed":
        return []
    from actions.backends.nginx import ManagedNginx

    try:
        state = ManagedNginx(config).process_state()
    except Exception as error:
        return [("warning", f"Cannot inspect the nginx processes: {type(error).__name__}: {error}")]
    if state["state"] == "orphaned":
        orphans = ", ".join(map(str, state["orphaned_workers"]))
        return [("error", f"nginx master is gone: worker(s) {orphans} still serve the last configuration, but"
                          " no change (drain, scale) can reach them. `fleetdeck up` replaces them gracefully.")]
    if state["state"] == "stopped":
        return [("error", "nginx is not running (no master, no workers): the app is not reachable through the"
                          f" load balancer at {lb.listen}. `fleetdeck up` starts it.")]
    masters = state["masters"]
    return [("ok", f"nginx master pid {masters[0]} running with {len(state['workers'])} worker(s).")]


def render_lb_process(store: StoreView, config: FleetConfig) -> None:
    for level, text in lb_process_lines(store, config):
        if level == "error":
            st.error(text, icon=":material/alt_route:")
        elif level == "warning":
            st.warning(text)
        else:
            st.caption(text)
