"""Alert rules evaluated on every batch of fresh samples; each evaluation writes ``alert`` samples.

Target ``<rule>/<subject>``, metric ``firing`` (1 firing, 0 resolved), text = the message. A rule is evaluated
only for the subjects the batch touched, so each collector tick re-evaluates exactly its own subjects. The
evaluator keeps the latest value per (source, target, metric) in memory; history-based rules (backlog growing)
keep a short window per queue, one entry per bullmq tick.

Thresholds, severities and `for:` durations come from `alerts.rules` in fleet.yaml (core/config_alerts.py,
docs/alerts.md); the defaults are the rules as they always were. With `for: 2m` a condition must hold on every
evaluation for two minutes before `firing` turns 1 (until then the alert is pending and `firing` stays 0, like
Prometheus); one evaluation without the condition resets the clock. A disabled rule writes no samples.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Iterable

from collectors.base import MetricRegistry, MetricSpec
from core.config_alerts import AlertRules
from core.samples import Sample

SOURCE = "alert"
PENDING_PREFIX = "pending since "  # text of a `firing` 0 sample whose condition holds but not yet for `for:`
REGISTRY = MetricRegistry(
    SOURCE, [MetricSpec("firing", "bool", "1 while the rule fires for the subject; text = message")]
)


class AlertEvaluator:
    def __init__(self, rules: AlertRules | None = None) -> None:
        self.rules = rules or AlertRules()
        self.latest: dict[tuple[str, str, str], Sample] = {}
        self._waiting_history: dict[str, deque[float]] = defaultdict(
            lambda: deque(maxlen=self.rules.backlog_growing.ticks + 1)
        )
        self._evicted_previous: dict[str, float] = {}
        self._true_since: dict[tuple[str, str], float] = {}  # (rule, subject) -> first ts of the current streak

    def _value(self, source: str, target: str, metric: str) -> float | None:
        found = self.latest.get((source, target, metric))
        return found.value if found is not None else None

    def evaluate(self, samples: Iterable[Sample]) -> list[Sample]:
        """Record the batch, then evaluate every rule for the subjects it touched."""
        touched: dict[str, set[str]] = defaultdict(set)
        batch_ts = 0.0
        for s in samples:
            if s.source in (SOURCE, "collector"):
                continue
            self.latest[(s.source, s.target, s.metric)] = s
            touched[s.source].add(s.target)
            batch_ts = max(batch_ts, s.ts)
            if s.source == "bullmq" and s.metric == "waiting":
                self._waiting_history[s.target].append(s.value)
        out: list[Sample] = []
        for source, targets in touched.items():
            for target in sorted(targets):
                out.extend(self._rules(source, target, batch_ts))
        return out

    def _fire(self, rule: str, subject: str, condition: bool, message: str, ts: float) -> Sample | None:
        """The `firing` sample of one rule for one subject, honouring `enabled` and `for:`; None when disabled."""
        config = self.rules.rule(rule)
        key = (rule, subject)
        if not config.enabled:
            self._true_since.pop(key, None)
            return None
        text = ""
        if condition:
            since = self._true_since.setdefault(key, ts)
            firing = ts - since >= config.for_s
            # pending (condition true, `for:` not yet reached): firing stays 0, the text says so and since when,
            # so the Alerts page can list it (PENDING_PREFIX, dashboard/alerts_view.py)
            text = message if firing else f"{PENDING_PREFIX}{since:.0f}: {message}"
        else:
            self._true_since.pop(key, None)
            firing = False
        return REGISTRY.sample(f"{rule}/{subject}", "firing", 1 if firing else 0, ts, text=text)

    def _fault_rules(self, source: str, target: str, ts: float) -> list[Sample | None]:
        """Faults told apart (docs/operations.md): a dependency check failing on an instance that answers, and
        a managed nginx whose master is gone while its workers keep serving."""
        out: list[Sample | None] = []
        if source == "instance":
            up = self.latest.get((source, target, "up"))
            failing = self.latest.get((source, target, "failing_checks"))
            health = self.latest.get((source, target, "health_status"))
            if up is not None and failing is not None and health is not None:
                firing = up.value == 1 and failing.value > 0 and health.text in ("warn", "fail")
                out.append(self._fire("check_failing", target, firing,
                                      f"{target} answers, but its check(s) {failing.text} fail: a dependency"
                                      " outage, not an instance outage", ts))
        if source == "nginx" and ":" in target and "/" not in target:
            process = self.latest.get((source, target, "process_state"))
            if process is not None:
                out.append(self._fire("lb_master_gone", target, process.value != 0,
                                      f"{target}: nginx {process.text}", ts))
        return out

    def _rules(self, source: str, target: str, ts: float) -> list[Sample]:
        return [s for s in self._conditions(source, target, ts) if s is not None]

    def _conditions(self, source: str, target: str, ts: float) -> list[Sample | None]:
        r = self.rules
        value = self._value
        out: list[Sample | None] = []
        up = self.latest.get((source, target, "up"))
        if up is not None:
            rule = "instance_down" if source == "instance" else "target_down"
            subject = target if source == "instance" or ":" in target else f"{source}:{target}"
            out.append(self._fire(rule, subject, up.value == 0, f"{target} is down: {up.text or 'no answer'}", ts))
        out.extend(self._fault_rules(source, target, ts))
        if source == "bullmq" and "/" in target:
            waiting = value(source, target, "waiting") or 0
            workers = value(source, target, "workers")
            paused = value(source, target, "paused") or 0
            if workers is not None:
                out.append(
                    self._fire(
                        "queue_no_workers",
                        target,
                        waiting > 0 and workers == 0 and paused == 0,
                        f"{target}: {waiting:.0f} waiting and no worker connected",
                        ts,
                    )
                )
            history = list(self._waiting_history.get(target, ()))
            ticks = r.backlog_growing.ticks
            growing = len(history) == ticks + 1 and all(b > a for a, b in itertools.pairwise(history))
            out.append(
                self._fire(
                    "backlog_growing",
                    target,
                    growing,
                    f"{target}: waiting grew {ticks} ticks in a row ({history[0]:.0f} -> {history[-1]:.0f})"
                    if growing
                    else "",
                    ts,
                )
            )
            completed = value(source, target, "completed_per_s")
            failed = value(source, target, "failed_per_s")
            if completed is not None and failed is not None:
                total = completed + failed
                ratio = failed / total if total >= r.failure_ratio.min_jobs_per_s else 0.0
                out.append(
                    self._fire(
                        "failure_ratio",
                        target,
                        ratio > r.failure_ratio.threshold,
                        f"{target}: {ratio:.0%} of jobs fail ({failed:.2f}/s)",
                        ts,
                    )
                )
        if source == "redis":
            policy = self.latest.get((source, target, "maxmemory_policy"))
            if policy is not None:
                out.append(
                    self._fire(
                        "redis_eviction_policy",
                        target,
                        policy.value == 0,
                        f"{target}: maxmemory-policy is {policy.text}; BullMQ needs noeviction",
                        ts,
                    )
                )
            evicted = value(source, target, "evicted_keys")
            if evicted is not None:
                before = self._evicted_previous.get(target)
                self._evicted_previous[target] = evicted
                evicting = before is not None and evicted > before
                out.append(
                    self._fire(
                        "redis_evicting", target, evicting, f"{target}: evicting keys ({evicted:.0f} so far)", ts
                    )
                )
        if source == "postgres":
            headroom_ratio = value(source, target, "headroom_ratio")
            if headroom_ratio is not None:
                headroom = value(source, target, "headroom") or 0
                out.append(
                    self._fire(
                        "db_headroom",
                        target,
                        headroom_ratio < r.db_headroom.threshold,
                        f"{target}: only {headroom:.0f} connections left ({headroom_ratio:.0%} of the budget)",
                        ts,
                    )
                )
            waiters = value(source, target, "lock_waiters")
            if waiters is not None:
                out.append(
                    self._fire(
                        "lock_waiters",
                        target,
                        waiters > r.lock_waiters.threshold,
                        f"{target}: {waiters:.0f} sessions wait on a lock",
                        ts,
                    )
                )
        return out
