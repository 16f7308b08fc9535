"""The Queues page's job browser and actions, with hostile strings in queue names, job names and errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from bullmq import FlowProducer, Queue, Worker
from streamlit.testing.v1 import AppTest

from core.config import load_config
from core.store import Store
from dashboard import queue_panel
from dashboard.safe_text import MAX_INLINE, md
from tests.support_queues import write_queue_config

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
QUEUE = "pay*ments_[x]"
JOB_NAME = "**bold** :red[red] $x$ <b>"
REASON = "<b>boom</b> **not bold** [link](http://example.com)"


def _seed(redis_url: str, prefix: str) -> list[str]:
    async def run() -> list[str]:
        conn = {"connection": redis_url, "prefix": prefix}
        queue = Queue(QUEUE, conn)

        async def fail(job, token):  # type: ignore[no-untyped-def]
            raise RuntimeError(REASON)

        worker = Worker(QUEUE, fail, conn)
        ids = [(await queue.add(JOB_NAME, {"i": i}, {"attempts": 1})).id for i in range(2)]
        deadline = time.monotonic() + 20
        while await queue.getFailedCount() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await worker.close()
        await queue.close()
        return ids

    return asyncio.run(run())


def _markdown_texts(app: AppTest) -> list[str]:
    out = []
    for kind in ("markdown", "error", "warning", "info", "success", "caption", "title", "subheader"):
        out.extend(str(e.value) for e in getattr(app, kind))
    return out


def test_browse_escapes_outside_strings_and_retry_all_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           redis_url: str, redis_prefix: str) -> None:
    ids = _seed(redis_url, redis_prefix)
    path = write_queue_config(tmp_path, redis_url, redis_prefix)
    monkeypatch.setenv("FLEETDECK_CONFIG", str(path))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.session_state["fd_principal"] = ("olga", "operator", "dashboard")
    app.run()
    app.switch_page("app_pages/queues.py").run()
    assert not app.exception, [e.value for e in app.exception]
    name = f"main/{redis_prefix}:{QUEUE}"
    app.selectbox(key="fd_browse_queue").set_value(name).run()
    app.text_input(key="fd_queue_job_id").set_value(ids[0]).run()
    assert not app.exception, [e.value for e in app.exception]
    shown = _markdown_texts(app)
    # raw outside strings never reach Markdown; their escaped forms do
    for raw in ("**bold**", ":red[red]", "$x$", "<b>", "**not bold**", "[link]", "pay*ments_[x]"):
        assert not any(raw in text for text in shown), raw
    assert any(md(JOB_NAME, MAX_INLINE) in text for text in shown)
    assert any(md(name, MAX_INLINE) in text for text in shown)
    # tables and code blocks show the text as it is
    jobs = app.dataframe(key="fd_queue_jobs").value
    assert set(jobs["name"]) == {JOB_NAME} and set(jobs["failed reason"]) == {REASON}
    reasons = next(d.value for d in app.dataframe if "reason" in d.value.columns)
    assert list(reasons["reason"]) == [REASON] and list(reasons["jobs"]) == [2]
    assert any(REASON in str(code.value) for code in app.code)
    store = Store(load_config(str(path)).store_url)
    # act on the job shown: retry it → preview → run; progress and result come from the store
    app.button(key="fd-q-queue_retry").click().run()
    assert any(f"move failed job {ids[0]}" in text for text in _markdown_texts(app))
    app.button(key="fd-q-run").click().run()
    status = queue_panel.wait_for(store, app.session_state[queue_panel.LAST_OP_KEY])
    assert status["state"] == "ok" and status["after"]["counts"]["failed"] == 1, status
    # then all the failed ones left
    app.button(key="fd-q-retry-all").click().run()
    assert any("retry all 1 failed job" in text for text in _markdown_texts(app))
    app.button(key="fd-q-run").click().run()
    status = queue_panel.wait_for(store, app.session_state[queue_panel.LAST_OP_KEY])
    assert status["state"] == "ok" and status["after"]["counts"]["failed"] == 0, status
    assert status["after"]["counts"]["waiting"] == 2
    app.run()  # the live panel reads the finished op back from the store
    assert any("ok" in text and "retried 1 failed job" in text for text in _markdown_texts(app))
    store.close()


def test_viewer_sees_disabled_actions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str,
                                      redis_prefix: str) -> None:
    _seed(redis_url, redis_prefix)
    monkeypatch.setenv("FLEETDECK_CONFIG", str(write_queue_config(tmp_path, redis_url, redis_prefix)))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.switch_page("app_pages/queues.py").run()
    app.selectbox(key="fd_browse_queue").set_value(f"main/{redis_prefix}:{QUEUE}").run()
    assert not app.exception
    for key in ("fd-q-retry-all", "fd-q-drain", "fd-q-clean", "fd-q-obliterate"):
        assert app.button(key=key).disabled


def test_md_escape_makes_outside_text_inert() -> None:
    escaped = md("# head\n**b** :red[x] $y$ `c` <i> [l](u)\x1b")
    assert "\n" not in escaped and "\x1b" not in escaped
    for special in "#*:[]$`<>()":
        assert all(escaped[i - 1] == "\\" for i, ch in enumerate(escaped) if ch == special)
    assert md("x" * 1000, MAX_INLINE).endswith("…") and len(md("x" * 1000, MAX_INLINE)) == 301


def test_job_view_opens_a_child_of_the_flow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str,
                                            redis_prefix: str) -> None:
    async def seed() -> str:
        flow = FlowProducer({"connection": redis_url, "prefix": redis_prefix})
        node = await flow.add({"name": "parent", "queueName": "flows",
                               "children": [{"name": "child-one", "queueName": "flows"}]})
        await flow.close()
        return node["job"].id if isinstance(node, dict) else node.job.id

    parent_id = asyncio.run(seed())
    monkeypatch.setenv("FLEETDECK_CONFIG", str(write_queue_config(tmp_path, redis_url, redis_prefix)))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.switch_page("app_pages/queues.py").run()
    app.selectbox(key="fd_browse_queue").set_value(f"main/{redis_prefix}:flows").run()
    app.text_input(key="fd_queue_job_id").set_value(parent_id).run()
    assert any("parent" in text and "waiting\\-children" in text for text in _markdown_texts(app))
    app.button(key="fd-q-open-0").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("child\\-one" in text for text in _markdown_texts(app))
