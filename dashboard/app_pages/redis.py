"""Redis: memory against maxmemory, clients, throughput, evictions, and the eviction policy BullMQ needs."""

from __future__ import annotations

import streamlit as st

from dashboard import datastore_queries, figures, queries, ui
from dashboard.safe_text import md

config = ui.fleet_config()
store = ui.store()

st.title("Redis")


@ui.live
def redis_panel() -> None:
    data = ui.panel_data(store)
    ui.freshness(store, "redis", data.now, ui.stale_after(config, "redis"))
    ui.unreachable(queries.unreachable(store, "redis"), data.now)
    targets = datastore_queries.redis_targets(store)
    if not targets:
        ui.no_data("Redis")
        return
    for target in targets:
        view = datastore_queries.redis_view(store, target, data.window)
        st.subheader(md(target))
        if view.policy_ok is False:
            st.warning(f"maxmemory-policy is **{md(view.policy or 'not noeviction')}**: BullMQ needs `noeviction`, "
                       "otherwise Redis may evict queue keys and jobs vanish.", icon=":material/warning:")
        ui.tiles(view.tiles, per_row=3)
        if view.used_memory is not None and view.maxmemory:
            st.plotly_chart(figures.usage_bar(view.used_memory, view.maxmemory, "Memory vs maxmemory", 2**20, "MiB"),
                            theme="streamlit", key=f"mem-{target}")
        elif view.maxmemory is not None:
            # a bar against "no limit" would read as full: say what it means instead
            st.caption("maxmemory is 0 (unlimited): Redis grows until the machine runs out of memory. Set a limit "
                       "with `maxmemory-policy noeviction` so BullMQ errors instead of losing jobs.")
        ui.charts_grid(datastore_queries.redis_charts(store, data.window, target), data, key_prefix=f"redis-{target}")


redis_panel()
