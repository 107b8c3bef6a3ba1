"""The dashboard as an operator's instrument (issue 19) and console (issue 14 item 4): rate history,
queue gauges and starved/blocked flags, documents in flight, the error drill-down with its one-document
retry, the command palette and themes, the job list at scale, the new-job form and search.

Snapshots use the fixed states of test_dashboard_snapshots.py at 80x24 and 200x50; the Pilot tests
run the real engine (fake embedder) on real files and LanceDB.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from test_dashboard_snapshots import (
    T0,
    FakeJob,
    completed_record,
    failed_record,
    make_app,
    make_store,
    phase,
    record,
    running_snapshot,
    status,
)
from textual.pilot import Pilot

from kbingest.app.dashboard import KbIngestApp
from kbingest.app.screens import ChunkScreen, ErrorScreen, NewJobScreen, SearchScreen
from kbingest.pipeline.job.instrument import Sampler
from kbingest.pipeline.jobstore.preferences import read_settings, write_settings
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.service import InvalidInput, Service
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.instrument import flags, sparkline, trend
from kbingest.widgets.job_table import JobTable

pytestmark = pytest.mark.timeout(120)
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((200, 50), id="200x50")]


# ---- states --------------------------------------------------------------------------------------
def instrument_snapshot(starved: bool = False):
    """A running job with queue gauges, documents in flight, a commit batch and the slowest document."""
    snap = running_snapshot()
    metrics = {
        **snap.metrics,
        "queue_docs": {"depth": 16, "capacity": 16, "empty_s": 0.0, "full_s": 0.0},
        "queue_chunked": {
            "depth": 0 if starved else 9,
            "capacity": 16,
            "empty_s": 12.0 if starved else 0.0,
            "full_s": 0.0,
        },
        "queue_embedded": {"depth": 2, "capacity": 64, "empty_s": 0.0, "full_s": 0.0},
        "in_flight": {
            "chunking": [{"path": "/data/docs/guides/huge-reference.md", "size": 4_812_000}],
            "embedding": [
                {"path": "/data/docs/guides/deploy.md", "chunks": 37},
                {"path": "/data/docs/[bold]x[/b]\x1b[31m.md", "chunks": 4},
            ],
        },
        "commit_batch": {"documents": 3, "chunks": 112},
        "slowest_document": {"path": "/data/docs/guides/huge-reference.md", "phase": "embedding", "seconds": 41.3},
    }
    phases = list(snap.phase_details)
    if starved:  # chunking still runs (a huge document), embedding waits on it
        phases[1] = phase("chunking", "running", 30, 42, started=1.1, duration=120, rate=0.2, eta=60)
    return snap.model_copy(update={"metrics": metrics, "phase_details": phases})


def slowing_app(tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    snap = instrument_snapshot()
    app = make_app(home, store, FakeJob(snap))
    for i in range(60):  # 25 chunks/s falling to about 4 over the last minutes
        rate = 25.0 if i < 30 else max(4.0, 25.0 - (i - 30) * 1.5)
        app.rates.add(snap.job_id, "embedding", rate)
        app.rates.add(snap.job_id, "indexing", rate * 0.95)
    for i in range(20):
        app.rates.add(snap.job_id, "chunking", 16.0 + (i % 3))
    return app


def many_jobs(n: int = 200):
    statuses = ["completed", "completed", "completed", "paused", "failed", "cancelled", "pending"]
    recs = []
    for i in range(n):
        st = statuses[i % len(statuses)]
        kb = ("docs", "notes", "wiki", "handbook")[i % 4]
        done = st == "completed"
        snap = status(
            f"{kb}-20260504-{i:06d}",
            kb,
            st,
            [
                phase("loading", "completed" if done else "pending", 10, 10, started=0, duration=0.2),
                phase("chunking", "completed" if done else "pending", 10, 10, started=0.2, duration=1),
                phase("embedding", "completed" if done else "pending", 100, 100, started=1, duration=9),
                phase("indexing", "completed" if done else "pending", 100, 100, started=2, duration=1),
            ],
            100.0 if done else 0.0,
            "waiting for job docs-20260504-000001 on knowledge base docs" if st == "pending" else st,
            started=T0 - timedelta(minutes=i),
        )
        recs.append(record(snap, T0 - timedelta(minutes=i)))
    return recs


async def open_error(pilot: Pilot) -> None:
    pilot.app.query_one("#errors").focus()
    await pilot.pause()
    await pilot.press("down", "enter")
    await pilot.pause(0.3)


async def steady(pilot: Pilot, ready) -> None:
    """Wait until `ready()`, then stop every cursor blinking: the picture no longer depends on timing."""
    from textual.widgets import Input

    for _ in range(200):
        if ready():
            break
        await pilot.pause(0.05)
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause(0.3)
    await pilot.wait_for_scheduled_animations()


def _palette_listed(pilot: Pilot) -> bool:
    from textual.command import CommandList, CommandPalette

    screen = pilot.app.screen
    return isinstance(screen, CommandPalette) and screen.query_one(CommandList).option_count >= 10


async def open_palette(pilot: Pilot) -> None:
    await pilot.press("ctrl+p")
    await steady(pilot, lambda: _palette_listed(pilot))


async def open_form(pilot: Pilot) -> None:
    await pilot.press("n")
    await steady(pilot, lambda: isinstance(pilot.app.screen, NewJobScreen))
    pilot.app.screen.query_one("#kb").value = "docs"
    await steady(pilot, lambda: True)


# ---- snapshots -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_snapshot_slowing_job(snap_compare, tmp_path, size):
    assert snap_compare(slowing_app(tmp_path), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_starved_phase(snap_compare, tmp_path, size):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(instrument_snapshot(starved=True)))
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_in_flight(snap_compare, tmp_path, size):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(instrument_snapshot()))
    assert snap_compare(app, terminal_size=size, press=["i"])


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_error_modal(snap_compare, tmp_path, size):
    rec = failed_record()
    errors = [e.model_copy(update={"at": T0 + timedelta(seconds=30 + i)}) for i, e in enumerate(rec.status.errors)]
    rec = rec.model_copy(
        update={
            "status": rec.status.model_copy(
                update={"metrics": {**rec.status.metrics, "document_errors": [e.model_dump() for e in errors]}}
            )
        }
    )
    app = make_app(*make_store(tmp_path, [rec, completed_record()]))
    assert snap_compare(app, terminal_size=size, run_before=open_error)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_palette_open(snap_compare, tmp_path, size):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(running_snapshot()))
    assert snap_compare(app, terminal_size=size, run_before=open_palette)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_200_jobs(snap_compare, tmp_path, size):
    app = make_app(*make_store(tmp_path, many_jobs()))
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_new_job_form(snap_compare, tmp_path, size):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store)
    assert snap_compare(app, terminal_size=size, run_before=open_form)


# ---- Pilot tests on the real engine --------------------------------------------------------------
from test_dashboard import run, store_of, wait_until  # noqa: E402


def service_of(home) -> Service:
    return Service(home, store=store_of(home))


def finished_job(service: Service, sources: list[str], kb: str = "t") -> str:
    job = service.start(JobConfig(sources=sources, kb=kb, embedder="fake"))
    snap = job.run()
    assert snap.status == JobStatus.COMPLETED, snap.message
    return job.job_id


def stored(service: Service, job_id: str):
    return service.job(job_id).status


def test_retry_one_document_from_the_error_modal(home, pages):
    bad = pages / "broken.md"
    bad.write_bytes(b"# broken\x00\x01\x02 binary")
    service = service_of(home)
    job_id = finished_job(service, [str(pages)])
    first = stored(service, job_id)
    assert first.m.documents_failed == 1 and first.errors[0].path == str(bad) and first.errors[0].at is not None
    bad.write_text("# mended\n\nThis document reads as text now, and says so at some length.\n")

    async def scenario() -> None:
        app = KbIngestApp(service, None)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            app.query_one("#errors").focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ErrorScreen), "the error modal")
            assert app.screen.error.path == str(bad)
            await pilot.press("y")
            assert app.clipboard == str(bad)
            await pilot.press("r")
            await wait_until(
                pilot, lambda: app._live is None and not stored(service, job_id).m.documents_failed, "the retry to end"
            )

    run(scenario())
    after = stored(service, job_id)
    assert after.status == JobStatus.COMPLETED and not after.m.documents_failed
    # a pass over that document alone: the others were not walked again (a full pass skips them)
    this_pass = after.m.this_pass or {}  # job metrics are totals across passes (issue 14): the retry's own
    assert this_pass.get("documents_added") == 1 and not this_pass.get("documents_skipped")
    hits = service.search("t", "mended document reads as text", k=20)
    assert any(h.source == str(bad) for h in hits)


def test_filter_as_you_type_and_sort(tmp_path):
    home, store = make_store(tmp_path, many_jobs(40))

    async def scenario() -> None:
        app = make_app(home, store)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            table = app.query_one(JobTable)
            assert table.row_count == 40
            assert "18 completed" in str(table.border_title) and "5 pending" in str(table.border_title)
            await pilot.press("l", *"wiki")
            await wait_until(pilot, lambda: table.row_count == 10, "the filter")
            assert all("wiki" in key.value for key in table.rows)
            await pilot.press("space", *"pend")
            await wait_until(pilot, lambda: table.row_count < 10, "the second word")
            assert all(app._views[k.value].status == JobStatus.PENDING for k in table.rows)
            await pilot.press("escape")
            await wait_until(pilot, lambda: table.row_count == 40, "the filter to clear")
            await pilot.press("o")  # by status: failed before completed, pending before paused
            await pilot.pause()
            order = [
                app._views[table.coordinate_to_cell_key((r, 0)).row_key.value].status.value
                for r in range(table.row_count)
            ]
            assert order.index("pending") < order.index("paused") < order.index("failed") < order.index("completed")

    run(scenario())


def test_new_job_form_validates_then_starts_a_job(home, pages, monkeypatch):
    monkeypatch.setenv("KBINGEST_OFFER_FAKE_EMBEDDER", "1")  # the form offers the test embedder (app/view_model.py)
    service = service_of(home)

    async def scenario() -> None:
        app = KbIngestApp(service, None)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, NewJobScreen), "the form")
            form = app.screen
            form.query_one("#sources").value = str(pages / "missing")
            form.query_one("#kb").value = "fresh"
            form.query_one("#embedder").value = "fake"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, NewJobScreen)  # refused, said why
            assert "missing" in str(form.query_one("#form-error").render())
            form.query_one("#max_tokens").value = "3"
            form.query_one("#sources").value = str(pages)
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert "max_tokens" in str(form.query_one("#form-error").render())
            form.query_one("#max_tokens").value = "240"
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: not isinstance(app.screen, NewJobScreen), "the form to close")
            await wait_until(
                pilot,
                lambda: any(j.kb == "fresh" and j.status.status == JobStatus.COMPLETED for j in service.jobs()),
                "the job to complete",
            )

    run(scenario())
    assert "fresh" in service.knowledge_bases()


def test_search_pane_shows_hits_and_opens_a_chunk(home, pages):
    service = service_of(home)
    finished_job(service, [str(pages)], kb="t")

    async def scenario() -> None:
        app = KbIngestApp(service, None)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("slash")
            await wait_until(pilot, lambda: isinstance(app.screen, SearchScreen), "the search pane")
            screen = app.screen
            await pilot.press(*"security", "enter")
            await wait_until(pilot, lambda: bool(screen.hits), "hits")
            table = screen.query_one("#results")
            assert table.row_count == len(screen.hits) > 0
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ChunkScreen), "the chunk text")
            assert app.screen.hit.text == screen.hits[0].text

    run(scenario())


# ---- the parts -----------------------------------------------------------------------------------
class _Exec:
    def __init__(self) -> None:
        import queue

        self.queues = {"docs": queue.Queue(4), "chunked": queue.Queue(4), "embedded": queue.Queue(8)}
        self.current = {"chunking": None, "embedding": None}
        self.slowest = (2.5, "/d/slow.md", "embedding")
        self.stages = None


def test_sampler_times_empty_and_full_queues():
    now = [100.0]
    s = Sampler(clock=lambda: now[0])
    ex = _Exec()
    for _ in range(4):
        ex.queues["docs"].put(object())
    s.sample(ex)
    now[0] += 7
    m = s.sample(ex)
    assert m["queue_docs"] == {"depth": 4, "capacity": 4, "empty_s": 0.0, "full_s": 7.0}
    assert m["queue_chunked"]["empty_s"] == 7.0 and m["queue_chunked"]["full_s"] == 0.0
    assert m["slowest_document"] == {"path": "/d/slow.md", "phase": "embedding", "seconds": 2.5}
    ex.capacity = {"docs": 4, "chunked": 4, "embedded": 8}
    idle = s.idle(ex)
    assert idle["in_flight"] == {} and idle["queue_docs"] == {"depth": 0, "capacity": 4, "empty_s": 0.0, "full_s": 0.0}


def test_flags_name_the_neighbour_to_blame():
    snap = instrument_snapshot(starved=True)
    assert flags(snap) == [("embedding", "embedding starved: waiting on chunking for 12s")]
    full = snap.model_copy(
        update={"metrics": {**snap.metrics, "queue_docs": {"depth": 16, "capacity": 16, "empty_s": 0, "full_s": 9.0}}}
    )
    assert ("loading", "loading blocked: chunking is behind, queue full for 9.0s") in flags(full) or any(
        p == "loading" and "blocked" in why and "chunking" in why for p, why in flags(full)
    )
    assert flags(running_snapshot()) == []


def test_sparkline_and_trend():
    assert sparkline([0, 8], 2) == "▁█" and sparkline([0, 0], 3) == "▁▁"
    line = sparkline([1, 2, 4, 8], 4)
    assert list(line) == sorted(line) and line[-1] == "█"
    assert len(sparkline(list(range(100)), 10)) == 10
    assert trend([20.0] * 30 + [5.0] * 10) == "slowing"
    assert trend([20.0] * 40) == ""


def test_settings_are_written_atomically_and_never_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"theme": "victim"}')
    root = tmp_path / "home"
    root.mkdir()
    (root / "settings.json").symlink_to(target)
    assert read_settings(root) == {}  # not read through the link
    write_settings(root, {"theme": "nord"})
    assert target.read_text() == '{"theme": "victim"}'
    assert not (root / "settings.json").is_symlink() and read_settings(root) == {"theme": "nord"}
    (root / "settings.json").write_text("{not json")
    assert read_settings(root) == {}


def test_theme_is_kept_between_runs(home):
    async def once(theme=None) -> str:
        app = KbIngestApp(service_of(home), None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            if theme:
                app.theme = theme
                await pilot.pause()
            return app.theme

    assert asyncio.run(once("nord")) == "nord"
    assert read_settings(home.root)["theme"] == "nord"
    assert asyncio.run(once()) == "nord"


def test_no_color_is_honoured(home, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert KbIngestApp(service_of(home), None).no_color


def test_retry_of_paths_outside_the_sources_is_refused(home, pages, tmp_path):
    bad = pages / "broken.md"
    bad.write_bytes(b"\x00\x01")
    service = service_of(home)
    job_id = finished_job(service, [str(pages)])
    with pytest.raises(InvalidInput):
        service.retry(job_id, paths=[str(tmp_path / "other" / "x.md")])


def test_batch_lines_carry_the_gauges_and_validate(home, pages, status_validator):
    import json

    from conftest import run_cli

    r = run_cli("ingest", str(pages), "--kb", "t", "--embedder", "fake", "--batch", home=home.root)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    for line in lines:
        status_validator.validate(line)
    last = lines[-1]["metrics"]
    assert last["queue_docs"]["capacity"] > 0 and last["in_flight"] == {}
    assert last["slowest_document"]["seconds"] >= 0


def test_200_jobs_refresh_fast(tmp_path):
    """With 200 jobs a poll that changes nothing costs little, and a filter keystroke too."""
    import time as _time

    home, store = make_store(tmp_path, many_jobs(200))

    async def scenario() -> None:
        app = make_app(home, store)
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.pause()
            items = app._read_store()
            t0 = _time.perf_counter()
            for _ in range(5):
                app._apply_records(items)
            steady = (_time.perf_counter() - t0) / 5
            t0 = _time.perf_counter()
            app.filter_text = "wiki"
            app._refresh_views(force=True)
            filtered = _time.perf_counter() - t0
            assert app.query_one(JobTable).row_count == 50
            assert steady < 0.25 and filtered < 0.5, (steady, filtered)

    run(scenario())


def test_pending_and_watch_rows_say_their_place_and_last_sync():
    """Issue 14: the job list shows a pending job's reason and its place in line, a watch job's last sync."""
    from datetime import timezone

    from kbingest.pipeline.models import JobStatusResponse, PhaseDetail
    from kbingest.widgets.format import JobView
    from kbingest.widgets.job_table import note

    phases = [PhaseDetail(name=p) for p in ("loading", "chunking", "embedding", "indexing")]
    pending = JobStatusResponse(
        job_id="b-1",
        kb_id="a",
        status="pending",
        phase="loading",
        phase_details=phases,
        message="pending: waiting for job a-1 on knowledge base a",
        metrics={"queue_position": 2, "waiting_for": "a-1"},
    )
    v = JobView(job_id="b-1", kb="a", snap=pending, errors=[], created_at="2026-12-02T00:00:00Z")
    assert note(v, timezone.utc) == "#2 in line · pending: waiting for job a-1 on knowledge base a"
    from kbingest.pipeline.status import JobStatus

    watch = pending.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "message": "watching 1 source(s) for changes",
            "metrics": {"watch_bursts": 3, "last_synced_at": "2026-12-02T10:11:12.000Z"},
        }
    )
    assert (
        note(JobView(job_id="w-1", kb="w", snap=watch, errors=[], created_at="2026-12-02T00:00:00Z"), timezone.utc)
        == "watching · synced 10:11:12"
    )


def test_blocked_names_the_stage_whose_input_is_full_and_output_has_room():
    """Issue 30 item 4: loading's queue full while chunking's is full too: embedding is the cause."""
    snap = instrument_snapshot()
    full = {"depth": 16, "capacity": 16, "empty_s": 0.0, "full_s": 9.0}
    both = snap.model_copy(update={"metrics": {**snap.metrics, "queue_docs": full, "queue_chunked": full}})
    assert flags(both) == [
        ("loading", "loading blocked: embedding is behind, queue full for 9.0s"),
        ("chunking", "chunking blocked: embedding is behind, queue full for 9.0s"),
    ]
    one = snap.model_copy(update={"metrics": {**snap.metrics, "queue_docs": full}})
    assert flags(one) == [("loading", "loading blocked: chunking is behind, queue full for 9.0s")]
