"""Alert rules from fleet.yaml: thresholds, `for:` durations, severities, switches; today's rules as defaults."""

from __future__ import annotations

from typing import Any

import pytest

from collectors.alerts import AlertEvaluator
from core.config import ConfigError, parse_config
from core.config_alerts import AlertRules, parse_duration
from core.samples import Sample

BASE: dict[str, Any] = {"services": [{"name": "web", "command": "x {port} {instance_id}",
                                      "ports": {"start": 20000, "end": 20010}}]}


def config_with(alerts: dict[str, Any]) -> Any:
    return parse_config({**BASE, "alerts": alerts}, "fleet.yaml")


def pg(ts: float, ratio: float, waiters: float = 0) -> list[Sample]:
    return [Sample("postgres", "postgres:main", "headroom_ratio", ratio, ts),
            Sample("postgres", "postgres:main", "headroom", ratio * 100, ts),
            Sample("postgres", "postgres:main", "lock_waiters", waiters, ts)]


def firing_of(out: list[Sample]) -> dict[str, float]:
    return {s.target: s.value for s in out}


def test_defaults_are_todays_rules() -> None:
    rules = parse_config(BASE).alerts.rules
    assert rules == AlertRules()
    assert (rules.backlog_growing.ticks, rules.failure_ratio.threshold, rules.db_headroom.threshold) == (5, 0.10, 0.20)
    assert rules.instance_down.severity == "critical" and rules.db_headroom.severity == "warning"
    assert all(rules.rule(name).for_s == 0 and rules.rule(name).enabled for name in AlertRules.model_fields)
    out = AlertEvaluator(rules).evaluate(pg(1000.0, 0.1, 1))
    assert firing_of(out) == {"db_headroom/postgres:main": 1, "lock_waiters/postgres:main": 1}


def test_thresholds_and_switches_come_from_the_file() -> None:
    config = config_with({"rules": {"db_headroom": {"threshold": 0.05, "severity": "critical"},
                                    "lock_waiters": {"threshold": 3}, "instance_down": {"enabled": False}}})
    evaluator = AlertEvaluator(config.alerts.rules)
    out = evaluator.evaluate([*pg(1000.0, 0.1, 2), Sample("instance", "web/web-1", "up", 0, 1000.0)])
    assert firing_of(out) == {"db_headroom/postgres:main": 0, "lock_waiters/postgres:main": 0}  # no instance_down
    assert firing_of(evaluator.evaluate(pg(1005.0, 0.01, 4))) == {"db_headroom/postgres:main": 1,
                                                                   "lock_waiters/postgres:main": 1}
    assert config.alerts.rules.db_headroom.severity == "critical"


def test_for_duration_holds_back_firing_and_a_gap_resets_it() -> None:
    evaluator = AlertEvaluator(config_with({"rules": {"db_headroom": {"for": "30s"}}}).alerts.rules)

    def headroom_at(ts: float, ratio: float) -> float:
        return firing_of(evaluator.evaluate(pg(ts, ratio)))["db_headroom/postgres:main"]

    assert headroom_at(1000.0, 0.1) == 0  # pending
    assert headroom_at(1020.0, 0.1) == 0
    assert headroom_at(1031.0, 0.1) == 1  # held for 31 s
    assert headroom_at(1040.0, 0.5) == 0  # resolved: the clock resets
    assert headroom_at(1045.0, 0.1) == 0
    assert headroom_at(1076.0, 0.1) == 1


def test_durations_parse_like_prometheus() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration(90) == 90 and parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("five minutes")


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        ({"rules": {"db_headroom": {"treshold": 0.1}}}, "alerts.rules.db_headroom.treshold: unknown key"),
        ({"rules": {"instnce_down": {}}}, "alerts.rules.instnce_down: unknown key"),
        ({"rules": {"instance_down": {"for": "5 minutes"}}}, "alerts.rules.instance_down.for: "),
        ({"rules": {"lock_waiters": {"severity": "page"}}}, "alerts.rules.lock_waiters.severity: "),
        ({"rules": {"failure_ratio": {"threshold": 3}}}, "alerts.rules.failure_ratio.threshold: "),
        ({"routes": [{"receiver": "ops"}]}, "routes[0].receiver 'ops' is not one of the receivers"),
        ({"receivers": [{"name": "ops", "webhook": {"url": "http://127.0.0.1:1/", "fromat": "slack"}}]},
         "alerts.receivers.0.webhook.fromat: unknown key"),
        ({"receivers": [{"name": "ops"}]}, "exactly one of 'webhook' or 'email'"),
        ({"receivers": [{"name": "ops", "email": {"to": ["a@b"]}}], "routes": [{"receiver": "ops",
                                                                                "rules": ["nope"]}]},
         "unknown rule(s) nope"),
    ],
)
def test_a_bad_alert_key_is_named(alerts: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(alerts)
    assert "fleet.yaml" in str(caught.value) and expected in str(caught.value)


@pytest.mark.parametrize(
    ("autoscale", "expected"),
    [
        ({"web": {"cpu_percent": 50, "intervl": "5s"}}, "autoscale.web.intervl: unknown key"),
        ({"web": {"mode": "sometimes", "cpu_percent": 50}}, "autoscale.web.mode: "),
        ({"web": {"mode": "auto"}}, "needs at least one of cpu_percent"),
        ({"api": {"cpu_percent": 50}}, "autoscale: api not one of the services"),
        ({"web": {"rps_per_replica": 10}}, "rps_per_replica and p95_ms come from the load balancer"),
        ({"web": {"queue_backlog": {"queues": ["nope/bull:jobs"], "per_worker": 5}}}, "'nope/bull:jobs' is not"),
    ],
)
def test_a_bad_autoscale_key_is_named(autoscale: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "autoscale": autoscale}, "fleet.yaml")
    assert expected in str(caught.value)
