"""A pause waits for the embedding batch in flight, not for the whole document it belongs to.

One long document (many chunks) embedded slowly by the fake embedder: a pause requested in the
middle of it returns within about one batch's time, nothing of the half-embedded document is
written, and the resumed job ends with the same chunk set as a run never paused.
"""

from __future__ import annotations

import threading
import time

from kbingest.pipeline.embed.embedding import FakeEmbedder
from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.paths import Home
from kbingest.pipeline.status import JobPhase, JobStatus

BATCH = 4
DELAY_S = 0.05  # per text: 0.2 s a batch


def long_document(path, sections: int = 30) -> None:
    body = "\n\n".join(
        f"## Section {i}\n\n" + " ".join(f"word{i}x{j} sentence about topic {i}." for j in range(40))
        for i in range(sections)
    )
    path.write_text("# A long page\n\n" + body + "\n")


def config(src) -> JobConfig:
    return JobConfig(sources=[str(src)], kb="docs", embedder="fake", batch_size=BATCH, max_tokens=64, overlap_tokens=8)


def test_pause_mid_document_returns_within_a_batch_and_resume_matches_clean_run(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    long_document(src / "long.md")

    ref_home = Home(tmp_path / "ref").ensure()
    ref = IngestJob.create(ref_home, open_store(ref_home), config(src)).run()
    assert ref.status == JobStatus.COMPLETED
    ref_ids = sorted(KnowledgeBase(ref_home, "docs").ids())
    assert len(ref_ids) >= 6 * BATCH  # the document alone is many batches

    home = Home(tmp_path / "home").ensure()
    store = open_store(home)
    slow = FakeEmbedder(delay=DELAY_S)
    job = IngestJob.create(home, store, config(src), embedder_factory=lambda c: slow)
    box: dict = {}
    th = threading.Thread(target=lambda: box.setdefault("snap", job.run()))
    th.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        emb = next(p for p in job.snapshot().phase_details if p.name == JobPhase.EMBEDDING.value)
        if emb.items_processed >= BATCH:
            break
        time.sleep(0.01)
    t0 = time.monotonic()
    job.pause()
    th.join(30)
    latency = time.monotonic() - t0
    snap = box["snap"]
    assert snap.status == JobStatus.PAUSED
    emb = next(p for p in snap.phase_details if p.name == JobPhase.EMBEDDING.value)
    assert emb.items_processed < len(ref_ids)  # paused inside the document, not after it
    # one batch in flight (0.2 s) plus the workers' 0.1 s queue polls; the whole document would take > 1 s
    assert latency < 0.8, f"pause took {latency:.2f} s"
    assert KnowledgeBase(home, "docs").count() == 0  # a half-embedded document is never written

    done = IngestJob.load(home, store, job.job_id, embedder_factory=lambda c: FakeEmbedder()).run()
    assert done.status == JobStatus.COMPLETED
    assert sorted(KnowledgeBase(home, "docs").ids()) == ref_ids
