"""Alert notifications: grouping, repeat, resolved, silences, formats, retries — against a real local receiver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actions.auth import Principal
from actions.silences import create_silence, expire_silence, list_silences
from core.config import parse_config
from core.config_alerts import Route
from core.notify import payloads
from core.notify.engine import Notifier, decide
from core.notify.store import GroupState, NotifyStore
from core.samples import Sample
from core.store import Store
from tests.support_notify import WebhookReceiver

OPERATOR = Principal("olga", "operator", "cli")
VIEWER = Principal("vic", "viewer", "cli")
T0 = 1_800_000_000.0


def fleet(alerts: dict[str, Any], tmp_path: Path) -> Any:
    return parse_config({"services": [{"name": "web", "command": "x {port} {instance_id}",
                                       "ports": {"start": 20000, "end": 20010}}],
                         "store": {"url": f"sqlite:///{tmp_path}/fd.db"}, "alerts": alerts}, base_dir=tmp_path)


def alert(subject: str, firing: bool, ts: float, rule: str = "instance_down", text: str = "down") -> Sample:
    return Sample("alert", f"{rule}/{subject}", "firing", 1 if firing else 0, ts, "bool", (), text if firing else "")


def test_decide_waits_groups_repeats_and_resolves() -> None:
    route = Route.model_validate({"receiver": "r", "group_wait": "5s", "group_interval": "10s",
                                  "repeat_interval": "100s"})
    quiet = GroupState("g", "r", None, None, (), 0)
    pending, due = decide(route, quiet, ["a"], [], T0)
    assert not due and pending.first_seen_at == T0  # group_wait starts
    assert not decide(route, pending, ["a", "b"], [], T0 + 4)[1]
    sent, due = decide(route, pending, ["a", "b"], [], T0 + 5)
    assert due and sent.notified == ("a", "b") and sent.seq == 1
    assert not decide(route, sent, ["a", "b"], [], T0 + 50)[1]  # unchanged: wait for repeat_interval
    assert decide(route, sent, ["a", "b"], [], T0 + 105)[1]
    assert not decide(route, sent, ["a", "b", "c"], [], T0 + 14)[1]  # a change waits for group_interval
    assert decide(route, sent, ["a", "b", "c"], [], T0 + 15)[1]
    resolved, due = decide(route, sent, [], ["a", "b"], T0 + 15)
    assert due and resolved.notified == () and resolved.first_seen_at is None
    no_resolved = route.model_copy(update={"send_resolved": False})
    after, due = decide(no_resolved, sent, [], ["a", "b"], T0 + 15)
    assert not due and after.notified == ()


def test_grouping_repeat_resolved_and_silences_reach_a_real_webhook(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        config = fleet({"receivers": [{"name": "ops", "webhook": {"url": hook.url}}],
                        "routes": [{"receiver": "ops", "group_wait": "5s", "group_interval": "10s",
                                    "repeat_interval": "100s"}]}, tmp_path)
        store = Store(config.store_url)
        notifier = Notifier(config, store)
        notifier.observe([alert("web/web-1", True, T0)])
        assert notifier.tick(T0) == (0, 0)  # group_wait
        notifier.observe([alert("web/web-2", True, T0 + 1), alert("web/web-1", True, T0 + 1)])
        assert notifier.tick(T0 + 5) == (1, 1)
        assert notifier.tick(T0 + 6) == (0, 0)
        first = hook.accepted()[0]
        assert first["body"]["status"] == "firing" and first["body"]["version"] == "4"
        assert sorted(a["labels"]["subject"] for a in first["body"]["alerts"]) == ["web/web-1", "web/web-2"]
        assert first["body"]["commonLabels"] == {"alertname": "instance_down", "severity": "critical"}
        assert first["headers"]["X-Fleetdeck-Notification-Id"] == first["body"]["notificationId"]
        assert notifier.tick(T0 + 105) == (1, 1)  # repeat_interval
        notifier.observe([alert("web/web-1", False, T0 + 107)])
        assert notifier.tick(T0 + 110) == (0, 0)  # group_interval since the repeat
        assert notifier.tick(T0 + 115) == (1, 1)
        third = hook.accepted()[2]["body"]
        assert {a["labels"]["subject"]: a["status"] for a in third["alerts"]} == {"web/web-1": "resolved",
                                                                                  "web/web-2": "firing"}
        # a silence mutes web/web-3; the viewer may not create one; both attempts are audited
        assert not create_silence(store, VIEWER, "instance_down", "web/web-3", 3600, "deploy", now=T0 + 116)["ok"]
        made = create_silence(store, OPERATOR, "instance_down", "web/web-3", 3600, "deploy", now=T0 + 116)
        assert made["ok"] and list_silences(store, now=T0 + 117)[0].reason == "deploy"
        notifier.observe([alert("web/web-3", True, T0 + 117)])
        assert notifier.tick(T0 + 140) == (0, 0)
        assert expire_silence(store, OPERATOR, made["silence"].id, now=T0 + 141)["ok"]
        assert notifier.tick(T0 + 151) == (1, 1)  # no longer silenced: a new member, after group_interval
        assert "web/web-3" in {a["labels"]["subject"] for a in hook.accepted()[3]["body"]["alerts"]}
        audited = [(e.action, e.result, e.who) for e in store.audit() if e.action in ("silence", "expire_silence")]
        assert audited == [("silence", "refused", "vic"), ("silence", "ok", "olga"), ("expire_silence", "ok", "olga")]
        assert len(hook.requests) == 4
        store.close()


def test_retries_back_off_record_every_attempt_and_stop_on_rejection(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        hook.answers = [503, 503, 200]
        config = fleet({"receivers": [{"name": "ops", "webhook": {"url": hook.url, "format": "slack"}}],
                        "routes": [{"receiver": "ops", "group_wait": 0}],
                        "delivery": {"backoff_initial_s": 30, "backoff_max_s": 60}}, tmp_path)
        store = Store(config.store_url)
        notifier = Notifier(config, store)
        notifier.observe([alert("web/web-1", True, T0)])
        assert notifier.dispatch(T0) == 1
        db = NotifyStore(store)
        now = db.notifications()[0].created_at
        assert notifier.deliver(now) == 0  # 503
        retry_at = db.notifications()[0].next_attempt_at
        assert notifier.deliver(retry_at - 1) == 0 and len(hook.requests) == 1  # backing off: nothing sent
        assert notifier.deliver(retry_at) == 0  # 503 again; the next wait doubles
        second_wait = db.notifications()[0].next_attempt_at - retry_at
        assert second_wait > 40
        assert notifier.deliver(retry_at + second_wait + 1) == 1
        [row] = db.notifications()
        assert (row.status, row.attempts) == ("sent", 3)
        assert [(a.ok, a.detail) for a in db.attempts(row.id)] == [(False, "HTTP 503"), (False, "HTTP 503"),
                                                                   (True, "HTTP 200")]
        hook.answers = [400]
        notifier.observe([alert("postgres:main", True, T0 + 10, rule="target_down")])
        notifier.dispatch(T0 + 10)
        notifier.deliver(T0 + 10)
        rejected = db.notifications()[-1]
        assert (rejected.status, rejected.attempts, rejected.last_error) == ("failed", 1, "HTTP 400")
        store.close()


def _notification(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "0:ops:rule=x#1", "status": "firing", "group_key": "0:ops:rule=x", "receiver": "ops",
            "group_labels": {"rule": "x"}, "created_at": T0, "truncated": 0, "alerts": alerts}


def _alert(subject: str, message: str) -> dict[str, Any]:
    return {"key": f"instance_down/{subject}", "rule": "instance_down", "subject": subject, "severity": "critical",
            "status": "firing", "message": message, "started_at": T0, "resolved_at": None}


def test_formats_escape_untrusted_text_and_bound_the_body() -> None:
    hostile = _notification([_alert("web/<!channel>", "boom & <http://evil|click>\r\nBcc: x@y")])
    slack = json.loads(payloads.webhook_body(hostile, "slack", 64_000))
    assert "<!channel>" not in json.dumps(slack) and "&lt;!channel&gt;" in slack["text"]
    teams = json.loads(payloads.webhook_body(hostile, "teams", 64_000))
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard" and "web/<!channel>" in card["content"]["body"][1]["text"]
    mail = payloads.email(hostile, "fd@localhost", ["ops@example.test"], 64_000)
    assert "\n" not in mail["Subject"] and mail["Bcc"] is None
    big = _notification([_alert(f"web/web-{i}", "x" * 400) for i in range(300)])
    body = payloads.webhook_body(big, "generic", 8_000)
    parsed = json.loads(body)
    assert len(body) <= 8_000 and parsed["truncatedAlerts"] + len(parsed["alerts"]) == 300


@pytest.mark.parametrize("duration", [0, 40 * 86400])
def test_a_silence_needs_sane_bounds_and_a_reason(tmp_path: Path, duration: float) -> None:
    store = Store(f"sqlite:///{tmp_path}/fd.db")
    assert not create_silence(store, OPERATOR, "*", "*", duration, "why")["ok"]
    assert not create_silence(store, OPERATOR, "*", "*", 60, "  ")["ok"]
    assert not create_silence(store, OPERATOR, "instance_dwn", "*", 60, "typo")["ok"]
    assert list_silences(store, include_expired=True) == []
    assert not expire_silence(store, OPERATOR, "nosuchid")["ok"]
    store.close()


def test_silence_cli_add_list_expire(tmp_path: Path) -> None:
    import subprocess

    import yaml

    from tests.support_collector import FLEETDECK

    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({
        "services": [{"name": "web", "command": "x {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}],
        "store": {"url": f"sqlite:///{tmp_path}/fd.db"}, "auth": {"cli_roles": {"*": "operator"}}}))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FLEETDECK, "--config", str(path), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    added = run("silence", "add", "--rule", "instance_down", "--subject", "web/*", "--for", "2h",
                "--reason", "planned maintenance")
    assert added.returncode == 0, added.stderr
    [silence] = json.loads(run("silence", "list", "--json").stdout)
    assert (silence["subject"], silence["reason"]) == ("web/*", "planned maintenance")
    assert 7190 < silence["expires_at"] - silence["created_at"] <= 7200
    assert run("silence", "expire", silence["id"]).returncode == 0
    assert json.loads(run("silence", "list", "--json").stdout) == []


def test_an_alert_nobody_evaluates_any_more_resolves_after_the_timeout(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        config = fleet({"resolve_timeout": "5m", "receivers": [{"name": "ops", "webhook": {"url": hook.url}}],
                        "routes": [{"receiver": "ops", "group_wait": 0, "group_interval": "10s"}]}, tmp_path)
        store = Store(config.store_url)
        notifier = Notifier(config, store)
        notifier.observe([alert("web/web-9", True, T0)])  # then the replica is scaled away: no more samples
        assert notifier.tick(T0) == (1, 1)
        assert notifier.tick(T0 + 290) == (0, 0)
        assert notifier.tick(T0 + 301) == (1, 1)
        body = hook.accepted()[1]["body"]
        assert body["status"] == "resolved" and "no longer evaluated" in body["alerts"][0]["annotations"]["summary"]
        store.close()


def test_the_outbox_on_postgres_decides_once_and_leases_each_row_to_one_sender(pg_dsn: str) -> None:
    store = Store(pg_dsn)
    db = NotifyStore(store)
    group = GroupState(f"0:pg:{T0}", "pg", T0, T0, ("instance_down/web/web-1",), 1)
    payload = {"created_at": T0, "alerts": []}
    first = db.put_group(group, payload)
    assert first is not None
    assert db.put_group(group, payload) is None  # the same decision again (another process): not queued twice
    assert [n.id for n in db.claim_due(T0, lease_s=30)] == [first]
    assert db.claim_due(T0 + 1, lease_s=30) == []  # leased: nobody else sends it meanwhile
    [mine] = db.claim_due(T0 + 31, lease_s=30)  # the lease ran out (its sender died): claimable again
    db.record_attempt(mine, T0 + 32, True, 0.01, "HTTP 200", None)
    assert db.notifications(ids=[first])[0].status == "sent" and db.claim_due(T0 + 100, 30) == []
    store.close()
