"""Scaling tests: start a load or scaling test, watch it live, cancel it; past runs with their results.

The run itself lives in a background thread owned by actions/proving/testruns.py, which writes progress to the store;
this page only reads those documents (and writes a cancel request), so a rerun or another session sees the same run.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from actions.auth import allowed
from actions.proving import load_tables, report, testruns
from dashboard import auth_gate, ui
from dashboard.safe_text import md, md_code

config = ui.fleet_config()
store = ui.store()
principal = auth_gate.current_principal() or auth_gate.ANONYMOUS
may_run = allowed(principal, "start_test")
SELECTED_KEY = "fd_testrun_selected"
PAST_RUNS_REFRESH_S = 3.0

st.title("Scaling tests")

with st.expander("Start a test", expanded=not testruns.list_runs(store, limit=1), icon=":material/play_arrow:"):
    kind = st.segmented_control("Test", ["load", "scaling"], default="load", key="fd_test_kind") or "load"
    params: dict[str, object] = {}
    left, middle, right = st.columns(3)
    if kind == "load":
        shape = left.selectbox("Shape", ["constant", "ramp", "closed loop"], key="fd_test_shape")
        duration = middle.number_input("Duration (s)", 1.0, 600.0, 10.0, 1.0, key="fd_test_duration")
        rate = right.number_input("Rate (req/s; ramp: final rate)", 1.0, 20000.0, 200.0, 10.0, key="fd_test_rate")
        path = left.text_input("Path behind the load balancer", "/work/echo", key="fd_test_path")
        connections = middle.number_input("Connections", 1, 512, 16, key="fd_test_conns")
        params = {"path": path, "duration_s": duration, "connections": int(connections)}
        if shape == "constant":
            params["rate"] = rate
        elif shape == "ramp":
            params["shape"] = f"ramp:1:{rate:g}:{duration:g}"
    else:
        service = config.service(config.load_balancer.service) if config.load_balancer else config.services[0]
        top = left.number_input("Up to N replicas", 2, service.max_replicas, min(3, service.max_replicas),
                                key="fd_test_n")
        step = middle.number_input("Seconds per step", 1.0, 120.0, 5.0, 1.0, key="fd_test_step")
        connections = right.number_input("Connections", 1, 512, 16, key="fd_test_sconns")
        path = left.text_input("Request", "/work/cpu?ms=2", key="fd_test_spath")
        params = {"max_replicas": int(top), "step_seconds": step, "connections": int(connections), "path": path}
        st.caption("Scales the service to 1, 2, …, N through the audited actions, runs the same load at each step, "
                   "then restores the current replica count (also on cancel or failure).")
    if st.button("Start", type="primary", disabled=not may_run, icon=":material/play_arrow:",
                 help=None if may_run else f"needs the operator role (you are {md(principal.role)})"):
        try:
            st.session_state[SELECTED_KEY] = testruns.start(config, ui.live_store(), principal, kind, params)
        except Exception as error:  # refused, bad parameters: say so, don't crash the page
            st.error(f"Could not start: {md(error)}")


def _selected_run() -> dict | None:
    run_id = st.session_state.get(SELECTED_KEY)
    if run_id:
        return testruns.get_run(store, run_id)
    runs = testruns.list_runs(store, limit=1)
    return runs[0] if runs else None


@st.fragment(run_every=1)
def live_panel() -> None:
    doc = _selected_run()
    if doc is None:
        st.info("No test has run yet.")
        return
    running = doc["state"] == "running"
    head, button = st.columns([4, 1])
    verdict = "" if doc.get("passed") is None else (" · :green[pass]" if doc["passed"] else " · :red[not passed]")
    head.markdown(f"**{md(doc['kind'])}** run `{md_code(doc['run_id'])}` by {md(doc.get('who', '?'))}"
                  f" — **{md(doc['state'])}**{verdict}")
    if running and button.button("Cancel", icon=":material/stop:", disabled=not allowed(principal, "stop_test")):
        testruns.request_cancel(ui.live_store(), doc["run_id"], principal)
    st.progress(float(doc.get("progress") or 0.0), text=doc.get("message") or "")
    if running and time.time() - doc.get("updated_at", 0) > 30:
        st.warning("No progress for 30 s: the process running this test may have stopped.")
    if doc.get("timeline"):
        throughput, latency = report.run_timeline_figures(doc)
        left, right = st.columns(2)
        left.plotly_chart(throughput, key="fd_live_tp")
        right.plotly_chart(latency, key="fd_live_lat")
    elif doc["kind"] == "readiness":
        # a readiness run measures rules, not a throughput timeline: empty charts would only look broken
        st.caption("Readiness runs record rule verdicts, not a throughput timeline: see the Scorecard page.")
    instances = report.instances_figure(doc)
    if instances is not None:
        st.plotly_chart(instances, key="fd_live_inst")
    result = doc.get("result") or {}
    if doc["kind"] == "load" and result.get("requests") is not None:
        load_result_tables(doc)
    if doc["kind"] == "scaling" and result.get("steps"):
        st.plotly_chart(report.scaling_figure(result), key="fd_live_usl")
        frame = pd.DataFrame(result["steps"])[["replicas", "throughput", "p95_ms", "efficiency", "generator_cpu",
                                               "in_fit", "errors"]]
        st.dataframe(frame, hide_index=True)
        st.caption(f"restored to {md(result.get('original_replicas'))} replica(s): {md(result.get('restored'))}"
                   f" — {md(result.get('restore_detail'))}")
    if doc.get("error"):
        st.error(doc["error"])


def load_result_tables(doc: dict) -> None:
    """Locust's view of a finished load test: per endpoint, the failures, and the stats CSV."""
    endpoints = load_tables.endpoint_table(doc)
    st.markdown("**Per endpoint**")
    st.dataframe(endpoints, hide_index=True, key="fd_load_endpoints", column_config={
        "failure_pct": st.column_config.NumberColumn("failures %", format="%.2f"),
        "rps": st.column_config.NumberColumn("req/s", format="%.1f"),
        "median_ms": st.column_config.NumberColumn("median ms", format="%.1f"),
        "p95_ms": st.column_config.NumberColumn("p95 ms", format="%.1f"),
        "p99_ms": st.column_config.NumberColumn("p99 ms", format="%.1f"),
        "max_ms": st.column_config.NumberColumn("max ms", format="%.1f"),
    })
    failures = load_tables.failures_table(doc)
    st.markdown("**Failures**")
    if failures.empty:
        st.caption("No failed request.")
    else:
        st.dataframe(failures, hide_index=True, key="fd_load_failures")
    st.download_button("Stats (CSV)", load_tables.stats_csv(doc), f"{doc['run_id']}-stats.csv", "text/csv",
                       icon=":material/download:", key="fd_load_csv")


live_panel()

st.subheader("Past runs")


@st.fragment(run_every=PAST_RUNS_REFRESH_S)
def past_runs() -> None:
    """A fragment of its own: a run started here (its document is written by the run's thread, a moment after the
    click) or elsewhere appears without a reload."""
    past = testruns.list_runs(store, limit=50)
    if not past:
        st.caption("No runs yet.")
        return
    frame = pd.DataFrame([{
        "run": d["run_id"], "kind": d["kind"], "state": d["state"], "passed": d.get("passed"),
        "started": pd.to_datetime(d["started_at"], unit="s"), "who": d.get("who"), "summary": d.get("message"),
    } for d in past])
    chosen = st.dataframe(frame, hide_index=True, on_select="rerun", selection_mode="single-row", key="fd_runs")
    rows = chosen.selection.rows if chosen is not None else []
    if rows and rows[0] < len(past):
        st.session_state[SELECTED_KEY] = past[rows[0]]["run_id"]
    st.caption(f"{len(past)} run(s), newest first; refreshed every {PAST_RUNS_REFRESH_S:g} s.")


past_runs()
