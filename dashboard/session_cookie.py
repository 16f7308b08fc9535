"""Dashboard sessions that survive a browser reload: a signed, expiring, HttpOnly cookie backed by a server-side
record, so logging out (or the idle timeout) invalidates it on the server, not only in the browser.

Streamlit's script cannot set a cookie (it has no HTTP response), so two small HTTP routes do, mounted by
dashboard/server.py (`st.App(..., routes=session_cookie.routes())`):

1. After a successful login the page stores a one-time **ticket** (30 s, single use) and sends the browser to
   `/__fleetdeck/session?ticket=…&next=<the page>`. The route swaps the ticket for a session: a random token kept
   server-side (store KV `session:<sha256(token)>`: who, role, created, last seen) and a cookie
   `fd_session=<token>.<HMAC-SHA256(token)>`, HttpOnly, SameSite=Lax, Secure behind HTTPS, then redirects back.
2. Every new Streamlit session (a reload, a new tab) reads the cookie (`st.context.cookies`), checks the signature,
   then the record: idle longer than `dashboard.session_idle_timeout_s`, or older than
   `dashboard.session_max_age_s`, and it is deleted and ignored.
3. Logout deletes the record and sends the browser to `/__fleetdeck/logout`, which clears the cookie.

The HMAC key comes from `dashboard.session_secret` (e.g. `${FLEETDECK_SESSION_SECRET}`), else a random key made
once in `<state_dir>/session.key` (mode 0600). When the dashboard runs without the routes (`streamlit run
dashboard/app.py`, AppTest), sessions simply last as long as the Streamlit session, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from actions.auth import Principal
    from core.config import FleetConfig
    from core.store import Store

COOKIE = "fd_session"
SESSION_PATH = "/__fleetdeck/session"
LOGOUT_PATH = "/__fleetdeck/logout"
TICKET_TTL_S = 30.0
TOUCH_EVERY_S = 60.0  # last_seen is written at most this often per session (a rerun is not a store write)
MAX_COOKIE = 200
# set by dashboard/server.py when it mounts the routes: without them the page must not send anyone there
ROUTES_MOUNTED = False

_key_lock = threading.Lock()


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def session_key(token: str) -> str:
    return f"session:{_digest(token)}"


def ticket_key(ticket: str) -> str:
    return f"session-ticket:{_digest(ticket)}"


def secret_key(config: FleetConfig) -> bytes:
    configured = config.dashboard.session_secret
    if configured:
        return configured.encode()
    path = Path(config.state_path) / "session.key"
    with _key_lock:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(key)
            return key
        except FileExistsError:  # pragma: no cover - two processes raced to create it
            return path.read_bytes()


def sign(config: FleetConfig, token: str) -> str:
    mac = hmac.new(secret_key(config), token.encode(), hashlib.sha256).hexdigest()
    return f"{token}.{mac}"


def verify(config: FleetConfig, cookie: str | None) -> str | None:
    """The token of a well-formed cookie whose signature is ours; None otherwise (never raises)."""
    if not cookie or len(cookie) > MAX_COOKIE or "." not in cookie:
        return None
    token, _, mac = cookie.rpartition(".")
    expected = hmac.new(secret_key(config), token.encode(), hashlib.sha256).hexdigest()
    return token if hmac.compare_digest(mac, expected) else None


# ------------------------------------------------------------------------------------------ server-side records


def new_ticket(store: Store, principal: Principal, next_path: str, now: float | None = None) -> str:
    ticket = secrets.token_urlsafe(32)
    store.put_kv(ticket_key(ticket), {"principal": list(principal), "expires": (now or time.time()) + TICKET_TTL_S,
                                      "next": safe_next(next_path)})
    return ticket


def redeem_ticket(store: Store, ticket: str, now: float | None = None) -> dict[str, Any] | None:
    """The ticket's content once: it is deleted whatever happens; None when unknown or expired."""
    if not ticket or len(ticket) > MAX_COOKIE:
        return None
    key = ticket_key(ticket)
    found = store.get_kv(key)
    if found is None:
        return None
    store.delete_kv(key)
    return found if float(found.get("expires", 0)) >= (now or time.time()) else None


def create_session(store: Store, principal: Principal, now: float | None = None) -> str:
    moment = now or time.time()
    token = secrets.token_urlsafe(32)
    store.put_kv(session_key(token), {"principal": list(principal), "created": moment, "last_seen": moment})
    return token


def lookup(config: FleetConfig, store: Store, token: str, now: float | None = None) -> Principal | None:
    """The principal of a live session, sliding its idle timeout; an expired one is deleted."""

    moment = now or time.time()
    key = session_key(token)
    record = store.get_kv(key)
    if record is None:
        return None
    idle = moment - float(record.get("last_seen", 0))
    age = moment - float(record.get("created", 0))
    if idle > config.dashboard.session_idle_timeout_s or age > config.dashboard.session_max_age_s:
        store.delete_kv(key)
        return None
    if idle > TOUCH_EVERY_S:
        store.put_kv(key, {**record, "last_seen": moment})
    return principal_of(record.get("principal"))


def principal_of(value: object) -> Principal | None:
    """A stored [name, role, via] back to a Principal; None unless the role and channel are known words."""
    from typing import cast

    from actions.auth import Principal, Role, Via

    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    name, role, via = (str(part) for part in value)
    if not name or role not in ("viewer", "operator", "admin") or via not in ("cli", "dashboard", "oidc"):
        return None
    return Principal(name[:200], cast(Role, role), cast(Via, via))


def end_session(store: Store, token: str) -> None:
    store.delete_kv(session_key(token))


def safe_next(path: str) -> str:
    """Only a path on this site: "/instances?range=1 h", never "//evil.example" or "https://…"."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 2000:
        return "/"
    return path


# --------------------------------------------------------------------------------------------- HTTP routes


def _config_and_store() -> tuple[FleetConfig, Store]:
    from core.config import config_path, load_config
    from core.store import Store

    config = load_config(config_path())
    return config, _stores.setdefault(config.store_url, Store(config.store_url))


_stores: dict[str, Store] = {}


def _cookie_args(request: Request, config: FleetConfig) -> dict[str, Any]:
    return {"httponly": True, "samesite": "lax", "path": "/", "secure": request.url.scheme == "https",
            "max_age": int(config.dashboard.session_max_age_s)}


async def session_route(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse, RedirectResponse


    config, store = await run_in_threadpool(_config_and_store)
    found = await run_in_threadpool(redeem_ticket, store, request.query_params.get("ticket", ""))
    if found is None:
        return PlainTextResponse("This sign-in link expired; log in again.", status_code=400)
    principal = principal_of(found.get("principal"))
    if principal is None:
        return PlainTextResponse("This sign-in link is not valid; log in again.", status_code=400)
    token = await run_in_threadpool(create_session, store, principal)
    response = RedirectResponse(safe_next(str(found.get("next") or "/")), status_code=303)
    response.set_cookie(COOKIE, await run_in_threadpool(sign, config, token), **_cookie_args(request, config))
    response.headers["Cache-Control"] = "no-store"
    return response


async def logout_route(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import RedirectResponse

    config, store = await run_in_threadpool(_config_and_store)
    token = await run_in_threadpool(verify, config, request.cookies.get(COOKIE))
    if token:
        await run_in_threadpool(end_session, store, token)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
    response.headers["Cache-Control"] = "no-store"
    return response


def routes() -> list[Any]:
    from starlette.routing import Route

    return [Route(SESSION_PATH, session_route, methods=["GET"]), Route(LOGOUT_PATH, logout_route, methods=["GET"])]


def session_url(ticket: str, next_path: str) -> str:
    return f"{SESSION_PATH}?{urlencode({'ticket': ticket, 'next': safe_next(next_path)})}"


# ------------------------------------------------------------------------------------ the Streamlit side (hooks)

REDIRECT_KEY = "fd_session_redirect"  # a URL the next script run sends the browser to (cookie set / cleared)
ACTIVITY_KEY = "fd_session_last_activity"


def _current_path() -> str:
    from urllib.parse import urlsplit

    import streamlit as st

    try:
        parts = urlsplit(str(st.context.url or "/"))
        # st.context.url is the URL the session opened with; the pickers keep the view in st.query_params
        query = urlencode(st.query_params.to_dict()) or parts.query
    except Exception:
        return "/"
    return safe_next((parts.path or "/") + (f"?{query}" if query else ""))


def restore(config: FleetConfig, store: Store) -> Principal | None:
    """The principal of this browser's session cookie (a reload, a new tab), or None."""
    import streamlit as st

    try:
        cookie = st.context.cookies.get(COOKIE)
    except Exception:  # no browser context (AppTest, bare mode)
        return None
    token = verify(config, cookie)
    return lookup(config, store, token) if token else None


def idle_expired(config: FleetConfig, now: float | None = None) -> bool:
    """This Streamlit session was idle longer than the timeout (a tab left open overnight): log it out."""
    import streamlit as st

    moment = now or time.time()
    last = st.session_state.get(ACTIVITY_KEY)
    st.session_state[ACTIVITY_KEY] = moment
    return last is not None and moment - float(last) > config.dashboard.session_idle_timeout_s


def after_login(store: Store, principal: Principal) -> None:
    """Queue the trip through /__fleetdeck/session that sets the cookie (only when the route is mounted)."""
    import streamlit as st

    if ROUTES_MOUNTED:
        st.session_state[REDIRECT_KEY] = session_url(new_ticket(store, principal, _current_path()), _current_path())


def on_logout(config: FleetConfig, store: Store) -> None:
    """Invalidate the server-side session now, and queue the trip that clears the cookie."""
    import streamlit as st

    try:
        token = verify(config, st.context.cookies.get(COOKIE))
    except Exception:
        token = None
    if token:
        end_session(store, token)
    st.session_state.pop(ACTIVITY_KEY, None)
    if ROUTES_MOUNTED:
        st.session_state[REDIRECT_KEY] = LOGOUT_PATH


def pending_redirect() -> None:
    """Send the browser where a login/logout queued it (one script tag; the URL is ours, JSON-escaped)."""
    import json

    import streamlit as st

    url = st.session_state.pop(REDIRECT_KEY, None)
    if url:
        st.html(f"<script>window.location.replace({json.dumps(url)});</script>", unsafe_allow_javascript=True)
