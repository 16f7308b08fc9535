"""Scoring and levels (pure), CSV export, and the exported report: the HTML opens in headless Chromium with its
Plotly charts and no console errors, and the PDF Chromium prints holds the rules table (read with pdftotext)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from actions.proving import report
from actions.proving.scorecard import (
    LEVELS,
    RULES,
    facts_csv,
    history,
    level_reached,
    parse_rule_selection,
    rules_of,
    score,
)
from core.store import Fact, Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def facts_for(statuses: dict[str, str], run_id: str = "readiness-t", ts: float = 1_700_000_000.0) -> list[Fact]:
    return [Fact(index, run_id, rule, next(r.level for r in RULES if r.id == rule), "web", ts + index, status,
                 f"observed {rule}", {"detail": index}) for index, (rule, status) in enumerate(statuses.items())]


def all_rules(status: str) -> dict[str, str]:
    return {rule.id: status for rule in RULES}


def test_levels_need_every_rule_of_that_level_and_below() -> None:
    statuses = all_rules("pass")
    assert level_reached(statuses) == "Gold"
    statuses["observability"] = "warn"
    assert level_reached(statuses) == "Silver"
    statuses["stateless_sessions"] = "fail"  # a Bronze failure caps everything, even with Silver all green
    assert level_reached(statuses) is None
    only_bronze = {r.id: "pass" for r in rules_of("Bronze")}
    assert level_reached(only_bronze) == "Bronze"  # unmeasured Silver rules do not pass
    gold_without_silver = {**only_bronze, **{r.id: "pass" for r in rules_of("Gold")}}
    assert level_reached(gold_without_silver) == "Bronze"


def test_points_percent_and_latest_fact_wins() -> None:
    card = score(facts_for(all_rules("pass")))
    assert card.percent == pytest.approx(100.0) and card.level == "Gold"
    statuses = all_rules("pass") | {"linear_scaling": "warn", "observability": "unknown"}
    card = score(facts_for(statuses))
    total = sum(r.points for r in RULES)
    assert card.earned == pytest.approx(total - 20 * 0.5 - 20)
    assert card.percent == pytest.approx(100 * card.earned / total)
    assert card.level == "Silver"
    assert card.level_status("Gold") == "unknown"
    # a rule measured twice in a run counts once, at its newest result
    twice = facts_for({"stateless_sessions": "fail"}) + facts_for({"stateless_sessions": "pass"}, ts=1_800_000_000)
    assert next(r for r in score(twice).results if r.rule.id == "stateless_sessions").status == "pass"


def test_rule_selection() -> None:
    assert [r.id for r in parse_rule_selection("bronze")] == [r.id for r in rules_of("Bronze")]
    assert len(parse_rule_selection("silver")) == len(rules_of("Bronze")) + len(rules_of("Silver"))
    assert [r.id for r in parse_rule_selection("observability,stateless_sessions")] == [
        "stateless_sessions", "observability"]
    assert len(parse_rule_selection(None)) == len(RULES) == len(parse_rule_selection("all"))
    with pytest.raises(ValueError, match="unknown rule"):
        parse_rule_selection("platinum")


def test_history_and_csv_from_the_store(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/store.db")
    for fact in facts_for({r.id: "pass" for r in rules_of("Bronze")}, "readiness-a", 1_700_000_000):
        store.add_fact(fact._replace(id=None))
    for fact in facts_for(all_rules("pass") | {"observability": "fail"}, "readiness-b", 1_700_100_000):
        store.add_fact(fact._replace(id=None))
    store.add_fact(facts_for({"linear_scaling": "pass"}, "scaling-x")[0]._replace(id=None))
    runs = history(store.facts(), "readiness-")
    assert [(r.run_id, r.level) for r in runs] == [("readiness-a", "Bronze"), ("readiness-b", "Silver")]
    assert runs[1].failed == 1 and runs[1].measured == len(RULES)
    rows = list(csv.DictReader(io.StringIO(facts_csv(store.facts(run_id="readiness-b")))))
    assert len(rows) == len(RULES)
    assert {row["status"] for row in rows} == {"pass", "fail"}
    assert json.loads(rows[0]["evidence"]) == {"detail": 0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    facts = facts_for(all_rules("pass") | {"zero_downtime_drain": "fail", "observability": "warn"})
    runs = history(facts_for({r.id: "pass" for r in rules_of("Bronze")}, "readiness-0", time.time() - 3600) + facts)
    scaling_run = {"steps": [
        {"replicas": 1, "throughput": 400.0, "in_fit": True, "efficiency": 1.0},
        {"replicas": 2, "throughput": 720.0, "in_fit": True, "efficiency": 0.9},
        {"replicas": 3, "throughput": 900.0, "in_fit": False, "efficiency": None}],
        "fit": {"lam": 400.0, "sigma": 0.11, "kappa": 0.0, "peak_n": None}}
    html = report.render_html(score(facts, "readiness-t"), facts, runs, scaling_run)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html)
    return html, path


def test_html_is_self_contained(exported: tuple[str, Path]) -> None:
    html, _ = exported
    # plotly.js itself mentions its CDN (for geo maps we never draw); what matters is that nothing is loaded
    assert "<script" not in html and "<link " not in html
    # static SVG charts: a report of a few dozen KB, not 4.8 MB of plotly.js
    assert html.count("<svg ") == 3
    assert len(html.encode()) < 200_000, len(html.encode())
    assert 'id="level-badge">Silver<' in html
    # status marks are text badges: no emoji a server without an emoji font would print as empty boxes
    assert not any(0x1F300 <= ord(ch) <= 0x1FAFF or 0x2600 <= ord(ch) <= 0x27BF for ch in html)


def test_html_opens_in_chromium_with_charts_and_no_console_errors(exported: tuple[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    _, path = exported
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(path.as_uri())
            page.wait_for_selector(".chart svg", timeout=20_000)
            assert page.locator(".chart svg").count() == 3
            assert page.locator(".chart svg polyline").count() >= 3  # trend, measured, linear, USL lines
            assert page.locator("#rules tbody tr").count() == len(RULES)
            assert page.locator("#rules .status-fail").count() == 1
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith("file://") for url in requests), requests  # nothing from the network


def test_pdf_holds_the_rules_table(exported: tuple[str, Path], tmp_path: Path) -> None:
    assert shutil.which("pdftotext"), "pdftotext (poppler-utils) is needed to read the PDF"
    html, _ = exported
    pdf = report.print_pdf(report.printable(html), tmp_path / "report.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    for rule in RULES:
        assert rule.title in text, rule.title
    assert "Silver" in text and "Zero-downtime drain" in text
    for level in LEVELS:
        assert level in text
    # evidence is printed expanded (it was a collapsed "evidence" line), and no Plotly toolbar is printed
    assert text.count('"detail":') == len(RULES)
    assert "Download plot as a png" not in text and "Produced with Plotly" not in text
