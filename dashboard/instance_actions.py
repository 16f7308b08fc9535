"""ACTION HOOK for the Instances page: the drain / restart / stop / scale buttons of the actions issue go here.

The Instances page calls `render_instance_actions` with an empty container placed right under the selected
instance's header; today it draws nothing. Replace the body (keep the signature) to add the buttons; the page
needs no change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from core.config import FleetConfig
    from core.store import Store


def render_instance_actions(slot: DeltaGenerator, config: FleetConfig, store: Store, instance_target: str) -> None:
    """Draw the action buttons for `instance_target` ("<service>/<instance_id>") into `slot`."""
    del slot, config, store, instance_target  # nothing yet: the actions issue fills this in
