"""Embedding: vectors for the rows that have none, in batches of `batch_size` texts.

The model is asked for only when a row needs a vector: a pass with nothing to embed never loads
it. A batch that fails is retried; one that keeps failing is split by document, to tell documents
that break the model (recorded, dropped) from a model that is broken (the phase fails).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from kbingest.pipeline.embed.embedding import Embedder, embedded_text
from kbingest.pipeline.job.control import PhaseFailed, RunControl, Stopped, with_retries
from kbingest.pipeline.messages import note_document, reason
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc, Reporter
from kbingest.pipeline.status import JobPhase
from kbingest.pipeline.textsafe import fs_text

PHASE = JobPhase.EMBEDDING
CACHE_ENTRIES = 4096  # vectors kept by text within a job (~7 MB at 384 float32): repeated text is embedded once.
# Repeated boilerplate recurs across the whole corpus and stays (least recently used out first); a
# text repeated only far apart is found in the table by the next job. 20,000 cost 54 MB at 10x
# the corpus (docs/benchmarks.md, memory).


class VectorCache:
    """The newest vectors of the job by text: bounded, least recently used out first."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._d: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: str, vector: Any) -> None:
        """Kept as a copy: a row of the embedder's batch array would keep the whole batch alive."""
        self._d[key] = vector.copy() if hasattr(vector, "copy") else vector
        self._d.move_to_end(key)
        if len(self._d) > self.entries:
            self._d.popitem(last=False)


class EmbedStage:
    def __init__(
        self, config: JobConfig, reporter: Reporter, control: RunControl, embedder: Callable[[], Embedder]
    ) -> None:
        self.r = reporter
        self.control = control
        self.bs = config.batch_size
        self.retries = config.retries
        self._embedder = embedder  # called (and the model loaded) at the first batch only
        self.pending: list[Doc] = []  # documents with rows not all embedded yet, in order
        self.todo: list[tuple[Doc, int]] = []  # (document, row index) waiting for a batch: one per distinct text
        self.waiting: dict[str, list[tuple[Doc, int]]] = {}  # text hash -> rows that take that text's vector
        self.cache = VectorCache()
        self.context = config.context_embedding  # title and heading path embedded in front of each text

    def _input(self, row: dict) -> str:
        """What is embedded for a row (its text_hash is the hash of this: ChunkStage's chunk_rows)."""
        return embedded_text(row["text"], row.get("title") or "", row.get("heading_path") or "", self.context)

    def add(self, d: Doc) -> list[Doc]:
        """Take a document; return the documents now ready for indexing, in order."""
        if d.rows:
            self.r.phase_started(PHASE)
            reused = 0
            for i, row in enumerate(d.rows):
                if "vector" in row:
                    continue
                key = row["text_hash"]
                known = self.cache.get(key)
                if known is not None:  # this text was embedded before in this job
                    row["vector"] = known
                    reused += 1
                elif key in self.waiting:  # the same text waits for a batch already: it takes that vector
                    self.waiting[key].append((d, i))
                else:
                    self.waiting[key] = [(d, i)]
                    self.todo.append((d, i))
            if reused:
                self.r.progress(PHASE, reused, True)
                self.r.count("chunks_reused", reused)
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
        batch, self.todo = self.todo[: self.bs], self.todo[self.bs :]
        if self._embed_batch(batch):  # a document was dropped: none of its rows is embedded
            self._prune_dropped()

    def _prune_dropped(self) -> None:
        """Rows of dropped documents leave the queue; a text they were embedding for others is queued
        again for the first of those others."""
        keep = []
        for d, i in self.todo:
            if not d.dropped:
                keep.append((d, i))
                continue
            key = d.rows[i]["text_hash"]
            others = [(o, j) for o, j in self.waiting.pop(key, []) if not o.dropped]
            if others:
                self.waiting[key] = others
                keep.append(others[0])
        self.todo = keep

    def _deliver(self, d: Doc, i: int, vector: Any) -> int:
        """Give a distinct text's vector to every row waiting for it; the number of rows that reused it."""
        key = d.rows[i]["text_hash"]
        self.cache.put(key, vector)
        rows = [(dd, ii) for dd, ii in self.waiting.pop(key, [(d, i)]) if not dd.dropped]
        for dd, ii in rows:
            dd.rows[ii]["vector"] = vector
        return max(0, len(rows) - 1)

    def _embed_batch(self, batch: list[tuple[Doc, int]]) -> bool:
        """Embed one batch; True when a document of it was dropped (it breaks the model)."""
        embedder = self._embedder()
        texts = [self._input(d.rows[i]) for d, i in batch]
        note_document(batch[0][0].path)
        vecs = with_retries(
            PHASE,
            lambda: embedder.embed(texts),
            retries=self.retries,
            control=self.control,
            on_retry=lambda: self.r.count("embedding_retries"),
            quiet=True,
        )
        if vecs is None:  # persistent failure: find the documents that cause it
            return self._isolate_failure(embedder, batch)
        reused = sum(self._deliver(d, i, v) for (d, i), v in zip(batch, vecs))
        self.r.progress(PHASE, len(batch) + reused)
        self.r.count("chunks_embedded", len(batch))
        if reused:
            self.r.count("chunks_reused", reused)
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
                vecs = embedder.embed([self._input(d.rows[i]) for _, i in rows])
            except Exception as e:
                failed.append((d, reason(e)))
                continue
            reused = sum(self._deliver(d, i, v) for (_, i), v in zip(rows, vecs))
            self.r.progress(PHASE, len(rows) + reused)
            self.r.count("chunks_embedded", len(rows))
            if reused:
                self.r.count("chunks_reused", reused)
        if failed and len(failed) == len(docs) and not _model_works(embedder):
            raise PhaseFailed(
                PHASE,
                f"embedding failed after {self.retries + 1} attempts, "
                f"on {fs_text(failed[0][0].path)} first: {failed[0][1]}",
            )
        for d, msg in failed:  # the model works, these documents break it: record them and go on
            self.r.doc_error(d.path, PHASE, "embedding_failed", msg, attempts=self.retries + 2)
            d.dropped = True
            for dd, i in batch:  # the texts it led in this batch: queued again for the others waiting
                if dd is d:
                    self.todo.insert(0, (d, i))
            n = sum(1 for row in d.rows if "vector" not in row)  # its rows still waiting are dropped with it
            self.r.progress(PHASE, n, True)
            self.r.add_total(JobPhase.INDEXING, -len(d.rows))
        return bool(failed)


def _model_works(embedder: Embedder) -> bool:
    """Tell documents that break the model from a broken model, with a probe."""
    try:
        embedder.embed(["probe"])
        return True
    except Exception:
        return False
