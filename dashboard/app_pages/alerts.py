"""Alerts: which rule fires for which subject, since when, with its message and a link to its chart; and the
alerts that fired and resolved within the range."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import alerts_view, fleet_state, queries, ranges, ui

config = ui.fleet_config()
store = ui.store()

st.title("Alerts")


def _clock_column(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].map(ranges.format_clock)


@ui.live
def alerts_panel() -> None:
    data = ui.panel_data(store)
    # alert samples carry no `up`: their freshness is the newest evaluation
    st.caption(ranges.freshness(queries.newest_of(queries.latest_by_target(store, "alert")) or None, data.now))
    state = fleet_state.fleet_state(store, data.now)
    active = alerts_view.active_alerts(store, data.now, state, ui.stale_after(config, "instance"))
    firing = int((active["state"] == "firing").sum()) if not active.empty else 0
    st.subheader(f"Firing now: {firing}" + (f" · pending: {len(active) - firing}" if len(active) > firing else ""))
    if active.empty:
        st.success("No alert rule fires or is pending.", icon=":material/check_circle:")
    else:
        shown = active.assign(since=_clock_column(active, "since"),
                              for_s=active["for_s"].map(ranges.format_duration))
        ui.table(shown, "firing alerts", "alerts-firing", column_config={
            "for_s": "for",
            "chart": st.column_config.LinkColumn("chart", display_text="open chart"),
        })
    st.caption("Pending: the condition holds but not yet for the rule's `for:` (docs/alerts.md). A replica removed "
               "by an action is not an outage and raises none.")
    st.subheader(f"Resolved within the last {ui.range_label()}")
    resolved = alerts_view.resolved_alerts(store, data.window)
    if resolved.empty:
        st.caption("No alert fired and resolved in this range.")
    else:
        shown = resolved.assign(fired=_clock_column(resolved, "fired"), resolved=_clock_column(resolved, "resolved"),
                                lasted_s=resolved["lasted_s"].map(ranges.format_duration))
        ui.table(shown, "resolved alerts", "alerts-resolved", column_config={
            "lasted_s": "lasted",
            "chart": st.column_config.LinkColumn("chart", display_text="open chart"),
        })


alerts_panel()
