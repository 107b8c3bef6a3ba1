"""Chunking: a loaded document becomes rows (chunk text, ids, heading path), before vectors.

A chunk whose text the knowledge base already holds, from this document before an edit or from any
other, of the same model, keeps that stored vector (reused, not embedded).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Protocol

from kbingest.pipeline.chunk.chunking import Chunker
from kbingest.pipeline.embed.embedding import embedded_text
from kbingest.pipeline.kb import ids
from kbingest.pipeline.load.formats.pages import chunk_pages
from kbingest.pipeline.messages import note_document, reason
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc, Reporter
from kbingest.pipeline.status import JobPhase
from kbingest.pipeline.textsafe import fs_text

log = logging.getLogger("kbingest.engine")
PHASE = JobPhase.CHUNKING


class StoredVectors(Protocol):
    """What ChunkStage asks of the knowledge base: the KnowledgeBase, or a Ray worker's TableVectors."""

    def count(self) -> int: ...
    def vectors_by_hash(self, hashes: Iterable[str], model: str) -> dict[str, Any]: ...


class ChunkStage:
    def __init__(self, config: JobConfig, reporter: Reporter, chunker: Chunker, kb: StoredVectors) -> None:
        self.r = reporter
        self.chunker = chunker
        self.kb = kb
        self.version_key = config.version_key()
        self.model = config.vector_model
        self.context = config.context_embedding  # the text_hash is of what is embedded (title and heading path too)
        self._lookup: Optional[bool] = None  # whether the table held rows when the first document came

    def __call__(self, d: Doc) -> Optional[Doc]:
        """The document with its rows; None when it failed (recorded). A removal passes through."""
        if d.removal:
            return d
        r, doc = self.r, d.loaded
        r.phase_started(PHASE)
        r.add_total(PHASE)
        note_document(doc.path)
        try:
            chunked = self.chunker.chunk(doc.text, markdown=doc.markdown)
        except Exception as e:
            r.progress(PHASE)
            r.settle_bytes(doc.size)
            r.doc_error(
                doc.path, PHASE, "out_of_memory" if isinstance(e, MemoryError) else "chunking_failed", reason(e)
            )
            return None
        d.title = doc.title or chunked.title or ""  # the format's own title (HTML <title>) first
        d.rows = chunk_rows(chunked, doc, d, self.version_key, self.model, self.context)
        d.loaded = None  # the text is in the rows now
        r.add_total(JobPhase.EMBEDDING, len(d.rows))
        r.add_total(JobPhase.INDEXING, len(d.rows))
        r.count("chunks_created", len(d.rows))
        r.settle_bytes(doc.size, len(d.rows))
        if d.rows and self._stored_rows():
            self._reuse_vectors(d)
        r.progress(PHASE)
        return d

    def finish(self) -> None:
        """Every document is chunked: the totals of the phases after are known."""
        self.r.total_known(JobPhase.EMBEDDING)
        self.r.total_known(JobPhase.INDEXING)
        self.r.phase_done(PHASE)

    def _stored_rows(self) -> bool:
        """Rows this job commits are found by the embed stage's own cache: the table is asked only
        if it held rows before (looked at once, when the first document needs chunking)."""
        if self._lookup is None:
            self._lookup = self.kb.count() > 0
        return self._lookup

    def _reuse_vectors(self, d: Doc) -> None:
        """Rows whose text the knowledge base holds, made by the same model, take the stored vector."""
        try:
            known = self.kb.vectors_by_hash([row["text_hash"] for row in d.rows], self.model)
        except Exception:  # only an optimisation: embed everything instead
            log.warning("could not read the stored vectors for %s", d.path, exc_info=True)
            return
        reused = 0
        for row in d.rows:
            v = known.get(row["text_hash"])
            if v is not None:
                row["vector"] = v
                reused += 1
        if reused:
            self.r.progress(JobPhase.EMBEDDING, reused, True)
            self.r.count("chunks_reused", reused)


def _ocr_confidence(doc, page) -> Optional[float]:
    """OCR's confidence for the page a chunk starts on; None where that page was read from a text layer."""
    ocr = getattr(doc, "page_ocr", ())
    return ocr[page - 1] if page is not None and 0 < page <= len(ocr) else None


def chunk_rows(chunked, doc, d: Doc, version_key: str, model: str, context: bool = False) -> list[dict]:
    """A chunked document's rows (no vectors yet): what every executor stages, the same way. Ids from
    the document's canonical path, as the load resolved it (d.canonical: no path is resolved again
    here, where a file may be gone or replaced); each chunk's first page where the format has pages."""
    pages = chunk_pages(doc.text, doc.page_starts, chunked.chunks)
    return [
        {
            "id": ids.chunk_id(d.canonical, doc.content_hash, ch.position, version_key),
            "text": ch.text,
            "source": fs_text(doc.path),
            "heading_path": ch.heading_path,
            "doc_id": d.doc_id,
            "doc_version": d.version,
            "position": ch.position,
            "title": d.title,
            "model": model,
            "page": page,
            "ocr_confidence": _ocr_confidence(doc, page),
            "text_hash": ids.text_hash(embedded_text(ch.text, d.title, ch.heading_path, context)),  # what is embedded
        }
        for ch, page in zip(chunked.chunks, pages)
    ]
