"""Outside strings shown on a page cannot become Markdown: an image link in a queue name stays text (no fetch),
an error text cannot fake a link or a badge. The browser test checks that no request leaves 127.0.0.1."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.samples import Sample
from core.store import Store
from dashboard.safe_text import md, md_code

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
IMAGE = "![x](http://203.0.113.9/p.png)"
HOSTILE = [IMAGE, "[click](javascript:alert(1))", ":red[FAKE] :material/warning:", "**bold** _it_ `code`",
           "<img src=http://203.0.113.9/p.png>", "$x^2$", "# heading\n- item", "a\\](http://203.0.113.9)"]
# a Markdown-active character not preceded by a backslash (the escape md() puts in front of each)
UNESCAPED = re.compile(r"(?<!\\)[!\[\]()<>*_`:$#-]")


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@pytest.mark.parametrize("value", HOSTILE)
def test_md_leaves_nothing_active_and_reads_the_same(value: str) -> None:
    escaped = md(value)
    assert not UNESCAPED.search(escaped.replace("\\\\", "")), escaped
    assert unescape(escaped) == value.replace("\n", " ")
    assert "`" not in md_code(value) and "\n" not in md_code(value)


def test_queue_name_with_an_image_link_is_shown_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_file = tmp_path / "fleetdeck.db"
    config = tmp_path / "fleet.yaml"
    config.write_text(f"""
state_dir: {tmp_path / "run"}
services:
  - {{name: web, command: "true {{port}} {{instance_id}}", ports: {{start: 20000, end: 20010}}}}
store: {{url: "sqlite:///{store_file}"}}
dashboard: {{embedded_collector: false}}
""")
    target = f"main/bull:{IMAGE}"
    now = time.time()
    store = Store(f"sqlite:///{store_file}")
    store.write_samples([Sample("bullmq", "main", "up", 1, now, "bool"),
                         Sample("bullmq", target, "waiting", 5, now, "count"),
                         Sample("bullmq", target, "workers", 0, now, "count"),
                         Sample("bullmq", target, "oldest_waiting_age_s", 90, now, "s")])
    store.close()
    monkeypatch.setenv("FLEETDECK_CONFIG", str(config))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.switch_page("app_pages/queues.py").run()
    assert not app.exception, [e.value for e in app.exception]
    shown = [e.value for e in [*app.markdown, *app.error, *app.caption]]
    with_name = [text for text in shown if "203.0.113.9" in unescape(text)]
    assert with_name, shown  # the queue is on the page ...
    for text in with_name:  # ... and every place it appears keeps the link inert (escaped, or in a code span)
        assert IMAGE not in text.replace(f"`{md_code(target)}`", ""), text
    assert any(unescape(e.value).startswith(f"**{target}**") for e in app.error), [e.value for e in app.error]
