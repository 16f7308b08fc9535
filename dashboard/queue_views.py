"""Plain pieces of the Queues page's browser (no Streamlit here, so they are tested directly).

Every string shown here comes from Redis — queue names, job names, job ids, error texts, log lines — so it is
never rendered as Markdown: tables and code blocks show it as text, and where it must sit inside Markdown (a
heading, a message) it goes through ``dashboard.safe_text.md`` first.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from collectors.bullmq_jobs import FailureReasons, JobPage, MinutePoint


def when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def jobs_frame(page: JobPage) -> pd.DataFrame:
    """One row per job; the cells are plain text in st.dataframe."""
    rows = [{
        "id": row.id, "name": row.name, "added": when(row.timestamp), "processed": when(row.processed_on),
        "finished": when(row.finished_on), "attempts": f"{row.attempts_made}/{row.attempts or 1}",
        "progress": row.progress, "failed reason": row.failed_reason,
    } for row in page.rows]  # fmt: skip
    return pd.DataFrame(rows, columns=["id", "name", "added", "processed", "finished", "attempts", "progress",
                                       "failed reason"])


def reasons_frame(found: FailureReasons) -> pd.DataFrame:
    total = sum(r.count for r in found.reasons) or 1
    return pd.DataFrame(
        [{"reason": r.reason, "jobs": r.count, "share": f"{100 * r.count / total:.0f}%", "newest job": r.newest_id}
         for r in found.reasons],
        columns=["reason", "jobs", "share", "newest job"],
    )


def minutes_frame(points: list[MinutePoint]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"minute": datetime.fromtimestamp(p.ts), "completed/min": p.completed, "failed/min": p.failed}
         for p in points],
        columns=["minute", "completed/min", "failed/min"],
    ).set_index("minute")


def failure_ratio(completed: float | None, failed: float | None) -> float | None:
    """failed / (completed + failed), None when nothing finished."""
    total = (completed or 0) + (failed or 0)
    return (failed or 0) / total if total > 0 else None
