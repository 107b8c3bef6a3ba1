"""The ingestion engine: four phases as a streaming pipeline of worker threads.

    loader --docs--> chunker --doc chunks--> embedder --embedded docs--> indexer (the one writer)

Bounded queues join the threads, so memory stays flat whatever the corpus size. A document is the
unit of commit: its chunks reach LanceDB in one commit, then the checkpoint is recorded in the job
store. Resuming, retrying or re-running walks the sources again and skips every document whose
version (content hash + settings) the table already holds, so nothing is indexed twice and
nothing half-written is trusted.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from kbingest.pipeline import ids
from kbingest.pipeline.chunking import Chunker, ChunkSettings
from kbingest.pipeline.embedding import Embedder, make_embedder
from kbingest.pipeline.index import KnowledgeBase, StoredDoc
from kbingest.pipeline.loading import (Candidate, LoadedDocument, LoadError, LoadLimits, Problem, Skipped, read_document,
                              walk, walk_within, within)
from kbingest.pipeline.locking import EngineLock
from kbingest.pipeline.models import DocumentError, JobConfig, JobRecord, JobStatusResponse, iso, utcnow
from kbingest.pipeline.paths import Home, validate_name
from kbingest.pipeline.status import JobPhase, JobStatus
from kbingest.pipeline.store import JobStore
from kbingest.pipeline.textsafe import fs_text
from kbingest.pipeline.tracker import PhaseTracker
from kbingest.pipeline.jobs import INTERRUPTED

log = logging.getLogger("kbingest.engine")

QUEUE_DOCS = 16          # loaded documents waiting to be chunked
QUEUE_CHUNKED = 16       # chunked documents waiting to be embedded
QUEUE_EMBEDDED = 64      # embedded documents waiting to be indexed
HEARTBEAT_S = 1.0        # how often a running job's snapshot is written to the job store
CONTROL_POLL_S = 0.25    # how often the job store is asked for pause/cancel from another shell
MAX_ERRORS_IN_STATUS = 100
PHASE_ERRORS_LISTED = 10  # documents named in a phase's error text


def new_job_id(kb: str) -> str:
    return f"{kb}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class _Doc:
    """A document on its way through the pipeline."""

    path: str
    doc_id: str
    version: str
    replaces: bool                      # the table held another version of it
    title: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)   # chunk rows, vectors added by the embedder
    dropped: bool = False               # failed in embedding: nothing of it is written


class NotResumable(RuntimeError):
    """The job was cancelled (maybe from another shell since it was loaded): it cannot run again."""


class _Stop(Exception):
    """Raised inside a worker when the job is asked to stop."""


class _PhaseFailed(Exception):
    def __init__(self, phase: JobPhase, message: str) -> None:
        super().__init__(message)
        self.phase = phase


_END = object()  # end of stream marker


class IngestJob:
    """One job: its config, tracker, and the threads that run it. `run()` blocks until the job
    stops (completed, paused, cancelled, failed); `pause()`/`cancel()` may come from any thread."""

    def __init__(self, home: Home, store: JobStore, record: JobRecord,
                 embedder_factory: Optional[Callable[[JobConfig], Embedder]] = None) -> None:
        self.home = home
        self.store = store
        self.record = record
        self.config = record.config
        self.job_id = record.job_id
        self.tracker = PhaseTracker.from_snapshot(record.status)
        self._embedder_factory = embedder_factory or (
            lambda c: make_embedder(c.embedder, c.model, c.batch_size, c.threads))
        self._errors: list[DocumentError] = list(record.doc_errors)
        self._errors_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason: Optional[JobStatus] = None
        self._failure: Optional[_PhaseFailed] = None
        self._threads: list[threading.Thread] = []
        self._embedder_cache: Optional[Embedder] = None
        self._ckpt_lock = threading.Lock()
        self._final = False
        self._monitor_stop = threading.Event()
        self.done = threading.Event()
        self.last_commit_at: Optional[float] = None  # monotonic time of the last LanceDB write
        self._optimize_peak_mib = 0.0  # the largest peak RSS of a compaction child, this run

    # ---- creating and loading ---------------------------------------------------------------
    @classmethod
    def create(cls, home: Home, store: JobStore, config: JobConfig, job_id: Optional[str] = None,
               **kw: Any) -> "IngestJob":
        validate_name(config.kb, "knowledge base name")
        job_id = validate_name(job_id or new_job_id(config.kb), "job id")
        snap = PhaseTracker(job_id, config.kb).snapshot()
        now = iso(utcnow())
        rec = JobRecord(job_id=job_id, config=config, status=snap, created_at=now, updated_at=now)
        store.put(rec)
        return cls(home, store, rec, **kw)

    @classmethod
    def load(cls, home: Home, store: JobStore, job_id: str, **kw: Any) -> "IngestJob":
        rec = store.get(validate_name(job_id, "job id"))
        if rec is None:
            raise KeyError(f"no job {job_id!r} in {home.root}")
        return cls(home, store, rec, **kw)

    # ---- control ----------------------------------------------------------------------------
    def snapshot(self) -> JobStatusResponse:
        return self.tracker.snapshot()

    @property
    def errors(self) -> list[DocumentError]:
        with self._errors_lock:
            return list(self._errors)

    def pause(self) -> None:
        self._request_stop(JobStatus.PAUSED)

    def cancel(self) -> None:
        self._request_stop(JobStatus.CANCELLED)

    def _request_stop(self, why: JobStatus) -> None:
        if self._stop_reason is None or why == JobStatus.CANCELLED:
            self._stop_reason = why
        self.tracker.set_message("cancelling…" if why == JobStatus.CANCELLED else "pausing: finishing the batch in flight…")
        self._stop.set()

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> JobStatusResponse:
        """Run (or resume) the job to its next resting state. Holds the home's engine lock."""
        lock = EngineLock(self.home.engine_lock_file).acquire()
        try:
            return self._run_locked()
        finally:
            lock.release()
            self.done.set()

    def _run_locked(self) -> JobStatusResponse:
        t = self.tracker
        if t.status == JobStatus.CANCELLED:
            raise NotResumable(f"job {self.job_id} was cancelled and cannot be resumed")
        retry = t.status == JobStatus.COMPLETED  # retrying its failed documents is new work: progress from 0
        if t.status == JobStatus.RUNNING:  # found running with no engine: it was interrupted
            t.set_status(JobStatus.PAUSED, INTERRUPTED)
        if t.status != JobStatus.PENDING:
            t.reset_phases(keep_progress=not retry)  # a paused, interrupted or failed job goes on from where it was
        t.set_status(JobStatus.RUNNING, "starting: loading the model and the knowledge base")
        snap, stored = self.snapshot(), {}

        def claim(r: JobRecord) -> JobRecord:
            # decided against the stored record, under the store's lock: a cancel from another shell
            # since this job was loaded is honoured, never overwritten
            stored.update(status=r.status.status, control=r.control)
            if r.status.status == JobStatus.CANCELLED:
                return r
            return r.model_copy(update={"status": snap, "doc_errors": self.errors, "control": None,
                                        "owner_pid": os.getpid()})

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
                self._run_pass()
        except BaseException as e:  # the one error handler: anything unexpected fails the job cleanly
            if not isinstance(e, _PhaseFailed):
                log.exception("job %s failed", self.job_id)
                e = _PhaseFailed(self._current_phase(), f"{type(e).__name__}: {e}")
            self._failure = e
            self._stop.set()
        finally:
            for th in self._threads:
                th.join()
            self._threads.clear()
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
        # a pause or cancel that came once every phase had completed (during the final optimize)
        # came too late: the work is done, and the job says so
        done = not self.config.watch and t.snapshot().phase == JobPhase.COMPLETED
        if self._failure is not None:
            f = self._failure
            t.fail_phase(f.phase, str(f))
            t.set_status(JobStatus.FAILED, f"failed in {f.phase.value}: {f}", error=str(f))
        elif self._stop_reason == JobStatus.CANCELLED and not done:
            t.set_status(JobStatus.CANCELLED, "cancelled: chunks already indexed stay in the knowledge base")
        elif self._stop_reason == JobStatus.PAUSED and not done:
            t.set_status(JobStatus.PAUSED, "paused: checkpoint saved; resume to continue")
        else:
            m = t.snapshot().metrics
            msg = (f"completed: {m.get('documents_added', 0)} added, {m.get('documents_replaced', 0)} replaced, "
                   f"{m.get('documents_skipped', 0)} unchanged, {m.get('documents_removed', 0)} removed, "
                   f"{m.get('chunks_indexed', 0)} chunks indexed")
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
            errors = self.errors

            def apply(r: JobRecord) -> JobRecord:
                upd: dict[str, Any] = {"status": snap, "doc_errors": errors}
                if final:
                    upd.update(control=None, owner_pid=None)
                return r.model_copy(update=upd)

            self.store.update(self.job_id, apply)

    def _monitor(self) -> None:
        """Heartbeat to the store, and pause/cancel requests from another process."""
        last_beat, last_version = 0.0, -1
        while not self._monitor_stop.wait(CONTROL_POLL_S):
            try:
                control = self.store.control_of(self.job_id)
                if control == "pause" and not self._stop.is_set():
                    self.pause()
                elif control == "cancel" and self._stop_reason != JobStatus.CANCELLED:
                    self.cancel()
                now = time.monotonic()
                if now - last_beat >= HEARTBEAT_S and self.tracker.version != last_version:
                    last_beat, last_version = now, self.tracker.version
                    self._checkpoint()
            except Exception:  # the store being briefly unreadable must not kill the job
                log.exception("monitor")

    # ---- errors -----------------------------------------------------------------------------
    def _doc_error(self, path: str, phase: JobPhase, kind: str, message: str, attempts: int = 1) -> None:
        with self._errors_lock:
            self._errors.append(DocumentError(path=fs_text(path), phase=phase.value, kind=kind, message=message,
                                              attempts=attempts))
            errs = [e for e in self._errors if e.phase == phase.value]
            self._publish_errors()
        t = self.tracker
        listed = "; ".join(f"{e.path} ({e.kind})" for e in errs[:PHASE_ERRORS_LISTED])
        more = f"; and {len(errs) - PHASE_ERRORS_LISTED} more" if len(errs) > PHASE_ERRORS_LISTED else ""
        t.set_phase_error(phase, f"{len(errs)} document(s) failed: {listed}{more}")

    def _publish_errors(self) -> None:
        """The status metrics of the document errors (under _errors_lock: one writer at a time)."""
        self.tracker.set_metric("documents_failed", len(self._errors))
        self.tracker.set_metric("document_errors", [e.model_dump() for e in self._errors[:MAX_ERRORS_IN_STATUS]])

    def _forget_errors(self, scope: Optional[list[str]]) -> None:
        """A pass looks at these paths again (all, for None): their old errors are found again or gone."""
        marks = None if scope is None else [fs_text(p) for p in scope]
        with self._errors_lock:
            self._errors = [] if marks is None else [
                e for e in self._errors if not any(within(e.path, m) for m in marks)]
            self._publish_errors()

    def _doc_warnings(self, path: str, warnings: Iterable[str]) -> None:
        """A document indexed with a warning: counted, and the first few listed in the status."""
        t = self.tracker
        for w in warnings:
            log.info("%s: %s", path, w)
            t.incr_metric("document_warnings")
            if len(self._warnings) < MAX_ERRORS_IN_STATUS:
                self._warnings.append({"path": fs_text(path), "warning": w})
        t.set_metric("document_warning_list", list(self._warnings))

    # ---- watching ---------------------------------------------------------------------------
    def _watch(self) -> None:
        """A full pass, then one pass per burst of changes until the job is paused or cancelled.
        The feed starts before the first pass, so nothing saved during it is missed."""
        from kbingest.pipeline.watch import ChangeFeed

        t = self.tracker
        with ChangeFeed(self.config.sources, exclude=[str(self.home.root)]) as feed:
            self._run_pass()
            while not self._stop.is_set():
                t.set_metric("watch_warning", feed.warning)
                t.set_message(f"watching {len(self.config.sources)} source(s) for changes")
                burst = feed.next_burst(timeout=0.25)
                if burst is None or self._stop.is_set():
                    continue
                t.reset_phases(keep_progress=False)
                t.incr_metric("watch_bursts")
                self._run_pass(None if burst.rescan else sorted(burst.paths))

    # ---- the streaming pass -----------------------------------------------------------------
    def _embedder(self) -> Embedder:
        if self._embedder_cache is None:
            self.tracker.set_message("loading the embedding model")
            self._embedder_cache = self._embedder_factory(self.config)
        return self._embedder_cache

    def _run_pass(self, scope: Optional[list[str]] = None) -> None:
        """One pass over the sources (scope None) or over these paths below them (a watch burst)."""
        c = self.config
        t = self.tracker
        kb = KnowledgeBase.for_job(self.home, c)
        stored = kb.stored_docs()
        embedder = self._embedder()
        kb.ensure(embedder.dim)
        settings = ChunkSettings(max_tokens=c.max_tokens, overlap_tokens=c.overlap_tokens, max_chars=c.max_chars)
        counter = embedder.token_counter() if hasattr(embedder, "token_counter") else None
        chunker = Chunker(settings, counter)
        for key in ("documents_found", "documents_skipped", "documents_added", "documents_replaced",
                    "documents_removed", "files_ignored", "chunks_created", "chunks_embedded", "chunks_indexed",
                    "commits", "document_warnings"):
            t.set_metric(key, 0)
        self._warnings: list[dict[str, str]] = []  # documents loaded with a warning, this pass
        t.set_metric("document_warning_list", [])
        self._forget_errors(scope)  # every pass finds the problems of what it walks again
        t.set_message("ingesting")
        q_docs: queue.Queue = queue.Queue(QUEUE_DOCS)
        q_chunked: queue.Queue = queue.Queue(QUEUE_CHUNKED)
        q_embedded: queue.Queue = queue.Queue(QUEUE_EMBEDDED)
        workers = [
            ("loader", lambda: self._load(stored, settings.fingerprint(), embedder.model, q_docs, scope)),
            ("chunker", lambda: self._chunk(chunker, settings.fingerprint(), embedder.model, q_docs, q_chunked, kb)),
            ("embedder", lambda: self._embed(embedder, q_chunked, q_embedded)),
            ("indexer", lambda: self._index(kb, q_embedded)),
        ]
        for name, fn in workers:
            th = threading.Thread(target=self._worker, args=(name, fn), name=f"kbingest-{name}", daemon=True)
            self._threads.append(th)
            th.start()
        for th in self._threads:
            th.join()
        self._threads.clear()
        if self._failure is not None:
            raise self._failure

    def _worker(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except _Stop:
            pass
        except _PhaseFailed as e:
            if self._failure is None:
                self._failure = e
            self._stop.set()
        except BaseException as e:
            log.exception("worker %s", name)
            if self._failure is None:
                phase = {"loader": JobPhase.LOADING, "chunker": JobPhase.CHUNKING,
                         "embedder": JobPhase.EMBEDDING}.get(name, JobPhase.INDEXING)
                self._failure = _PhaseFailed(phase, f"{type(e).__name__}: {e}")
            self._stop.set()

    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> Any:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    # loading ---------------------------------------------------------------------------------
    def _scoped_walk(self, scope: Optional[list[str]], limits: LoadLimits) -> tuple[Iterable, list[str]]:
        """What to walk, and the paths inside which a stored document not seen is gone."""
        roots = [os.path.abspath(s) for s in self.config.sources]
        if scope is None:
            return walk(self.config.sources, limits), roots

        def items():
            for root in roots:
                inside = [p for p in scope if within(p, root)]
                if inside:
                    yield from walk_within(root, inside, limits)
        return items(), [os.path.abspath(p) for p in scope]

    def _load(self, stored: dict[str, StoredDoc], fingerprint: str, model: str, out: queue.Queue,
              scope: Optional[list[str]] = None) -> None:
        t = self.tracker
        c = self.config
        limits = LoadLimits(max_file_bytes=c.max_file_bytes, max_depth=c.max_depth, max_files=c.max_files,
                            follow_links=c.follow_links)
        t.start_phase(JobPhase.LOADING)
        seen: set[str] = set()   # documents found this pass: what the table holds of them stays
        held: list[str] = []     # files and folders refused this pass: what it holds below them stays
        complete_walk = True
        items, covered = self._scoped_walk(scope, limits)
        counted = scope is None
        if counted:  # a listing pass first (no reads): progress and ETA know the job's size
            t.add_total(JobPhase.LOADING, len({i.path for i in walk(c.sources, limits) if isinstance(i, Candidate)}))
            t.finish_total(JobPhase.LOADING)
        for item in items:
            if self._stop.is_set():
                raise _Stop
            if isinstance(item, Skipped):
                t.incr_metric("files_ignored")
                continue
            if isinstance(item, Problem):
                if item.kind == "too_many_files":
                    complete_walk = False
                self._doc_error(item.path, JobPhase.LOADING, item.kind, item.message)
                if item.kind != "vanished":
                    held.append(fs_text(item.path))  # refused now (unreadable, too deep...): its chunks stay
                continue
            did = ids.doc_id(item.path)
            if did in seen:  # overlapping sources (a folder and a file or folder in it): loaded once
                continue
            if not counted:
                t.add_total(JobPhase.LOADING)
            t.incr_metric("documents_found")
            doc, gone = self._read(item)
            if doc is not None and doc.warnings:  # loaded (e.g. invalid UTF-8 replaced), but flagged
                self._doc_warnings(doc.path, doc.warnings)
            if not gone:  # a document that failed to load keeps what it had indexed
                seen.add(did)
            t.advance(JobPhase.LOADING)
            if doc is None:
                continue
            version = ids.doc_version(doc.content_hash, fingerprint, model)
            old = stored.get(did)
            if old is not None and old.version == version:
                self._count_skipped(old.chunks)
                continue
            self._put(out, (doc, _Doc(path=doc.path, doc_id=did, version=version, replaces=old is not None)))
        t.finish_total(JobPhase.LOADING)
        if complete_walk:
            covered = [fs_text(r) for r in covered]  # sources are stored as fs_text
            gone = [d for d, s in stored.items() if d not in seen and s.source is not None
                    and any(within(s.source, r) for r in covered) and not any(within(s.source, h) for h in held)]
            for did in gone:
                self._put(out, (None, _Doc(path=stored[did].source, doc_id=did, version="", replaces=True)))
        t.complete_phase(JobPhase.LOADING)
        self._put(out, _END)

    def _read(self, cand: Candidate) -> tuple[Optional[LoadedDocument], bool]:
        """The document, or None with its error recorded; and whether it is gone from disk."""
        c = self.config
        try:
            return read_document(cand, LoadLimits(max_file_bytes=c.max_file_bytes, follow_links=c.follow_links)), False
        except LoadError as e:
            self._doc_error(cand.path, JobPhase.LOADING, e.kind, e.message)
            if e.kind == "vanished":  # deleted between walk and read: its chunks go too
                return None, True
        except OSError as e:
            self._doc_error(cand.path, JobPhase.LOADING, "os_error", f"{e.strerror or e}")
        return None, False

    def _count_skipped(self, chunks: int) -> None:
        t = self.tracker
        t.incr_metric("documents_skipped")
        for phase in (JobPhase.CHUNKING,):
            t.add_total(phase)
            t.advance(phase)
        for phase in (JobPhase.EMBEDDING, JobPhase.INDEXING):
            t.add_total(phase, chunks)
            t.advance(phase, chunks)

    # chunking --------------------------------------------------------------------------------
    def _chunk(self, chunker: Chunker, fingerprint: str, model: str, inp: queue.Queue, out: queue.Queue,
               kb: KnowledgeBase) -> None:
        t = self.tracker
        while True:
            item = self._get(inp)
            if item is _END:
                break
            doc, d = item
            if doc is None:  # a document that is gone: passes through to have its chunks removed
                self._put(out, d)
                continue
            t.start_phase(JobPhase.CHUNKING)
            t.add_total(JobPhase.CHUNKING)
            try:
                chunked = chunker.chunk(doc.text, markdown=doc.markdown)
            except Exception as e:
                t.advance(JobPhase.CHUNKING)
                self._doc_error(doc.path, JobPhase.CHUNKING, "chunking_failed", f"{type(e).__name__}: {e}")
                continue
            d.title = chunked.title or ""
            d.rows = [{
                "id": ids.chunk_id(doc.path, doc.content_hash, ch.position, fingerprint, model),
                "text": ch.text, "source": fs_text(doc.path), "heading_path": ch.heading_path,
                "doc_id": d.doc_id, "doc_version": d.version, "position": ch.position, "title": d.title,
                "model": model,
            } for ch in chunked.chunks]
            t.add_total(JobPhase.EMBEDDING, len(d.rows))
            t.add_total(JobPhase.INDEXING, len(d.rows))
            t.incr_metric("chunks_created", len(d.rows))
            if d.replaces and d.rows:
                self._reuse_vectors(kb, d, model)
            t.advance(JobPhase.CHUNKING)
            self._put(out, d)
        t.finish_total(JobPhase.EMBEDDING)
        t.finish_total(JobPhase.INDEXING)
        t.complete_phase(JobPhase.CHUNKING)
        self._put(out, _END)

    def _reuse_vectors(self, kb: KnowledgeBase, d: _Doc, model: str) -> None:
        """An edited document keeps the vectors of the chunks whose text did not change."""
        try:
            known = kb.vectors_by_text(d.doc_id, model)
        except Exception:  # only an optimisation: embed everything instead
            log.warning("could not read the stored vectors of %s", d.path, exc_info=True)
            return
        reused = 0
        for r in d.rows:
            v = known.get(r["text"])
            if v is not None:
                r["vector"] = v
                reused += 1
        if reused:
            self.tracker.advance(JobPhase.EMBEDDING, reused)
            self.tracker.incr_metric("chunks_reused", reused)

    # embedding -------------------------------------------------------------------------------
    def _embed(self, embedder: Embedder, inp: queue.Queue, out: queue.Queue) -> None:
        t = self.tracker
        bs = self.config.batch_size
        pending: list[_Doc] = []   # documents with chunks not all embedded yet, in order
        todo: list[tuple[_Doc, int]] = []  # (document, row index) waiting for a batch
        ended = False
        while True:
            if not ended and len(todo) < bs:
                item = self._get(inp)
                if item is _END:
                    ended = True
                else:
                    if item.rows:
                        t.start_phase(JobPhase.EMBEDDING)
                        todo.extend((item, i) for i, r in enumerate(item.rows) if "vector" not in r)
                    pending.append(item)
            if todo and (len(todo) >= bs or ended):
                if self._stop.is_set():  # a pause or cancel waits for one batch at most, not a whole document
                    raise _Stop
                batch, todo = todo[:bs], todo[bs:]
                if self._embed_batch(embedder, batch):  # a document was dropped: none of its rows is embedded
                    todo = [(d, i) for d, i in todo if not d.dropped]
            # documents whose every row has a vector go on, in order
            while pending and (pending[0].dropped or all("vector" in r for r in pending[0].rows)):
                self._put(out, pending.pop(0))
            if ended and not todo and not pending:
                break
        t.complete_phase(JobPhase.EMBEDDING)
        self._put(out, _END)

    def _embed_batch(self, embedder: Embedder, batch: list[tuple[_Doc, int]]) -> bool:
        """Embed one batch; True when a document of it was dropped (it breaks the model)."""
        texts = [d.rows[i]["text"] for d, i in batch]
        vecs = self._with_retries(JobPhase.EMBEDDING, lambda: embedder.embed(texts), quiet=True)
        if vecs is None:  # persistent failure: find the documents that cause it
            return self._isolate_embedding_failure(embedder, batch)
        for (d, i), v in zip(batch, vecs):
            d.rows[i]["vector"] = v
        self.tracker.advance(JobPhase.EMBEDDING, len(batch))
        self.tracker.incr_metric("chunks_embedded", len(batch))
        return False

    def _isolate_embedding_failure(self, embedder: Embedder, batch: list[tuple[_Doc, int]]) -> bool:
        docs: list[_Doc] = []
        for d, _ in batch:
            if not d.dropped and not any(d is x for x in docs):
                docs.append(d)
        failed: list[tuple[_Doc, str]] = []
        for d in docs:
            rows = [(d, i) for dd, i in batch if dd is d]
            try:
                vecs = embedder.embed([d.rows[i]["text"] for _, i in rows])
            except Exception as e:
                failed.append((d, f"{type(e).__name__}: {e}"))
                continue
            for (_, i), v in zip(rows, vecs):
                d.rows[i]["vector"] = v
            self.tracker.advance(JobPhase.EMBEDDING, len(rows))
            self.tracker.incr_metric("chunks_embedded", len(rows))
        if failed and len(failed) == len(docs) and not self._model_works(embedder):
            raise _PhaseFailed(JobPhase.EMBEDDING,
                               f"embedding failed after {self.config.retries + 1} attempts: {failed[0][1]}")
        for d, msg in failed:  # the model works, these documents break it: record them and go on
            self._doc_error(d.path, JobPhase.EMBEDDING, "embedding_failed", msg, attempts=self.config.retries + 2)
            d.dropped = True
            n = sum(1 for r in d.rows if "vector" not in r)  # its rows still waiting are dropped with it
            self.tracker.advance(JobPhase.EMBEDDING, n)
            self.tracker.add_total(JobPhase.INDEXING, -len(d.rows))
        return bool(failed)

    def _model_works(self, embedder: Embedder) -> bool:
        """Tell documents that break the model from a broken model, with a probe."""
        try:
            embedder.embed(["probe"])
            return True
        except Exception:
            return False

    def _with_retries(self, phase: JobPhase, fn: Callable[[], Any], quiet: bool = False) -> Any:
        delay = 0.2
        last: Optional[BaseException] = None
        for attempt in range(self.config.retries + 1):
            if self._stop.is_set() and self._stop_reason == JobStatus.CANCELLED:
                raise _Stop
            try:
                return fn()
            except _Stop:
                raise
            except Exception as e:
                last = e
                log.warning("%s attempt %d failed: %s", phase.value, attempt + 1, e)
                self.tracker.incr_metric(f"{phase.value}_retries")
                if attempt < self.config.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
        if quiet:
            return None
        raise _PhaseFailed(phase, f"{phase.value} failed after {self.config.retries + 1} attempts: "
                                  f"{type(last).__name__}: {last}")

    # indexing --------------------------------------------------------------------------------
    def _index(self, kb: KnowledgeBase, inp: queue.Queue) -> None:
        t = self.tracker
        c = self.config
        batch: list[_Doc] = []
        rows = 0
        first_at: Optional[float] = None
        try:
            while True:
                try:
                    item = inp.get(timeout=0.1)
                except queue.Empty:
                    item = None
                if item is _END:
                    self._commit(kb, batch)
                    batch, rows = [], 0
                    break
                if item is not None and not item.dropped:
                    batch.append(item)
                    rows += len(item.rows)
                    first_at = first_at or time.monotonic()
                if self._stop.is_set():
                    break
                if batch and (rows >= c.commit_rows or time.monotonic() - (first_at or 0) >= c.commit_seconds):
                    self._commit(kb, batch)
                    batch, rows, first_at = [], 0, None
        finally:
            if self._stop.is_set() and self._stop_reason == JobStatus.PAUSED and self._failure is None:
                # pause: whole documents already embedded are written before stopping (nothing lost)
                while True:
                    try:
                        item = inp.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _END and not item.dropped:
                        batch.append(item)
                self._commit(kb, batch)
        if not self._stop.is_set():
            t.complete_phase(JobPhase.INDEXING)
            if kb.commits:
                t.set_message("optimizing the table")
                self._optimize(kb)

    def _commit(self, kb: KnowledgeBase, docs: list[_Doc]) -> None:
        if not docs:
            return
        t = self.tracker
        rows = [dict(r, vector=r["vector"].tolist() if hasattr(r["vector"], "tolist") else r["vector"])
                for d in docs for r in d.rows]
        t.start_phase(JobPhase.INDEXING)
        self._with_retries(JobPhase.INDEXING, lambda: kb.write(rows, [d.doc_id for d in docs],
                                                               replacing=[d.doc_id for d in docs if d.replaces]))
        self.last_commit_at = time.monotonic()
        _fault_point("after_commit", kb.commits)
        # the table holds them now: record the checkpoint after
        t.advance(JobPhase.INDEXING, len(rows))
        t.incr_metric("chunks_indexed", len(rows))
        t.incr_metric("commits")
        for d in docs:
            if not d.version:
                t.incr_metric("documents_removed")
            elif d.replaces:
                t.incr_metric("documents_replaced")
            else:
                t.incr_metric("documents_added")
        if kb.commits % self.config.optimize_every == 0:
            self._optimize(kb)
        self._checkpoint()


    def _optimize(self, kb: KnowledgeBase) -> None:
        """Compaction is hygiene, not ingestion: what is committed stays searchable if it fails, and
        the next optimize (this job's or the next one's) catches up."""
        try:
            report = kb.optimize()
            t = self.tracker
            t.incr_metric("optimizes")
            if report.get("child"):  # the memory compaction took, apart from the job's (figure 3 of the bench)
                self._optimize_peak_mib = max(self._optimize_peak_mib, float(report.get("peak_rss_mib") or 0))
                t.set_metric("optimize_peak_rss_mib", self._optimize_peak_mib)
        except Exception as e:
            log.warning("optimizing knowledge base %s failed (the data is committed): %s", kb.name, e)
            self.tracker.incr_metric("optimize_errors")


def _fault_point(name: str, count: int) -> None:
    """Fault injection for the crash tests: KBINGEST_CRASH_AT=after_commit:N kills the process
    (like SIGKILL: no cleanup) at that point. Unset in normal use: one environment lookup."""
    spec = os.environ.get("KBINGEST_CRASH_AT")
    if spec and spec == f"{name}:{count}":
        os._exit(137)
