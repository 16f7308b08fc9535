"""No notification lost or sent twice across a restart: the collector is SIGKILLed between firing and delivery.

Real parts only: the `fleetdeck collect` process, a dead static target that fires `instance_down`, a webhook
receiver on loopback and an SMTP sink (aiosmtpd). Both receivers refuse at first (HTTP 503 / nothing listening on
the SMTP port), so the notifications are decided and attempted but not delivered when the process is killed.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from cli.main import main
from core.notify.store import NotifyStore
from core.store import Store
from tests.support import free_port
from tests.support_collector import start_collector, stop_collector, wait_for, write_collector_config
from tests.support_notify import WebhookReceiver, smtp_sink
from tests.test_collectors_helpers import servers

TIMING = {"group_wait": "0.5s", "group_interval": "2s", "repeat_interval": "1h"}


def test_kill_between_firing_and_delivery_loses_nothing_and_sends_nothing_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target_port, smtp_port = free_port(), free_port()
    with WebhookReceiver() as hook:
        hook.answers = [503]
        config = write_collector_config(tmp_path, {
            "static_targets": [{"name": "api", "url": f"http://127.0.0.1:{target_port}", "metrics_path": None}],
            "alerts": {
                "receivers": [{"name": "hook", "webhook": {"url": hook.url}},
                              {"name": "mail", "email": {"to": ["oncall@example.test"], "smtp_port": smtp_port}}],
                "routes": [{"receiver": "hook", **TIMING}, {"receiver": "mail", **TIMING}],
                "delivery": {"timeout_s": 2, "backoff_initial_s": 0.5, "backoff_max_s": 1},
            },
        })
        store = Store(f"sqlite:///{tmp_path}/fleetdeck.db")
        db = NotifyStore(store)

        def rows_by_receiver() -> dict[str, list]:  # type: ignore[type-arg]
            found: dict[str, list] = {}  # type: ignore[type-arg]
            for row in db.notifications():
                found.setdefault(row.receiver, []).append(row)
            return found

        collector = start_collector(config, tmp_path / "collect.log")
        try:
            wait_for(lambda: {r: rows[0].attempts for r, rows in rows_by_receiver().items()
                              if rows[0].attempts >= 1}.keys() == {"hook", "mail"},
                     30, "a failed delivery attempt to both receivers")
        finally:
            stop_collector(collector, signal.SIGKILL)
        before = rows_by_receiver()
        assert {r: [x.status for x in rows] for r, rows in before.items()} == {"hook": ["pending"],
                                                                               "mail": ["pending"]}
        hook.answers = [200]
        with smtp_sink(smtp_port) as mails:
            collector = start_collector(config, tmp_path / "collect.log")
            try:
                wait_for(lambda: len(hook.accepted()) == 1 and len(mails) == 1, 30, "delivery after the restart")
                # the target comes back: exactly one resolved notification per receiver
                with servers({target_port: {"/health": [200, "application/json", '{"status":"pass"}']}}):
                    wait_for(lambda: len(hook.accepted()) == 2 and len(mails) == 2, 30, "the resolved notifications")
                    wait_for(lambda: all(r.status == "sent" for r in db.notifications()), 10, "every row sent")
            finally:
                assert stop_collector(collector) == 0
        firing, resolved = (r["body"] for r in hook.accepted())
        assert firing["status"] == "firing" and firing["alerts"][0]["labels"]["subject"] == "static/api"
        assert resolved["status"] == "resolved" and firing["notificationId"] != resolved["notificationId"]
        assert [m["Subject"] for m in mails] == ["[FIRING:1] instance_down", "[RESOLVED] instance_down"]
        assert len({m["Message-ID"] for m in mails}) == 2
        after = rows_by_receiver()
        assert {r: len(rows) for r, rows in after.items()} == {"hook": 2, "mail": 2}  # decided once each
        for receiver in ("hook", "mail"):
            first = after[receiver][0]
            log = db.attempts(first.id)
            assert [a.ok for a in log][-1] and not any(a.ok for a in log[:-1]) and len(log) >= 2
            assert first.attempts == len(log)
        store.close()
        capsys.readouterr()
        assert main(["--config", str(config), "notifications", "--json"]) == 0  # the record, as the CLI shows it
        shown = json.loads(capsys.readouterr().out)
        assert [(n["receiver"], n["status"], len(n["attempt_log"])) for n in shown][:1] == [
            ("hook", "sent", after["hook"][0].attempts)]
