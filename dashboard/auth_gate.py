"""Who is using the dashboard: a login form for the local users of the config, or st.login when auth.oidc is set.

The Principal is kept in `st.session_state[PRINCIPAL_KEY]`; the actions layer checks its role again on every
action, so hiding a button is a convenience, never the protection. Visitors who have not logged in see what
`auth.anonymous` allows (actions.auth.anonymous_role: by default read-only while the dashboard binds loopback,
nothing otherwise). Login attempts are throttled and audited by actions.auth.login (docs/security.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import streamlit as st

from actions.auth import LoginThrottle, Principal, anonymous_role, demo_password_users, login, oidc_principal
from core.config import AuthConfig, FleetConfig
from dashboard.safe_text import md

PRINCIPAL_KEY = "fd_principal"
ANONYMOUS = Principal("anonymous", "viewer", "dashboard")


_throttles: dict[tuple[object, ...], LoginThrottle] = {}
_throttles_lock = threading.Lock()


def _throttle(auth: AuthConfig) -> LoginThrottle:
    """One throttle per dashboard process (and per throttle settings), shared by every browser session."""
    key = (auth.login_free_failures, auth.login_max_delay_s, auth.login_lockout_failures, auth.login_lockout_s)
    with _throttles_lock:
        if key not in _throttles:
            _throttles[key] = LoginThrottle.from_config(auth)
        return _throttles[key]


def client_address() -> str:
    """The browser's address as Streamlit saw it ("unknown" in tests and behind some proxies)."""
    try:
        return str(st.context.ip_address or "unknown")
    except Exception:
        return "unknown"


def anonymous_principal(config: FleetConfig) -> Principal | None:
    """The principal of a visitor who has not logged in, or None when they may see nothing."""
    address = st.get_option("server.address") or "0.0.0.0"  # unset: Streamlit listens on every interface
    role = anonymous_role(config.auth, [address])
    return None if role is None else Principal("anonymous", role, "dashboard")


def demo_password_banner(config: FleetConfig) -> None:
    """A loud banner on every page while a user's password is still the demo's (the user name)."""
    users = demo_password_users(config.auth)
    if users:
        st.error(f"**Demo passwords in use** for {md(', '.join(users))}: anyone who reads the README can log in."
                 " Set real hashes (`./fleetdeck hash-password`) before this dashboard is reachable by others.",
                 icon=":material/gpp_bad:")


def _record_login(config: FleetConfig, via: str) -> Callable[[str, bool, str, str], None]:
    def record(user: str, ok: bool, reason: str, role: str) -> None:
        from actions.guarded import record_login
        from dashboard import ui

        # the store being down must not lock everybody out; the throttle still counts the attempt
        with contextlib.suppress(Exception):
            record_login(ui.live_store(), user, via, client_address(), ok, reason, role)

    return record


def current_principal() -> Principal | None:
    value = st.session_state.get(PRINCIPAL_KEY)
    return Principal(*value) if value else None


def _session_hook(config: FleetConfig) -> None:
    """Session cookie hook (dashboard/session_cookie.py): restore the principal after a reload, end an idle one."""
    from dashboard import session_cookie, ui

    if st.session_state.get(PRINCIPAL_KEY) and session_cookie.idle_expired(config):
        logout(config)
    elif not st.session_state.get(PRINCIPAL_KEY):
        restored = session_cookie.restore(config, ui.live_store())
        if restored is not None:
            _remember(restored)
            session_cookie.idle_expired(config)  # starts the idle clock of this Streamlit session


def _remember(principal: Principal) -> None:
    st.session_state[PRINCIPAL_KEY] = tuple(principal)  # plain tuple: small and picklable session state


def _oidc_ready() -> bool:
    """st.login needs Streamlit's [auth] secrets; without them it raises, so check first."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def logout(config: FleetConfig | None = None) -> None:
    principal = current_principal()
    if config is not None:
        from dashboard import session_cookie, ui

        session_cookie.on_logout(config, ui.live_store())  # invalidated server-side, cookie cleared next run
    st.session_state.pop(PRINCIPAL_KEY, None)
    if principal is not None and principal.via == "oidc":
        st.logout()


def login_gate(config: FleetConfig, *, allow_anonymous: bool = True) -> Principal | None:
    """The signed-in principal; otherwise draws the login choices and returns the anonymous principal (when
    `allow_anonymous` and auth.anonymous allow one) or None.
    """
    principal = current_principal()
    if principal is not None:
        return principal
    auth = config.auth
    if auth.oidc and _oidc_ready():
        user = st.user
        if getattr(user, "is_logged_in", False):
            claims = user.to_dict() if hasattr(user, "to_dict") else dict(user)
            principal = oidc_principal(auth, claims)
            _record_login(config, "oidc")(str(claims.get("email") or "-"), principal is not None,
                                          "" if principal else "no verified email with a role",
                                          principal.role if principal else "-")
            if principal is None:
                st.error("Your single sign-on identity has no access here (a verified email that auth.users names"
                         " is needed).")
                st.button("Log out of single sign-on", on_click=st.logout)
            else:
                _remember(principal)
                return principal
        else:
            st.button("Log in with single sign-on", on_click=st.login, icon=":material/login:")
    elif auth.oidc:
        st.warning("auth.oidc is set but Streamlit has no [auth] secrets: single sign-on is unavailable.")
    local_users = [user for user in auth.users if user.password_hash]
    if local_users:
        with st.form("fd_login", clear_on_submit=False):
            st.markdown("**Log in**")
            name = st.text_input("User")
            password = st.text_input("Password", type="password")
            submitted = st.form_submit_button("Log in", icon=":material/lock_open:")
        if submitted:
            outcome = login(auth, _throttle(auth), name, password, client_address(), _record_login(config, "dashboard"))
            if outcome.principal is None:
                st.error(outcome.message)
            else:
                _remember(outcome.principal)
                from dashboard import session_cookie, ui

                session_cookie.after_login(ui.live_store(), outcome.principal)  # the cookie that survives a reload
                st.rerun()
    elif not auth.oidc:
        st.caption("No dashboard users are configured (auth.users).")
    return anonymous_principal(config) if allow_anonymous else None


def sidebar_identity(config: FleetConfig) -> Principal | None:
    """A compact identity box for the sidebar: who am I, my role, log out; logs in when nobody is.

    None: nobody is logged in and anonymous visitors may see nothing (the router then shows only the login).
    """
    from dashboard import session_cookie

    _session_hook(config)
    session_cookie.pending_redirect()
    with st.sidebar:
        principal = current_principal()
        if principal is None:
            if anonymous_principal(config) is None:
                return None  # the router draws the login form in the main area instead
            with st.expander("Log in", icon=":material/person:"):
                return login_gate(config)
        st.caption(f"Signed in as **{md(principal.name)}** ({md(principal.role)}, via {md(principal.via)})")
        st.button("Log out", on_click=logout, args=(config,), key="fd_logout", icon=":material/logout:")
        return principal
