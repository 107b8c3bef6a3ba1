"""How stored jobs are seen from outside their engine: interrupted jobs, and a store rebuilt from LanceDB."""

from __future__ import annotations

import os

from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.jobstore.liveness import with_liveness
from kbingest.pipeline.jobstore.queue import waiter_alive
from kbingest.pipeline.jobstore.store import JobStore
from kbingest.pipeline.locking import holder_pid, is_locked
from kbingest.pipeline.models import DEFAULT_MODEL, JobConfig, JobRecord, JobStatusResponse, iso, utcnow
from kbingest.pipeline.paths import Home
from kbingest.pipeline.status import PHASES, JobPhase, JobStatus

INTERRUPTED = "interrupted: the process running this job stopped; resume it to continue"


def _interrupted(rec: JobRecord, home: Home) -> bool:
    """Recorded as running, but no engine holds its knowledge base, or the one holding it is another
    process (another job writes it now); or recorded as pending, with no live process waiting for it
    (pipeline/jobstore/queue.py): the process that ran this job died."""
    if rec.status.status == JobStatus.PENDING:
        return rec.owner_pid is not None and not waiter_alive(home, rec)
    if rec.status.status != JobStatus.RUNNING:
        return False
    lock = home.kb_lock_file(rec.config.kb)
    if not is_locked(lock, home.root):
        return True
    holder = holder_pid(lock, home.root)
    return rec.owner_pid is not None and holder is not None and holder != rec.owner_pid


def effective_status(rec: JobRecord, home: Home) -> JobStatusResponse:
    """How a stored job is shown: one recorded as running whose process died was interrupted,
    and shows as paused with a message saying so."""
    if _interrupted(rec, home):
        t = PhaseTracker.from_snapshot(rec.status)
        t.set_status(JobStatus.PAUSED, INTERRUPTED)
        return t.snapshot()
    if rec.status.status == JobStatus.RUNNING:  # its engine holds the home: is it still responding?
        return with_liveness(rec, rec.status)
    return rec.status


def cancel_stored(home: Home, store: JobStore, job_id: str) -> str:
    """Cancel a job, deciding against the stored record under the store's lock: one that no engine
    runs (paused, interrupted, failed, pending) is cancelled in the store; one that some engine
    runs now is asked to cancel. Returns "cancelled", "requested", "unchanged" (it had ended,
    or it completed) or "missing"."""
    outcome = {"what": "missing"}

    def apply(rec: JobRecord) -> JobRecord:
        st = rec.status.status
        if st == JobStatus.RUNNING and not _interrupted(rec, home):
            outcome["what"] = "requested"
            return rec.model_copy(update={"control": "cancel"})
        if st in (JobStatus.COMPLETED, JobStatus.CANCELLED):
            outcome["what"] = "unchanged"
            return rec
        t = PhaseTracker.from_snapshot(effective_status(rec, home))
        t.set_status(
            JobStatus.CANCELLED, "cancelled while not running: chunks already indexed stay in the knowledge base"
        )
        outcome["what"] = "cancelled"
        return rec.model_copy(update={"status": t.snapshot(), "control": None, "owner_pid": None})

    store.update(job_id, apply)
    return outcome["what"]


def mark_interrupted(home: Home, store: JobStore) -> list[str]:
    """Jobs recorded as running whose process died were interrupted: show them paused."""
    found = []
    for rec in store.all():
        if _interrupted(rec, home):
            snap = effective_status(rec, home)

            def paused(r: JobRecord, s: JobStatusResponse = snap) -> JobRecord:
                return r.model_copy(update={"status": s, "owner_pid": None})

            store.update(rec.job_id, paused)
            found.append(rec.job_id)
    return found


def recovered_records(home: Home) -> list[JobRecord]:
    """When the job store is lost, one completed job per knowledge base found in LanceDB, with the
    sources (the common folder of its documents) and model it holds, so that it can be re-run."""
    from kbingest.pipeline.kb.search import table_embeds_context
    from kbingest.pipeline.kb.table import KnowledgeBase, list_kbs  # LanceDB only when the store was lost

    out = []
    for name in list_kbs(home):
        try:
            kb = KnowledgeBase(home, name)
            docs = kb.stored_docs()
            models = kb.models()
            context = table_embeds_context(kb)  # how its rows were embedded (docs/search.md), None: cannot tell
        except Exception:
            continue
        t = PhaseTracker(f"{name}-recovered", name)
        t.set_status(JobStatus.RUNNING)
        chunks = sum(d.chunks for d in docs.values())
        for p in PHASES:
            n = len(docs) if p in (JobPhase.LOADING, JobPhase.CHUNKING) else chunks
            t.add_total(p, n)
            t.advance(p, n)
            t.complete_phase(p)
        t.set_metric("documents_indexed", len(docs))
        t.set_metric("chunks_indexed", chunks)
        t.set_status(JobStatus.COMPLETED, "recovered from the knowledge base after the job store was lost")
        paths = [d.source for d in docs.values()]
        try:
            sources = [os.path.dirname(os.path.commonpath(paths)) if len(paths) == 1 else os.path.commonpath(paths)]
        except ValueError:
            sources = ["."]
        model = models[0] if models else DEFAULT_MODEL
        config = JobConfig(
            sources=sources,
            kb=name,
            model=model,
            embedder="fake" if model == "fake" else "fastembed",
            embed_context=context,
        )
        now = iso(utcnow())
        out.append(
            JobRecord(job_id=f"{name}-recovered", config=config, status=t.snapshot(), created_at=now, updated_at=now)
        )
    return out


def open_store(home: Home) -> JobStore:
    return JobStore(home, rebuild=lambda: recovered_records(home))
