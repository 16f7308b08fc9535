"""The dashboard as an ASGI app: dashboard/app.py plus the two session-cookie routes (dashboard/session_cookie.py).

`streamlit run dashboard/server.py` (what `fleetdeck up` runs) finds `app` and serves the same pages as
`streamlit run dashboard/app.py`, with sessions that survive a browser reload.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import session_cookie  # noqa: E402

session_cookie.ROUTES_MOUNTED = True
app = st.App(str(Path(__file__).resolve().parent / "app.py"), routes=session_cookie.routes())
