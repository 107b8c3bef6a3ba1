"""The dashboard driven as a person would, with Pilot, on real jobs (fake embedder, real LanceDB).

KBINGEST_FAKE_DELAY slows the fake embedder so that pause, resume, cancel and quit happen while
the job runs. Waits are polling loops with timeouts, never fixed long sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import pytest
from rich.table import Table
from rich.text import Text
from textual.pilot import Pilot

from kbingest.app.dashboard import HELP_KEYS, KbIngestApp
from kbingest.app.screens import KEY_NAMES, ConfirmCancelScreen, HelpScreen
from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import INTERRUPTED, open_store
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.models import DocumentError, JobConfig
from kbingest.pipeline.paths import Home
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.event_log import EventLog, diff_events
from kbingest.widgets.format import JobView
from kbingest.widgets.job_table import JobTable

pytestmark = pytest.mark.timeout(180)

SIZE = (100, 30)
DELAY = "0.04"  # seconds per chunk: ~130 chunks take ~5 s


def config(pages) -> JobConfig:
    # small commits and batches, so that there is something to see between pauses
    return JobConfig(sources=[str(pages)], kb="t", embedder="fake", commit_rows=16, batch_size=8)


async def wait_until(pilot: Pilot, cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def wait_exit(app: KbIngestApp, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.return_code is not None or not app.is_running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


_STORES: dict[str, object] = {}


def store_of(home: Home):
    """One JobStore per home for the whole test: opening a JobStore sweeps the store's temp files,
    which must not happen while the engine writes (see the note in the final report)."""
    key = str(home.root)
    if key not in _STORES:
        _STORES[key] = open_store(home)
    return _STORES[key]


def stored_status(home: Home, job_id: str) -> JobStatus:
    rec = store_of(home).get(job_id)
    assert rec is not None
    return rec.status.status


def embedded(job) -> int:
    return next(p.items_processed for p in job.snapshot().phase_details if p.name == "embedding")


def run(coro) -> None:
    asyncio.run(coro)


# ---- pause, resume, cancel -------------------------------------------------------------------
def test_pause_resume_cancel(home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", DELAY)
    store = store_of(home)
    job = IngestJob.create(home, store, config(pages))

    async def scenario() -> None:
        app = KbIngestApp(home, job, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: embedded(job) >= 16, "the job to embed its first batches")
            assert app.selected is not None and app.selected.job_id == job.job_id and app.selected.local
            assert app.check_action("pause", ()) is True
            assert app.check_action("resume", ()) is None  # a running job: resume greyed out

            await pilot.press("p")
            await wait_until(pilot, lambda: stored_status(home, job.job_id) == JobStatus.PAUSED, "paused in the store")
            await wait_until(pilot, lambda: app._live is None, "the job's worker to end")
            assert job.done.is_set()
            # nothing is written while paused
            kb = KnowledgeBase(home, "t")
            before = kb.count()
            for _ in range(10):
                await pilot.pause(0.1)
            assert KnowledgeBase(home, "t").count() == before
            view = app.selected
            assert view is not None and view.status == JobStatus.PAUSED and not view.local
            assert app.check_action("pause", ()) is None and app.check_action("resume", ()) is True

            await pilot.press("r")
            await wait_until(
                pilot,
                lambda: app._live is not None and app._live.snapshot().status == JobStatus.RUNNING,
                "the job to run again",
            )
            resumed = app._live
            assert resumed is not job and resumed.job_id == job.job_id

            await pilot.press("c")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmCancelScreen), "the confirmation")
            await pilot.press("n")
            await wait_until(
                pilot, lambda: not isinstance(app.screen, ConfirmCancelScreen), "the confirmation to close"
            )
            await pilot.pause(0.3)
            assert app._live is resumed and resumed.snapshot().status == JobStatus.RUNNING  # `n` keeps it running

            await pilot.press("c")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmCancelScreen), "the confirmation")
            await pilot.press("y")
            await wait_until(
                pilot, lambda: stored_status(home, job.job_id) == JobStatus.CANCELLED, "cancelled in the store"
            )
            await wait_until(pilot, lambda: app._live is None, "the job's worker to end")
            assert app.selected.status == JobStatus.CANCELLED
            assert app.check_action("cancel", ()) is None and app.check_action("resume", ()) is None
            # the event log tells the story, without a line per document
            lines = [e.text for e in app._events.of(job.job_id)]
            assert any("running → paused" in t for t in lines)
            assert any("→ cancelled" in t for t in lines)
            assert len(lines) < 60

    run(scenario())


def test_escape_refuses_cancel(home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", DELAY)
    job = IngestJob.create(home, store_of(home), config(pages))

    async def scenario() -> None:
        app = KbIngestApp(home, job, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: embedded(job) >= 8, "the job to run")
            await pilot.press("c")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmCancelScreen), "the confirmation")
            await pilot.press("escape")
            await wait_until(
                pilot, lambda: not isinstance(app.screen, ConfirmCancelScreen), "the confirmation to close"
            )
            assert job.snapshot().status == JobStatus.RUNNING
            await pilot.press("p")
            await wait_until(pilot, lambda: app._live is None, "the job to pause")
        assert stored_status(home, job.job_id) == JobStatus.PAUSED

    run(scenario())


# ---- quitting mid-run, then resuming in a new dashboard -------------------------------------
def test_quit_mid_run_pauses_and_a_new_dashboard_resumes(tmp_path, home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", DELAY)
    job = IngestJob.create(home, store_of(home), config(pages))

    async def first() -> None:
        app = KbIngestApp(home, job, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: embedded(job) >= 16, "the job to embed its first batches")
            await pilot.press("q")
            await wait_exit(app, "the dashboard to pause the job and quit")
        assert job.done.is_set()

    run(first())
    rec = store_of(home).get(job.job_id)
    assert rec.status.status == JobStatus.PAUSED
    assert "checkpoint saved" in rec.status.message

    async def second() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.selected is not None, "the job list")
            app.query_one(JobTable).select(job.job_id)
            await pilot.pause()
            assert app.selected.job_id == job.job_id and app.selected.status == JobStatus.PAUSED
            await pilot.press("r")
            await wait_until(
                pilot, lambda: stored_status(home, job.job_id) == JobStatus.COMPLETED, "the job to complete"
            )
            await wait_until(pilot, lambda: app._live is None, "the worker to end")
            assert app.selected.status == JobStatus.COMPLETED
            await pilot.press("q")
            await wait_exit(app, "the dashboard to quit")

    run(second())
    ids = KnowledgeBase(home, "t").ids()
    assert len(ids) == len(set(ids)), "no chunk id twice"

    # the same corpus, uninterrupted, in another home
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0")
    other = Home(tmp_path / "other-home").ensure()
    ref = IngestJob.create(other, store_of(other), config(pages))
    assert ref.run().status == JobStatus.COMPLETED
    assert set(ids) == set(KnowledgeBase(other, "t").ids())


# ---- interrupted jobs, one job at a time -----------------------------------------------------
def _interrupted_record(home: Home, pages) -> str:
    """A job recorded as running by a process that died (no writer lock held)."""
    store = store_of(home)
    job = IngestJob.create(home, store, config(pages))
    t = job.tracker
    t.set_status(JobStatus.RUNNING, "ingesting")
    snap = t.snapshot()
    store.update(job.job_id, lambda r: r.model_copy(update={"status": snap, "owner_pid": 999999}))
    return job.job_id


def test_interrupted_job_shows_paused_and_resumes(home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.005")
    job_id = _interrupted_record(home, pages)

    async def scenario() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.selected is not None, "the job list")
            v = app.selected
            assert v.job_id == job_id and v.status == JobStatus.PAUSED and v.interrupted
            assert v.snap.message == INTERRUPTED
            assert app.check_action("resume", ()) is True and app.check_action("pause", ()) is None
            await pilot.press("r")
            await wait_until(pilot, lambda: stored_status(home, job_id) == JobStatus.COMPLETED, "the job to complete")

    run(scenario())


def test_resume_refused_while_another_job_runs_here(home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", DELAY)
    other_id = _interrupted_record(home, pages)
    job = IngestJob.create(home, store_of(home), config(pages))

    async def scenario() -> None:
        app = KbIngestApp(home, job, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: embedded(job) >= 8, "the job to run")
            # the other job, recorded running, is shown interrupted while this process holds the engine
            await wait_until(pilot, lambda: other_id in app._views, "the other job")
            assert app._views[other_id].status == JobStatus.PAUSED
            assert app.selected.job_id == job.job_id  # the newest, at the top
            await pilot.press("down")
            assert app.selected.job_id == other_id
            await pilot.press("r")
            await pilot.pause()
            assert app._live is job, "the running job stays the one running"
            assert any("one job at a time" in e.text for e in app._events.of(None))  # a notice, in the events
            await pilot.press("up")
            assert app.selected.job_id == job.job_id
            await pilot.press("p")
            await wait_until(pilot, lambda: app._live is None, "the job to pause")

    run(scenario())


# ---- help, keys, footer ----------------------------------------------------------------------
def test_help_lists_every_key(home):
    async def scenario() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
            shown = {k for k, _ in app.screen.keys}
            text = " ".join(shown)
            for key in ("p", "r", "c", "?", "q", "ctrl+c", "up", "down"):
                assert key in text, f"{key} missing from the help"
            # every key bound in the dashboard is in the help
            for b in list(KbIngestApp.BINDINGS) + list(JobTable.BINDINGS):
                key = KEY_NAMES.get(b.key, b.key)
                assert key in text, f"{b.key} missing from the help"
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), "the help to close")

    run(scenario())
    assert [k for k, _ in HELP_KEYS][:5] == ["p", "r", "c", "?", "q, ctrl+c"]


def test_footer_shows_every_fixed_key(home):
    async def scenario() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            shown = {b.key: b for _, b, _, _ in app.screen.active_bindings.values() if b.show}
            for key in ("p", "r", "c", "question_mark", "q", "up"):
                assert key in shown, f"{key} not in the footer"
            assert shown["q"].key_display == "q/^c" and shown["up"].key_display == "↑↓"

    run(scenario())


# ---- untrusted text --------------------------------------------------------------------------
def test_file_names_are_shown_literally(home):
    """Names with markup, ANSI escapes and bidi overrides are escaped and never interpreted."""
    from kbingest.pipeline.job.tracker import PhaseTracker
    from kbingest.pipeline.models import JobRecord, iso, utcnow

    store = store_of(home)
    t = PhaseTracker("t-1", "t")
    t.set_status(JobStatus.RUNNING)
    t.set_status(JobStatus.FAILED, "failed in loading: [bold red]x[/]", error="boom \x1b[31m[link=x]y[/link]")
    evil = DocumentError(
        path="/d/[bold red]a[/].md\x1b[2J\u202egpj.md", phase="loading", kind="not_text", message="[i]bad[/i] \x07"
    )
    t.set_metric("document_errors", [evil.model_dump()])  # a job's document errors are stored in its status
    now = iso(utcnow())
    store.put(
        JobRecord(
            job_id="t-1", config=JobConfig(sources=["/d"], kb="t"), status=t.snapshot(), created_at=now, updated_at=now
        )
    )

    async def scenario() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            content = app.query_one("#error-text").content
            assert isinstance(content, Table)
            cells = [c for col in content.columns for c in col.cells]
            assert cells and all(isinstance(c, Text) for c in cells)  # literal Text: never parsed as markup
            plain = "\n".join(c.plain for c in cells)
            assert "[bold red]a[/].md\\x1b[2J\\u202egpj.md" in plain
            assert "[i]bad[/i] \\x07" in plain
            assert "\x1b" not in plain and "\u202e" not in plain
            log_text = " ".join(e.text for e in app._events.of("t-1"))
            assert "\x1b" not in log_text and "[link=x]y[/link]" in log_text

    run(scenario())


def test_summary_counts_documents_by_format(home):
    """A mixed folder: the job's summary says how many documents of each format the walk found."""
    from kbingest.pipeline.job.tracker import PhaseTracker
    from kbingest.pipeline.models import JobRecord, iso, utcnow

    t = PhaseTracker("mixed-1", "mixed")
    t.set_status(JobStatus.RUNNING)
    t.set_metric("documents_found", 10)
    t.set_metric("documents_by_format", {"pdf": 5, "markdown": 1, "html": 2, "docx": 2})
    now = iso(utcnow())
    store_of(home).put(
        JobRecord(
            job_id="mixed-1",
            config=JobConfig(sources=["/d"], kb="mixed"),
            status=t.snapshot(),
            created_at=now,
            updated_at=now,
        )
    )

    async def scenario() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.pause()
            summary = app.query_one("#summary").render()
            assert "10 docs found (2 docx, 2 html, 1 markdown, 5 pdf)" in str(summary)

    run(scenario())


# ---- the event log ---------------------------------------------------------------------------
def _view(**kw) -> JobView:
    from test_dashboard_snapshots import running_snapshot

    snap = running_snapshot()
    if kw:
        snap = snap.model_copy(update=kw)
    return JobView(job_id=snap.job_id, kb=snap.kb_id, snap=snap)


def test_events_come_from_changes_not_documents():
    a = _view()
    details = [p.model_copy(update={"items_processed": p.items_processed + 8}) for p in a.snap.phase_details]
    b = _view(phase_details=details, progress=46.0)
    assert diff_events(a, b) == []  # progress alone is no event
    c = _view(metrics=dict(a.snap.metrics, commits=4, chunks_indexed=496))
    assert [k for _, k in diff_events(a, c)] == ["info"]
    d = JobView(
        job_id=a.job_id,
        kb=a.kb,
        snap=a.snap.model_copy(update={"status": JobStatus.PAUSED, "message": "paused: checkpoint saved"}),
        errors=[DocumentError(path="/x.md", phase="loading", kind="too_large", message="big")],
    )
    texts = [t for t, _ in diff_events(a, d)]
    assert any("running → paused" in t for t in texts) and any("/x.md" in t for t in texts)


def test_event_log_is_bounded(home):
    async def scenario() -> None:
        app = KbIngestApp(home, None, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            log = app.query_one(EventLog)
            assert log.max_lines is not None and log.max_lines <= 1000
            await pilot.pause()

    run(scenario())


# ---- freezing the view is not pausing the work -------------------------------------------------
def shown_items(app: KbIngestApp, phase: str) -> str:
    from kbingest.widgets.phase_timeline import PhaseRow

    row = app._main.query_one(f"#phase-{phase}", PhaseRow)
    return row._sig[1] if row._sig else ""


def footer_actions(app: KbIngestApp) -> set[str]:
    return {b.binding.action for b in app.screen.active_bindings.values()}


def test_freezing_the_view_does_not_pause_the_work(home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", DELAY)
    job = IngestJob.create(home, store_of(home), config(pages))

    async def scenario() -> None:
        app = KbIngestApp(home, job, store=store_of(home))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: embedded(job) >= 8, "the job to embed its first batches")
            assert "freeze_view" in footer_actions(app) and "follow_view" not in footer_actions(app)
            await pilot.press("f")
            assert app.frozen and "follow_view" in footer_actions(app) and "freeze_view" not in footer_actions(app)
            await pilot.pause(0.3)
            shown, at = shown_items(app, "embedding"), embedded(job)
            await wait_until(pilot, lambda: embedded(job) >= at + 16, "the job to go on while the view is frozen")
            for _ in range(4):  # several poll periods
                await pilot.pause(0.1)
            assert shown_items(app, "embedding") == shown  # the screen stands still
            assert job.snapshot().status == JobStatus.RUNNING  # the work does not

            await pilot.press("f")
            assert not app.frozen
            await pilot.pause(0.3)
            assert shown_items(app, "embedding") != shown  # live again, with what happened meanwhile

            await pilot.press("f")  # frozen again, then steering a job unfreezes the view
            await pilot.press("p")
            assert not app.frozen
            await wait_until(pilot, lambda: app._live is None, "the job to pause")
        assert stored_status(home, job.job_id) == JobStatus.PAUSED

    run(scenario())
