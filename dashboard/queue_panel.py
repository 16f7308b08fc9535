"""The Queues page's browser and actions: jobs per state, one job in full, failure reasons, throughput, and the
queue actions (retry, remove, promote, pause/resume, clean, drain, obliterate) with preview, typed confirmation
and live progress.

Reads go straight to Redis (collectors/bullmq_jobs.py, every read bounded); actions go through
actions/queue_ops.py, which checks the role again, locks the queue and audits — the disabled buttons here are a
convenience. An action runs in a background thread with a pre-made op id and its progress is read back from the
store, so another session sees it too. Outside strings are shown as plain text (tables, code blocks) or
Markdown-escaped (dashboard/safe_text.py ``md``), never rendered as Markdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from actions import audit
from actions.auth import Principal, allowed
from actions.operations import new_op_id
from actions.queue_ops import (
    CLEAN,
    DRAIN,
    OBLITERATE,
    OPERATIONS,
    PAUSE,
    PROMOTE,
    PROMOTE_ALL,
    QUEUE_ACT,
    QUEUE_OBLITERATE,
    REMOVE,
    RESUME,
    RETRY,
    RETRY_ALL,
    QueueActions,
)
from collectors import bullmq_jobs
from collectors.bullmq_scripts import STATES, QueueClient, QueueRef, parse_ref
from core.config import FleetConfig
from core.store import Store
from dashboard import queries
from dashboard.action_panel import progress_frame, start_in_background
from dashboard.queue_views import failure_ratio, jobs_frame, minutes_frame, reasons_frame, when
from dashboard.safe_text import MAX_INLINE, md

PENDING_KEY = "fd_queue_pending"  # {"action", "queue", "params"} being previewed in this session
LAST_OP_KEY = "fd_queue_last_op"  # op id of the latest queue action started from this session
PAGE_SIZE = 25
JOB_ID_KEY = "fd_queue_job_id"
PICKED_KEY = "fd_queue_picked"
RELATION_BUTTONS = 10


@st.cache_data(ttl=30, show_spinner=False)
def _discovered(_config: FleetConfig, config_key: str) -> list[str]:
    try:
        return [ref.name for ref in bullmq_jobs.discover(_config, timeout_s=2.0)]
    except Exception:  # Redis down: the collector's names still list the queues
        return []


def queue_names(config: FleetConfig, store: Store) -> list[str]:
    """Queues to browse: discovered on the configured Redis servers, plus the collector's (when their Redis is
    configured: the browser reads Redis directly)."""
    configured = {r.name for r in config.redis}
    names = set(_discovered(config, repr([(r.name, r.url, r.queue_prefixes) for r in config.redis])))
    names.update(q.queue for q in queries.queue_workers(store) if q.queue.split("/", 1)[0] in configured)
    return sorted(names)


def _client(ref: QueueRef) -> QueueClient:
    return QueueClient(ref, timeout_s=2.0)


def render(config: FleetConfig, store: Store, principal: Principal) -> None:
    if not config.redis:
        st.caption("No Redis is configured (redis: in the config): nothing to browse.")
        return
    names = queue_names(config, store)
    if not names:
        st.caption("No queue found on the configured Redis servers.")
        return
    name = st.selectbox("Queue to browse", names, key="fd_browse_queue")
    try:
        ref = parse_ref(config, name)
        client = _client(ref)
        counts = bullmq_jobs.counts(client)
    except Exception as error:
        st.error(f"Cannot read {md(name, MAX_INLINE)}: {md(f'{type(error).__name__}: {error}', MAX_INLINE)}")
        return
    try:
        _summary(store, ref, client, counts)
        _actions_bar(config, store, principal, ref, counts)
        _reasons(client, ref)
        _jobs(config, store, principal, ref, client, counts)
    finally:
        client.close()
    _live(store)


def _summary(store: Store, ref: QueueRef, client: QueueClient, counts: bullmq_jobs.QueueCounts) -> None:
    st.markdown(f"#### {md(ref.name, MAX_INLINE)}" + (" :gray-badge[paused]" if counts.paused else ""))
    columns = st.columns(8)
    for column, state in zip(columns, STATES, strict=True):
        column.metric(state, f"{counts.of(state):,}")
    minutes = bullmq_jobs.metrics_minutes(client)
    latest = queries.latest_by_target(store, "bullmq").get(ref.name, {})
    wait = counts.oldest_waiting_age_s
    left, middle, right = st.columns(3)
    left.metric("Oldest waiting job", f"{wait:,.0f} s" if wait is not None else "—",
                help="How long the oldest waiting job has waited (its timestamp to now).")
    if minutes:
        recent = minutes[-15:]
        completed_total = sum(p.completed for p in recent)
        failed_total = sum(p.failed for p in recent)
        ratio = failure_ratio(completed_total, failed_total)
        per_min = f"{completed_total / len(recent):,.1f} / {failed_total / len(recent):,.1f}"
        middle.metric("Completed / failed per min (15 min)", per_min,
                      help="From BullMQ's metrics keys, recorded by workers with metrics.maxDataPoints.")
        right.metric("Failure ratio (15 min)", f"{100 * ratio:.1f}%" if ratio is not None else "—")
        st.line_chart(minutes_frame(minutes), height=220)
        st.caption("Per minute, from BullMQ's metrics keys (newest on the right).")
    else:
        completed = queries.value_of(latest, "completed_per_s")
        failed = queries.value_of(latest, "failed_per_s")
        ratio = failure_ratio(completed, failed)
        middle.metric("Completed / failed per min", "—" if completed is None and failed is None else
                      f"{60 * (completed or 0):,.1f} / {60 * (failed or 0):,.1f}",
                      help="No BullMQ metrics keys (workers without metrics.maxDataPoints): from the collector's"
                           " count deltas, a lower bound when jobs are removed on completion.")
        right.metric("Failure ratio", f"{100 * ratio:.1f}%" if ratio is not None else "—")
        st.caption("No BullMQ metrics keys on this queue: throughput comes from the collector (charts above).")


def _reasons(client: QueueClient, ref: QueueRef) -> None:
    if not client.timed("zcard", "ZCARD", ref.key("failed")):
        return
    found = bullmq_jobs.failure_reasons(client, sample=5000)
    st.markdown("**Top failure reasons**")
    st.dataframe(reasons_frame(found), hide_index=True, key="fd_queue_reasons")
    if not found.complete:
        st.caption(f"Grouped from the newest {found.scanned:,} of {found.total:,} failed jobs.")


def _jobs(config: FleetConfig, store: Store, principal: Principal, ref: QueueRef, client: QueueClient,
          counts: bullmq_jobs.QueueCounts) -> None:
    st.markdown("**Jobs**")
    state_col, search_col, page_col = st.columns([2, 3, 1])
    state = state_col.selectbox("State", STATES, index=STATES.index("failed") if counts.failed else 0,
                                key="fd_queue_state", format_func=lambda s: f"{s} ({counts.of(s):,})")
    search = search_col.text_input("Search by job name or id", key="fd_queue_search", max_chars=200)
    page_number = page_col.number_input("Page", min_value=1, value=1, step=1, key="fd_queue_page")
    page = bullmq_jobs.job_page(client, state, (int(page_number) - 1) * PAGE_SIZE, PAGE_SIZE, search)
    if page.search and not page.search_complete:
        st.caption(f"Searched the newest {page.scanned:,} jobs; narrow the search to look further.")
    selection = st.dataframe(jobs_frame(page), hide_index=True, key="fd_queue_jobs", on_select="rerun",
                             selection_mode="single-row")
    rows = getattr(getattr(selection, "selection", None), "rows", None) or []
    if rows and rows[0] < len(page.rows):
        picked = page.rows[rows[0]].id
        if picked != st.session_state.get(PICKED_KEY):  # a new row selected: it fills the job id box
            st.session_state[PICKED_KEY] = picked
            st.session_state[JOB_ID_KEY] = picked
    typed = st.text_input("Job id", key=JOB_ID_KEY, max_chars=512, help="Select a row above, or type a job id.")
    if typed.strip():
        _job_view(principal, ref, client, typed.strip())


def _job_view(principal: Principal, ref: QueueRef, client: QueueClient, job_id: str) -> None:
    view = bullmq_jobs.job_view(client, job_id)
    if view is None:
        st.warning(f"No job {md(job_id, MAX_INLINE)} in {md(ref.name, MAX_INLINE)}.")
        return
    st.markdown(f"##### Job {md(view.id, MAX_INLINE)}: {md(view.text('name'), MAX_INLINE)}"
                f" — {md(view.state, MAX_INLINE)}")
    st.caption(f"added {when(view.number('timestamp'))} · processed {when(view.number('processedOn'))} · finished"
               f" {when(view.number('finishedOn'))} · attempts made {view.number('atm') or 0}")
    may = allowed(principal, QUEUE_ACT)
    buttons = st.columns(3)
    for column, (action, label, states) in zip(buttons, (
        (RETRY, "Retry this job", ("failed",)), (PROMOTE, "Promote this job", ("delayed",)),
        (REMOVE, "Remove this job", (*(s for s in STATES if s != "active"), "unknown")),
    ), strict=True):
        if view.state in states and column.button(label, key=f"fd-q-{action}", disabled=not may):
            st.session_state[PENDING_KEY] = {"action": action, "queue": ref.name, "params": {"job_id": view.id}}
            st.rerun()  # the preview sits with the queue actions, drawn above this view
    for title, field in (("Data", "data"), ("Options", "opts"), ("Return value", "returnvalue")):
        value = view.fields.get(field)
        if value is None or value.size < 0:
            continue
        st.markdown(f"**{title}**")
        if value.truncated:
            st.caption(f"Truncated: {value.size:,} bytes, the first {len(value.text.encode()):,} shown.")
        st.code(view.pretty(field), language="json" if not value.truncated else None)
    if view.text("failedReason"):
        st.markdown("**Failed reason**")
        st.code(view.text("failedReason"), language=None)
    traces = view.stacktrace()
    if traces:
        st.markdown(f"**Stack trace** (latest of {len(traces)})")
        st.code(traces[-1], language=None)
    if view.log_count:
        st.markdown(f"**Logs** (last {len(view.logs)} of {view.log_count})")
        st.code("\n".join(view.logs), language=None)
    relations = [("parent", view.parent)] if view.parent else []
    relations += [(kind, key) for kind, keys in (("pending child", view.children_pending),
                                                 ("processed child", view.children_processed),
                                                 ("failed child", view.children_failed),
                                                 ("ignored child", view.children_ignored)) for key in keys]
    if relations:
        st.markdown("**Parent and children**")
        st.dataframe([{"relation": kind, "job key": key} for kind, key in relations], hide_index=True,
                     key="fd_queue_relations")
        here = [(kind, key[len(ref.base):]) for kind, key in relations if key.startswith(ref.base)]
        columns = st.columns(min(len(here), 5) or 1)
        for index, (kind, other) in enumerate(here[:RELATION_BUTTONS]):
            columns[index % len(columns)].button(
                f"Open {kind} {md(other, 40)}", key=f"fd-q-open-{index}",
                on_click=st.session_state.__setitem__, args=(JOB_ID_KEY, other))


def _actions_bar(config: FleetConfig, store: Store, principal: Principal, ref: QueueRef,
                 counts: bullmq_jobs.QueueCounts) -> None:
    may = allowed(principal, QUEUE_ACT)
    why = None if may else f"needs the operator role (you are {principal.role})"
    with st.expander("Queue actions", icon=":material/build:", expanded=bool(st.session_state.get(PENDING_KEY))):
        first = st.columns(4)
        reason = first[0].text_input("Only jobs failing with (first line; empty: all)", key="fd_q_reason",
                                     max_chars=200)
        if first[1].button("Retry failed", key="fd-q-retry-all", disabled=not may, help=why):
            st.session_state[PENDING_KEY] = {"action": RETRY_ALL, "queue": ref.name, "params": {"reason": reason}}
        if first[2].button("Promote all delayed", key="fd-q-promote-all", disabled=not may, help=why):
            st.session_state[PENDING_KEY] = {"action": PROMOTE_ALL, "queue": ref.name, "params": {}}
        toggle = RESUME if counts.paused else PAUSE
        if first[3].button("Resume" if counts.paused else "Pause", key="fd-q-toggle", disabled=not may, help=why):
            st.session_state[PENDING_KEY] = {"action": toggle, "queue": ref.name, "params": {}}
        second = st.columns(4)
        clean_state = second[0].selectbox("Clean state", ["completed", "failed"], key="fd_q_clean_state")
        older = second[1].number_input("Older than (minutes)", min_value=0, value=60, key="fd_q_clean_age")
        limit = second[2].number_input("At most (jobs)", min_value=1, value=10_000, key="fd_q_clean_limit")
        if second[3].button("Clean", key="fd-q-clean", disabled=not may, help=why):
            st.session_state[PENDING_KEY] = {"action": CLEAN, "queue": ref.name, "params": {
                "state": clean_state, "older_than_s": int(older) * 60, "limit": int(limit)}}
        third = st.columns(4)
        with_delayed = third[0].checkbox("Drain delayed jobs too", key="fd_q_drain_delayed")
        if third[1].button("Drain waiting", key="fd-q-drain", disabled=not may, help=why):
            st.session_state[PENDING_KEY] = {"action": DRAIN, "queue": ref.name,
                                             "params": {"delayed": bool(with_delayed)}}
        admin = allowed(principal, QUEUE_OBLITERATE)
        force = third[2].checkbox("Even with active jobs", key="fd_q_force", disabled=not admin)
        if third[3].button("Obliterate", key="fd-q-obliterate", disabled=not admin,
                           help=None if admin else "admin only"):
            st.session_state[PENDING_KEY] = {"action": OBLITERATE, "queue": ref.name, "params": {"force": force}}
    pending = st.session_state.get(PENDING_KEY)
    if pending and pending.get("queue") == ref.name:
        _preview(config, store, principal, pending)


def _preview(config: FleetConfig, store: Store, principal: Principal, pending: dict[str, Any]) -> None:
    action, queue, params = pending["action"], pending["queue"], dict(pending["params"])
    actions = QueueActions(config, store)
    plan = actions.plan(action, queue, principal, **params)
    label = OPERATIONS[action].label
    (st.info if plan.allowed else st.error)(
        f"**Dry run — {label}, {md(queue, MAX_INLINE)}:** {md(plan.reason, MAX_INLINE)}")
    for number, step in enumerate(plan.steps, 1):
        st.text(f"{number}. {step}")
    cancel, confirm = st.columns(2)
    if cancel.button("Cancel", key="fd-q-cancel"):
        st.session_state.pop(PENDING_KEY, None)
        st.rerun()
    if not plan.allowed or plan.noop:
        return
    ready = True
    if plan.disruptive:
        typed = confirm.text_input(f"Type {md(plan.confirm_text, MAX_INLINE)} to confirm", key="fd-q-typed")
        ready = typed.strip() == plan.confirm_text
    if confirm.button(f"Run: {label}", key="fd-q-run", type="primary", disabled=not ready):
        op_id = new_op_id()

        def run() -> Callable[[], Any]:
            fresh = QueueActions(config, store)
            return lambda: fresh.run(principal, action, queue, op_id=op_id, **params)

        start_in_background(run(), op_id)
        st.session_state[LAST_OP_KEY] = op_id
        st.session_state.pop(PENDING_KEY, None)
        st.toast(f"{label} started (op {op_id})")
        st.rerun()


def _live(store: Store) -> None:
    op_id = st.session_state.get(LAST_OP_KEY)
    if not op_id:
        return

    running = (audit.operation_status(store, op_id) or {}).get("state") in (None, "running")

    @st.fragment(run_every=1.0 if running else None)  # redraw while it runs; a finished op stays as it is
    def panel() -> None:
        status = audit.operation_status(store, op_id) or {}
        state = str(status.get("state", "running"))
        text = (f"**{md(status.get('action', ''), MAX_INLINE)}** {md(status.get('target', ''), MAX_INLINE)} — "
                f"**{md(state, MAX_INLINE)}**: {md(status.get('message', ''), MAX_INLINE)}")
        {"running": st.info, "ok": st.success, "noop": st.success, "failed": st.error,
         "refused": st.warning}.get(state, st.info)(text)
        frame = progress_frame(store, op_id)
        if not frame.empty:
            st.dataframe(frame, hide_index=True, key="fd-q-progress", height=min(300, 38 + 35 * len(frame)))
        after = status.get("after") or {}
        if "max_call_ms" in after:
            st.caption(f"{after.get('jobs', 0):,} job(s) in {after.get('elapsed_s', 0)} s; {after.get('calls')}"
                       f" Redis call(s), the longest {after.get('max_call_ms')} ms")

    panel()


def wait_for(store: Store, op_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The finished status of an op started from this panel (tests)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = audit.operation_status(store, op_id) or {}
        if status.get("state") not in (None, "running"):
            return status
        time.sleep(0.05)
    raise TimeoutError(op_id)
