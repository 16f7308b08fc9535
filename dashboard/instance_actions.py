"""The action buttons of the Instances and Load-balancer pages (drain, undrain, restart; scale, rolling restart).

Thin glue between the pages and dashboard/action_panel.py: it picks who is acting (the signed-in principal, else a
read-only viewer) and hands the actions the uncached store. The actions layer checks the role again itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from dashboard import action_panel, auth_gate, ui
from dashboard.safe_text import md

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from core.config import FleetConfig
    from core.store import StoreView


# the expanders that hold the action widgets on the Instances page (their open state, in session state)
SERVICE_ACTIONS_KEY = "fd_service_actions"
INSTANCE_ACTIONS_KEY = "fd_instance_actions"


def _principal() -> auth_gate.Principal:
    return auth_gate.current_principal() or auth_gate.ANONYMOUS


def render_instance_actions(slot: DeltaGenerator, config: FleetConfig, store: StoreView, instance_target: str) -> None:
    """Draw the action buttons for `instance_target` ("<service>/<instance_id>") into `slot`."""
    del store  # the page's store reads through a cache; actions need fresh reads
    service = instance_target.partition("/")[0]
    if service not in {s.name for s in config.services}:
        with slot:
            st.caption("A static target: fleetdeck does not run it, so it has no actions.")
        return
    with slot:
        action_panel.render_instance_actions(config, ui.live_store(), _principal(), instance_target)


def render_instance_actions_on_demand(slot: DeltaGenerator, config: FleetConfig, store: StoreView,
                                      instance_target: str) -> None:
    """The action buttons for `instance_target` in an expander drawn only while it is open. One key and one
    label for every instance (a widget's identity includes its label), so it stays open while the operator moves
    from one instance to the next."""
    with slot:
        box = st.expander("Drain, undrain or restart this instance", icon=":material/build:",
                          key=INSTANCE_ACTIONS_KEY, on_change="rerun")
    if box.open:
        render_instance_actions(box, config, store, instance_target)


def render_service_actions(config: FleetConfig) -> None:
    """Scale and rolling restart for every service, one expander each, drawn only while it is open: a closed
    expander costs the browser nothing but its label (the widgets held the page's first chart back)."""
    for service in config.services:
        box = st.expander(f"Scale or roll **{md(service.name)}**", icon=":material/tune:",
                          key=f"{SERVICE_ACTIONS_KEY}-{service.name}", on_change="rerun")
        if box.open:
            with box:
                action_panel.render_service_actions(config, ui.live_store(), _principal(), service.name)
