"""Audit log page: every action attempt (ok, no-op, failed, refused), filterable, exportable as CSV.

The table comes from `Store.audit` (append-only). Each attempt that passed its preflight has two rows with the
same op id — `started` and its outcome — so a crash mid-action still leaves a trace; refusals have one row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime

import pandas as pd
import streamlit as st

from core.store import AuditEntry
from dashboard import ui

PERIODS: dict[str, float | None] = {"1 hour": 3600, "24 hours": 86400, "7 days": 7 * 86400, "30 days": 30 * 86400,
                                    "all": None}
COLUMNS = ["time", "op_id", "who", "role", "via", "action", "target", "result", "error", "duration_s", "params",
           "before", "after"]


def audit_frame(entries: Sequence[AuditEntry]) -> pd.DataFrame:
    """One row per audit entry, newest first; JSON columns as compact text (so the CSV round-trips)."""
    rows = []
    for entry in entries:
        params = dict(entry.params)
        rows.append({
            "time": datetime.fromtimestamp(entry.ts).strftime("%Y-%m-%d %H:%M:%S"),
            "op_id": entry.op_id,
            "who": entry.who,
            "role": entry.role,
            "via": params.pop("via", ""),
            "action": entry.action,
            "target": params.pop("target", ""),
            "result": entry.result,
            "error": entry.error or "",
            "duration_s": entry.duration_s,
            "params": json.dumps(params, sort_keys=True, default=str),
            "before": json.dumps(entry.before, sort_keys=True, default=str),
            "after": json.dumps(entry.after, sort_keys=True, default=str),
        })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.iloc[::-1].reset_index(drop=True)


def filter_frame(frame: pd.DataFrame, actions: Sequence[str], results: Sequence[str], who: str,
                 text: str) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    if actions:
        keep &= frame["action"].isin(actions)
    if results:
        keep &= frame["result"].isin(results)
    if who.strip():
        keep &= frame["who"].str.contains(who.strip(), case=False, regex=False)
    if text.strip():
        needle = text.strip().lower()
        keep &= frame.apply(lambda row: needle in " ".join(str(v) for v in row.values).lower(), axis=1)
    return frame[keep]


def render() -> None:
    st.title("Audit log")
    st.caption("Every action attempt: who, role, parameters, before/after, result, error, duration.")
    store = ui.store()
    period = st.segmented_control("Period", list(PERIODS), default="24 hours", key="fd_audit_period") or "24 hours"
    seconds = PERIODS[period]
    entries = store.audit(start=time.time() - seconds if seconds else None)
    frame = audit_frame(entries)
    left, middle, right, far = st.columns(4)
    chosen_actions = left.multiselect("Action", sorted(frame["action"].unique()), key="fd_audit_actions")
    chosen_results = middle.multiselect("Result", sorted(frame["result"].unique()), key="fd_audit_results")
    who = right.text_input("Who", key="fd_audit_who")
    text = far.text_input("Search", key="fd_audit_text", help="matches any column, e.g. an op id or an instance")
    shown = filter_frame(frame, chosen_actions, chosen_results, who, text)
    st.caption(f"{len(shown)} of {len(frame)} entries")
    if shown.empty:
        st.info("No audit entries match.")
        return
    ui.table(shown, "audit log", key="fd-audit", column_config={
        "duration_s": st.column_config.NumberColumn("duration (s)", format="%.3f"),
        "params": st.column_config.TextColumn(width="medium"),
        "before": st.column_config.TextColumn(width="small"),
        "after": st.column_config.TextColumn(width="small"),
    })


# Streamlit runs a page as __main__; importing the module (its helpers are reused and tested) must not render
# it, which would open the configured store (and create a SQLite file wherever that points).
if __name__ == "__main__":
    render()
