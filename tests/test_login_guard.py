"""Who gets into the dashboard: throttled and audited logins, OIDC by verified email only, no anonymous access
off loopback, a banner while demo passwords work, PDF rendering only for logged-in users."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from actions.auth import (
    LoginThrottle,
    Principal,
    anonymous_role,
    demo_password_users,
    hash_password,
    login,
    oidc_principal,
)
from actions.guarded import record_login
from core.config import AuthConfig, UserConfig
from core.store import Store

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PAGES = APP.parent / "app_pages"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_then_lockout_per_user_and_per_client() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(free=3, max_delay_s=60, lockout_after=10, lockout_s=900, clock=clock)
    for _ in range(3):
        assert throttle.wait_s("ann", "10.0.0.5") == 0
        throttle.failed("ann", "10.0.0.5")
    assert throttle.wait_s("ann", "10.0.0.5") == pytest.approx(1)  # 2^0 after the free ones
    assert throttle.wait_s("ann", "10.0.0.9") == pytest.approx(1)  # per user: another client waits too
    assert throttle.wait_s("bob", "10.0.0.5") == pytest.approx(1)  # per client: another user waits too
    assert throttle.wait_s("bob", "10.0.0.9") == 0
    for expected in (2, 4, 8, 16, 32, 60):
        clock.now += 100
        throttle.failed("ann", "10.0.0.5")
        assert throttle.wait_s("ann", "10.0.0.5") == pytest.approx(expected)
    clock.now += 100
    throttle.failed("ann", "10.0.0.5")  # the 10th failure in a row: locked
    assert throttle.wait_s("ann", "10.0.0.5") == pytest.approx(900)
    clock.now += 901
    assert throttle.wait_s("ann", "10.0.0.5") == 0
    throttle.succeeded("ann", "10.0.0.5")
    assert throttle.wait_s("ann", "10.0.0.9") == 0


def test_login_is_audited_and_a_waiting_user_is_not_even_checked(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/store.db")
    auth = AuthConfig(users=[UserConfig(name="ann", role="admin", password_hash=hash_password("right-pw"))])
    clock = FakeClock()
    throttle = LoginThrottle(free=2, max_delay_s=60, lockout_after=5, lockout_s=600, clock=clock)

    def record(user: str, ok: bool, reason: str, role: str) -> None:
        record_login(store, user, "dashboard", "192.0.2.7", ok, reason, role)

    assert login(auth, throttle, "ann", "guess-1", "192.0.2.7", record).principal is None
    assert login(auth, throttle, "ann", "guess-2", "192.0.2.7", record).principal is None
    waiting = login(auth, throttle, "ann", "right-pw", "192.0.2.7", record)  # right, but during the backoff
    assert waiting.principal is None and waiting.wait_s > 0 and "Try again" in waiting.message
    clock.now += 61
    assert login(auth, throttle, "ann", "right-pw", "192.0.2.7", record).principal == Principal("ann", "admin",
                                                                                                 "dashboard")
    rows = store.audit(action="login")
    assert [(r.who, r.result) for r in rows] == [("ann", "refused")] * 3 + [("ann", "ok")]
    assert {r.params["client"] for r in rows} == {"192.0.2.7"}
    assert "too many failed logins" in (rows[2].error or "")
    assert store.audit_chain().ok


def test_oidc_maps_only_verified_emails_never_names() -> None:
    auth = AuthConfig(users=[UserConfig(name="ops@example.com", role="admin")], oidc=True)
    assert oidc_principal(auth, {"email": "ops@example.com", "email_verified": True}) == Principal(
        "ops@example.com", "admin", "oidc")
    assert oidc_principal(auth, {"email": "ops@example.com", "email_verified": False}) is None
    assert oidc_principal(auth, {"email": "ops@example.com"}) is None  # unverified when the claim is missing
    assert oidc_principal(auth, {"name": "ops@example.com", "email_verified": True}) is None  # name is self-chosen
    assert oidc_principal(auth, {"email": "stranger@example.com", "email_verified": True}) is None
    open_to_viewers = auth.model_copy(update={"oidc_default_role": "viewer"})
    assert oidc_principal(open_to_viewers, {"email": "stranger@example.com", "email_verified": True}) == Principal(
        "stranger@example.com", "viewer", "oidc")


def test_anonymous_access_defaults_to_none_off_loopback() -> None:
    assert anonymous_role(AuthConfig(), ["127.0.0.1"]) == "viewer"
    assert anonymous_role(AuthConfig(), ["localhost"]) == "viewer"
    assert anonymous_role(AuthConfig(), ["0.0.0.0"]) is None
    assert anonymous_role(AuthConfig(), ["192.0.2.1"]) is None
    assert anonymous_role(AuthConfig(anonymous="none"), ["127.0.0.1"]) is None
    assert anonymous_role(AuthConfig(anonymous="viewer"), ["0.0.0.0"]) == "viewer"


def test_demo_passwords_are_detected() -> None:
    auth = AuthConfig(users=[UserConfig(name="admin", role="admin", password_hash=hash_password("admin")),
                             UserConfig(name="ops", role="operator", password_hash=hash_password("long-secret"))])
    assert demo_password_users(auth) == ["admin"]


def write_config(tmp_path: Path, auth: dict[str, object]) -> Path:
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "run"), "store": {"url": f"sqlite:///{tmp_path}/fleetdeck.db"},
        "services": [{"name": "web", "command": "true {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
        "dashboard": {"embedded_collector": False}, "auth": auth,
    }))
    return config


def test_no_anonymous_access_shows_only_the_login_and_audits_failures(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # lockout settings of its own: the throttle is per dashboard process, this test must not slow the others
    config = write_config(tmp_path, {"anonymous": "none", "login_lockout_s": 123.0, "users": [
        {"name": "admin", "role": "admin", "password_hash": hash_password("admin")}]})
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("Demo passwords in use" in e.value for e in app.error)  # loud, on every page
    assert len(app.metric) == 0 and len(app.dataframe) == 0  # the overview was not rendered
    assert [t.label for t in app.text_input] == ["User", "Password"]
    app.text_input[0].set_value("admin")
    app.text_input[1].set_value("not-it")
    app.button[0].click()
    app.run()
    assert any("Unknown user or wrong password" in e.value for e in app.error)
    audited = Store(f"sqlite:///{tmp_path}/fleetdeck.db").audit(action="login")
    assert [(a.who, a.result, a.params["via"]) for a in audited] == [("admin", "refused", "dashboard")]
    app.text_input[1].set_value("admin")
    app.button[0].click()
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.metric) > 0  # logged in: the overview renders


def test_pdf_needs_a_logged_in_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_scorecard_pages import seeded_config

    config = seeded_config(tmp_path, with_data=True)
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    app = AppTest.from_file(str(PAGES / "scorecard.py"), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    pdf = next(b for b in app.button if b.label == "Prepare PDF")
    assert pdf.disabled and "log in" in (pdf.help or "")  # the server re-checks on a click too (page code)
