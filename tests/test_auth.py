"""Roles, permissions, argon2 hashes, CLI/OIDC/password principals."""

from __future__ import annotations

import os

import pytest

from actions.auth import (
    PERMISSIONS,
    PermissionDenied,
    Principal,
    allowed,
    authenticate,
    cli_principal,
    hash_password,
    oidc_principal,
    require,
    role_at_least,
    verify_password,
)
from core.config import AuthConfig, UserConfig

pytestmark = pytest.mark.fast  # no services: the fast tier


def test_hash_and_verify() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert hashed != hash_password("correct horse")  # salted: same password, different hash
    assert verify_password(hashed, "correct horse")
    assert not verify_password(hashed, "correct horsE")
    assert not verify_password("not-a-hash", "correct horse")
    with pytest.raises(ValueError):
        hash_password("")


def test_role_ordering() -> None:
    assert role_at_least("admin", "operator") and role_at_least("operator", "viewer")
    assert role_at_least("viewer", "viewer")
    assert not role_at_least("viewer", "operator") and not role_at_least("operator", "admin")


@pytest.mark.parametrize(
    ("role", "action", "expected"),
    [
        ("viewer", "view", True),
        ("viewer", "scale", False),
        ("viewer", "start_test", False),
        ("operator", "drain", True),
        ("operator", "rolling_restart", True),
        ("operator", "start_test", True),
        ("operator", "force", False),
        ("operator", "change_limits", False),
        ("admin", "force", True),
        ("admin", "change_limits", True),
    ],
)
def test_permission_table(role: str, action: str, expected: bool) -> None:
    assert allowed(Principal("someone", role, "cli"), action) is expected  # type: ignore[arg-type]


def test_every_action_has_a_known_role() -> None:
    assert set(PERMISSIONS.values()) <= {"viewer", "operator", "admin"}
    for action in (
        "view",
        "scale",
        "drain",
        "undrain",
        "restart",
        "rolling_restart",
        "start_test",
        "force",
        "change_limits",
    ):
        assert action in PERMISSIONS


def test_denial_message_names_who_what_and_needed_role() -> None:
    bob = Principal("bob", "viewer", "dashboard")
    with pytest.raises(PermissionDenied) as caught:
        require(bob, "rolling_restart")
    message = str(caught.value)
    assert "bob" in message and "viewer" in message and "rolling restart" in message and "operator" in message
    assert caught.value.needed == "operator"
    require(Principal("ann", "admin", "cli"), "force")  # no exception
    with pytest.raises(KeyError):
        require(bob, "reboot_the_world")


def test_cli_roles_by_os_user_and_wildcard() -> None:
    auth = AuthConfig(cli_roles={"deploy": "admin", "ops": "operator", "*": "viewer"})
    assert cli_principal(auth, "deploy") == Principal("deploy", "admin", "cli")
    assert cli_principal(auth, "ops").role == "operator"
    assert cli_principal(auth, "mallory").role == "viewer"
    assert cli_principal(AuthConfig(cli_roles={"root": "admin"}), "nobody").role == "viewer"  # no '*' → viewer
    everybody_operator = AuthConfig(cli_roles={"*": "operator"})
    assert cli_principal(everybody_operator).role == "operator"


def test_cli_identity_is_the_effective_uid_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOGNAME/USER are the caller's to set: they must not choose the CLI's identity (nor its role)."""
    import pwd

    real = pwd.getpwuid(os.geteuid()).pw_name
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, "someone-else")
    auth = AuthConfig(cli_roles={"someone-else": "admin", "*": "viewer"})
    principal = cli_principal(auth)
    assert principal.name == real and principal.role == ("admin" if real == "someone-else" else "viewer")


def test_authenticate_users() -> None:
    auth = AuthConfig(
        users=[
            UserConfig(name="ann", role="admin", password_hash=hash_password("ann-pw")),
            UserConfig(name="sso@example.com", role="operator"),  # OIDC only: no password
        ]
    )
    assert authenticate(auth, "ann", "ann-pw") == Principal("ann", "admin", "dashboard")
    assert authenticate(auth, "ann", "wrong") is None
    assert authenticate(auth, "nobody", "ann-pw") is None
    assert authenticate(auth, "sso@example.com", "") is None


def test_oidc_maps_verified_email_to_role_else_no_access() -> None:
    auth = AuthConfig(users=[UserConfig(name="Ops@Example.com", role="operator")])
    verified = {"email": "ops@example.com", "email_verified": True}
    assert oidc_principal(auth, verified) == Principal("ops@example.com", "operator", "oidc")
    assert oidc_principal(auth, {"email": "stranger@example.com", "email_verified": True}) is None
