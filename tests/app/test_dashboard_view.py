"""The dashboard's view model (app/view_model.py, no terminal), and what it changes on screen (issue 30
items 1 and 5): jobs of other processes shown as running, ids never cut in the middle, no status said
twice, no test embedder offered, search results by their path in the source, the job's ETA first;
and the key table of docs/dashboard.md complete (issue 38 item 3)."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
from conftest import REPO
from test_dashboard_snapshots import NOW, FakeJob, completed_record, make_app, make_store, record, running_snapshot

from kbingest.app import view_model as vm
from kbingest.app.dashboard import KbIngestApp
from kbingest.app.screens import KEY_NAMES
from kbingest.pipeline.locking import FileLock
from kbingest.pipeline.models import iso, utcnow
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.event_log import diff_events
from kbingest.widgets.format import JobView

pytestmark = pytest.mark.timeout(120)


# ---- the view model, without a terminal ---------------------------------------------------------
def test_view_model_imports_no_textual():
    import ast

    tree = ast.parse((REPO / "app" / "view_model.py").read_text())
    mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    mods += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in mods if m.split(".")[0] in ("textual", "rich")], mods


def test_job_ids_keep_their_unique_end():
    jid = "docs-20260504-093000-a1b2c3"
    assert vm.fit_job_id(jid, "docs", 40) == jid
    assert vm.fit_job_id(jid, "docs", 25) == "d…-20260504-093000-a1b2c3"  # the name is cut, not the id
    long_kb = "handbook-of-operations"
    lid = f"{long_kb}-20260504-093000-a1b2c3"
    assert vm.fit_job_id(lid, long_kb, 30) == "handbo…-20260504-093000-a1b2c3"
    for w in (4, 12, 20):
        cut = vm.fit_job_id(lid, long_kb, w)
        assert len(cut) == w and cut.endswith("c3") and cut.startswith("…")


def test_a_status_is_never_said_twice():
    assert vm.status_text("completed", "completed: 40 added") == "completed: 40 added"
    assert vm.status_text("paused", "paused: checkpoint saved") == "paused: checkpoint saved"
    assert vm.status_text("paused", "paused") == "paused"
    assert vm.status_text("running", "ingesting") == "running: ingesting"
    assert vm.status_text("paused", "pausedness") == "paused: pausedness"
    snap = running_snapshot()
    a = JobView(job_id=snap.job_id, kb="docs", snap=snap)
    b = JobView(
        job_id=snap.job_id,
        kb="docs",
        snap=snap.model_copy(
            update={"status": JobStatus.PAUSED, "message": "paused: checkpoint saved; resume to continue"}
        ),
    )
    c = JobView(
        job_id=snap.job_id,
        kb="docs",
        snap=snap.model_copy(update={"status": JobStatus.COMPLETED, "message": "completed: 40 added"}),
    )
    texts = [t for t, _ in diff_events(a, b) + diff_events(None, c) + diff_events(b, c)]
    assert not [t for t in texts if re.search(r"\b(\w+): \1:", t)], texts
    assert "running → paused: checkpoint saved; resume to continue" in texts


def test_the_test_embedder_is_offered_only_when_tests_ask():
    assert vm.offered_embedders({}) == ("fastembed",)
    assert "fake" in vm.offered_embedders({vm.ENV_TEST_EMBEDDER: "1"})


@dataclass
class _Hit:
    source: str
    path: str = ""


def test_search_hits_are_shown_by_their_path_in_the_source():
    assert vm.hit_label(_Hit("/data/docs/guides/deploy.md", "guides/deploy.md")) == "guides/deploy.md"
    assert vm.hit_label(_Hit("/data/docs/deploy.md")) == "deploy.md"
    assert vm.hit_label(_Hit("s3://bucket/docs/a.md")) == "s3://bucket/docs/a.md"


def test_job_eta_comes_from_the_snapshot_while_running():
    snap = running_snapshot().model_copy(update={"eta_seconds": 151.0})
    assert vm.job_eta(snap) == 151.0
    assert vm.job_eta(snap.model_copy(update={"status": JobStatus.PAUSED})) is None
    assert vm.job_eta(running_snapshot()) is None


def _view(status: JobStatus, *, local: bool = False, elsewhere: bool = False, failed: int = 0) -> JobView:
    snap = running_snapshot().model_copy(update={"status": status})
    snap = snap.model_copy(update={"metrics": {**snap.metrics, "documents_failed": failed}})
    return JobView(job_id=snap.job_id, kb="docs", snap=snap, local=local, running_elsewhere=elsewhere)


# (status, where it runs, failed documents) -> which of pause, resume, cancel, drain apply
ACTIONS_BY_STATE = [
    ((JobStatus.RUNNING, "here", 0), (True, False, True, True)),
    ((JobStatus.RUNNING, "elsewhere", 0), (True, False, True, True)),
    ((JobStatus.PENDING, "elsewhere", 0), (True, False, True, False)),
    ((JobStatus.PENDING, "", 0), (False, True, True, False)),
    ((JobStatus.PAUSED, "", 0), (False, True, True, False)),
    ((JobStatus.FAILED, "", 0), (False, True, True, False)),
    ((JobStatus.COMPLETED, "", 0), (False, False, False, False)),
    ((JobStatus.COMPLETED, "", 2), (False, True, False, False)),  # r retries the failed documents
    ((JobStatus.CANCELLED, "", 0), (False, False, False, False)),
]


@pytest.mark.parametrize("state,expected", ACTIONS_BY_STATE, ids=lambda x: "-".join(map(str, x)))
def test_which_actions_apply_to_a_job_without_a_terminal(state, expected):
    status, where, failed = state
    v = _view(status, local=where == "here", elsewhere=where == "elsewhere", failed=failed)
    assert vm.action_state(v, drain_supported=True) == expected
    got = tuple(vm.applies(a, v, True) for a in ("pause", "resume", "cancel", "drain"))
    assert got == expected
    assert (vm.can_pause(v), vm.can_resume(v), vm.can_cancel(v), vm.can_drain(v, True)) == expected


def test_no_action_applies_to_no_job_and_drain_only_where_the_service_can():
    assert vm.action_state(None, drain_supported=True) == (False, False, False, False)
    running = _view(JobStatus.RUNNING, local=True)
    assert vm.can_drain(running, True) and not vm.can_drain(running, False)  # --server: no drain
    assert vm.applies("help", None, False) and vm.applies("new_job", None, False)  # keys of no job


def test_the_jobs_title_counts_filters_sorts_and_says_frozen():
    base = "jobs in ~/kb"
    assert vm.jobs_title(base, [], "", None, None, False) == base
    statuses = ["completed", "paused", "completed", "failed", "completed", "paused"]
    assert vm.jobs_title(base, statuses, "", 6, None, False) == f"{base} · 3 completed, 2 paused, 1 failed"
    assert vm.jobs_title(base, ["paused", "failed"], "", 2, None, False) == f"{base} · 1 failed, 1 paused"  # ties: a-z
    titled = vm.jobs_title(base, statuses, "docs", 2, "by status", True)
    assert titled == (
        f"{base} · 3 completed, 2 paused, 1 failed · filter 'docs': 2 shown · sorted by status"
        " · VIEW FROZEN, the jobs go on: f follows live"
    )
    assert "filter 'x': ? shown" in vm.jobs_title(base, statuses, "x", None, None, False)  # not counted yet
    assert "\x1b" not in vm.jobs_title("jobs in ~/\x1b[31mkb", ["running"], "", 1, None, False)  # escaped


def test_the_errors_title_and_a_cancel_outcome_in_words():
    assert vm.errors_title(0) == "errors"
    assert vm.errors_title(1) == "errors (1 document)"
    assert vm.errors_title(3) == "errors (3 documents)"
    assert vm.cancel_outcome("j-1", "requested") == "asked the process running j-1 to cancel it"
    assert vm.cancel_outcome("j-1", "cancelled") == "j-1 cancelled"
    assert vm.cancel_outcome("j-1", "ended") == "j-1 was not cancelled: it had ended"


def test_the_app_class_stays_under_350_lines():
    """Issue 28 item 5: the App holds state and polling; what to show is the view model's, the panes'
    drawing app/panes.py's, the actions' bodies app/actions.py's. It cannot grow back."""
    import ast

    tree = ast.parse((REPO / "app" / "dashboard.py").read_text())
    (app_class,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KbIngestApp"]
    assert app_class.end_lineno - app_class.lineno < 350, app_class.end_lineno - app_class.lineno


# ---- on screen ------------------------------------------------------------------------------------
def _elsewhere_record():
    """A job another process runs now: its knowledge base's lock held (here, by this test), recorded
    running with a fresh heartbeat."""
    snap = running_snapshot("notes-20260504-080000-c0ffee").model_copy(update={"kb_id": "notes"})
    rec = record(snap, NOW - timedelta(hours=1))
    return rec.model_copy(update={"owner_pid": os.getpid(), "heartbeat_at": iso(utcnow())})


def test_a_job_of_another_process_shows_running_and_r_says_where(tmp_path):
    """Issue 30 item 1: a dashboard running its own job showed every other running job as
    "paused: interrupted"; it is running (the service's liveness rule), and r says it runs elsewhere."""
    other = _elsewhere_record()
    home, store = make_store(tmp_path, [completed_record(), other])
    lock = FileLock(home.kb_lock_file("notes"), home.root).acquire()
    job = FakeJob(running_snapshot())

    async def scenario() -> None:
        app = make_app(home, store, job)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert app._live is job
            v = app._views[other.job_id]
            assert v.status == JobStatus.RUNNING and v.running_elsewhere and not v.interrupted
            app.query_one("#jobs").select(other.job_id)
            await pilot.pause()
            assert app.selected.job_id == other.job_id
            assert "running in another process" in str(app.query_one("#detail").border_title)
            await pilot.press("r")
            await pilot.pause()
            assert app._live is job  # nothing started
            assert any("runs in another process" in e.text for e in app._events.of(None))  # a notice, in the events
            job.pause()

    try:
        asyncio.run(scenario())
    finally:
        lock.release()


def test_the_job_eta_leads_the_job_header(tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    job = FakeJob(running_snapshot().model_copy(update={"eta_seconds": 151.0}))

    async def scenario() -> None:
        app = make_app(home, store, job)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert str(app.query_one("#summary").render()).startswith("ETA 2:31  running")
            job.pause()

    asyncio.run(scenario())


def test_the_new_job_form_offers_no_test_embedder(tmp_path, monkeypatch):
    from textual.widgets import Select

    from kbingest.app.screens import NewJobScreen

    monkeypatch.delenv(vm.ENV_TEST_EMBEDDER, raising=False)
    home, store = make_store(tmp_path, [completed_record()])

    async def scenario() -> None:
        app = make_app(home, store)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("n")
            for _ in range(100):
                if isinstance(app.screen, NewJobScreen):
                    break
                await pilot.pause(0.05)
            select = app.screen.query_one("#embedder", Select)
            assert [v for _, v in select._options if v is not Select.BLANK] == ["fastembed"]

    asyncio.run(scenario())


# ---- the key table of docs/dashboard.md (issue 38 item 3) -----------------------------------------
def test_every_key_of_the_dashboard_is_in_the_docs_key_table():
    text = (REPO / "docs" / "dashboard.md").read_text()
    section = text[text.index("## Keys") :]
    section = section[: section.index("\n## ", 1)]
    keys = {k for row in re.findall(r"^\| (.+?) \|", section, re.M) for k in re.findall(r"`([^`]+)`", row)}
    missing = [
        b.key
        for b in KbIngestApp.BINDINGS
        if KEY_NAMES.get(b.key, b.key) not in keys and (b.key_display or "") not in keys
    ]
    assert not missing, f"keys missing from docs/dashboard.md's key table: {missing}"


def test_the_footer_keeps_new_job_search_and_drain_at_80x24(tmp_path):
    """Issue 30 item 5: at 80x24 the footer showed p r c ? q f, and n, / and d fell off its end."""
    from textual.widgets._footer import FooterKey

    home, store = make_store(tmp_path, [completed_record()])
    job = FakeJob(running_snapshot())

    async def scenario() -> None:
        app = make_app(home, store, job)
        async with app.run_test(size=(80, 24)) as pilot:
            keys = ("n", "slash", "d", "p", "r", "c", "q")
            for _ in range(100):  # the footer recomposes when the bindings refresh: wait for its layout (bounded)
                await pilot.pause(0.02)
                seen = {k.key: k.region for k in app.screen.query(FooterKey)}
                if all(k in seen and seen[k].width > 0 for k in keys):
                    break
            for key in keys:
                assert key in seen, f"{key} not in the footer"
                region = seen[key]
                assert region.width > 0 and region.right <= 80, f"{key} is cut off the footer: {region}"
            job.pause()

    asyncio.run(scenario())


def test_the_summary_counts_come_from_the_snapshot_alone():
    snap = running_snapshot()
    v = JobView(job_id=snap.job_id, kb="docs", snap=snap)
    assert vm.summary_counts(v) == "42 docs found, 18 added · 480 chunks indexed in 3 commits"
