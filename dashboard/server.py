"""The dashboard as an ASGI app: dashboard/app.py plus the two session-cookie routes (dashboard/session_cookie.py).

`streamlit run dashboard/server.py` (what `fleetdeck up` runs) finds `app` and serves the same pages as
`streamlit run dashboard/app.py`, with sessions that survive a browser reload.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import session_cookie  # the package comes from the editable install (`make venv`)

session_cookie.ROUTES_MOUNTED = True
app = st.App(str(Path(__file__).resolve().parent / "app.py"), routes=session_cookie.routes())
