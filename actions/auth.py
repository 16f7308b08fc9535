"""Who may do what: roles viewer < operator < admin, one permission table, argon2 password hashes.

The CLI and the dashboard both ask `require(principal, action)` before acting, so the rules live here once.
The CLI trusts the OS user (whoever can run the CLI can already read the config); the dashboard authenticates
with a password (argon2 hash in the config) or OIDC, where Streamlit proves the identity and we map it to a role.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

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
    "fleet_up": "operator",  # `fleetdeck up`: starts what the config describes
    # `fleetdeck down` stops every replica, nginx and the dashboard: below min_healthy, like force
    "fleet_down": "admin",
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


def effective_os_user() -> str:
    """The name of the effective uid. Not $LOGNAME/$USER (getpass.getuser reads those first): whoever runs the
    CLI sets its own environment, so `LOGNAME=root ./fleetdeck ...` must not make anybody root."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers): named by number, never matching a real name
        return f"uid:{uid}"


def cli_principal(auth: AuthConfig, os_user: str | None = None) -> Principal:
    """The CLI principal of the OS user running it: their cli_roles entry, else the '*' entry, else viewer."""
    name = os_user or effective_os_user()
    role = auth.cli_roles.get(name) or auth.cli_roles.get("*") or "viewer"
    return Principal(name, role, "cli")


def oidc_principal(auth: AuthConfig, claims: Mapping[str, Any]) -> Principal | None:
    """The principal of an OIDC login (Streamlit's st.user claims), or None: no access.

    Only a verified email identifies anybody: `name` is chosen by the user at the identity provider (anyone can
    call themselves "admin"), and an unverified email is just as self-chosen. A verified email maps to the role of
    the auth.users entry with that name; one no entry names gets auth.oidc_default_role (none by default).
    """
    email = claims.get("email")
    if not isinstance(email, str) or not email.strip() or claims.get("email_verified") is not True:
        return None
    wanted = email.strip().lower()
    for entry in auth.users:
        if entry.name.strip().lower() == wanted:
            return Principal(email.strip(), entry.role, "oidc")
    if auth.oidc_default_role == "viewer":
        return Principal(email.strip(), "viewer", "oidc")
    return None


def is_loopback_host(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    bare = host.strip().strip("[]").lower()
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def anonymous_role(auth: AuthConfig, bound_hosts: Iterable[str]) -> Role | None:
    """What a visitor who has not logged in may see: auth.anonymous when set; else viewer only while every
    address the dashboard binds is loopback (nobody else can reach it), None (nothing) otherwise."""
    if auth.anonymous is not None:
        return None if auth.anonymous == "none" else "viewer"
    hosts = list(bound_hosts)
    return "viewer" if hosts and all(is_loopback_host(h) for h in hosts) else None


@functools.lru_cache(maxsize=64)
def _is_name_as_password(name: str, password_hash: str) -> bool:
    return verify_password(password_hash, name)


def demo_password_users(auth: AuthConfig) -> list[str]:
    """Users whose password is still the demo's (their own name): the dashboard shows a banner while any is."""
    return [user.name for user in auth.users if user.password_hash and _is_name_as_password(user.name,
                                                                                           user.password_hash)]


class LoginThrottle:
    """Backoff and lockout for failed logins, per user name and per client address (thread-safe, in memory).

    After `free` failures in a row a key waits 2^(n-free) seconds (capped at max_delay_s) before its next attempt
    is even checked; after `lockout_after` failures it is locked for lockout_s. A success clears the user's
    count (not the client's: one client guessing many users stays slowed). State lives in the dashboard process:
    a restart clears it, which docs/security.md states.
    """

    def __init__(self, free: int = 3, max_delay_s: float = 60.0, lockout_after: int = 10, lockout_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.free, self.max_delay_s = free, max_delay_s
        self.lockout_after, self.lockout_s = lockout_after, lockout_s
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures in a row, time of the last one)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, auth: AuthConfig) -> LoginThrottle:
        return cls(auth.login_free_failures, auth.login_max_delay_s, auth.login_lockout_failures,
                   auth.login_lockout_s)

    @staticmethod
    def _keys(user: str, client: str) -> tuple[str, str]:
        return f"user:{user.strip().lower()[:128]}", f"client:{client[:128]}"

    def _wait_for(self, key: str, now: float) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if count >= self.lockout_after:
            return max(0.0, last + self.lockout_s - now)
        if count < self.free:
            return 0.0
        return max(0.0, last + min(self.max_delay_s, 2.0 ** (count - self.free)) - now)

    def wait_s(self, user: str, client: str) -> float:
        """Seconds before an attempt for this user from this client may be checked (0: go ahead)."""
        now = self.clock()
        with self._lock:
            return max(self._wait_for(key, now) for key in self._keys(user, client))

    def failed(self, user: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) >= self.max_keys:  # bounded: forget the oldest failures first
                for key, _ in sorted(self._failures.items(), key=lambda item: item[1][1])[: self.max_keys // 10]:
                    del self._failures[key]
            for key in self._keys(user, client):
                count, last = self._failures.get(key, (0, 0.0))
                if count >= self.lockout_after and now - last >= self.lockout_s:
                    count = 0  # the lockout is over: start counting again
                self._failures[key] = (count + 1, now)

    def succeeded(self, user: str, client: str) -> None:
        with self._lock:
            self._failures.pop(self._keys(user, client)[0], None)


@dataclass(frozen=True)
class LoginOutcome:
    principal: Principal | None
    message: str  # what the login form says: never which of user/password was wrong
    wait_s: float = 0.0


def login(auth: AuthConfig, throttle: LoginThrottle, user: str, password: str, client: str,
          record: Callable[[str, bool, str, str], None] | None = None) -> LoginOutcome:
    """A dashboard login attempt: throttled, checked, and recorded (`record(user, ok, reason, role)` audits it).

    While a user or client must wait, the password is not even checked (so guessing gets no faster by trying)
    and the attempt is recorded as refused.
    """
    user = user.strip()[:128]
    wait = throttle.wait_s(user, client)
    if wait > 0:
        reason = f"too many failed logins: wait {wait:.0f}s"
        if record:
            record(user, False, reason, "-")
        return LoginOutcome(None, f"Too many failed logins. Try again in {wait:.0f} s.", wait)
    found = authenticate(auth, user, password)
    if found is None:
        throttle.failed(user, client)
        if record:
            record(user, False, "unknown user or wrong password", "-")
        return LoginOutcome(None, "Unknown user or wrong password.")
    throttle.succeeded(user, client)
    if record:
        record(user, True, "", found.role)
    return LoginOutcome(found, "")
