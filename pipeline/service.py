"""The service layer: the one API every front end calls (CLI, dashboard, an HTTP server).

Use cases live here once: start, resume, retry, pause, cancel, status, jobs, search, watch. Results
are typed (JobStatusResponse, JobInfo, SearchHit, a JobHandle to run); failures are typed errors
(pipeline/errors.py), each mapped to one exit code and one HTTP status by the front end.
Nothing below this module is imported by app/ or widgets/ (a test checks it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from kbingest.pipeline.errors import (Busy, ControlTimeout, EngineFailure, Forbidden, InvalidInput, KbError,
                                      NotFound, WrongState)
from kbingest.pipeline.models import DEFAULT_MODEL, DocumentError, JobConfig, JobRecord, JobStatusResponse
from kbingest.pipeline.paths import Home, InvalidName, validate_name
from kbingest.pipeline.status import JobStatus
from kbingest.pipeline.failures import debug, describe
from kbingest.pipeline.textsafe import printable

__all__ = ["Service", "JobHandle", "JobInfo", "KbError", "InvalidInput", "NotFound", "WrongState", "Busy",
           "Forbidden", "ControlTimeout", "EngineFailure", "printable", "describe", "debug", "CONTROL_POLL_S"]

CONTROL_POLL_S = 0.2  # how often a pause/cancel from outside the engine looks whether it took effect


class JobHandle(Protocol):
    """A job to run in this process: what `start`, `resume` and `retry` return."""

    job_id: str
    config: JobConfig

    def run(self) -> JobStatusResponse: ...
    def pause(self) -> None: ...
    def cancel(self) -> None: ...
    def snapshot(self) -> JobStatusResponse: ...

    @property
    def errors(self) -> list[DocumentError]: ...


@dataclass(frozen=True)
class JobInfo:
    """A stored job as a front end shows it: its status as it is now (one whose process died shows
    as paused, interrupted), with its config and times."""

    job_id: str
    kb: str
    config: JobConfig
    status: JobStatusResponse
    created_at: str
    updated_at: str

    @property
    def errors(self) -> list[DocumentError]:
        return self.status.errors


def _validated(value: str, what: str) -> str:
    try:
        return validate_name(value, what)
    except InvalidName as e:
        raise InvalidInput(str(e)) from None


class Service:
    """Every use case over one home. `embedder_factory` replaces the model (tests, benchmarks)."""

    def __init__(self, home=None, *, embedder_factory: Optional[Callable] = None, store=None) -> None:
        """home: a Home, a folder path, or None for the default home (KBINGEST_HOME, else the
        platform's user data folder)."""
        self.home = home if isinstance(home, Home) else Home(home)
        self._embedder_factory = embedder_factory
        self._store = store  # an open JobStore to share (one per process where possible)
        self.notices: list[str] = []  # things a person should be told (a store rebuilt...)

    # ---- the job store ----------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from kbingest.pipeline.jobs import open_store

            self._store = open_store(self.home)
            if self._store.recovered_from is not None:
                self.notices.append(f"the job store did not parse; it was moved aside to "
                                    f"{self._store.recovered_from} and rebuilt from the knowledge bases")
        return self._store

    def _record(self, job_id: str) -> JobRecord:
        rec = self.store.get(_validated(job_id, "job id"))
        if rec is None:
            raise NotFound(f"no job {job_id!r} in this home (see `kbingest jobs`)")
        return rec

    def _info(self, rec: JobRecord) -> JobInfo:
        from kbingest.pipeline.jobs import effective_status

        return JobInfo(job_id=rec.job_id, kb=rec.config.kb, config=rec.config,
                       status=effective_status(rec, self.home), created_at=rec.created_at, updated_at=rec.updated_at)

    # ---- reading ----------------------------------------------------------------------------
    def jobs(self) -> list[JobInfo]:
        """Every job, newest first."""
        return [self._info(r) for r in self.store.all()]

    def job(self, job_id: str) -> JobInfo:
        return self._info(self._record(job_id))

    def find(self, job_id: Optional[str] = None, kb: Optional[str] = None) -> JobInfo:
        """The job with this id; else the newest job of `kb`; else the newest job."""
        if job_id:
            return self.job(job_id)
        recs = self.store.all()
        if kb:
            _validated(kb, "knowledge base name")
            recs = [r for r in recs if r.config.kb == kb]
        if not recs:
            raise NotFound("no jobs in this home yet" if not kb else f"no job for knowledge base {kb!r}")
        return self._info(recs[0])

    def status(self, job_id: Optional[str] = None, kb: Optional[str] = None) -> JobStatusResponse:
        return self.find(job_id, kb).status

    def engine_busy(self) -> Optional[str]:
        """Why a job cannot start in this process now (another engine runs in the home), or None."""
        from kbingest.pipeline.locking import HomeLocked, holder_pid, is_locked

        lock = self.home.engine_lock_file
        return str(HomeLocked(lock, holder_pid(lock))) if is_locked(lock) else None

    @staticmethod
    def as_interrupted(snap: JobStatusResponse) -> JobStatusResponse:
        """A status recorded as running whose process is known to be gone, shown as it is."""
        from kbingest.pipeline.jobs import INTERRUPTED
        from kbingest.pipeline.tracker import PhaseTracker

        t = PhaseTracker.from_snapshot(snap)
        t.set_status(JobStatus.PAUSED, INTERRUPTED)
        return t.snapshot()

    # ---- starting ---------------------------------------------------------------------------
    @staticmethod
    def config(sources: list[str], kb: str, **settings) -> JobConfig:
        """A job's settings, validated as every front end validates them: sources that exist,
        names that become paths, JobConfig's bounds. InvalidInput names the setting at fault."""
        from pydantic import ValidationError

        from kbingest.pipeline.loading import SourceError, validate_sources

        _validated(kb, "knowledge base name")
        try:
            sources = validate_sources(list(sources))
        except SourceError as e:
            raise InvalidInput(str(e)) from None
        try:
            return JobConfig(sources=sources, kb=kb, **settings)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err.get("loc", ())) or None
            msg = str(err.get("msg", "invalid setting")).removeprefix("Value error, ")
            raise InvalidInput(msg if not field else f"{field}: {msg}", setting=field) from None

    def _job_kw(self) -> dict:
        return {"embedder_factory": self._embedder_factory} if self._embedder_factory else {}

    def _check_free(self) -> None:
        why = self.engine_busy()
        if why:
            raise Busy(why)

    def start(self, config: JobConfig, job_id: Optional[str] = None) -> JobHandle:
        """A new job, stored as pending; the caller runs it (`handle.run()`, in a thread if it likes)."""
        from kbingest.pipeline.engine import IngestJob

        _validated(config.kb, "knowledge base name")
        if job_id is not None:
            _validated(job_id, "job id")
            if self.store.get(job_id):
                raise WrongState(f"job {job_id!r} exists already: resume it with `kbingest resume {job_id}`")
        self._check_free()
        from kbingest.pipeline.jobs import mark_interrupted

        mark_interrupted(self.home, self.store)  # jobs whose process died show as interrupted, not running
        return IngestJob.create(self.home, self.store, config, job_id=job_id, **self._job_kw())

    def watch(self, config: JobConfig, job_id: Optional[str] = None) -> JobHandle:
        """A job that keeps running and ingests what changes under its sources."""
        return self.start(config.model_copy(update={"watch": True}), job_id=job_id)

    def resume(self, job_id: str) -> JobHandle:
        """Continue a paused, interrupted or failed job; retry the failed documents of a finished one."""
        from kbingest.pipeline.engine import IngestJob
        from kbingest.pipeline.jobs import mark_interrupted

        info = self.job(job_id)
        if info.status.status == JobStatus.CANCELLED:
            raise WrongState(f"job {info.job_id} was cancelled and cannot be resumed; start a new `kbingest ingest`")
        if info.status.status == JobStatus.RUNNING:
            raise WrongState(f"job {info.job_id} is running")
        self._check_free()
        mark_interrupted(self.home, self.store)  # its process died: shown paused (interrupted) until this one runs it
        return IngestJob.load(self.home, self.store, info.job_id, **self._job_kw())

    def retry(self, job_id: str, paths: Optional[list[str]] = None) -> JobHandle:
        """Run a finished job again for its failed documents (every unchanged one is skipped);
        with `paths`, a pass over those documents alone (each must lie below the job's sources)."""
        import os

        from kbingest.pipeline.loading import within

        info = self.job(job_id)
        if info.status.status != JobStatus.COMPLETED or not info.status.m.documents_failed:
            raise WrongState(f"job {info.job_id} has no failed documents to retry (it is {info.status.status.value})")
        scope = None
        if paths is not None:
            roots = [os.path.abspath(s) for s in info.config.sources]
            scope = sorted({os.path.abspath(p) for p in paths})
            outside = [p for p in scope if not any(within(p, r) for r in roots)]
            if not scope or outside:
                raise InvalidInput(f"not below the job's sources: {printable(outside[0])}" if outside
                                   else "no path to retry")
        job = self.resume(job_id)
        if scope is not None:
            job.scope = scope  # type: ignore[attr-defined]
        return job

    def knowledge_bases(self) -> list[str]:
        """The knowledge bases of this home: those on disk and those a job names, sorted."""
        names = {r.config.kb for r in self.store.all()}
        try:
            names.update(p.name[:-len(".lance")] for p in self.home.lancedb_dir.iterdir()
                         if p.name.endswith(".lance") and not p.name.startswith("."))
        except OSError:
            pass
        return sorted(names)

    # ---- steering a job from outside its process --------------------------------------------
    def request_cancel(self, job_id: str) -> str:
        """Cancel without waiting, decided under the store's lock against the stored record:
        "cancelled" (no engine ran it), "requested" (its engine is asked), "unchanged" (it had ended)."""
        from kbingest.pipeline.jobs import cancel_stored

        rec = self._record(job_id)
        outcome = cancel_stored(self.home, self.store, rec.job_id)
        if outcome == "missing":
            raise NotFound(f"no job {job_id!r} in this home")
        return outcome

    def request_pause(self, job_id: str) -> None:
        info = self.job(job_id)
        if info.status.status != JobStatus.RUNNING:
            raise WrongState(f"job {info.job_id} is not running (it is {info.status.status.value}); nothing to pause")
        self.store.request(info.job_id, "pause")

    def pause(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        """Pause a job some engine runs and wait until it has paused (its checkpoint saved)."""
        info = self.job(job_id)
        if info.status.status == JobStatus.PAUSED:
            return info.status
        self.request_pause(info.job_id)
        return self._wait_rest(info.job_id, "pause", timeout)

    def cancel(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        """Cancel a job; a running one is asked and waited for."""
        info = self.job(job_id)
        if info.status.status == JobStatus.CANCELLED:
            return info.status
        outcome = self.request_cancel(info.job_id)
        if outcome == "unchanged":
            raise WrongState(f"job {info.job_id} is {info.status.status.value}; nothing to cancel")
        if outcome == "cancelled":
            return self.job(info.job_id).status
        return self._wait_rest(info.job_id, "cancel", timeout)

    def _wait_rest(self, job_id: str, what: str, timeout: float) -> JobStatusResponse:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(CONTROL_POLL_S)
            now = self.store.get(job_id)
            if now is not None and (now.status.status.is_terminal or now.status.status == JobStatus.PAUSED):
                return now.status
        # the request is withdrawn: the job does not pause later, after we said it did not
        self.store.update(job_id, lambda r: r.model_copy(update={"control": None}) if r.control == what else r)
        raise ControlTimeout(f"job {job_id} did not {what} within {timeout:g} s; the request was withdrawn "
                             f"(the job goes on): try again with a longer --timeout")

    # ---- front-end preferences --------------------------------------------------------------
    def settings(self) -> dict:
        """The preferences kept in the home (settings.json): {} when there are none."""
        from kbingest.pipeline.settings import read_settings

        return read_settings(self.home.root)

    def save_settings(self, **updates) -> dict:
        from kbingest.pipeline.settings import write_settings

        try:
            return write_settings(self.home.root, updates)
        except OSError as e:
            raise EngineFailure(f"cannot save the settings in {self.home.root}: {e.strerror or e}") from None

    # ---- repairing --------------------------------------------------------------------------
    def repair(self, kb: str) -> str:
        """Check a knowledge base; bring a damaged one back. Says what it did."""
        from kbingest.pipeline.repair import repair

        _validated(kb, "knowledge base name")
        jobs = [r for r in self.store.all() if r.config.kb == kb]
        return repair(self.home, kb, sources=jobs[0].config.sources if jobs else None).message

    # ---- searching --------------------------------------------------------------------------
    def search(self, kb: str, query: str, k: int = 5):
        """The k chunks nearest the query, embedded with the model the knowledge base was built with."""
        from kbingest.pipeline.embedding import EmbeddingError
        from kbingest.pipeline.index import KnowledgeBase
        from kbingest.pipeline.search import search_kb

        _validated(kb, "knowledge base name")
        if k < 1:
            raise InvalidInput("-k must be at least 1")
        base = KnowledgeBase(self.home, kb)
        if not base.exists:
            raise NotFound(f"no knowledge base {kb!r} in {self.home.root}")
        jobs = [r for r in self.store.all() if r.config.kb == kb]
        cfg = jobs[0].config if jobs else JobConfig(sources=["."], kb=kb, model=DEFAULT_MODEL)
        try:
            return search_kb(base, cfg, query, k, embedder_factory=self._embedder_factory)
        except EmbeddingError as e:
            raise EngineFailure(str(e)) from None
