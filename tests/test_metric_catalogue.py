"""Every metric the dashboard reads is declared by a collector (collectors/catalogue.py).

Fast tier: no services. The names are read from the dashboard's source (every call that names a metric with a
string literal), so a chart or a tile that asks for a metric no collector writes fails here, not as an empty
panel in production.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from collectors import catalogue
from tests.support import REPO_ROOT

pytestmark = pytest.mark.fast

# call name -> (index of the source argument or None when the call does not name one, index of the metric argument)
METRIC_CALLS: dict[str, tuple[int | None, int]] = {
    "fetch": (2, 3),
    "latest_by_target": (1, 2),
    "labelled_latest": (1, 2),
    "value_of": (None, 1),
    "text_of": (None, 1),
}
KEYWORD_CALLS = ("latest", "find_series")  # store.latest(source=..., metric=...), store.find_series(...)


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def dashboard_metric_reads() -> list[tuple[str, str | None, str]]:
    """(file:line, source or None, metric) for every metric the dashboard names with a literal."""
    found: list[tuple[str, str | None, str]] = []
    root = Path(REPO_ROOT)
    for path in sorted((root / "dashboard").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            where = f"{path.relative_to(root)}:{node.lineno}"
            if name in METRIC_CALLS:
                source_at, metric_at = METRIC_CALLS[name]
                if len(node.args) > metric_at and (metric := _literal(node.args[metric_at])) is not None:
                    source = _literal(node.args[source_at]) if source_at is not None else None
                    found.append((where, source, metric))
            elif name in KEYWORD_CALLS:
                keywords = {k.arg: _literal(k.value) for k in node.keywords}
                if keywords.get("metric") is not None:
                    found.append((where, keywords.get("source"), str(keywords["metric"])))
    return found


def test_every_metric_the_dashboard_reads_is_declared() -> None:
    reads = dashboard_metric_reads()
    # the scan must actually see the dashboard's reads (a refactor that hides them would make this test vacuous)
    assert len({metric for _, _, metric in reads}) >= 30, reads
    any_source = {name for metrics in catalogue.CATALOGUE.values() for name in metrics}
    undeclared = [
        (where, source, metric) for where, source, metric in reads
        if not (catalogue.declared(source, metric) if source is not None else metric in any_source)
    ]
    assert undeclared == []


def test_an_undeclared_metric_is_refused_by_name() -> None:
    assert catalogue.metric("instance", "up") == "up"
    with pytest.raises(KeyError, match="no_such_metric"):
        catalogue.metric("instance", "no_such_metric")


def test_the_catalogue_covers_every_source_the_pages_read() -> None:
    # _catalogue() itself raises when a source declares one metric with two units
    assert {"instance", "nginx", "bullmq", "redis", "postgres", "alert", "collector"} <= set(catalogue.sources())
