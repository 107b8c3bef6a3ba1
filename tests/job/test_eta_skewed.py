"""The job's ETA on a skewed folder, without a quiet machine (issue 30 item 7): a deterministic
simulation of a pass drives the real PhaseTracker with a fake clock, as the stages would.

Four workers joined by bounded queues, like the thread executor: loading and chunking cost per byte,
embedding a constant cost per chunk in batches, indexing a commit of whole documents (every 512 rows
or 5 s, and at the end) at a cost per row. Forty small documents, then one holding 40 % of the
chunks, last in walk order. A sample every 0.5 s; from 20 % of the job on, each sample's
|eta_seconds - actual remaining| is at most 30 % of the job's time (the figure's goal).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from statistics import median
from typing import Optional

import pytest

from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.status import JobPhase, JobStatus

L, C, E, IX = JobPhase.LOADING, JobPhase.CHUNKING, JobPhase.EMBEDDING, JobPhase.INDEXING
TICK = 0.01
SAMPLE_EVERY = 0.5
QUEUE_CAP = 16  # documents between loading, chunking and embedding (pipeline/executors/threads.py)
BATCH = 32  # chunks per embedding batch
EMBED_S = 0.025  # per chunk: the bottleneck
CHUNK_S_PER_BYTE = 2e-5
LOAD_S_PER_BYTE = 2e-6
COMMIT_S, COMMIT_S_PER_ROW = 0.05, 0.0005
COMMIT_ROWS, COMMIT_SECONDS = 512, 5.0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Doc:
    size: int
    chunks: int
    left: int = 0  # chunks not embedded yet


def folder(skewed: bool) -> list[Doc]:
    small = [Doc(size=3000 + 40 * (i % 7), chunks=30 + i % 7) for i in range(40)]
    if not skewed:
        return small
    rest = sum(d.chunks for d in small)
    big = int(rest * 0.4 / 0.6)  # 40 % of all the chunks
    return small + [Doc(size=big * 100, chunks=big)]


class Worker:
    """One item at a time: busy until `until`, then waits for room downstream."""

    def __init__(self) -> None:
        self.item: Optional[object] = None
        self.until = 0.0


def simulate(docs: list[Doc]) -> tuple[list[tuple[float, Optional[float], float]], float]:
    """(time, eta_seconds, progress) samples of one pass, and the time the job completed."""
    clock = Clock()
    t = PhaseTracker("j", "kb", clock=clock, wallclock=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    t.set_status(JobStatus.RUNNING)
    t.start_phase(L)
    t.add_bytes(sum(d.size for d in docs))  # the listing pass (stages/load.py)
    t.add_total(L, len(docs))
    t.finish_total(L)
    to_load = deque(docs)
    loaded: deque = deque()
    chunked: deque = deque()
    embedded: deque = deque()
    loader, chunker, embedder = Worker(), Worker(), Worker()
    batch: list[Doc] = []  # the indexer's documents waiting for a commit
    first_at: Optional[float] = None
    commit_until: Optional[float] = None
    committing: list[Doc] = []
    ended = {"load": False, "chunk": False, "embed": False}
    samples: list[tuple[float, Optional[float], float]] = []
    next_sample = 0.0
    while True:
        now = clock.t
        # loading
        if loader.item is not None and now >= loader.until and len(loaded) < QUEUE_CAP:
            loaded.append(loader.item)
            t.advance(L)
            loader.item = None
        if loader.item is None and to_load:
            loader.item = d = to_load.popleft()
            loader.until = now + d.size * LOAD_S_PER_BYTE
        if loader.item is None and not to_load and not ended["load"]:
            ended["load"] = True
            t.complete_phase(L)
        # chunking
        if chunker.item is not None and now >= chunker.until and len(chunked) < QUEUE_CAP:
            d = chunker.item
            t.add_total(E, d.chunks)
            t.add_total(IX, d.chunks)
            t.settle_bytes(d.size, d.chunks)
            t.advance(C)
            d.left = d.chunks
            chunked.append(d)
            chunker.item = None
        if chunker.item is None and loaded:
            t.start_phase(C)
            chunker.item = d = loaded.popleft()
            t.add_total(C)
            chunker.until = now + d.size * CHUNK_S_PER_BYTE
        if chunker.item is None and ended["load"] and not loaded and not ended["chunk"]:
            ended["chunk"] = True
            t.finish_total(E)
            t.finish_total(IX)
            t.complete_phase(C)
        # embedding: a batch of a document's chunks at a time
        if embedder.item is not None and now >= embedder.until:
            d, n = embedder.item
            d.left -= n
            t.advance(E, n)
            embedder.item = None
            if d.left == 0:
                chunked.popleft()
                embedded.append(d)
        if embedder.item is None and chunked:
            t.start_phase(E)
            d = chunked[0]
            n = min(BATCH, d.left)
            embedder.item = (d, n)
            embedder.until = now + n * EMBED_S
        if embedder.item is None and ended["chunk"] and not chunked and not ended["embed"]:
            ended["embed"] = True
            t.complete_phase(E)
        # indexing: whole documents, every COMMIT_ROWS rows or COMMIT_SECONDS, and at the end
        if commit_until is not None and now >= commit_until:
            rows = sum(d.chunks for d in committing)
            t.advance(IX, rows, False, COMMIT_S + rows * COMMIT_S_PER_ROW)
            committing, commit_until = [], None
        while embedded:
            batch.append(embedded.popleft())
            first_at = first_at if first_at is not None else now
        rows = sum(d.chunks for d in batch)
        due = rows >= COMMIT_ROWS or (first_at is not None and now - first_at >= COMMIT_SECONDS) or ended["embed"]
        if commit_until is None and batch and due:
            t.start_phase(IX)
            committing, batch, first_at = batch, [], None
            commit_until = now + COMMIT_S + rows * COMMIT_S_PER_ROW
        if ended["embed"] and commit_until is None and not batch:
            t.complete_phase(IX)
            t.set_status(JobStatus.COMPLETED)
            return samples, now
        if now >= next_sample:
            s = t.snapshot()
            samples.append((now, s.eta_seconds, s.progress))
            next_sample += SAMPLE_EVERY
        clock.t = round(now + TICK, 6)


@pytest.mark.parametrize("skewed", [False, True], ids=["even", "skewed"])
def test_job_eta_holds_from_a_fifth_of_the_job_on(skewed):
    samples, end = simulate(folder(skewed))
    errors = [abs(eta - (end - at)) / end for at, eta, _ in samples if at >= 0.2 * end and eta is not None]
    judged = [s for s in samples if s[0] >= 0.2 * end]
    assert len(errors) == len(judged) > 50  # an ETA in every sample from a fifth on
    worst = max(errors)
    assert median(errors) <= 0.15 and worst <= 0.30, (median(errors), worst)
    progress = [p for _, _, p in samples]
    assert progress == sorted(progress)  # never back
