"""The `alerts:` section of fleet.yaml: rule thresholds, `for:` durations and severities, notification routes.

Kept apart from core/config.py so the alerting models grow without touching the fleet's core models; `FleetConfig`
embeds :class:`AlertsConfig`. Every model forbids unknown keys, so `alerts.rules.db_headrom` or
`alerts.rules.db_headroom.treshold` fails at start-up naming the key (docs/alerts.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Severity = Literal["info", "warning", "critical"]
GroupField = Literal["rule", "subject", "severity"]


def _by_rule() -> list[GroupField]:
    return ["rule"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus-style duration: `90`, `30s`, `5m`, `1h30m`, `250ms`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h30m")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        if text and _DURATION_PART.sub("", text) == "":
            return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text))
    raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 30s, 5m, 1h30m)")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Rule(_Strict):
    enabled: bool = True
    severity: Severity = "warning"
    # the condition must hold this long before the alert fires (0: on the first evaluation, as before)
    for_s: Duration = Field(default=0.0, alias="for")


class CriticalRule(_Rule):
    severity: Severity = "critical"


class BacklogGrowingRule(_Rule):
    ticks: Annotated[int, Field(ge=1, le=1000)] = 5  # waiting grew on this many consecutive bullmq ticks


class FailureRatioRule(_Rule):
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.10  # failed / (completed + failed), per second
    min_jobs_per_s: Annotated[float, Field(ge=0)] = 0.05  # below this the ratio is noise


class HeadroomRule(_Rule):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.20  # fires below this share of the connection budget


class LockWaitersRule(_Rule):
    threshold: Annotated[int, Field(ge=0)] = 0  # fires when more sessions than this wait on a lock


class AlertRules(_Strict):
    """Today's rules with today's thresholds as defaults; each one can be tuned or switched off."""

    instance_down: CriticalRule = CriticalRule()
    target_down: CriticalRule = CriticalRule()
    queue_no_workers: CriticalRule = CriticalRule()
    backlog_growing: BacklogGrowingRule = BacklogGrowingRule()
    failure_ratio: FailureRatioRule = FailureRatioRule()
    redis_eviction_policy: _Rule = _Rule()
    redis_evicting: CriticalRule = CriticalRule()
    db_headroom: HeadroomRule = HeadroomRule()
    lock_waiters: LockWaitersRule = LockWaitersRule()
    # faults told apart (docs/operations.md): an instance that answers while a (dependency's) check fails, and a
    # managed nginx whose master is gone while orphaned workers keep serving
    check_failing: _Rule = _Rule()
    lb_master_gone: CriticalRule = CriticalRule()

    def rule(self, name: str) -> _Rule:
        found = getattr(self, name, None)
        if not isinstance(found, _Rule):
            raise KeyError(f"unknown alert rule '{name}'; known: {', '.join(RULE_NAMES)}")
        return found


RULE_NAMES: tuple[str, ...] = tuple(AlertRules.model_fields)


# -- notifications -------------------------------------------------------------------------------------------------


class WebhookReceiver(_Strict):
    # generic: an Alertmanager-compatible JSON body; slack: Slack incoming-webhook `text` (+ blocks);
    # teams: a Microsoft Teams (Workflows) message with an Adaptive Card
    url: Annotated[str, Field(pattern=r"^https?://", max_length=2048)]
    format: Literal["generic", "slack", "teams"] = "generic"
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. Authorization: "Bearer ${HOOK_TOKEN}"


class EmailReceiver(_Strict):
    to: Annotated[list[str], Field(min_length=1)]
    sender: str = Field(default="fleetdeck@localhost", alias="from")
    smtp_host: str = "127.0.0.1"
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None  # from the environment: "${SMTP_PASSWORD}"


class Receiver(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    webhook: WebhookReceiver | None = None
    email: EmailReceiver | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Receiver:
        if (self.webhook is None) == (self.email is None):
            raise ValueError("a receiver has exactly one of 'webhook' or 'email'")
        return self


class Route(_Strict):
    """Which alerts go to which receiver. Empty `rules` matches every rule; severities at or above `min_severity`."""

    receiver: str
    rules: list[str] = Field(default_factory=list)
    min_severity: Severity = "info"
    # alerts with the same values of these fields share one notification: `rule`, `subject`, `severity`
    group_by: list[GroupField] = Field(default_factory=_by_rule)
    group_wait_s: Duration = Field(default=10.0, alias="group_wait")  # wait for siblings before the first message
    group_interval_s: Duration = Field(default=60.0, alias="group_interval")  # between messages about changes
    repeat_interval_s: Duration = Field(default=4 * 3600.0, alias="repeat_interval")  # re-send while unchanged
    send_resolved: bool = True

    @model_validator(mode="after")
    def _known_rules(self) -> Route:
        unknown = [r for r in self.rules if r not in RULE_NAMES]
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULE_NAMES)}")
        return self


class DeliveryConfig(_Strict):
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0  # one attempt, connect to last byte
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 12
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 300.0
    max_alerts_per_message: Annotated[int, Field(ge=1, le=500)] = 50  # the rest is summarised as a count
    max_body_bytes: Annotated[int, Field(ge=1024, le=1_000_000)] = 64_000


class AlertsConfig(_Strict):
    rules: AlertRules = AlertRules()
    # a firing alert no longer evaluated this long (its target was removed) counts as resolved
    resolve_timeout_s: Duration = Field(default=300.0, alias="resolve_timeout")
    receivers: list[Receiver] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    delivery: DeliveryConfig = DeliveryConfig()

    @model_validator(mode="after")
    def _routes_name_receivers(self) -> AlertsConfig:
        names = [r.name for r in self.receivers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"receiver names must be unique; repeated: {', '.join(duplicates)}")
        for index, route in enumerate(self.routes):
            if route.receiver not in names:
                raise ValueError(
                    f"routes[{index}].receiver '{route.receiver}' is not one of the receivers: {', '.join(names)}"
                )
        return self

    def receiver(self, name: str) -> Receiver:
        for receiver in self.receivers:
            if receiver.name == name:
                return receiver
        raise KeyError(f"unknown receiver '{name}'")
