"""Issue 5: embedding and indexing failures, in-process with the fake embedder.

A transient failure is retried with backoff and succeeds; a document that always breaks the model
is recorded as a document error while the rest is indexed; a broken model fails the embedding
phase, keeps what is indexed and resumes once it works; indexing failures are retried, and a
persistent one fails the indexing phase.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import SMALL_PAGES

from kbingest.app.exit_codes import ExitCode, exit_code_for
from kbingest.pipeline.embed.embedding import EmbeddingError, FakeEmbedder
from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.status import JobPhase, JobStatus


class FlakyEmbedder(FakeEmbedder):
    """The fake embedder, failing while `broken(call_number)` says so; records when each call came."""

    def __init__(self, broken=lambda n: False, **kw) -> None:
        super().__init__(**kw)
        self.broken = broken
        self.calls: list[float] = []
        self.failures = 0
        self.lock = threading.Lock()

    def embed(self, texts):
        with self.lock:
            self.calls.append(time.monotonic())
            n = len(self.calls)
        if self.broken(n):
            self.failures += 1
            raise EmbeddingError(f"model unavailable (call {n})")
        return super().embed(texts)


def config(src, kb="docs", **kw) -> JobConfig:
    return JobConfig(sources=[str(src)], kb=kb, embedder="fake", **kw)


def phase(snap, name):
    return next(p for p in snap.phase_details if p.name == name)


def rows_by_doc(home, kb="docs") -> dict[str, tuple[str, int]]:
    return {d: (s.source, s.chunks) for d, s in KnowledgeBase(home, kb).stored_docs().items()}


@pytest.fixture
def store(home):
    return open_store(home)


@pytest.fixture
def reference(tmp_path, pages):
    """What a clean run of the same pages indexes: doc -> (source, chunks)."""
    from kbingest.pipeline.paths import Home

    h = Home(tmp_path / "ref-home").ensure()
    snap = IngestJob.create(h, open_store(h), config(pages)).run()
    assert snap.status == JobStatus.COMPLETED
    return rows_by_doc(h)


def test_transient_embedding_failure_is_retried_with_backoff(home, store, pages, reference):
    emb = FlakyEmbedder(broken=lambda n: n <= 2)  # the first 2 calls fail
    job = IngestJob.create(home, store, config(pages), embedder_factory=lambda c: emb)
    snap = job.run()
    assert snap.status == JobStatus.COMPLETED, snap.error
    assert exit_code_for(snap) == ExitCode.OK
    assert emb.failures == 2
    assert snap.metrics["embedding_retries"] == 2
    assert snap.metrics["documents_failed"] == 0 and job.errors == []
    assert rows_by_doc(home) == reference
    # backoff: the engine waits before each retry, and the wait doubles (0.2 s, then 0.4 s); lower
    # bounds only, so that a loaded machine cannot make this flaky
    first, second = emb.calls[1] - emb.calls[0], emb.calls[2] - emb.calls[1]
    assert first >= 0.18 and second >= 0.38, (first, second)


def test_document_that_always_breaks_the_embedder_is_a_document_error(home, store, pages, reference):
    poisoned = pages / "security" / "poison.md"
    poisoned.write_text("# Poison\n\nThis page holds the word KABOOM that the model cannot take.\n")
    cfg = config(pages, retries=1, batch_size=8)
    job = IngestJob.create(home, store, cfg, embedder_factory=lambda c: FakeEmbedder(fail_on="KABOOM"))
    snap = job.run()

    assert snap.status == JobStatus.COMPLETED, snap.error
    assert exit_code_for(snap) == ExitCode.DOCUMENT_ERRORS
    assert snap.metrics["documents_failed"] == 1
    [err] = job.errors
    assert (err.path, err.phase, err.kind) == (str(poisoned), "embedding", "embedding_failed")
    assert "KABOOM" in err.message
    emb_phase = phase(snap, "embedding")
    assert emb_phase.status == JobStatus.COMPLETED and str(poisoned) in emb_phase.error
    assert rows_by_doc(home) == reference  # everything else indexed, nothing of the poisoned page
    assert snap.metrics["chunks_indexed"] == sum(n for _, n in reference.values())
    assert store.get(job.job_id).status.errors == job.errors  # stored once, in the job's status


def test_broken_model_fails_the_embedding_phase_keeps_what_is_indexed_and_resumes(home, store, pages, reference):
    total_chunks = sum(n for _, n in reference.values())
    state = {"broken_after": total_chunks // 4 // 2}  # the model breaks half way through
    cfg = config(pages, retries=2, batch_size=4, commit_rows=1)
    made: list[FlakyEmbedder] = []

    def factory(c):
        limit = state["broken_after"]
        made.append(FlakyEmbedder(broken=lambda n: limit is not None and n > limit))
        return made[-1]

    job = IngestJob.create(home, store, cfg, embedder_factory=factory)
    snap = job.run()
    assert snap.status == JobStatus.FAILED
    assert exit_code_for(snap) == ExitCode.FAILED
    emb_phase = phase(snap, "embedding")
    assert emb_phase.status == JobStatus.FAILED
    assert "model unavailable" in emb_phase.error and "model unavailable" in snap.error
    assert job.errors == []  # the model is broken, not the documents: no document is blamed

    kept = rows_by_doc(home)
    assert kept, "documents embedded before the model broke are indexed"
    assert len(kept) < len(reference)
    for d, v in kept.items():  # whole documents only
        assert reference[d] == v
    rec = store.get(job.job_id)
    assert rec.status.status == JobStatus.FAILED  # the failure is recorded for a new process

    state["broken_after"] = None  # the model works again
    job2 = IngestJob.load(home, store, job.job_id, embedder_factory=factory)
    snap2 = job2.run()
    assert snap2.status == JobStatus.COMPLETED, snap2.error
    assert snap2.error is None and phase(snap2, "embedding").error is None
    assert snap2.metrics["this_pass"]["documents_skipped"] == len(kept)  # this pass: what was left
    assert snap2.metrics["this_pass"]["documents_added"] == len(reference) - len(kept)
    assert snap2.metrics["documents_added"] == len(reference)  # the job's totals, across both passes
    assert snap2.metrics["documents_skipped"] == 0
    assert rows_by_doc(home) == reference
    ids = KnowledgeBase(home, "docs").ids()
    assert len(ids) == len(set(ids))


def test_transient_indexing_failure_is_retried(home, store, pages, reference, monkeypatch):
    real_write = KnowledgeBase.write
    calls = {"n": 0}

    def flaky_write(self, rows, doc_ids, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("disk briefly unavailable")
        return real_write(self, rows, doc_ids, **kw)

    monkeypatch.setattr(KnowledgeBase, "write", flaky_write)
    snap = IngestJob.create(home, store, config(pages)).run()
    assert snap.status == JobStatus.COMPLETED, snap.error
    assert snap.metrics["indexing_retries"] == 2
    assert phase(snap, "indexing").error is None
    monkeypatch.undo()
    assert rows_by_doc(home) == reference


def test_persistent_indexing_failure_fails_the_indexing_phase(home, store, pages, reference, monkeypatch):
    real_write = KnowledgeBase.write
    calls = {"n": 0}

    def failing_write(self, rows, doc_ids, **kw):
        calls["n"] += 1
        if calls["n"] > 1:  # the first commit lands, then the disk is gone
            raise OSError(28, "No space left on device")
        return real_write(self, rows, doc_ids, **kw)

    monkeypatch.setattr(KnowledgeBase, "write", failing_write)
    cfg = config(pages, retries=2, commit_rows=1)
    job = IngestJob.create(home, store, cfg)
    snap = job.run()
    assert snap.status == JobStatus.FAILED
    idx = phase(snap, "indexing")
    assert idx.status == JobStatus.FAILED
    assert snap.phase == JobPhase.INDEXING  # issue 18 item 19: the failed phase, not "loading"
    assert store.get(job.job_id).status.phase == JobPhase.INDEXING
    assert "No space left on device" in idx.error and "3 attempts" in idx.error
    assert snap.metrics["indexing_retries"] == 3
    assert calls["n"] == 1 + 3
    kept = rows_by_doc(home)
    assert 1 <= len(kept) < len(reference)
    monkeypatch.undo()

    snap2 = IngestJob.load(home, store, job.job_id).run()  # the disk has room again
    assert snap2.status == JobStatus.COMPLETED
    assert rows_by_doc(home) == reference


def test_cli_document_breaking_the_model_exit_3_with_escaped_one_line_warnings(tmp_path, pages):
    """Headless, as a user runs it: the retries are reported on stderr one escaped line each,
    never as a traceback, and the poisoned document (with a hostile name) is listed."""
    from conftest import run_cli

    poisoned = pages / "\x1b[31mpoison\u202e.md"
    poisoned.write_text("# Poison\n\nThis page holds the word KABOOM.\n")
    home = tmp_path / "h"
    r = run_cli(
        "ingest",
        str(pages),
        "--kb",
        "docs",
        "--batch",
        "--embedder",
        "fake",
        home=home,
        env={"KBINGEST_FAKE_FAIL_ON": "KABOOM"},
    )
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "\x1b" not in r.stderr and "\u202e" not in r.stderr
    retry_lines = [ln for ln in r.stderr.splitlines() if "embedding attempt" in ln]
    assert retry_lines and all(ln.startswith("kbingest: embedding attempt ") for ln in retry_lines)
    assert "embedding: " + str(pages) + "/\\x1b[31mpoison\\u202e.md: embedding_failed: " in r.stderr
    import json

    final = json.loads(r.stdout.splitlines()[-1])
    assert final["metrics"]["documents_added"] == len(SMALL_PAGES)
    [err] = final["metrics"]["document_errors"]
    assert err["path"] == str(poisoned) and err["phase"] == "embedding"
