"""Who may do what: roles viewer < operator < admin, one permission table, argon2 password hashes.

The CLI and the dashboard both ask `require(principal, action)` before acting, so the rules live here once.
The CLI trusts the OS user (whoever can run the CLI can already read the config); the dashboard authenticates
with a password (argon2 hash in the config) or OIDC, where Streamlit proves the identity and we map it to a role.
"""

from __future__ import annotations

import getpass
from typing import Literal, NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.config import ROLE_RANK, AuthConfig, Role

Via = Literal["cli", "dashboard", "oidc", "autoscaler"]  # autoscaler: the policy loop (actions/autoscale.py)

# The minimum role each action needs. Anything that changes the fleet needs an operator; what can take the fleet
# outside its safety bounds (force past preflight checks, change the bounds themselves) needs an admin.
PERMISSIONS: dict[str, Role] = {
    "view": "viewer",
    "scale": "operator",  # within [min_replicas, max_replicas]
    "drain": "operator",
    "undrain": "operator",
    "restart": "operator",
    "rolling_restart": "operator",
    "start_test": "operator",  # load, readiness and scaling tests send traffic to the fleet
    "stop_test": "operator",
    "silence": "operator",  # mute alert notifications for a while (create or expire a silence)
    "force": "admin",  # skip a failed preflight (min healthy, capacity, lock)
    "change_limits": "admin",  # min/max replicas, min_healthy, rate limits
    "queue_act": "operator",  # retry, remove, promote, pause, resume, clean, drain (actions/queue_ops.py)
    "queue_obliterate": "admin",  # destroy a whole queue
}

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class Principal(NamedTuple):
    name: str
    role: Role
    via: Via


class PermissionDenied(Exception):
    """The principal's role is below what the action needs; the message says who, what, and which role."""

    def __init__(self, principal: Principal, action: str, needed: Role) -> None:
        super().__init__(
            f"{principal.name} ({principal.role}, via {principal.via}) may not {action.replace('_', ' ')}:"
            f" it needs the {needed} role"
        )
        self.principal = principal
        self.action = action
        self.needed = needed


def role_at_least(role: str, minimum: str) -> bool:
    return ROLE_RANK[role] >= ROLE_RANK[minimum]


def allowed(principal: Principal, action: str) -> bool:
    if action not in PERMISSIONS:
        raise KeyError(f"unknown action '{action}'; known: {', '.join(sorted(PERMISSIONS))}")
    return role_at_least(principal.role, PERMISSIONS[action])


def require(principal: Principal, action: str) -> None:
    """Returns when `principal` may do `action`; raises PermissionDenied otherwise (KeyError for a typo)."""
    if not allowed(principal, action):
        raise PermissionDenied(principal, action, PERMISSIONS[action])


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("refusing to hash an empty password")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True only when `password` matches; a malformed hash is a mismatch, not a crash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# a valid hash of a random string: verifying against it when the user is unknown takes as long as for a known
# user, so response times don't reveal which user names exist
_DUMMY_HASH = _hasher.hash("fleetdeck-no-such-user")


def authenticate(auth: AuthConfig, user: str, password: str) -> Principal | None:
    """The dashboard principal for a user/password pair, or None when they don't match."""
    for entry in auth.users:
        if entry.name == user:
            if entry.password_hash and verify_password(entry.password_hash, password):
                return Principal(entry.name, entry.role, "dashboard")
            return None
    verify_password(_DUMMY_HASH, password)
    return None


def cli_principal(auth: AuthConfig, os_user: str | None = None) -> Principal:
    """The CLI principal of the OS user running it: their cli_roles entry, else the '*' entry, else viewer."""
    name = os_user or getpass.getuser()
    role = auth.cli_roles.get(name) or auth.cli_roles.get("*") or "viewer"
    return Principal(name, role, "cli")


def oidc_principal(auth: AuthConfig, email: str) -> Principal:
    """An identity proven by OIDC (st.user.email): the role of the users entry with that name, else viewer."""
    wanted = email.strip().lower()
    for entry in auth.users:
        if entry.name.strip().lower() == wanted:
            return Principal(email, entry.role, "oidc")
    return Principal(email, "viewer", "oidc")
