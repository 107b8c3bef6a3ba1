"""A dry run (`--until chunking`): the pass stops after chunking. No model is loaded, nothing is
written to LanceDB; what would be embedded is measured instead.

`TallyStage` takes the embedding stage's place (documents with their rows): it counts each
document's chunks and tokens. `NoIndexStage` takes the indexer's: it writes nothing. The report
(`report()`) gives documents, chunks, the tokens per document as a histogram, and the embedding time
estimated at a measured rate (see `embed_rate`).
"""

from __future__ import annotations

from typing import Any, Optional

from kbingest.pipeline.stages.base import Doc, Reporter

MAX_DOCUMENTS_LISTED = 100
# The shipped model on the reference machine (2 cores): docs/benchmarks.md figure 1.4, raw
# fastembed, batch 1 (25.8 chunks/s). Used when this home has no finished job of the model to measure.
REFERENCE_RATE = {"all-MiniLM-L6-v2": 25.8}


def bucket(tokens: int) -> str:
    """Power-of-two bins: '0-255', '256-511', '512-1023', ..."""
    lo = 256
    if tokens < lo:
        return f"0-{lo - 1}"
    while tokens >= lo * 2:
        lo *= 2
    return f"{lo}-{2 * lo - 1}"


class TallyStage:
    """In the embedder's place: counts, never embeds."""

    def __init__(self, reporter: Reporter, counter: Any) -> None:
        self.r = reporter
        self.counter = counter
        self.documents = 0
        self.chunks = 0
        self.tokens = 0
        self.histogram: dict[str, int] = {}
        self.listed: list[dict[str, Any]] = []

    def add(self, d: Doc) -> list[Doc]:
        if d.removal:
            return []
        n = sum(self.counter.count_batch([row["text"] for row in d.rows])) if d.rows else 0
        self.documents += 1
        self.chunks += len(d.rows)
        self.tokens += n
        key = bucket(n)
        self.histogram[key] = self.histogram.get(key, 0) + 1
        if len(self.listed) < MAX_DOCUMENTS_LISTED:
            self.listed.append({"path": d.path, "chunks": len(d.rows), "tokens": n})
        d.rows = []  # nothing more to carry
        return []

    def flush(self) -> list[Doc]:
        return []

    def report(self, rate: Optional[float], rate_source: str) -> dict[str, Any]:
        order = sorted(self.histogram, key=lambda k: int(k.split("-")[0]))
        return {
            "documents": self.documents,
            "chunks": self.chunks,
            "tokens": self.tokens,
            "tokens_per_document_histogram": {k: self.histogram[k] for k in order},
            "document_list": self.listed,
            "embed_rate_chunks_per_s": round(rate, 2) if rate else None,
            "rate_source": rate_source,
            "estimated_embedding_seconds": round(self.chunks / rate, 1) if rate else None,
        }


class NoIndexStage:
    """In the indexer's place: writes nothing."""

    last_commit_at = None

    def add(self, d: Doc) -> None:
        pass

    def due(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass


def embed_rate(records: list, vector_model: str) -> tuple[Optional[float], str]:
    """Chunks per second of embedding, measured: the newest finished job of this home that embedded
    with the same model (its chunks embedded over its embedding phase's running time); else the
    reference figure of the shipped model; else unknown."""
    for rec in records:  # newest first
        s = rec.status
        if rec.config.vector_model != vector_model or s.status.value != "completed":
            continue
        emb = next((p for p in s.phase_details if p.name == "embedding"), None)
        n = s.m.chunks_embedded or 0
        if emb is not None and emb.duration_seconds and n >= 20:
            return (
                n / emb.duration_seconds,
                f"measured: job {rec.job_id} embedded {n} chunks in {emb.duration_seconds:.1f} s",
            )
    if vector_model in REFERENCE_RATE:
        return REFERENCE_RATE[vector_model], "reference: docs/benchmarks.md figure 1.4 (2 cores, batch 1)"
    return None, "unknown: no finished job of this model in this home"
