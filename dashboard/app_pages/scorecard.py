"""Scorecard (for managers): the level reached, % of points, every rule with its evidence, the trend, exports.

All scoring lives in actions/proving/scorecard.py and all rendering of exports in actions/proving/report.py; this
page only picks a run and shows what those return.
"""

from __future__ import annotations

import threading
import time

import pandas as pd
import streamlit as st

from actions.auth import allowed
from actions.proving import report, scorecard
from actions.proving.readiness import RUN_PREFIX
from actions.proving.scaling import latest_scaling_run
from dashboard import auth_gate, readiness_preview, ui
from dashboard.safe_text import md

# Words in a coloured cell, not emoji: a machine without an emoji font shows those as empty boxes.
STATUS_LABELS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "unknown": "UNKNOWN"}
STATUS_CELL = {"PASS": "#1a7f37", "WARN": "#b7791f", "FAIL": "#cf222e", "UNKNOWN": "#6e7781"}


# one Chromium render at a time in this dashboard process (shared by every session: a module-level lock would be
# re-created on each script run, so it lives in Streamlit's resource cache)
@st.cache_resource
def _pdf_render_lock() -> threading.Lock:
    return threading.Lock()


PDF_RENDER = _pdf_render_lock()

config = ui.fleet_config()
store = ui.store()
principal = auth_gate.current_principal() or auth_gate.ANONYMOUS
READINESS_PENDING_KEY = "fd_readiness_pending"
service = config.load_balancer.service if config.load_balancer else config.services[0].name

st.title("Readiness scorecard")

top_left, top_right = st.columns([3, 1])
if top_right.button("Run readiness now", icon=":material/fact_check:", disabled=not allowed(principal, "start_test"),
                    help="preview first: the run restarts and drains one live instance"):
    st.session_state[READINESS_PENDING_KEY] = True
if st.session_state.get(READINESS_PENDING_KEY):
    readiness_preview.render(config, ui.live_store(), principal, service, READINESS_PENDING_KEY)

all_facts = store.facts()
runs = scorecard.history(all_facts, RUN_PREFIX)
if not runs:
    st.info("No readiness run yet. Start one here or with `./fleetdeck test readiness`.")
    st.stop()

labels = {r.run_id: f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r.ts))} · {r.level or 'no level'} · "
                    f"{r.percent:.0f}% · {r.run_id}" for r in reversed(runs)}
run_id = top_left.selectbox("Run", list(labels), format_func=lambda run: labels.get(run, run))
facts = [f for f in all_facts if f.run_id == run_id]
card = scorecard.score(facts, run_id)

badge = {"Gold": ":orange-badge", "Silver": ":gray-badge", "Bronze": ":red-badge"}.get(card.level or "",
                                                                                     ":gray-badge")
level_cells = st.columns(len(scorecard.LEVELS) + 2)
level_cells[0].markdown(f"## {badge}[{card.level or 'no level'}]")
level_cells[1].metric("Points", f"{card.percent:.0f}%", help=f"{card.earned:g} of {card.total} points")
for cell, level in zip(level_cells[2:], scorecard.LEVELS, strict=True):
    status = card.level_status(level)
    cell.metric(level, status, help="reached only when all its rules and all lower levels' rules pass")

table = pd.DataFrame([{
    "level": r.rule.level, "rule": r.rule.title, "status": STATUS_LABELS.get(r.status, r.status),
    "observed": r.observed,
    "points": f"{r.earned:g}/{r.rule.points}",
    "time": pd.to_datetime(r.ts, unit="s") if r.ts else None, "measured by": r.rule.measured_by,
} for r in card.results])
st.dataframe(table.style.map(lambda v: f"color: {STATUS_CELL.get(str(v), 'inherit')}; font-weight: 600",
                             subset=["status"]), hide_index=True)

with st.expander("Evidence", icon=":material/search:"):
    for result in card.results:
        st.markdown(f"**{md(result.rule.title)}** — {md(result.status)}")
        st.json(result.evidence, expanded=False)

left, right = st.columns(2)
left.plotly_chart(report.trend_figure(runs), key="fd_sc_trend")
right.plotly_chart(report.points_figure(card), key="fd_sc_points")
scaling_run = latest_scaling_run(store, service)
if scaling_run and scaling_run.get("steps"):
    st.plotly_chart(report.scaling_figure(scaling_run), key="fd_sc_scaling")

st.subheader("Export")
csv_col, html_col, pdf_col = st.columns(3)
csv_col.download_button("Facts (CSV)", scorecard.facts_csv(facts), f"{run_id}.csv", "text/csv",
                        icon=":material/table:")
html_text = report.render_html(card, facts, runs, scaling_run)
html_col.download_button("Report (HTML)", html_text, f"{run_id}.html", "text/html", icon=":material/description:")
pdf_key = f"fd_pdf_{run_id}"
logged_in = auth_gate.current_principal() is not None
if pdf_key not in st.session_state:
    # each render launches a Chromium: only for logged-in users, and one at a time per dashboard process
    if pdf_col.button("Prepare PDF", icon=":material/picture_as_pdf:", disabled=not logged_in,
                      help=None if logged_in else "log in to render a PDF"):
        if not logged_in:
            st.error("Log in to render a PDF.")
        elif not PDF_RENDER.acquire(blocking=False):
            st.warning("Another PDF is being rendered; try again in a moment.")
        else:
            try:
                with st.spinner("printing with headless Chromium…"):
                    st.session_state[pdf_key] = report.pdf_bytes(html_text)
                st.rerun()
            except report.PdfError as error:
                st.error(md(error))
            finally:
                PDF_RENDER.release()
else:
    pdf_col.download_button("Report (PDF)", st.session_state[pdf_key], f"{run_id}.pdf", "application/pdf",
                            icon=":material/picture_as_pdf:")
