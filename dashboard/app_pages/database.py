"""Database: Postgres connections against the fleet's budget, who holds them, transactions, locks, cache."""

from __future__ import annotations

import streamlit as st

from dashboard import datastore_queries, figures, queries, ui

config = ui.fleet_config()
store = ui.store()

st.title("Database")


@ui.live
def database_panel() -> None:
    data = ui.panel_data(store)
    ui.freshness(store, "postgres", data.now, ui.stale_after(config, "postgres"))
    ui.unreachable(queries.unreachable(store, "postgres"), data.now)
    targets = datastore_queries.postgres_targets(store)
    if not targets:
        ui.no_data("Postgres")
        return
    for target in targets:
        view = datastore_queries.postgres_view(store, target)
        st.subheader(target)
        ui.tiles(view.tiles, per_row=6)
        if view.by_state:
            st.plotly_chart(
                figures.budget_bar(view.by_state, view.budget, view.max_connections, "Connections by state"),
                theme="streamlit", key=f"budget-{target}",
            )
        if not view.by_application.empty:
            ui.table(view.by_application, "connections per application", f"pg-apps-{target}", column_config={
                "connections": st.column_config.NumberColumn(format="%d"),
            })
        pools = datastore_queries.pgbouncer_pools(store, target)
        if not pools.empty:
            st.markdown("**PgBouncer pools**")
            if (pools["cl_waiting"].fillna(0) > 0).any():
                st.warning("Clients are waiting for a PgBouncer server connection (cl_waiting > 0).",
                           icon=":material/hourglass_top:")
            ui.table(pools, "PgBouncer pools", f"pgbouncer-{target}", formats={
                "cl_active": "{:.0f}", "cl_waiting": "{:.0f}", "sv_active": "{:.0f}", "sv_idle": "{:.0f}",
                "maxwait_s": "{:.1f} s"})
        ui.charts_grid(datastore_queries.postgres_charts(store, data.window, target), data, key_prefix=f"pg-{target}")


database_panel()
