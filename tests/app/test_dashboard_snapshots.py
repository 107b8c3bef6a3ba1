"""Snapshot tests of the dashboard, in states built without running the engine.

The states are handcrafted JobRecords in a JobStore in tmp_path, and a fake job object with the
IngestJob interface for a job "running in this process". The terminal size, the clock, the time
zone and the home label are fixed, so the pictures are the same on every machine.

Update the baselines with `pytest tests/app/test_dashboard_snapshots.py --snapshot-update`, then look
at them (snapshot_report.html, or the SVGs in tests/app/__snapshots__/).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest

from kbingest.app.dashboard import KbIngestApp
from kbingest.pipeline.jobstore.store import JobStore
from kbingest.pipeline.models import DocumentError, JobConfig, JobRecord, JobStatusResponse, PhaseDetail, iso
from kbingest.pipeline.paths import Home
from kbingest.pipeline.status import JobPhase, JobStatus

pytestmark = pytest.mark.timeout(60)

SIZE = (100, 30)
T0 = datetime(2026, 5, 4, 9, 30, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(minutes=2, seconds=5)


def fixed_clock() -> datetime:
    return NOW


def phase(
    name: str,
    status: str = "pending",
    processed: int = 0,
    total: int = 0,
    progress: Optional[int] = None,
    started: Optional[float] = None,
    duration: Optional[float] = None,
    rate: Optional[float] = None,
    eta: Optional[float] = None,
    error: Optional[str] = None,
) -> PhaseDetail:
    if progress is None:
        progress = 100 if status == "completed" else int(100 * processed / total) if total else 0
    return PhaseDetail(
        name=name,
        status=JobStatus(status),
        progress=progress,
        items_processed=processed,
        items_total=total,
        started_at=T0 + timedelta(seconds=started) if started is not None else None,
        completed_at=(
            T0 + timedelta(seconds=(started or 0) + (duration or 0))
            if status in ("completed", "failed", "cancelled")
            else None
        ),
        error=error,
        rate=rate,
        eta_seconds=eta,
        duration_seconds=duration,
    )


def status(
    job_id: str,
    kb: str,
    st: str,
    phases: list[PhaseDetail],
    progress: float,
    message: str,
    error: Optional[str] = None,
    metrics: Optional[dict] = None,
    started: Optional[datetime] = T0,
    completed: Optional[datetime] = None,
) -> JobStatusResponse:
    current = next((JobPhase(p.name) for p in phases if p.status != JobStatus.COMPLETED), JobPhase.COMPLETED)
    return JobStatusResponse(
        job_id=job_id,
        kb_id=kb,
        status=JobStatus(st),
        phase=current,
        progress=progress,
        message=message,
        error=error,
        metrics=metrics or {},
        started_at=started,
        completed_at=completed,
        phase_details=phases,
    )


def record(
    snap: JobStatusResponse,
    created: datetime,
    errors: Optional[list[DocumentError]] = None,
    updated: Optional[datetime] = None,
) -> JobRecord:
    if errors:  # a job's document errors are stored once, in its status
        snap = snap.model_copy(
            update={"metrics": {**snap.metrics, "document_errors": [e.model_dump() for e in errors]}}
        )
    return JobRecord(
        job_id=snap.job_id,
        config=JobConfig(sources=["/data/docs"], kb=snap.kb_id, embedder="fake"),
        status=snap,
        created_at=iso(created),
        updated_at=iso(updated or created),
    )


def running_snapshot(job_id: str = "docs-20260504-093000-a1b2c3") -> JobStatusResponse:
    return status(
        job_id,
        "docs",
        "running",
        [
            phase("loading", "completed", 42, 42, started=1, duration=0.4),
            phase("chunking", "completed", 42, 42, started=1.1, duration=2.5),
            phase("embedding", "running", 512, 1130, progress=45, started=1.3, duration=123.0, rate=4.2, eta=147),
            phase("indexing", "running", 480, 1130, progress=42, started=6, duration=1.8, rate=3.9, eta=166),
        ],
        44.6,
        "ingesting",
        metrics={
            "documents_found": 42,
            "documents_added": 18,
            "chunks_indexed": 480,
            "commits": 3,
            "documents_failed": 0,
        },
    )


class FakeJob:
    """The IngestJob interface, with a fixed snapshot: run() blocks until pause() or cancel()."""

    def __init__(self, snap: JobStatusResponse, errors: Optional[list[DocumentError]] = None) -> None:
        self.job_id = snap.job_id
        self.config = JobConfig(sources=["/data/docs"], kb=snap.kb_id, embedder="fake")
        self._snap = snap
        self._errors = list(errors or [])
        self._stop = threading.Event()
        self.done = threading.Event()
        self.paused = self.cancelled = False

    def snapshot(self) -> JobStatusResponse:
        return self._snap

    @property
    def errors(self) -> list[DocumentError]:
        return list(self._errors)

    def pause(self) -> None:
        self.paused = True
        self._stop.set()

    def cancel(self) -> None:
        self.cancelled = True
        self._stop.set()

    def run(self) -> JobStatusResponse:
        try:
            self._stop.wait(30)
            return self._snap
        finally:
            self.done.set()


def completed_record() -> JobRecord:
    snap = status(
        "docs-20260503-170000-0f0e0d",
        "docs",
        "completed",
        [
            phase("loading", "completed", 40, 40, started=0, duration=0.3),
            phase("chunking", "completed", 40, 40, started=0.1, duration=2.1),
            phase("embedding", "completed", 1088, 1088, started=0.2, duration=77.7),
            phase("indexing", "completed", 1088, 1088, started=3, duration=2.2),
        ],
        100.0,
        "completed: 40 added, 0 replaced, 0 unchanged, 0 removed, 1088 chunks indexed",
        metrics={"documents_found": 40, "documents_added": 40, "chunks_indexed": 1088, "commits": 3},
        started=T0 - timedelta(hours=16, minutes=30),
        completed=T0 - timedelta(hours=16, minutes=28, seconds=40),
    )
    return record(snap, T0 - timedelta(hours=16, minutes=30), updated=T0 - timedelta(hours=16, minutes=28))


def make_store(tmp_path, records: list[JobRecord]) -> tuple[Home, JobStore]:
    home = Home(tmp_path / "home").ensure()
    store = JobStore(home)
    for r in records:
        store.put(r)
    return home, store


def make_app(home: Home, store: JobStore, job=None) -> KbIngestApp:
    return KbIngestApp(home, job, store=store, clock=fixed_clock, tz=timezone.utc, home_label="~/kb-home")


@pytest.fixture(params=["local", "remote"])
def app_on(request):
    """app_on(home, store) -> the dashboard on the home's local Service, or on a RemoteService
    talking to a real uvicorn serving that home on 127.0.0.1: the pictures are the same."""
    servers = []

    def make(home: Home, store: JobStore) -> KbIngestApp:
        if request.param == "local":
            return make_app(home, store)
        from live_server import ThreadServer

        from kbingest.app.remote import RemoteService

        server = ThreadServer(home.root)
        servers.append(server)
        return KbIngestApp(RemoteService(server.url), None, clock=fixed_clock, tz=timezone.utc, home_label="~/kb-home")

    yield make
    for server in servers:
        server.stop()


# ---- the states ------------------------------------------------------------------------------
def test_snapshot_running_job(snap_compare, tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(running_snapshot()))
    assert snap_compare(app, terminal_size=SIZE)


def test_snapshot_paused_job(snap_compare, tmp_path, app_on):
    paused = status(
        "docs-20260504-093000-a1b2c3",
        "docs",
        "paused",
        [
            phase("loading", "completed", 42, 42, started=1, duration=0.4),
            phase("chunking", "completed", 42, 42, started=1.1, duration=2.5),
            phase("embedding", "paused", 512, 1130, progress=45, started=1.3, duration=123.0),
            phase("indexing", "paused", 480, 1130, progress=42, started=6, duration=1.8),
        ],
        44.6,
        "paused: checkpoint saved; resume to continue",
        metrics={"documents_found": 42, "documents_added": 18, "chunks_indexed": 480, "commits": 3},
    )
    # recorded as running by a process that died: shown paused, "interrupted"
    crashed = status(
        "notes-20260504-080000-c0ffee",
        "notes",
        "running",
        [
            phase("loading", "completed", 7, 7, started=0, duration=0.1),
            phase("chunking", "completed", 7, 7, started=0.1, duration=0.5),
            phase("embedding", "running", 96, 210, progress=45, started=0.2, duration=7.0, rate=13.7, eta=8),
            phase("indexing", "pending", 64, 210, started=None),
        ],
        41.0,
        "ingesting",
        started=T0 - timedelta(hours=1, minutes=30),
    )
    app = app_on(
        *make_store(
            tmp_path,
            [
                record(paused, T0, updated=T0 + timedelta(minutes=2, seconds=7)),
                record(
                    crashed,
                    T0 - timedelta(hours=1, minutes=30),
                    updated=T0 - timedelta(hours=1, minutes=29, seconds=52),
                ),
                completed_record(),
            ],
        )
    )
    assert snap_compare(app, terminal_size=SIZE)


def failed_record() -> JobRecord:
    err = "embedding failed after 4 attempts: EmbeddingError: the model returned NaN"
    snap = status(
        "docs-20260504-093000-a1b2c3",
        "docs",
        "failed",
        [
            phase(
                "loading",
                "completed",
                42,
                42,
                started=1,
                duration=0.4,
                error="2 document(s) failed: /data/docs/[bold red]boom[/].md (too_large); ...",
            ),
            phase("chunking", "completed", 40, 40, started=1.1, duration=2.5),
            phase("embedding", "failed", 300, 1090, progress=27, started=1.3, duration=41.0, error=err),
            phase("indexing", "paused", 288, 1090, progress=26, started=6, duration=1.8),
        ],
        24.0,
        f"failed in embedding: {err}",
        error=err,
        metrics={
            "documents_found": 42,
            "documents_added": 12,
            "chunks_indexed": 288,
            "commits": 2,
            "documents_failed": 3,
        },
        completed=T0 + timedelta(seconds=44),
    )
    errors = [
        DocumentError(
            path="/data/docs/[bold red]boom[/].md",
            phase="loading",
            kind="too_large",
            message="21.3 MB is over the 20 MB limit (--max-file-mb)",
        ),
        DocumentError(
            path="/data/docs/evil\x1b[31mred\x1b[0m\u202etxt.md",
            phase="loading",
            kind="not_text",
            message="binary content (NUL bytes) [link=file:///etc/passwd]x[/link]",
        ),
        DocumentError(
            path="/data/docs/guides/very-long-folder-name/another-level/deploy.md",
            phase="embedding",
            kind="embedding_failed",
            message="EmbeddingError: token sequence too long",
            attempts=5,
        ),
    ]
    return record(snap, T0, errors=errors, updated=T0 + timedelta(seconds=44))


def test_snapshot_failed_phase_with_errors(snap_compare, tmp_path, app_on):
    app = app_on(*make_store(tmp_path, [failed_record(), completed_record()]))
    assert snap_compare(app, terminal_size=SIZE)


def test_snapshot_cancel_confirmation(snap_compare, tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(running_snapshot()))
    assert snap_compare(app, terminal_size=SIZE, press=["c"])


def test_snapshot_help(snap_compare, tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(running_snapshot()))
    assert snap_compare(app, terminal_size=SIZE, press=["question_mark"])


def test_snapshot_running_job_80x24(snap_compare, tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(running_snapshot()))
    assert snap_compare(app, terminal_size=(80, 24))


def test_snapshot_failed_phase_200x50(snap_compare, tmp_path, app_on):
    app = app_on(*make_store(tmp_path, [failed_record(), completed_record()]))
    assert snap_compare(app, terminal_size=(200, 50))


def test_snapshot_failed_phase_80x24(snap_compare, tmp_path, app_on):
    app = app_on(*make_store(tmp_path, [failed_record(), completed_record()]))
    assert snap_compare(app, terminal_size=(80, 24))


def test_snapshot_frozen_view(snap_compare, tmp_path):
    home, store = make_store(tmp_path, [completed_record()])
    app = make_app(home, store, FakeJob(running_snapshot()))
    assert snap_compare(app, terminal_size=SIZE, press=["f"])
