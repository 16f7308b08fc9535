"""Queues: every BullMQ queue × state with its trend, workers per queue, one queue in detail, and the job
browser with the queue actions (dashboard/queue_panel.py).

Queue names come from Redis: in Markdown they are escaped (dashboard/safe_text.py md)."""

from __future__ import annotations

import streamlit as st

from dashboard import auth_gate, queries, queue_panel, ranges, ui
from dashboard.safe_text import MAX_INLINE, md

config = ui.fleet_config()
store = ui.store()

st.title("Queues")


def trend_label(span_s: float, window: ranges.Window) -> str:
    """The span the sparklines really cover: the range, or less when the history is shorter than the range."""
    if span_s >= 0.9 * window.span_s:
        return f"last {ui.range_label()}"
    return f"last {ranges.format_duration(span_s)} (of {ui.range_label()})"


@ui.live
def queues_panel() -> None:
    data = ui.panel_data(store)
    ui.freshness(store, "bullmq", data.now, ui.stale_after(config, "bullmq"))
    ui.unreachable(queries.unreachable(store, "bullmq"), data.now)
    workers = queries.queue_workers(store)
    if not workers:
        ui.no_data("queue")
        return
    st.markdown("**Workers per queue**")
    badges = []
    for queue in workers:
        if queue.workers == 0:
            badge = ":red-badge[no workers]"
        else:
            badge = f":green-badge[{md(queue.workers)} worker{'s' if queue.workers != 1 else ''}]"
        paused = " :gray-badge[paused]" if queue.paused else ""
        badges.append(f"{md(queue.queue, MAX_INLINE)} {badge}{paused}")
    st.markdown("  ".join(badges))
    for queue in workers:
        if queue.starving:
            age = ranges.format_duration(queue.oldest_waiting_age_s)
            st.error(f"**{md(queue.queue, MAX_INLINE)}**: {queue.waiting} jobs waiting (oldest {age}) and no worker is"
                     " consuming.",
                     icon=":material/report:")
    frame = queries.queues_table(store, data.window)
    ui.table(frame, "queue states", "queues", column_config={
        "count": st.column_config.NumberColumn("now", format="%d"),
        "trend": st.column_config.LineChartColumn(trend_label(frame.attrs.get("trend_span_s", 0.0), data.window),
                                                  y_min=0),
    })


queues_panel()

st.subheader("Queue detail")
queue_names = [q.queue for q in queries.queue_workers(store)]
if queue_names:
    selected = ui.query_picker("Queue", queue_names, "fd_queue", "queue") or queue_names[0]

    @ui.live
    def queue_detail(queue: str) -> None:
        data = ui.panel_data(store)
        ui.freshness(store, "bullmq", data.now, ui.stale_after(config, "bullmq"))
        ui.charts_grid(queries.queue_charts(store, data.window, queue), data, key_prefix=f"queue-{queue}")

    queue_detail(selected)
else:
    st.caption("Queues appear here once the bullmq collector has found them.")

st.subheader("Browse and act")
# the panel acts (retry, drain, ...) and follows the action's progress: it gets the store without the read cache
queue_panel.render(config, ui.live_store(), auth_gate.current_principal() or auth_gate.ANONYMOUS)
