"""The readiness scorecard: rules (docs/design-notes.md#readiness), levels, points, trends — pure functions of facts.

A level is reached only when every rule of that level *and of every lower level* passes (OpsLevel); points give
a percentage (Cortex): a pass earns a rule's points, a warn half of them, fail and unknown nothing. Every rule
result is a timestamped `Fact` in the store (Backstage Tech Insights), so a past run's scorecard is recomputed
from its facts, never stored separately.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from core.spreadsheet import neutralise_row
from core.store import Fact

LEVELS: tuple[str, ...] = ("Bronze", "Silver", "Gold")
STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "unknown")
PASS, WARN, FAIL, UNKNOWN = STATUSES
STATUS_CREDIT: dict[str, float] = {PASS: 1.0, WARN: 0.5, FAIL: 0.0, UNKNOWN: 0.0}


class Rule(NamedTuple):
    id: str
    level: str
    title: str
    measured_by: str
    points: int


RULES: tuple[Rule, ...] = (
    Rule("lb_health_checks", "Bronze", "LB health checks",
         "every instance answers /health; the rendered nginx upstream has max_fails/fail_timeout", 10),
    Rule("stateless_sessions", "Bronze", "Stateless sessions",
         "log in via the LB, then GET /api/me directly on every instance with that cookie", 10),
    Rule("no_local_disk_uploads", "Bronze", "No local-disk uploads",
         "POST /api/uploads on instance A, GET /api/uploads/{id} from every other instance", 10),
    Rule("distributed_queue_workers", "Silver", "Distributed queue workers",
         "≥2 workers on ≥2 instances (Redis CLIENT LIST); canary jobs complete while a worker's instance is"
         " restarted; Redis maxmemory-policy noeviction", 15),
    Rule("db_pool_headroom", "Silver", "DB pool headroom",
         "Σ pool max (/health) + monitors at N+1 and at max replicas ≤ 80% of max_connections −"
         " superuser_reserved_connections; no pool waiters", 15),
    Rule("n_plus_one_capacity", "Silver", "N+1 capacity",
         "peak load spread over N−1 instances stays under the per-instance saturation point (short load step)", 15),
    Rule("zero_downtime_drain", "Gold", "Zero-downtime drain",
         "drain and undrain one instance under a constant POST load: 0 failed requests", 20),
    Rule("linear_scaling", "Gold", "Linear scaling",
         "E(n) = X(n)/(n·X(1)) ≥ 0.8 at every measured n (scaling test, USL fit)", 20),
    Rule("observability", "Gold", "Observability",
         "every instance serves /metrics and /health; scrape success ≥ 99% over the stored `up` samples", 20),
)
RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}


def rules_of(level: str) -> list[Rule]:
    return [rule for rule in RULES if rule.level == level]


def parse_rule_selection(selection: str | Sequence[str] | None) -> list[Rule]:
    """Rules from ids and/or level names ("bronze", "silver,stateless_sessions"); None or "all" → every rule."""
    if selection is None:
        return list(RULES)
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    chosen: list[Rule] = []
    for raw in (item.strip() for item in items):
        if not raw:
            continue
        if raw.lower() == "all":
            return list(RULES)
        level = next((lv for lv in LEVELS if lv.lower() == raw.lower()), None)
        if level is not None:
            picked = [r for r in RULES if LEVELS.index(r.level) <= LEVELS.index(level)]  # a level includes the lower
        elif raw in RULES_BY_ID:
            picked = [RULES_BY_ID[raw]]
        else:
            known = ", ".join([lv.lower() for lv in LEVELS] + list(RULES_BY_ID))
            raise ValueError(f"unknown rule or level {raw!r}; known: {known}")
        chosen += [r for r in picked if r not in chosen]
    return sorted(chosen, key=RULES.index)


@dataclass
class RuleResult:
    rule: Rule
    status: str  # pass | warn | fail | unknown
    observed: str
    evidence: dict[str, Any]
    ts: float | None  # None: never measured in this run
    earned: float

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.id, "level": self.rule.level, "title": self.rule.title, "status": self.status,
                "observed": self.observed, "evidence": self.evidence, "ts": self.ts, "points": self.rule.points,
                "earned": self.earned}


@dataclass
class Scorecard:
    run_id: str
    level: str | None  # the highest level reached, None below Bronze
    percent: float  # earned points / all points × 100
    earned: float
    total: int
    results: list[RuleResult] = field(default_factory=list)
    ts: float = 0.0  # the newest fact's time

    @property
    def passed(self) -> bool:
        return all(r.status == PASS for r in self.results if r.ts is not None)

    def level_status(self, level: str) -> str:
        """pass when every rule of `level` passes, else the worst status among them."""
        statuses = [r.status for r in self.results if r.rule.level == level]
        for status in (FAIL, UNKNOWN, WARN):
            if status in statuses:
                return status
        return PASS

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "level": self.level, "percent": round(self.percent, 1),
                "earned": self.earned, "total": self.total, "ts": self.ts,
                "levels": {lv: self.level_status(lv) for lv in LEVELS},
                "results": [r.as_dict() for r in self.results]}


def latest_per_rule(facts: Iterable[Fact]) -> dict[str, Fact]:
    """The newest fact of each rule (a rule re-measured within a run counts once, at its latest result)."""
    newest: dict[str, Fact] = {}
    for fact in facts:
        if fact.rule not in newest or (fact.ts, fact.id or 0) >= (newest[fact.rule].ts, newest[fact.rule].id or 0):
            newest[fact.rule] = fact
    return newest


def level_reached(statuses: dict[str, str]) -> str | None:
    """The highest level whose rules, and all lower levels' rules, pass; a rule never measured does not pass."""
    reached: str | None = None
    for level in LEVELS:
        if all(statuses.get(rule.id) == PASS for rule in rules_of(level)):
            reached = level
        else:
            break
    return reached


def score(facts: Iterable[Fact], run_id: str = "") -> Scorecard:
    newest = latest_per_rule(facts)
    results: list[RuleResult] = []
    for rule in RULES:
        fact = newest.get(rule.id)
        if fact is None:
            results.append(RuleResult(rule, UNKNOWN, "not measured", {}, None, 0.0))
            continue
        status = fact.status if fact.status in STATUS_CREDIT else UNKNOWN
        results.append(RuleResult(rule, status, fact.observed, fact.evidence, fact.ts,
                                  rule.points * STATUS_CREDIT[status]))
    total = sum(rule.points for rule in RULES)
    earned = sum(r.earned for r in results)
    return Scorecard(
        run_id=run_id or next((f.run_id for f in newest.values()), ""),
        level=level_reached({r.rule.id: r.status for r in results}),
        percent=100.0 * earned / total if total else 0.0,
        earned=earned,
        total=total,
        results=results,
        ts=max((f.ts for f in newest.values()), default=0.0),
    )


class RunSummary(NamedTuple):
    run_id: str
    ts: float  # the run's newest fact
    level: str | None
    percent: float
    passed: int
    failed: int
    measured: int


def history(facts: Iterable[Fact], prefix: str = "") -> list[RunSummary]:
    """One summary per run (oldest first), for the trend chart; `prefix` keeps e.g. only readiness runs."""
    by_run: dict[str, list[Fact]] = {}
    for fact in facts:
        if fact.run_id.startswith(prefix):
            by_run.setdefault(fact.run_id, []).append(fact)
    summaries = []
    for run_id, run_facts in by_run.items():
        card = score(run_facts, run_id)
        measured = [r for r in card.results if r.ts is not None]
        summaries.append(RunSummary(run_id, card.ts, card.level, card.percent,
                                    sum(r.status == PASS for r in measured),
                                    sum(r.status == FAIL for r in measured), len(measured)))
    return sorted(summaries, key=lambda s: s.ts)


FACT_COLUMNS = ("run_id", "rule", "level", "target", "time_utc", "ts", "status", "observed", "evidence")


def facts_csv(facts: Iterable[Fact]) -> str:
    """CSV of facts, evidence as compact JSON; RFC 4180 quoting so spreadsheets open it as is, and no cell that a
    spreadsheet would evaluate as a formula (core/spreadsheet.py: targets and observations come from outside)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FACT_COLUMNS)
    for fact in facts:
        writer.writerow(neutralise_row([
            fact.run_id, fact.rule, fact.level, fact.target, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fact.ts)),
            f"{fact.ts:.3f}", fact.status, fact.observed, json.dumps(fact.evidence, sort_keys=True, default=str),
        ]))
    return buffer.getvalue()
