"""Load balancer: each upstream server's state and traffic, nginx totals, the upstream block in force."""

from __future__ import annotations

import json

import streamlit as st

from dashboard import fault_panels, fleet_state, queries, ranges, ui
from dashboard.instance_actions import render_instance_actions
from dashboard.safe_text import md

config = ui.fleet_config()
store = ui.store()

st.title("Load balancer")


@ui.live
def servers_panel() -> None:
    data = ui.panel_data(store)
    ui.freshness(store, "nginx", data.now, ui.stale_after(config, "nginx"))
    ui.unreachable(queries.unreachable(store, "nginx"), data.now)
    fault_panels.render_lb_process(store, config)
    totals = queries.lb_totals(store)
    servers = queries.lb_servers_table(store, data.now, data.window, fleet_state.fleet_state(store, data.now))
    if not totals and servers.empty:
        ui.no_data("nginx")
        return
    for target, values in totals.items():
        st.markdown(f"**{md(target)}**")
        ui.tiles([
            queries.Tile("Requests/s", queries.fmt(values["requests_per_s"], ".1f"), values["requests_per_s"], ""),
            queries.Tile("Active connections", queries.fmt(values["active"], ".0f"), values["active"], ""),
            queries.Tile("Reading / writing / waiting",
                         " / ".join(queries.fmt(values[k], ".0f") for k in ("reading", "writing", "waiting")),
                         values["waiting"], "client connections by phase (stub_status)"),
            queries.Tile("Accepted / handled",
                         " / ".join(queries.fmt(values[k], ".0f") for k in ("accepts", "handled")),
                         values["handled"], "a gap means nginx dropped connections (worker_connections)",
                         bad=(values["accepts"] or 0) > (values["handled"] or 0)),
        ])
    if not servers.empty:
        ui.table(servers, "upstream servers", "upstream-servers", status_column="state", formats={
            "requests_per_s": "{:.1f}", "status_4xx_per_s": "{:.2f}", "status_5xx_per_s": "{:.2f}",
            "p50_ms": "{:.0f} ms", "p95_ms": "{:.0f} ms", "failed_attempts": "{:.0f}", "last_seen_s": "{:.0f} s ago",
        }, column_config={
            "requests_per_s": "req/s", "status_4xx_per_s": "4xx/s", "status_5xx_per_s": "5xx/s", "p50_ms": "p50",
            "p95_ms": "p95", "failed_attempts": "failed attempts", "last_seen_s": "last seen",
        })
    ui.charts_grid(queries.lb_charts(store, data.window), data, key_prefix="lb")


servers_panel()

st.subheader("Upstream block in force")
nginx_dir = config.state_path / "nginx"
upstream_conf = nginx_dir / "upstream.conf"
upstream_json = nginx_dir / "upstream.json"
if upstream_conf.is_file():
    if upstream_json.is_file():
        try:
            applied = json.loads(upstream_json.read_text())
            st.caption(f"Generation {md(applied.get('generation'))} applied at "
                       f"{ranges.format_clock(applied.get('applied_at'))}")
        except (OSError, ValueError) as error:
            st.warning(f"{md(upstream_json)} is unreadable: {md(error)}")
    st.code(upstream_conf.read_text(), language="nginx")
else:
    st.caption(f"No rendered upstream yet ({md(upstream_conf)} does not exist): the managed nginx writes it on"
               " start.")

st.subheader("Take a server out of rotation")
lb_targets = sorted(row.series.target for row in store.latest(source="instance", metric="up")
                    if config.load_balancer and row.series.target.startswith(f"{config.load_balancer.service}/"))
if lb_targets:
    chosen = st.selectbox("Instance", lb_targets, key="fd_lb_instance")
    render_instance_actions(st.container(), config, store, chosen)
else:
    st.caption("The upstream's instances appear here once the collectors have scraped them.")
