"""The action buttons of the dashboard: drain / undrain / restart an instance, scale / rolling-restart a service,
and (admin) change a service's replica limits.

Flow: button → dry-run preview (`plan_*`: affected replicas, upstream diff, refusal reason) → typed confirmation
(the operator types the instance or service name) → the action runs in a background thread of this Streamlit
process with a pre-made op id. Its progress is written to the store (actions/audit.py), and the live panel reads
it back from there — so any other browser session (or a CLI user) sees the same action progressing, and a page
reload loses nothing. Buttons are disabled for roles that may not act, but the actions layer checks the role
again: this UI is a convenience, not the protection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from actions import audit
from actions.auth import Principal, allowed
from actions.backends import port_capacity
from actions.operations import (
    DRAIN,
    OPERATIONS,
    PERMISSION_OF,
    RESTART,
    ROLLING_RESTART,
    SCALE,
    SET_LIMITS,
    UNDRAIN,
    FleetActions,
    Plan,
    limits_of,
    new_op_id,
    operations_for,
    permission_of,
)
from core.config import FleetConfig, ServiceConfig
from core.store import Store, StoreView
from dashboard.safe_text import md, md_code

# The button icon of each operation (the operations themselves come from actions.operations.OPERATIONS).
ICONS = {DRAIN: ":material/pause_circle:", UNDRAIN: ":material/play_circle:", RESTART: ":material/restart_alt:",
         SCALE: ":material/tune:", ROLLING_RESTART: ":material/autorenew:", SET_LIMITS: ":material/straighten:"}
PENDING_KEY = "fd_pending_action"  # {"kind", "target", "params"} of the action being previewed in this session
STARTED_KEY = "fd_started_action"  # service → {"op_id", "action", "target", "ts"} of the action this session started
# how long the "starting…" line replaces the previous result before the started op shows up in the store
STARTED_GRACE_S = 60.0
LIVE_REFRESH_S = 1.0
IDLE_REFRESH_S = 10.0  # no operation running: another session's new action shows within this
# Threads running actions in this process, by op id: kept so they are not garbage collected and so tests can join.
RUNNING: dict[str, threading.Thread] = {}


def start_in_background(call: Callable[[], Any], op_id: str) -> threading.Thread:
    """Run an action off the Streamlit script thread: the page returns at once, progress comes from the store."""
    thread = threading.Thread(target=call, name=f"fleetdeck-action-{op_id}", daemon=True)
    RUNNING[op_id] = thread
    thread.start()
    for finished in [key for key, value in RUNNING.items() if not value.is_alive()]:
        RUNNING.pop(finished, None)
    return thread


def plan_frame(plan: Plan) -> pd.DataFrame:
    """The upstream before/after side by side, one row per address (for the preview table)."""
    before = {s["address"]: s for s in plan.upstream_before}
    after = {s["address"]: s for s in plan.upstream_after}
    rows = []
    for address in list(before) + [a for a in after if a not in before]:
        old, new = before.get(address), after.get(address)
        rows.append({
            "address": address,
            "instance": (new or old or {}).get("instance_id", ""),
            "before": old["state"] if old else "—",
            "after": new["state"] if new else "removed",
            "changes": "yes" if (old or {}).get("state") != (new or {}).get("state") else "",
        })
    return pd.DataFrame(rows, columns=["address", "instance", "before", "after", "changes"])


def progress_frame(store: Store, op_id: str) -> pd.DataFrame:
    lines = audit.progress_events(store, op_id)
    return pd.DataFrame(
        [{"time": datetime.fromtimestamp(line["ts"]).strftime("%H:%M:%S.%f")[:-3], "step": line.get("step", ""),
          "message": line["message"]} for line in lines],
        columns=["time", "step", "message"],
    )


def _service_of(config: FleetConfig, instance_id: str) -> tuple[str, str]:
    service, _, instance = instance_id.rpartition("/")
    if service:
        return service, instance
    stem = instance.rpartition("-")[0]
    names = [s.name for s in config.services]
    return (stem if stem in names else (names[0] if names else "")), instance


def describe_lock(store: StoreView, service: str) -> str | None:
    for lock in store.locks():
        if lock.get("service") == service and float(lock.get("expires_at") or 0) > time.time():
            since = datetime.fromtimestamp(float(lock["acquired_at"])).strftime("%H:%M:%S")
            return f"busy: {lock['action']} by {lock['who']} since {since} (op {lock['op_id']})"
    return None


def _live_status(store: Store, service: str, key: str) -> None:
    """The latest operation on `service` and its progress, redrawn from the store: every second while one runs
    (or this session just started one), every IDLE_REFRESH_S otherwise — an idle page was rerunning this panel
    every second per service and per instance, which costs every open browser a request a second."""
    last = audit.last_operation(store, service) or {}
    started = (st.session_state.get(STARTED_KEY) or {}).get(service)
    active = (last.get("state") == "running" or describe_lock(store, service) is not None
              or (started is not None and time.time() - float(started["ts"]) < STARTED_GRACE_S))

    @st.fragment(run_every=LIVE_REFRESH_S if active else IDLE_REFRESH_S)
    def panel() -> None:
        busy = describe_lock(store, service)
        status = audit.last_operation(store, service)
        if busy:
            st.info(md(busy), icon=":material/hourglass_top:")
        started = (st.session_state.get(STARTED_KEY) or {}).get(service)
        if (started and time.time() - float(started["ts"]) < STARTED_GRACE_S
                and (not status or status.get("op_id") != started["op_id"])):
            # the thread has not written its first status yet: the previous result must not stand in for it
            st.info(f"**{md(started['action'])}** {md(started['target'])} — **starting** (op {md(started['op_id'])})",
                    icon=":material/hourglass_top:")
            return
        if not status:
            st.caption(f"No action has run on {md(service)} yet.")
            return
        state = str(status.get("state"))
        headline = (f"**{md(status.get('action'))}** {md(status.get('target'))} by {md(status.get('who'))} "
                    f"({md(status.get('role'))}, {md(status.get('via'))}) — **{md(state)}**:"
                    f" {md(status.get('message'))}")
        {"running": st.info, "ok": st.success, "noop": st.success, "failed": st.error,
         "refused": st.warning}.get(state, st.info)(headline)
        frame = progress_frame(store, str(status["op_id"]))
        if not frame.empty:
            st.dataframe(frame, hide_index=True, key=f"{key}-progress", height=min(300, 38 + 35 * len(frame)))

    panel()


def _preview_and_confirm(plan: Plan, key: str, run: Callable[[str], Callable[[], Any]], store: Store,
                         service: str) -> None:
    """Show the dry-run plan; when allowed and the service is not busy, ask for the typed name and start the action.

    The busy check is the same lock the action takes: a plan previewed while a drain holds the service is shown,
    but its Run button stays disabled (the action would be refused anyway).
    """
    (st.info if plan.allowed else st.error)(f"**Dry run — {md(plan.action)} {md(plan.target)}:** {md(plan.reason)}")
    if plan.affected:
        st.markdown("Affected replicas: " + ", ".join(f"`{md_code(name)}`" for name in plan.affected))
    if plan.steps:
        st.markdown("\n".join(f"{number}. {md(step)}" for number, step in enumerate(plan.steps, 1)))
    if plan.upstream_before or plan.upstream_after:
        st.dataframe(plan_frame(plan), hide_index=True, key=f"{key}-plan")
        if plan.upstream_diff:
            st.code("\n".join(plan.upstream_diff), language="diff")
    cancel, confirm = st.columns(2)
    if cancel.button("Cancel", key=f"{key}-cancel"):
        st.session_state.pop(PENDING_KEY, None)
        st.rerun()
    if not plan.allowed or plan.noop:
        return
    busy = describe_lock(store, service)
    if busy:
        st.warning(f"{service} is {busy}; run this once it is done.", icon=":material/lock_clock:")
    typed = ""
    if plan.disruptive:
        typed = confirm.text_input(f"Type **{plan.confirm_text}** to confirm", key=f"{key}-typed")
    ready = ((not plan.disruptive) or typed.strip() == plan.confirm_text) and not busy
    if confirm.button(f"Run {plan.action}", key=f"{key}-run", type="primary", disabled=not ready):
        op_id = new_op_id()
        started = dict(st.session_state.get(STARTED_KEY) or {})
        started[service] = {"op_id": op_id, "action": plan.action, "target": plan.target, "ts": time.time()}
        st.session_state[STARTED_KEY] = started
        start_in_background(run(op_id), op_id)
        st.session_state.pop(PENDING_KEY, None)
        st.toast(f"{md(plan.action)} {md(plan.target)} started (op {md(op_id)})")
        st.rerun()


def render_instance_actions(config: FleetConfig, store: Store, principal: Principal, instance_id: str) -> None:
    """Drain / undrain / restart buttons for one instance ("web-2" or "web/web-2"), preview, confirm, live status."""
    service, instance = _service_of(config, instance_id)
    target = f"{service}/{instance}"
    key = f"fd-act-{service}-{instance}"
    columns = st.columns(4)
    for column, operation in zip(columns, operations_for("instance"), strict=False):
        may = allowed(principal, permission_of(operation))
        if column.button(operation.label, key=f"{key}-{operation.name}", icon=ICONS[operation.name], disabled=not may,
                         help=None if may else f"needs the operator role (you are {principal.role})"):
            st.session_state[PENDING_KEY] = {"kind": operation.name, "target": target, "params": {}}
    on_timeout = columns[3].selectbox(
        "On drain timeout", ["abort", "force"], key=f"{key}-on-timeout",
        help="abort: back in rotation; force: take it down anyway (admin only)",
        disabled=not allowed(principal, "force"),
    )
    _pending(config, store, principal, target, key, {"on_timeout": on_timeout})
    _live_status(store, service, key)


def _pending(config: FleetConfig, store: Store, principal: Principal, target: str, key: str,
             choices: dict[str, Any]) -> None:
    """The operation this session asked for on `target`, if any: its plan, the confirmation and the start.

    `choices` are values the page offers for any operation (the drain's on-timeout choice); each operation takes
    those among its `options`.
    """
    pending = st.session_state.get(PENDING_KEY)
    if not pending or pending.get("target") != target:
        return
    operation = OPERATIONS[pending["kind"]]
    params = {**{name: value for name, value in choices.items() if name in operation.options}, **pending["params"]}
    plan = operation.plan(FleetActions(config, store), target, params, principal)

    def run(op_id: str) -> Callable[[], Any]:
        return lambda: operation.execute(FleetActions(config, store), principal, target, params, op_id)

    _preview_and_confirm(plan, f"{key}-{operation.name}", run, store, target.partition("/")[0])


def render_service_actions(config: FleetConfig, store: Store, principal: Principal, service: str) -> None:
    """Scale (within the effective [min, max]), rolling restart and (admin) limits for one service, with preview,
    confirm and live status."""
    key = f"fd-svc-{service}"
    try:
        service_config = config.service(service)
    except KeyError as error:
        st.error(str(error.args[0]))
        return
    limits = limits_of(store, service_config)
    low, high = limits.min_replicas, limits.max_replicas
    left, middle, right = st.columns([2, 1, 1])
    wanted = left.number_input(
        # the bounds are part of the key: when an admin changes the limits the widget starts afresh instead of
        # keeping a value now outside them
        f"Replicas ({low}–{high})", key=f"{key}-n-{low}-{high}", min_value=low, max_value=high,
        value=min(max(service_config.replicas, low), high), step=1, help=f"limits {limits.describe()}",
    )
    if middle.button("Scale", key=f"{key}-scale", icon=ICONS[SCALE], disabled=not allowed(principal, SCALE)):
        st.session_state[PENDING_KEY] = {"kind": SCALE, "target": service, "params": {"replicas": int(wanted)}}
    if right.button("Rolling restart", key=f"{key}-rolling", icon=ICONS[ROLLING_RESTART],
                    disabled=not allowed(principal, ROLLING_RESTART)):
        st.session_state[PENDING_KEY] = {"kind": ROLLING_RESTART, "target": service, "params": {}}
    _limits_control(store, principal, service_config, key)
    _pending(config, store, principal, service, key, {})
    _live_status(store, service, key)


def _limits_control(store: Store, principal: Principal, service_config: ServiceConfig, key: str) -> None:
    """Min/max inputs and a "Limits" button (admin only; others see the limits and where they come from)."""
    limits = limits_of(store, service_config)
    may = allowed(principal, PERMISSION_OF[SET_LIMITS])
    no = None if may else f"needs the admin role (you are {principal.role})"
    # the port range is the hard ceiling of the local backend; other backends keep the config's max as the UI cap
    ceiling = port_capacity(service_config) or max(service_config.max_replicas, limits.max_replicas)
    low_col, high_col, button_col, note_col = st.columns([1, 1, 1, 1])
    low = low_col.number_input("Min replicas", key=f"{key}-lim-min", min_value=0, max_value=ceiling,
                               value=limits.min_replicas, step=1, disabled=not may, help=no)
    high = high_col.number_input("Max replicas", key=f"{key}-lim-max", min_value=1, max_value=ceiling,
                                 value=limits.max_replicas, step=1, disabled=not may, help=no)
    if button_col.button("Limits", key=f"{key}-limits", icon=ICONS[SET_LIMITS], disabled=not may, help=no):
        st.session_state[PENDING_KEY] = {"kind": SET_LIMITS, "target": service_config.name,
                                         "params": {"min_replicas": int(low), "max_replicas": int(high)}}
    note_col.caption(f"Limits \\[{limits.min_replicas}, {limits.max_replicas}\\]: {md(limits.describe())}")
