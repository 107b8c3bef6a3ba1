"""The service layer: the one API every front end calls (CLI, dashboard, an HTTP server).

Use cases live here once: start, resume, retry, pause, cancel, status, jobs, search, watch. Results
are typed (JobStatusResponse, JobInfo, SearchHit, a JobHandle to run); failures are typed errors
(pipeline/errors.py), each mapped to one exit code and one HTTP status by the front end.
Nothing below this module is imported by app/ or widgets/ (a test checks it).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from kbingest.pipeline.errors import (
    Busy,
    ControlTimeout,
    EngineFailure,
    Forbidden,
    InvalidInput,
    KbBusy,
    KbError,
    NotFound,
    Unreachable,
    Unsupported,
    WrongState,
)
from kbingest.pipeline.messages import debug, describe
from kbingest.pipeline.models import DEFAULT_MODEL, JobConfig, JobRecord, JobStatusResponse
from kbingest.pipeline.paths import Home, InvalidName, validate_name
from kbingest.pipeline.seams import JobHandle, JobInfo, JobService
from kbingest.pipeline.status import JobStatus
from kbingest.pipeline.textsafe import printable

__all__ = [
    "Service",
    "JobHandle",
    "JobInfo",
    "KbError",
    "InvalidInput",
    "NotFound",
    "WrongState",
    "Busy",
    "KbBusy",
    "Forbidden",
    "ControlTimeout",
    "EngineFailure",
    "Unreachable",
    "Unsupported",
    "printable",
    "describe",
    "debug",
    "CONTROL_POLL_S",
    "JobService",
]

CONTROL_POLL_S = 0.2  # how often a pause/cancel from outside the engine looks whether it took effect


def _validated(value: str, what: str) -> str:
    try:
        return validate_name(value, what)
    except InvalidName as e:
        raise InvalidInput(str(e)) from None


class Service:
    """Every use case over one home. `embedder_factory` replaces the model (tests, benchmarks)."""

    def __init__(
        self,
        home=None,
        *,
        embedder_factory: Optional[Callable] = None,
        store=None,
        cached_reads: bool = False,
        resident_search: bool = False,
    ) -> None:
        """home: a Home, a folder path, or None for the default home (KBINGEST_HOME, else the
        platform's user data folder). cached_reads: reads served from memory while the store file
        is unchanged (a server answering many polls)."""
        self.home = home if isinstance(home, Home) else Home(home)
        self._embedder_factory = embedder_factory
        self._store = store  # an open JobStore to share (one per process where possible)
        self._cached_reads = cached_reads
        self.resident_search = resident_search  # ask this home's `kbingest serve` first (pipeline/kb/resident.py)
        self.notices: list[str] = []  # things a person should be told (a store rebuilt...)

    # ---- the job store ----------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from kbingest.pipeline.jobstore.recovery import open_store

            self._store = open_store(self.home)
            # another process holds the store's lock: answered from its last saved file, and said so
            self._store.notify_stale(self.notices.append)
            if self._store.recovered_from is not None:
                self.notices.append(
                    f"the job store did not parse; it was moved aside to "
                    f"{self._store.recovered_from} and rebuilt from the knowledge bases"
                )
            if self._cached_reads:
                from kbingest.pipeline.jobstore.cache import ReadCachedStore

                self._store = ReadCachedStore(self._store)
        return self._store

    def reads_from_memory(self) -> bool:
        """Whether a read is answered from memory now (cached_reads, the store file unchanged): no
        lock, no parse, so a caller on an event loop may read inline."""
        from kbingest.pipeline.jobstore.cache import ReadCachedStore

        store = self.store
        return isinstance(store, ReadCachedStore) and store.fresh()

    def _record(self, job_id: str) -> JobRecord:
        rec = self.store.get(_validated(job_id, "job id"))
        if rec is None:
            raise NotFound(f"no job {job_id!r} in this home (see `kbingest jobs`)")
        return rec

    def _info(self, rec: JobRecord) -> JobInfo:
        from kbingest.pipeline.jobstore.recovery import effective_status

        return JobInfo(
            job_id=rec.job_id,
            kb=rec.config.kb,
            config=rec.config,
            status=effective_status(rec, self.home),
            created_at=rec.created_at,
            updated_at=rec.updated_at,
        )

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

    def engine_busy(self, kb: Optional[str] = None) -> Optional[str]:
        """Why a job on knowledge base `kb` would wait now (another job writes it, or jobs are queued
        for it), or None. Without `kb`: whether any knowledge base of the home is being written.
        A job that waits is queued, not refused (docs/queue.md): this is for showing, not for gating."""
        from kbingest.pipeline.jobstore import queue

        recs = self.store.all()
        kbs = [_validated(kb, "knowledge base name")] if kb else sorted({r.config.kb for r in recs})
        for name in kbs:
            why = queue.wait_reason(self.home, recs, "", name)
            if why is not None:
                return why[0].removeprefix("pending: ")
        return None

    def default_embedder(self) -> str:
        """The embedder a new-job form proposes: JobConfig's default."""
        return str(JobConfig.model_fields["embedder"].default)

    def knowledge_bases(self) -> list[str]:
        """The knowledge bases of this home (LanceDB tables), sorted: what a new-job form offers."""
        from kbingest.pipeline.kb.table import list_kbs

        return list_kbs(self.home)

    def queue(self, kb: str) -> list[JobInfo]:
        """The jobs waiting for knowledge base `kb`, first in line first (their status carries the
        reason in `message` and `metrics.queue_position` / `metrics.waiting_for`)."""
        from kbingest.pipeline.jobstore import queue

        return [
            self._info(r) for r in queue.queue_of(self.home, self.store.all(), _validated(kb, "knowledge base name"))
        ]

    @staticmethod
    def as_interrupted(snap: JobStatusResponse) -> JobStatusResponse:
        """A status recorded as running whose process is known to be gone, shown as it is."""
        from kbingest.pipeline.job.tracker import PhaseTracker
        from kbingest.pipeline.jobstore.recovery import INTERRUPTED

        t = PhaseTracker.from_snapshot(snap)
        t.set_status(JobStatus.PAUSED, INTERRUPTED)
        return t.snapshot()

    # ---- starting ---------------------------------------------------------------------------
    @staticmethod
    def config(sources: list[str], kb: str, **settings) -> JobConfig:
        """A job's settings, validated as every front end validates them: sources that exist,
        names that become paths, JobConfig's bounds. InvalidInput names the setting at fault."""
        from pydantic import ValidationError

        from kbingest.pipeline.load.loading import SourceError, validate_sources

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

    @staticmethod
    def uri_source(source: str) -> Optional[str]:
        """A SOURCE that names documents not on the local disk (s3://, http(s)://: docs/sources.md) as the
        job will hold it (a canonical URL); None for a file or folder. A malformed one is InvalidInput."""
        from kbingest.pipeline.load.sources import SourceUnusable, is_uri, validate_uri

        if not is_uri(source):
            return None
        try:
            return validate_uri(source)
        except SourceUnusable as e:
            raise InvalidInput(str(e)) from None

    @staticmethod
    def location_settings(home, db: Optional[str], options: Optional[list[str]]) -> dict:
        """The JobConfig fields of `--db URI` and `--db-option KEY=VALUE` (a bad one is InvalidInput)."""
        from kbingest.pipeline.kb.location import KbLocation

        home = home if isinstance(home, Home) else Home(home)
        return KbLocation.from_flags(home, db, options).job_fields(home)

    @staticmethod
    def db_options(options: Optional[list[str]]) -> dict[str, str]:
        from kbingest.pipeline.kb.location import parse_options

        return parse_options(options)

    def _job_kw(self) -> dict:
        return {"embedder_factory": self._embedder_factory} if self._embedder_factory else {}

    def _check_free(self, kb: str, job_id: str = "") -> None:
        """--no-wait: refused now (KbBusy, exit 1) when the job would have to wait."""
        from kbingest.pipeline.jobstore import queue

        refused = queue.refusal(self.home, self.store.all(), job_id, kb)
        if refused is not None:
            raise refused

    def start(self, config: JobConfig, job_id: Optional[str] = None, wait: bool = True) -> JobHandle:
        """A new job, stored as pending; the caller runs it (`handle.run()`, in a thread if it likes).
        While another job writes its knowledge base, `run()` waits as pending (the queue) and starts
        by itself; `wait=False` refuses it instead (KbBusy), here or when `run()` finds it busy."""
        from kbingest.pipeline.job.engine import IngestJob

        _validated(config.kb, "knowledge base name")
        if job_id is not None:
            _validated(job_id, "job id")
            if self.store.get(job_id):
                raise WrongState(f"job {job_id!r} exists already: resume it with `kbingest resume {job_id}`")
        if not wait:
            self._check_free(config.kb)
        from kbingest.pipeline.jobstore.recovery import mark_interrupted

        mark_interrupted(self.home, self.store)  # jobs whose process died show as interrupted, not running
        if config.embed_context is None:
            config = config.model_copy(update={"embed_context": self._context_of(config)})
        job = IngestJob.create(self.home, self.store, config, job_id=job_id, **self._job_kw())
        job.wait_for_lock = wait
        return job

    def _context_of(self, config: JobConfig) -> bool:
        """Whether a new job embeds titles and heading paths (docs/search.md): as the knowledge base's
        newest job did (False for a job made before the setting), else as its table's rows were made
        (a knowledge base copied without its jobs), else yes (a new knowledge base)."""
        for rec in self.store.all():  # newest first
            if rec.config.kb == config.kb:
                return rec.config.context_embedding
        from kbingest.pipeline.kb.location import KbLocation
        from kbingest.pipeline.kb.search import table_embeds_context
        from kbingest.pipeline.kb.table import KnowledgeBase

        base = KnowledgeBase(self.home, config.kb, KbLocation.of_job(self.home, config))
        found = table_embeds_context(base) if base.exists else None
        return True if found is None else found

    def watch(self, config: JobConfig, job_id: Optional[str] = None, wait: bool = True) -> JobHandle:
        """A job that keeps running and ingests what changes under its sources."""
        return self.start(config.model_copy(update={"watch": True}), job_id=job_id, wait=wait)

    def resume(self, job_id: str, wait: bool = True, allowed_roots: Optional[list[str]] = None) -> JobHandle:
        """Continue a paused, interrupted or failed job; retry the failed documents of a finished one.
        `allowed_roots` (a server's --allow-root folders) bind its every pass from now on."""
        from kbingest.pipeline.job.engine import IngestJob
        from kbingest.pipeline.jobstore.recovery import mark_interrupted

        info = self.job(job_id)
        if info.status.status == JobStatus.CANCELLED:
            raise WrongState(f"job {info.job_id} was cancelled and cannot be resumed; start a new `kbingest ingest`")
        if info.status.status == JobStatus.RUNNING:
            raise WrongState(f"job {info.job_id} is running")
        if info.status.status == JobStatus.PENDING:
            raise WrongState(f"job {info.job_id} is pending: it waits for its knowledge base and starts by itself")
        if not wait:
            self._check_free(info.kb, info.job_id)
        mark_interrupted(self.home, self.store)  # its process died: shown paused (interrupted) until this one runs it
        if allowed_roots is not None:
            roots = list(allowed_roots)
            self.store.update(
                info.job_id,
                lambda r: r.model_copy(update={"config": r.config.model_copy(update={"allowed_roots": roots})}),
            )
        job = IngestJob.load(self.home, self.store, info.job_id, **self._job_kw())
        job.wait_for_lock = wait
        return job

    def retry(self, job_id: str, paths: Optional[list[str]] = None, wait: bool = True) -> JobHandle:
        """Run a finished job again for its failed documents (every unchanged one is skipped);
        with `paths`, a pass over those documents alone (each must lie below the job's sources)."""
        import os

        from kbingest.pipeline.load.loading import within

        info = self.job(job_id)
        if info.status.status != JobStatus.COMPLETED or not info.status.m.documents_failed:
            raise WrongState(f"job {info.job_id} has no failed documents to retry (it is {info.status.status.value})")
        scope = None
        if paths is not None:
            roots = [os.path.abspath(s) for s in info.config.sources]
            scope = sorted({os.path.abspath(p) for p in paths})
            outside = [p for p in scope if not any(within(p, r) for r in roots)]
            if not scope or outside:
                raise InvalidInput(
                    f"not below the job's sources: {printable(outside[0])}" if outside else "no path to retry"
                )
        job = self.resume(job_id, wait=wait)
        if scope is not None:
            job.scope = scope  # type: ignore[attr-defined]
        return job

    # ---- steering a job from outside its process --------------------------------------------
    def request_cancel(self, job_id: str) -> str:
        """Cancel without waiting, decided under the store's lock against the stored record:
        "cancelled" (no engine ran it), "requested" (its engine is asked), "unchanged" (it had ended)."""
        from kbingest.pipeline.jobstore.recovery import cancel_stored

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

    def request_drain(self, job_id: str) -> None:
        """Ask a running job to drain: no new documents; those loaded are committed; it completes."""
        info = self.job(job_id)
        if info.status.status != JobStatus.RUNNING:
            raise WrongState(
                f"job {info.job_id} is not running (it is {info.status.status.value}); nothing to drain"
                + (": cancel a pending job instead" if info.status.status == JobStatus.PENDING else "")
            )
        self.store.request(info.job_id, "drain")

    def can_drain(self) -> bool:
        return True

    def drain(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        """Drain a job some engine runs (cancel its loading only) and wait until it has completed."""
        info = self.job(job_id)
        self.request_drain(info.job_id)
        return self._wait_rest(info.job_id, "drain", timeout)

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
        raise ControlTimeout(
            f"job {job_id} did not {what} within {timeout:g} s; the request was withdrawn "
            f"(the job goes on): try again with a longer --timeout"
        )

    # ---- a resident process --------------------------------------------------------------------
    def announce(self, url: str, token_required: bool):
        """A context manager: while it is open, `kbingest search` in this home asks the server at `url`."""
        from kbingest.pipeline.kb.resident import announced

        return announced(self.home, url, token_required)

    def answer_searches(self):
        """A context manager: while it is open, this process (a watch job, a dashboard) answers
        `kbingest search` in this home, unless another resident process does already."""
        from kbingest.pipeline.kb.resident import answering_searches

        return answering_searches(self)

    # ---- front-end preferences --------------------------------------------------------------
    def settings(self) -> dict:
        """The preferences kept in the home (settings.json): {} when there are none."""
        from kbingest.pipeline.jobstore.preferences import read_settings

        return read_settings(self.home.root)

    def save_settings(self, **updates) -> dict:
        from kbingest.pipeline.jobstore.preferences import write_settings

        try:
            return write_settings(self.home.root, updates)
        except OSError as e:
            raise EngineFailure(f"cannot save the settings in {self.home.root}: {e.strerror or e}") from None

    # ---- repairing --------------------------------------------------------------------------
    def repair(self, kb: str, db: Optional[str] = None, db_options: Optional[dict] = None) -> str:
        """Check a knowledge base where `db` (or KBINGEST_DB) says, else where its newest job wrote,
        else in HOME/lancedb (as search finds it); bring a damaged one back. Says what it did."""
        from kbingest.pipeline.kb.repair import repair
        from kbingest.pipeline.kb.search import locate

        _validated(kb, "knowledge base name")
        jobs = [r for r in self.store.all() if r.config.kb == kb]
        location = locate(self.home, jobs[0].config if jobs else None, db, db_options)
        return repair(self.home, kb, sources=jobs[0].config.sources if jobs else None, location=location).message

    # ---- searching --------------------------------------------------------------------------
    @staticmethod
    def one_shot_search() -> None:
        """This process makes one search and ends (the CLI's `search`): it makes no DataFrame, so
        pyarrow need not import pandas (~0.45 s of a cold search: pipeline/kb/fastimport.py)."""
        from kbingest.pipeline.kb.fastimport import forgo_pandas

        forgo_pandas()

    def search(
        self,
        kb: str,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        db: Optional[str] = None,
        db_options: Optional[dict] = None,
    ):
        """The k chunks nearest the query (vector, full-text or hybrid), embedded with the model the
        knowledge base was built with, where its jobs put it (or `db`)."""
        if self.resident_search and db is None and not db_options:
            from kbingest.pipeline.kb.resident import find
            from kbingest.pipeline.kb.resident import search as resident_search
            from kbingest.pipeline.models import SearchHit

            server = find(self.home)
            hits = resident_search(server, kb, query, k, mode) if server else None
            if hits is not None:
                return [SearchHit(**h) for h in hits]
        return self.search_here(kb, query, k, mode, db, db_options)

    def search_here(
        self,
        kb: str,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        db: Optional[str] = None,
        db_options: Optional[dict] = None,
    ):
        """search() in this process, never through a resident one; the query model stays loaded."""
        from kbingest.pipeline.embed.embedding import EmbeddingError
        from kbingest.pipeline.kb.search import SEARCH_MODES, locate, preload_query_embedder, search_kb, with_paths
        from kbingest.pipeline.kb.table import KnowledgeBase

        _validated(kb, "knowledge base name")
        if k < 1:
            raise InvalidInput("-k must be at least 1")
        jobs = [r for r in self.store.all() if r.config.kb == kb]
        location = locate(self.home, jobs[0].config if jobs else None, db, db_options)
        base = KnowledgeBase(self.home, kb, location)
        if (
            jobs
            and self._embedder_factory is None
            and mode in SEARCH_MODES
            and mode != "text"
            and query.strip()
            and (base.remembered_rows() or 0) > 0
        ):
            preload_query_embedder(jobs[0].config)  # while the table opens
        if not base.exists:
            raise NotFound(f"no knowledge base {kb!r} in {location}; {_kbs_there(self.home, location)}")
        if jobs:
            cfg = jobs[0].config
        else:  # a knowledge base without its jobs (copied from another home): the model its table names
            model = (base.embedding_info() or {}).get("model") or DEFAULT_MODEL
            cfg = JobConfig(
                sources=["."],
                kb=kb,
                embedder="fake" if model == "fake" else "fastembed",
                model=DEFAULT_MODEL if model == "fake" else model,
            )
        try:
            hits = search_kb(base, cfg, query, k, mode=mode, embedder_factory=self._embedder_factory)
            return with_paths(hits, [src for r in jobs for src in r.config.sources])  # relative to its SOURCE
        except EmbeddingError as e:
            raise EngineFailure(str(e)) from None


def _kbs_there(home, location) -> str:
    """The knowledge bases a location holds, named for a user who mistyped one."""
    from kbingest.pipeline.kb.table import list_kbs

    try:
        names = sorted(list_kbs(home, location))
    except Exception:  # naming them is a courtesy: an unreadable location says so in other words
        return "the knowledge bases there could not be listed"
    if not names:
        return "it holds none yet"
    shown = ", ".join(repr(n) for n in names[:20])
    return f"it holds {shown}" + (f" and {len(names) - 20} more" if len(names) > 20 else "")
