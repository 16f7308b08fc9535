"""Who is using the dashboard: a login form for the local users of the config, or st.login when auth.oidc is set.

The Principal is kept in `st.session_state[PRINCIPAL_KEY]`; the actions layer checks its role again on every
action, so hiding a button is a convenience, never the protection. With no users configured and no OIDC, the
dashboard is read-only (a `viewer` principal named "anonymous").
"""

from __future__ import annotations

import streamlit as st

from actions.auth import Principal, authenticate, oidc_principal
from core.config import FleetConfig

PRINCIPAL_KEY = "fd_principal"
ANONYMOUS = Principal("anonymous", "viewer", "dashboard")


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
    """The signed-in principal; otherwise draws the login choices and returns None (or ANONYMOUS read-only).

    Call it at the top of a page or the router. `allow_anonymous` lets people read before they log in.
    """
    principal = current_principal()
    if principal is not None:
        return principal
    auth = config.auth
    if auth.oidc and _oidc_ready():
        user = st.user
        if getattr(user, "is_logged_in", False):
            email = str(user.get("email") or user.get("name") or "unknown")
            principal = oidc_principal(auth, email)
            _remember(principal)
            return principal
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
            found = authenticate(auth, name.strip(), password)
            if found is None:
                st.error("Unknown user or wrong password.")
            else:
                _remember(found)
                from dashboard import session_cookie, ui

                session_cookie.after_login(ui.live_store(), found)  # the cookie that survives a reload
                st.rerun()
    elif not auth.oidc:
        st.caption("No dashboard users are configured (auth.users): the dashboard is read-only.")
    return ANONYMOUS if allow_anonymous else None


def sidebar_identity(config: FleetConfig) -> Principal:
    """A compact identity box for the sidebar: who am I, my role, log out; logs in when nobody is."""
    from dashboard import session_cookie

    _session_hook(config)
    session_cookie.pending_redirect()
    with st.sidebar:
        principal = current_principal()
        if principal is None:
            with st.expander("Log in", icon=":material/person:"):
                principal = login_gate(config) or ANONYMOUS
            return principal
        st.caption(f"Signed in as **{principal.name}** ({principal.role}, via {principal.via})")
        st.button("Log out", on_click=logout, args=(config,), key="fd_logout", icon=":material/logout:")
        return principal
