"""Issue 30 item 5 at 80x24 and 200x50: the dashboard's notices go to the events pane (no toast over
the panes), and the errors pane lists every failed document, each reachable by scrolling."""

from __future__ import annotations

import asyncio

import pytest
from test_dashboard_snapshots import FakeJob, completed_record, make_app, make_store, running_snapshot
from test_dashboard_snapshots import failed_record as three_errors
from textual.geometry import Region

from kbingest.pipeline.models import DocumentError, JobRecord
from kbingest.widgets.error_pane import ErrorPane
from kbingest.widgets.event_log import EventLog

pytestmark = pytest.mark.timeout(120)
SIZES = [(80, 24), (200, 50)]


def _log_text(app) -> str:
    return "\n".join(strip.text for strip in app.query_one(EventLog).lines)


def test_a_notice_goes_to_the_events_pane_and_no_toast_covers_the_panes(tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    job = FakeJob(running_snapshot())

    async def scenario() -> None:
        app = make_app(home, store, job)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("o")  # sort: a notice
            await pilot.pause()
            assert "jobs sorted by status" in _log_text(app)
            toasts = list(app.screen.query("Toast"))
            panes = [w.region for w in app.screen.query(".pane")]
            assert panes and not any(t.region.overlaps(p) for t in toasts for p in panes), toasts
            assert not app._notifications
            app._say("theme not kept: disk full", severity="warning")  # a warning keeps its mark
            await pilot.pause()
            assert "⚠ theme not kept: disk full" in _log_text(app)
            job.pause()

    asyncio.run(scenario())


def four_errors() -> JobRecord:
    """The failed job of the snapshots with a fourth error, in another document and phase."""
    rec = three_errors()
    errors = list(rec.status.m.document_errors or [])
    errors.append(
        DocumentError(
            path="/data/docs/reference/zz-last.md",
            phase="indexing",
            kind="indexing_failed",
            message="the table refused the rows: disk full",
        )
    )
    metrics = {**rec.status.metrics, "documents_failed": 4, "document_errors": [e.model_dump() for e in errors]}
    return rec.model_copy(update={"status": rec.status.model_copy(update={"metrics": metrics})})


def _visible(pane: ErrorPane) -> str:
    """The text of the errors pane's lines in sight now (its scroll position, its height)."""
    static = pane.query_one("#error-text")
    height = pane.scrollable_content_region.height
    lines = static.render_lines(Region(0, int(pane.scroll_y), static.size.width, height))
    return "\n".join(line.text for line in lines)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "200x50"])
def test_the_errors_pane_lists_every_error_each_reachable(tmp_path, size):
    rec = four_errors()
    home, store = make_store(tmp_path, [rec, completed_record()])
    paths = [e.path for e in rec.status.m.document_errors]
    marks = ["boom", "evil", "very-long-folder", "zz-last"]  # a piece of each path as shown (escaped)

    async def scenario() -> None:
        app = make_app(home, store)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            pane = app.query_one(ErrorPane)
            assert pane.count == 4 and "errors (4 documents)" in str(pane.border_title)
            pane.focus()
            await pilot.pause()
            for i, path in enumerate(paths):
                assert pane.cursor == i and pane.selected_error.path == path
                visible = _visible(pane)
                assert marks[i] in visible, (i, visible)  # the selected one is in sight
                await pilot.press("down")
                await pilot.pause()
            assert pane.cursor == 3  # the last stays selected

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "200x50"])
def test_snapshot_four_errors_scrolled_to_the_last(snap_compare, tmp_path, size):
    home, store = make_store(tmp_path, [four_errors(), completed_record()])

    async def to_the_last(pilot) -> None:
        pilot.app.query_one(ErrorPane).focus()
        for _ in range(3):
            await pilot.press("down")
        await pilot.pause()

    assert snap_compare(make_app(home, store), terminal_size=size, run_before=to_the_last)
