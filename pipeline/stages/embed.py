"""Embedding: vectors for the rows that have none, in batches of `batch_size` texts.

The model is asked for only when a row needs a vector: a pass with nothing to embed never loads
it. A batch that fails is retried; one that keeps failing is split by document, to tell documents
that break the model (recorded, dropped) from a model that is broken (the phase fails).
"""
from __future__ import annotations

from typing import Callable

from kbingest.pipeline.control import PhaseFailed, RunControl, Stopped, with_retries
from kbingest.pipeline.embedding import Embedder
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc, Reporter
from kbingest.pipeline.status import JobPhase

PHASE = JobPhase.EMBEDDING


class EmbedStage:
    def __init__(self, config: JobConfig, reporter: Reporter, control: RunControl,
                 embedder: Callable[[], Embedder]) -> None:
        self.r = reporter
        self.control = control
        self.bs = config.batch_size
        self.retries = config.retries
        self._embedder = embedder      # called (and the model loaded) at the first batch only
        self.pending: list[Doc] = []   # documents with rows not all embedded yet, in order
        self.todo: list[tuple[Doc, int]] = []  # (document, row index) waiting for a batch

    def add(self, d: Doc) -> list[Doc]:
        """Take a document; return the documents now ready for indexing, in order."""
        if d.rows:
            self.r.phase_started(PHASE)
            self.todo.extend((d, i) for i, row in enumerate(d.rows) if "vector" not in row)
        self.pending.append(d)
        while len(self.todo) >= self.bs:
            self._next_batch()
        return self._ready()

    def flush(self) -> list[Doc]:
        """No more documents: embed what waits; return the rest, in order."""
        while self.todo:
            self._next_batch()
        out = self._ready()
        self.r.phase_done(PHASE)
        return out

    def _ready(self) -> list[Doc]:
        out = []
        while self.pending and (self.pending[0].dropped or all("vector" in row for row in self.pending[0].rows)):
            out.append(self.pending.pop(0))
        return out

    def _next_batch(self) -> None:
        if self.control.stopping:  # a pause or cancel waits for one batch at most, not a whole document
            raise Stopped
        batch, self.todo = self.todo[:self.bs], self.todo[self.bs:]
        if self._embed_batch(batch):  # a document was dropped: none of its rows is embedded
            self.todo = [(d, i) for d, i in self.todo if not d.dropped]

    def _embed_batch(self, batch: list[tuple[Doc, int]]) -> bool:
        """Embed one batch; True when a document of it was dropped (it breaks the model)."""
        embedder = self._embedder()
        texts = [d.rows[i]["text"] for d, i in batch]
        vecs = with_retries(PHASE, lambda: embedder.embed(texts), retries=self.retries, control=self.control,
                            on_retry=lambda: self.r.count("embedding_retries"), quiet=True)
        if vecs is None:  # persistent failure: find the documents that cause it
            return self._isolate_failure(embedder, batch)
        for (d, i), v in zip(batch, vecs):
            d.rows[i]["vector"] = v
        self.r.progress(PHASE, len(batch))
        self.r.count("chunks_embedded", len(batch))
        return False

    def _isolate_failure(self, embedder: Embedder, batch: list[tuple[Doc, int]]) -> bool:
        docs: list[Doc] = []
        for d, _ in batch:
            if not d.dropped and not any(d is x for x in docs):
                docs.append(d)
        failed: list[tuple[Doc, str]] = []
        for d in docs:
            rows = [(d, i) for dd, i in batch if dd is d]
            try:
                vecs = embedder.embed([d.rows[i]["text"] for _, i in rows])
            except Exception as e:
                failed.append((d, f"{type(e).__name__}: {e}"))
                continue
            for (_, i), v in zip(rows, vecs):
                d.rows[i]["vector"] = v
            self.r.progress(PHASE, len(rows))
            self.r.count("chunks_embedded", len(rows))
        if failed and len(failed) == len(docs) and not _model_works(embedder):
            raise PhaseFailed(PHASE, f"embedding failed after {self.retries + 1} attempts: {failed[0][1]}")
        for d, msg in failed:  # the model works, these documents break it: record them and go on
            self.r.doc_error(d.path, PHASE, "embedding_failed", msg, attempts=self.retries + 2)
            d.dropped = True
            n = sum(1 for row in d.rows if "vector" not in row)  # its rows still waiting are dropped with it
            self.r.progress(PHASE, n)
            self.r.add_total(JobPhase.INDEXING, -len(d.rows))
        return bool(failed)


def _model_works(embedder: Embedder) -> bool:
    """Tell documents that break the model from a broken model, with a probe."""
    try:
        embedder.embed(["probe"])
        return True
    except Exception:
        return False
