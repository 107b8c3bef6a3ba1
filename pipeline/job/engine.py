"""A job: its record in the job store, its tracker, and one run of its passes.

The job wires a pass (pipeline/stages) to an executor (pipeline/executors) and reports through
a TrackerReporter onto its PhaseTracker. A document is the unit of commit: its chunks reach
LanceDB in one commit, then the checkpoint is recorded in the job store. Resuming, retrying or
re-running walks the sources again and skips every document whose version (content hash +
versioned settings) the table already holds, so nothing is indexed twice and nothing half-written
is trusted. Front ends do not use this module directly: they call pipeline/service.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Optional, cast

from kbingest.pipeline import executors
from kbingest.pipeline.chunk.chunking import Chunker
from kbingest.pipeline.embed.embedding import Embedder, make_embedder
from kbingest.pipeline.errors import WrongState
from kbingest.pipeline.job.budget import BudgetedEmbedder, EmbedBudget
from kbingest.pipeline.job.control import PhaseFailed, RunControl
from kbingest.pipeline.job.instrument import Sampler
from kbingest.pipeline.job.reporter import TrackerReporter
from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.jobstore import queue
from kbingest.pipeline.jobstore.liveness import KEEPALIVE_S
from kbingest.pipeline.jobstore.recovery import INTERRUPTED
from kbingest.pipeline.jobstore.store import JobStore, StoreBusy, StoreWriteError
from kbingest.pipeline.kb.location import KbLocation
from kbingest.pipeline.kb.table import KnowledgeBase, TableError
from kbingest.pipeline.locking import FileLock, HeldLocks
from kbingest.pipeline.messages import reason
from kbingest.pipeline.models import (
    DEFAULT_MODEL,
    MODEL_DIMS,
    DocumentError,
    JobConfig,
    JobRecord,
    JobStatusResponse,
    iso,
    utcnow,
)
from kbingest.pipeline.paths import Home, validate_name
from kbingest.pipeline.rss import own_peak_rss_mib
from kbingest.pipeline.stages.base import EmbedStep, IndexStep, PassStages
from kbingest.pipeline.stages.chunk import ChunkStage
from kbingest.pipeline.stages.dryrun import NoIndexStage, TallyStage, embed_rate
from kbingest.pipeline.stages.embed import EmbedStage
from kbingest.pipeline.stages.index import IndexStage
from kbingest.pipeline.stages.load import LoadStage
from kbingest.pipeline.status import JobPhase, JobStatus

log = logging.getLogger("kbingest.engine")

HEARTBEAT_S = 1.0  # how often a running job's snapshot is written to the job store
CONTROL_POLL_S = 0.25  # how often the job store is asked for pause/cancel from another shell
QUEUE_METRICS = ("queue_position", "waiting_for")  # set while pending only
GAUGE_S = 1.0  # how often the monitor samples queue depths and documents in flight (instrument.py)


def new_job_id(kb: str) -> str:
    return f"{kb}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class NotResumable(WrongState):
    """The job was cancelled (maybe from another shell since it was loaded): it cannot run again."""


class IngestJob:
    """One job: its config, tracker, and the executor that runs it. `run()` blocks until the job
    stops (completed, paused, cancelled, failed); `pause()`/`cancel()` may come from any thread."""

    def __init__(
        self,
        home: Home,
        store: JobStore,
        record: JobRecord,
        embedder_factory: Optional[Callable[[JobConfig], Embedder]] = None,
    ) -> None:
        self.home = home
        self.store = store
        self.record = record
        self.config = record.config
        self.job_id = record.job_id
        self.tracker = PhaseTracker.from_snapshot(record.status)
        self._embedder_factory = embedder_factory or (
            lambda c: make_embedder(c.embedder, c.model, c.batch_size, c.threads)
        )
        self.reporter = TrackerReporter(self.tracker, record.status.errors, checkpoint=self._checkpoint)
        self.control = RunControl()
        self.executor = executors.make(self.config.executor, self.control)
        self._failure: Optional[PhaseFailed] = None
        self._embedder_cache: Optional[Embedder] = None
        self._embedder_lock = threading.Lock()
        self._index_stage: Optional[IndexStage] = None
        self._ckpt_lock = threading.Lock()
        self._final = False
        self._monitor_stop = threading.Event()
        self._sampler = Sampler()
        self._gauge_lock = threading.Lock()  # a sample is never set after the pass's idle gauges
        self.done = threading.Event()
        self.scope: Optional[list[str]] = None  # a run over these paths only (a retry of some documents)
        self.embedder_loads = 0  # how many times this job constructed an embedder (0 for unchanged runs)
        self.wait_for_lock = True  # False (--no-wait): refused with KbBusy when its knowledge base is busy
        self._place: Optional[FileLock] = (
            None  # the lock that says this process waits for this job (pipeline/jobstore/queue.py)
        )
        self._dry_run: Optional[TallyStage] = None  # the TallyStage of a dry run's pass
        self.budget = EmbedBudget(home)  # embedding calls take turns with the home's other jobs

    # ---- creating and loading ---------------------------------------------------------------
    @classmethod
    def create(
        cls, home: Home, store: JobStore, config: JobConfig, job_id: Optional[str] = None, **kw: Any
    ) -> "IngestJob":
        validate_name(config.kb, "knowledge base name")
        job_id = validate_name(job_id or new_job_id(config.kb), "job id")
        t = PhaseTracker(job_id, config.kb)
        why = queue.wait_reason(home, store.all(), job_id, config.kb)
        if why is not None:  # the first status line says why it waits
            t.set_message(why[0])
            t.set_metric("queue_position", why[2])
            t.set_metric("waiting_for", why[1])
        place = queue.hold_place(home, job_id)  # its process dies: shown interrupted, not stuck pending
        now = iso(utcnow())
        rec = JobRecord(
            job_id=job_id,
            config=config,
            status=t.snapshot(),
            created_at=now,
            updated_at=now,
            owner_pid=os.getpid(),
            queued_at=now,
        )
        store.put(rec)
        job = cls(home, store, rec, **kw)
        job._place = place
        return job

    @classmethod
    def load(cls, home: Home, store: JobStore, job_id: str, **kw: Any) -> "IngestJob":
        rec = store.get(validate_name(job_id, "job id"))
        if rec is None:
            raise KeyError(f"no job {job_id!r} in {home.root}")
        return cls(home, store, rec, **kw)

    # ---- control ----------------------------------------------------------------------------
    def snapshot(self) -> JobStatusResponse:
        return self.tracker.snapshot()

    def snapshots_since(self, seq: int) -> tuple[list[JobStatusResponse], int]:
        return self.tracker.snapshots_since(seq)

    @property
    def errors(self) -> list[DocumentError]:
        return self.reporter.errors

    def queue_depths(self) -> dict[str, int]:
        return dict(self.executor.queue_depths())

    def job_store(self) -> JobStore:
        return self.store

    @property
    def last_commit_at(self) -> Optional[float]:
        """Monotonic time of the last LanceDB write of this run."""
        return self._index_stage.last_commit_at if self._index_stage is not None else None

    def pause(self) -> None:
        self._request_stop(JobStatus.PAUSED)

    def cancel(self) -> None:
        self._request_stop(JobStatus.CANCELLED)

    def drain(self) -> None:
        """Cancel loading only: no new documents; those loaded are finished and committed, and the
        job completes with the rest counted as not processed."""
        self.control.drain()
        self.tracker.set_message("draining: no new documents; finishing and committing those loaded")

    def _request_stop(self, why: JobStatus) -> None:
        self.executor.stop(why)
        self.tracker.set_message(
            "cancelling…" if self.control.reason == JobStatus.CANCELLED else "pausing: finishing the batch in flight…"
        )

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> JobStatusResponse:
        """Run (or resume) the job to its next resting state. Holds its knowledge base's lock; while
        another job writes that knowledge base, it waits as `pending` (docs/queue.md)."""
        retry = self.tracker.status == JobStatus.COMPLETED  # retrying its failed documents: progress from 0
        resumed = self.tracker.status != JobStatus.PENDING
        lock = None
        try:
            try:
                lock = self._take_kb()
            except queue.KbBusy:
                self._forget_if_never_ran()
                raise
            finally:
                queue.drop_place(self.home, self._place, self.job_id)
            if lock is None:  # stopped while pending
                return self.snapshot()
            return self._run_locked(retry, resumed)
        finally:
            if lock is not None:
                lock.release()
            self.budget.close()
            self.executor.close()
            self.done.set()

    # ---- the queue ---------------------------------------------------------------------------
    def _take_kb(self):
        """The knowledge base's locks: the home's (one writer per knowledge base of this home, the
        queue), then the one at its location (one writer whichever home writes there: issue 27);
        waiting for each as a pending job unless --no-wait. None when the job was cancelled or paused
        while it waited."""
        lock = self._take_home_kb()
        if lock is None:
            return None
        try:
            writer = self._take_location()
        except BaseException:
            lock.release()
            raise
        if writer is None:
            lock.release()
            return None
        return HeldLocks(lock, writer)

    def _take_home_kb(self):
        """This home's lock of the knowledge base (HOME/locks, the queue: docs/queue.md)."""
        home, kb = self.home, self.config.kb
        if not self.wait_for_lock:
            refused = queue.refusal(home, self.store.all(), self.job_id, kb)
            lock = None if refused else queue.try_kb_lock(home, kb)
            if lock is None:
                raise refused or queue.KbBusy(
                    f"knowledge base {kb} is being written by another job; run without --no-wait to queue it"
                )
            return lock
        if queue.wait_reason(home, self.store.all(), self.job_id, kb) is None:
            lock = queue.try_kb_lock(home, kb)
            if lock is not None:
                return lock
        if self._place is None or not self._place.held:
            self._place = queue.hold_place(home, self.job_id)
        self._mark_pending(f"pending: waiting for knowledge base {kb}", keep=True)
        lock = queue.wait_for_kb(
            home, kb, self.job_id, self.store.all, self._waiting, self._stop_waiting, self.control.wait
        )
        for key in QUEUE_METRICS:
            self.tracker.drop_metric(key)
        if lock is None:
            self._stopped_pending()
        return lock

    def _take_location(self):
        """The writer lock where the table lives (pipeline/locking.py), held while this home's lock is:
        a job of another home writing the same location makes this one wait as pending (naming it),
        or, with --no-wait, refused naming it. None when stopped while it waited."""
        kb = self.config.kb
        loc = KbLocation.of_job(self.home, self.config)
        writer = loc.writer_lock(kb, {"home": str(self.home.root), "job": self.job_id}, on_lost=self._lost_lease)
        if writer.try_acquire():
            return writer
        if not self.wait_for_lock:
            raise queue.KbBusy(
                f"knowledge base {kb} at {loc} is being written by {writer.holder()}: "
                "not started (--no-wait); run without --no-wait to queue it"
            )
        if self._place is None or not self._place.held:
            self._place = queue.hold_place(self.home, self.job_id)
        last = None
        while True:
            why = f"pending: waiting for {writer.holder()} writing knowledge base {kb} at {loc}"
            if why != last:
                if last is None:
                    self._mark_pending(why)
                else:
                    self.tracker.set_message(why)
                    self._checkpoint()
                last = why
            self.control.wait(queue.POLL_S)
            if self._stop_waiting():
                self._stopped_pending()
                return None
            if writer.try_acquire():
                return writer

    def _lost_lease(self, why: str) -> None:
        """The location's lease was taken (its renewals failed for its whole life): stop writing now."""
        if self._failure is None:
            self._failure = PhaseFailed(self._current_phase(), why)
        self.control.halt()

    def _mark_pending(self, message: str, keep: bool = False) -> None:
        """Stored as pending (owner: this process, queued now), unless cancelled meanwhile. `keep`:
        a job already pending keeps its message."""
        t = self.tracker
        if t.status != JobStatus.PENDING:
            t.set_status(JobStatus.PENDING, message)
        elif not keep:
            t.set_message(message)
        snap, stored = self.snapshot(), dict[str, Any]()

        def enqueue(r: JobRecord) -> JobRecord:
            stored.update(status=r.status.status)
            if r.status.status == JobStatus.CANCELLED:
                return r
            return r.model_copy(update={"status": snap, "owner_pid": os.getpid(), "queued_at": iso(utcnow())})

        self.store.update(self.job_id, enqueue)
        if stored.get("status") == JobStatus.CANCELLED:
            self._final = True
            raise NotResumable(f"job {self.job_id} was cancelled and cannot be resumed")

    def _waiting(self, message: str, blocker: Optional[str], position: int) -> None:
        t = self.tracker
        t.set_message(message)
        t.set_metric("queue_position", position)
        t.set_metric("waiting_for", blocker)
        self._checkpoint()

    def _stop_waiting(self) -> bool:
        if self.control.stopping:
            return True
        rec = self.store.get(self.job_id)
        if rec is None or rec.status.status == JobStatus.CANCELLED:
            return True
        if rec.control in ("cancel", "pause", "drain"):  # a drain of a job that loaded nothing: a cancel
            self.control.request(JobStatus.PAUSED if rec.control == "pause" else JobStatus.CANCELLED)
            return True
        return False

    def _stopped_pending(self) -> None:
        """Cancelled (here or from another shell) or paused while it waited: it never ran this time."""
        rec = self.store.get(self.job_id)
        if rec is not None and rec.status.status == JobStatus.CANCELLED:  # cancelled in the store
            self.tracker = PhaseTracker.from_snapshot(rec.status)
            self._final = True
            return
        t = self.tracker
        if self.control.reason == JobStatus.PAUSED:
            t.set_status(JobStatus.PAUSED, "paused while pending: resume to queue it again")
        else:
            t.set_status(JobStatus.CANCELLED, "cancelled while pending: it never ran")
        self._checkpoint(final=True)

    def _forget_if_never_ran(self) -> None:
        """Another engine took the home between the check and this run: a job that never ran leaves
        no trace (no pending ghost in `kbingest jobs`)."""
        if self.tracker.status == JobStatus.PENDING and not self.tracker.snapshot().started_at:
            self.store.remove_job(self.job_id, only_if=lambda r: r.status.status == JobStatus.PENDING)

    def _run_locked(self, retry: bool, resumed: bool) -> JobStatusResponse:
        t = self.tracker
        if t.status == JobStatus.CANCELLED:
            raise NotResumable(f"job {self.job_id} was cancelled and cannot be resumed")
        if t.status == JobStatus.RUNNING:  # found running with no engine: it was interrupted
            t.set_status(JobStatus.PAUSED, INTERRUPTED)
        if resumed:
            t.reset_phases(keep_progress=not retry)  # a paused, interrupted or failed job goes on from where it was
        t.set_status(JobStatus.RUNNING, "starting: opening the knowledge base")
        snap, stored = self.snapshot(), dict[str, Any]()

        def claim(r: JobRecord) -> JobRecord:
            # decided against the stored record, under the store's lock: a cancel from another shell
            # since this job was loaded is honoured, never overwritten
            stored.update(status=r.status.status, control=r.control)
            if r.status.status == JobStatus.CANCELLED:
                return r
            return r.model_copy(
                update={"status": snap, "control": None, "owner_pid": os.getpid(), "heartbeat_at": iso(utcnow())}
            )

        self.store.update(self.job_id, claim)
        if stored.get("status") == JobStatus.CANCELLED:
            self._final = True  # nothing of this run is ever written over the cancellation
            raise NotResumable(f"job {self.job_id} was cancelled and cannot be resumed")
        if stored.get("control") == "cancel":
            self.cancel()
        monitor = threading.Thread(target=self._monitor, name="kbingest-monitor", daemon=True)
        monitor.start()
        try:
            if self.config.watch:
                self._watch()
            else:
                self._run_pass(self.scope)
        except BaseException as e:  # the one error handler: anything unexpected fails the job cleanly
            if not isinstance(e, PhaseFailed):
                e = PhaseFailed(self._current_phase(), reason(e))
                log.error("%s", e, exc_info=True)
            self._failure = e
            self.control.halt()
        self._monitor_stop.set()
        monitor.join()
        self._finish()
        return self.snapshot()

    def _current_phase(self) -> JobPhase:
        p = self.tracker.snapshot().phase
        return JobPhase.INDEXING if p == JobPhase.COMPLETED else p  # after the last phase: the indexer's tail

    def _finish(self) -> None:
        t = self.tracker
        n_err = len(self.errors)
        t.set_metric("peak_rss_mib", own_peak_rss_mib())
        # a pause or cancel that came once every phase had completed (during the final optimize)
        # came too late: the work is done, and the job says so
        done = not self.config.watch and t.snapshot().phase == JobPhase.COMPLETED
        reason = self.control.reason
        if self._failure is not None:
            f = self._failure
            t.fail_phase(f.phase, str(f))
            t.set_status(JobStatus.FAILED, f"failed in {f.phase.value}: {f}", error=str(f))
        elif reason == JobStatus.CANCELLED and not done:
            t.set_status(JobStatus.CANCELLED, "cancelled: chunks already indexed stay in the knowledge base")
        elif reason == JobStatus.PAUSED and not done:
            t.set_status(JobStatus.PAUSED, "paused: checkpoint saved; resume to continue")
        else:
            m = t.snapshot().m
            msg = (
                f"completed: {m.documents_added or 0} added, {m.documents_replaced or 0} replaced, "
                f"{m.documents_skipped or 0} unchanged, {m.documents_removed or 0} removed, "
                f"{m.chunks_indexed or 0} chunks indexed"
            )
            if m.dry_run:
                d = m.dry_run
                est = d.get("estimated_embedding_seconds")
                msg = (
                    f"dry run completed: {d['documents']} document(s) to embed, {d['chunks']} chunks, "
                    f"{d['tokens']} tokens; embedding "
                    + (
                        f"would take about {est:.0f} s at {d['embed_rate_chunks_per_s']} chunks/s ({d['rate_source']})"
                        if est is not None
                        else "time unknown (no measured rate)"
                    )
                    + f"; {m.documents_skipped or 0} unchanged"
                )
            elif self.control.draining:
                msg = f"drained: {m.documents_not_processed or 0} document(s) not processed; " + msg.removeprefix(
                    "completed: "
                )
            if n_err:
                msg += f"; {n_err} document(s) failed"
            t.set_status(JobStatus.COMPLETED, msg)
        self._checkpoint(final=True)

    # ---- persistence ------------------------------------------------------------------------
    def _checkpoint(self, final: bool = False) -> None:
        with self._ckpt_lock:
            if self._final:
                return
            self._final = final
            snap = self.snapshot()

            def apply(r: JobRecord) -> JobRecord:
                upd: dict[str, Any] = {"status": snap, "heartbeat_at": iso(utcnow())}
                if final:
                    upd.update(control=None, owner_pid=None)
                return r.model_copy(update=upd)

            self.store.update(self.job_id, apply)

    def _monitor(self) -> None:
        """Heartbeat to the store, and pause/cancel requests from another process."""
        last_beat, last_version, last_gauge = 0.0, -1, 0.0
        sampler = self._sampler
        while not self._monitor_stop.wait(CONTROL_POLL_S):
            try:
                if time.monotonic() - last_gauge >= GAUGE_S:
                    last_gauge = time.monotonic()
                    with self._gauge_lock:
                        for key, value in sampler.sample(self.executor).items():
                            self.tracker.set_metric(key, value)
                control = self.store.control_of(self.job_id)
                if control == "pause" and not self.control.stopping:
                    self.pause()
                elif control == "drain" and not self.control.draining:
                    self.drain()
                elif control == "cancel" and not self.control.cancelling:
                    self.cancel()
                now = time.monotonic()
                if now - last_beat >= HEARTBEAT_S and (
                    self.tracker.version != last_version or now - last_beat >= KEEPALIVE_S
                ):  # alive, with nothing new
                    last_beat, last_version = now, self.tracker.version
                    self._checkpoint()
            except (StoreBusy, StoreWriteError) as e:  # a heartbeat missed: said, the job goes on
                log.warning("job %s: %s", self.job_id, e)
            except Exception:  # the store being briefly unreadable must not kill the job
                log.exception("monitor")

    # ---- watching ---------------------------------------------------------------------------
    def _watch(self) -> None:
        """A full pass, then one pass per burst of changes until the job is paused or cancelled.
        The feed starts before the first pass, so nothing saved during it is missed."""
        from kbingest.pipeline.job.watch import ChangeFeed
        from kbingest.pipeline.load.sources import is_uri

        t = self.tracker
        if any(is_uri(s) for s in self.config.sources):
            return self._watch_polling()
        with ChangeFeed(self.config.sources, exclude=[str(self.home.root)]) as feed:
            self._run_pass()
            t.set_metric("last_synced_at", iso(utcnow()))
            while not self.control.stopping and not self.control.draining:
                t.set_metric("watch_warning", feed.warning)
                t.set_message(f"watching {len(self.config.sources)} source(s) for changes")
                burst = feed.next_burst(timeout=0.25)
                if burst is None or self.control.stopping:
                    continue
                t.reset_phases(keep_progress=False)
                t.incr_metric("watch_bursts")
                with self.budget.priority():  # a save goes before other jobs' bulk backfill
                    self._run_pass(None if burst.rescan else sorted(burst.paths))
                t.set_metric("last_synced_at", iso(utcnow()))

    def _watch_polling(self) -> None:
        """--watch over s3:// or http(s):// sources (pipeline/load/sources.py): no change feed, a full pass
        every `interval` seconds (an unchanged object or page costs its listing entry or a 304)."""
        t, c = self.tracker, self.config
        while True:
            self._run_pass()
            t.set_metric("last_synced_at", iso(utcnow()))
            t.set_message(f"watching {len(c.sources)} source(s): next listing in {c.interval:g} s")
            due = time.monotonic() + c.interval
            while time.monotonic() < due and not self.control.stopping and not self.control.draining:
                time.sleep(min(0.25, max(0.0, due - time.monotonic())))
            if self.control.stopping or self.control.draining:
                return
            t.reset_phases(keep_progress=False)
            t.incr_metric("watch_bursts")

    # ---- one pass ---------------------------------------------------------------------------
    def _embedder(self) -> Embedder:
        """The model, loaded the first time a chunk needs a vector (never for an unchanged run)."""
        with self._embedder_lock:
            if self._embedder_cache is None:
                self.tracker.set_message("loading the embedding model")
                self._embedder_cache = BudgetedEmbedder(self._embedder_factory(self.config), self.budget)
                self.embedder_loads += 1
                self.tracker.set_message("ingesting")
            return self._embedder_cache

    def _token_counter(self):
        """Chunk sizes in the model's tokens: the shipped tokenizer for the default model (no model
        load); another model's own tokenizer."""
        c = self.config
        if c.embedder == "fake" or c.model == DEFAULT_MODEL:
            return None  # the Chunker's default: the shipped tokenizer
        emb = self._embedder()
        return emb.token_counter() if hasattr(emb, "token_counter") else None

    def _expected_dim(self) -> Optional[int]:
        return MODEL_DIMS.get(self.config.vector_model)

    def _run_pass(self, scope: Optional[list[str]] = None) -> None:
        """One pass over the sources (scope None) or over these paths below them (a watch burst)."""
        c, t, r = self.config, self.tracker, self.reporter
        kb = KnowledgeBase.for_job(self.home, c)  # opened only when needed
        dim = self._expected_dim()
        remembered = kb.remembered(dim)  # as at the end of the last pass, if the table has not changed since
        stored = remembered
        if stored is None:
            if kb.exists and dim is not None and kb.dim != dim:
                raise TableError(
                    f"knowledge base {c.kb!r} holds {kb.dim}-dimensional vectors and this model "
                    f"makes {dim}: use another --kb for another model"
                )
            if kb.exists:
                kb.ensure(cast(int, kb.dim))  # it exists: it has a dimension. Gains the columns added since (no model)
            stored = kb.stored_docs()
        chunker = Chunker(c.chunk_settings(), self._token_counter())
        r.new_pass(full=scope is None)  # job totals go on across passes; "this_pass" restarts
        r.forget(scope)  # every pass finds the problems of what it walks again
        t.set_message("ingesting" if not c.until else f"dry run: stops after {c.until}")
        dry = c.until == "chunking"
        embed: EmbedStep
        index: IndexStep
        if dry:  # --until chunking: no model, nothing written
            embed = self._dry_run = TallyStage(r, chunker.counter)
            index = NoIndexStage()
            self._index_stage = None
            for phase in (JobPhase.EMBEDDING, JobPhase.INDEXING):
                t.skip_phase(phase)
        else:
            embed = EmbedStage(c, r, self.control, self._embedder)
            index = self._index_stage = IndexStage(c, r, self.control, kb)
        stages = PassStages(
            load=LoadStage(
                c,
                r,
                self.control,
                stored,
                scope,
                kb.high_water(),
                state_path=str(self.home.root / "sources" / f"{c.kb}.json"),
            ),
            chunk=ChunkStage(c, r, chunker, kb),
            embed=embed,
            index=index,
            scope=scope,
            job_id=self.job_id,
        )
        try:
            self.executor.run_pass(stages)
        except BaseException:
            kb.forget()  # a commit may have failed midway: the next pass scans the table
            raise
        finally:
            if getattr(self.executor, "queues", None) is not None:  # an executor the monitor samples
                with self._gauge_lock:
                    for key, value in self._sampler.idle(self.executor).items():
                        t.set_metric(key, value)
        if self._dry_run is not None and dry:
            rate, source = embed_rate(self.store.all(), c.vector_model)
            t.set_metric("dry_run", self._dry_run.report(rate, source))
        elif remembered is None and not kb.exists and not self.control.stopping:  # nothing written: it exists, empty
            kb.ensure(dim if dim is not None else self._embedder().dim)
        if not dry:
            kb.remember(stored)
