"""Overview: the fleet at a glance — tiles for now, charts for the chosen range."""

from __future__ import annotations

import streamlit as st

from dashboard import fleet_state, queries, ui

config = ui.fleet_config()
store = ui.store()

SOURCES = ("instance", "nginx", "bullmq", "redis", "postgres")

st.title("Overview")


@ui.live
def overview_panel() -> None:
    data = ui.panel_data(store)
    ui.freshness_by_source(store, config, SOURCES, data.now)
    up_of = {t: queries.value_of(m, "up") for t, m in queries.latest_by_target(store, "instance", "up").items()}
    state = fleet_state.fleet_state(store, data.now, up_of=up_of)
    for source in SOURCES:
        ui.unreachable(queries.unreachable(store, source, state=state), data.now)
    if not store.find_series(source="instance") and not store.find_series(source="nginx"):
        ui.no_data("fleet")
    counts = fleet_state.service_counts(store, config, state, up_of)
    ui.tiles(queries.overview_tiles(store, ui.stale_after(config, "instance"), state, counts))
    ui.charts_grid(queries.overview_charts(store, data.window), data, key_prefix="overview")


overview_panel()
