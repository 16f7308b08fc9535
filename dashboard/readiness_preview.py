"""The preview and typed confirmation of a readiness run, like every disruptive action's (action_panel.py).

A readiness run is not read-only: it restarts one live instance (queue canary), drains one under load and sends
load steps through the load balancer. So "Run readiness now" first says exactly that, refuses while another
action holds the service, and starts only after the operator types the service name — or runs the
non-disruptive rules only, which needs no confirmation.
"""

from __future__ import annotations

import streamlit as st

from actions.auth import Principal
from actions.proving import testruns
from core.config import FleetConfig
from core.store import Store
from dashboard.action_panel import describe_lock

DISRUPTIVE_STEPS = (
    "restart one live instance while a canary job runs (queue workers survive a restart)",
    "drain one instance under load and count failed requests (zero-downtime drain)",
    "load steps through the load balancer to find one instance's saturation (N+1 capacity)",
)


def render(config: FleetConfig, store: Store, principal: Principal, service: str, pending_key: str) -> None:
    st.info(f"**Dry run — readiness on {service}:** every rule is measured against the live fleet. "
            "The disruptive rules act on it through the audited actions, under your name:",
            icon=":material/fact_check:")
    st.markdown("\n".join(f"{number}. {step}" for number, step in enumerate(DISRUPTIVE_STEPS, 1)))
    busy = describe_lock(store, service)
    if busy:
        st.warning(f"{service} is {busy}; run readiness once it is done.", icon=":material/lock_clock:")
    cancel, gentle, confirm = st.columns(3)
    if cancel.button("Cancel", key="fd-readiness-cancel"):
        st.session_state.pop(pending_key, None)
        st.rerun()
    typed = confirm.text_input(f"Type **{service}** to confirm", key="fd-readiness-typed")
    started = None
    if gentle.button("Run without disruptive rules", key="fd-readiness-gentle", disabled=bool(busy)):
        started = testruns.start(config, store, principal, "readiness", {"rules": "all", "disruptive": False})
    if confirm.button("Run readiness", key="fd-readiness-run", type="primary",
                      disabled=bool(busy) or typed.strip() != service):
        started = testruns.start(config, store, principal, "readiness", {"rules": "all", "disruptive": True})
    if started:
        st.session_state.pop(pending_key, None)
        st.toast(f"readiness run {started} started; it appears here when its first rule is measured")
