"""fleetdeck dashboard: `streamlit run dashboard/app.py` (config from FLEETDECK_CONFIG, else ./fleet.yaml).

The router: page list, shared sidebar (time range, auto-refresh), embedded collectors. Pages live in app_pages/
(not pages/, which would switch on Streamlit's legacy multipage discovery).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root: the packages come from
# the editable install (`make venv`).
from dashboard import auth_gate, fault_panels, ui

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"


def main() -> None:
    # An emoji icon: the browser draws it from a data: URL. A ":material/...:" page icon makes Streamlit point the
    # favicon at fonts.gstatic.com, and an ops console must work on an air-gapped network (docs/security.md).
    # (Icons inside the page use the Material Symbols font Streamlit serves itself.)
    st.set_page_config(page_title="fleetdeck", page_icon="🛰️", layout="wide")
    page = st.navigation(
        {
            "Fleet": [
                st.Page(PAGES_DIR / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
                st.Page(PAGES_DIR / "instances.py", title="Instances", icon=":material/dns:"),
                st.Page(PAGES_DIR / "alerts.py", title="Alerts", icon=":material/notifications_active:"),
                st.Page(PAGES_DIR / "load_balancer.py", title="Load balancer", icon=":material/alt_route:"),
            ],
            "Backing services": [
                st.Page(PAGES_DIR / "queues.py", title="Queues", icon=":material/queue:"),
                st.Page(PAGES_DIR / "database.py", title="Database", icon=":material/database:"),
                st.Page(PAGES_DIR / "redis.py", title="Redis", icon=":material/memory:"),
            ],
            "Operate": [
                st.Page(PAGES_DIR / "scaling_tests.py", title="Scaling tests", icon=":material/speed:"),
                st.Page(PAGES_DIR / "audit.py", title="Audit log", icon=":material/history:"),
            ],
            "Readiness": [
                st.Page(PAGES_DIR / "scorecard.py", title="Scorecard", icon=":material/verified:"),
            ],
        }
    )
    config = ui.fleet_config()  # a broken config stops here with the file and key named
    auth_gate.demo_password_banner(config)
    if auth_gate.sidebar_identity(config) is None:
        # auth.anonymous is none (the default off loopback): nothing but the login until somebody logs in
        st.title("fleetdeck")
        if auth_gate.login_gate(config, allow_anonymous=False) is None:
            st.stop()
    ui.sidebar_controls()
    ui.start_embedded_collectors()
    # on every page, refreshed with the live panels: fleetdeck's own collector/store health, then dependency vs
    # instance outage (dashboard/fault_panels.py)
    ui.live(fault_panels.render_fleet_faults)(config, ui.store(), ui.stale_after(config, "instance"))
    page.run()


main()
