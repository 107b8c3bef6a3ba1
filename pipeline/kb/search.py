"""Query a knowledge base with the model it was built with, where its jobs put it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

from kbingest.pipeline.embed.embedding import make_embedder
from kbingest.pipeline.errors import InvalidInput
from kbingest.pipeline.kb.location import ENV_DB, KbLocation
from kbingest.pipeline.kb.table import SEARCH_MODES, KnowledgeBase, SearchHit
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.paths import Home


def locate(
    home: Home, config: Optional[JobConfig], db: Optional[str] = None, db_options: Optional[Mapping[str, str]] = None
) -> KbLocation:
    """Where a knowledge base is: `db` (or KBINGEST_DB) when given, else where its newest job wrote, else
    HOME/lancedb."""
    db = db or os.environ.get(ENV_DB) or None
    if db is None and config is not None:
        db, db_options = config.db, {**config.db_options, **(db_options or {})}
    return KbLocation.resolve(home, db, db_options)


_query_models: dict[tuple[str, str], Any] = {}
_query_models_lock = threading.Lock()


class _SharedEmbedder:
    """One loaded model for every query of the process (a resident one answers many, from threads)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> Any:
        with self._lock:
            return self._inner.embed(texts)


def query_embedder(config: JobConfig) -> Any:
    """The process's query model for this config's embedder and model, loaded at its first query."""
    key = (config.embedder, config.model)
    with _query_models_lock:
        if key not in _query_models:
            # one session: a query is one short text, and each session costs ~0.3 s to build
            _query_models[key] = _SharedEmbedder(make_embedder(config.embedder, config.model, batch_size=1, threads=1))
        return _query_models[key]


def preload_query_embedder(config: JobConfig) -> None:
    """Load the process's query model in a thread while the caller opens the table: the model's
    session is built in native code that releases the GIL, so it overlaps LanceDB's import (a cold
    `kbingest search` 3.27 -> 2.92 s with the one-session query model, docs/benchmarks.md). Only for
    a table known to hold rows (an empty one never loads the model); a failure is left for the
    query's own load to raise."""

    def load() -> None:
        try:
            query_embedder(config)
        except Exception:  # the search's own call raises it, in kbingest's words
            pass

    threading.Thread(target=load, name="kbingest-query-model", daemon=True).start()


# ---- ranking (docs/search.md) ------------------------------------------------------------------
WINDOW = 50  # hybrid: each list is fetched this deep (or k, when larger), fused, then cut to k


def window(k: int) -> int:
    """How many candidates each list of a hybrid search brings: max(k, WINDOW), so that the order of
    the first hits does not depend on k (Elasticsearch's rank_window_size is the same idea)."""
    return max(k, WINDOW)


@dataclass(frozen=True)
class Fusion:
    """How a hybrid search merges its vector and full-text lists. "score": a weighted sum of the
    cosine similarity and BM25 squashed into [0, 1) by s / (s + bm25_half), both absolute, so the fused
    score is itself a relevance in [0, 1] that means the same from one query to the next; "rrf":
    reciprocal-rank fusion, sum of weight / (c + rank). Chosen by the `retrieval` figure (bench/retrieval.py)."""

    method: str = "score"
    vector_weight: float = 0.5  # score: the text's weight is 1 - this; rrf: the vector list's weight
    bm25_half: float = 20.0  # score: the BM25 score that counts as 0.5
    c: float = 60.0  # rrf: the rank constant
    text_weight: float = 1.0  # rrf: the text list's weight


FUSION = Fusion()


def text_relevance(bm25: Optional[float], half: float = FUSION.bm25_half) -> float:
    """BM25 (unbounded) as a relevance in [0, 1): s / (s + half)."""
    return 0.0 if not bm25 or bm25 <= 0 else bm25 / (bm25 + half)


def vector_relevance(cosine: Optional[float]) -> float:
    """Cosine similarity as a relevance in [0, 1] (a negative one is 0)."""
    return 0.0 if cosine is None else min(1.0, max(0.0, cosine))


def fuse(vector_hits: list[SearchHit], text_hits: list[SearchHit], k: int, fusion: Fusion = FUSION) -> list[SearchHit]:
    """The k best of both lists, fused: `score` the fused score, `relevance` in [0, 1], and the
    components (`vector_score`: cosine, `text_score`: BM25) where the hit was in that list. A hit
    missing from one list scores there as that list's last one does (it ranks below all of them)."""
    vec = {h.id: (r, h) for r, h in enumerate(vector_hits, 1)}
    txt = {h.id: (r, h) for r, h in enumerate(text_hits, 1)}
    v_floor = vector_hits[-1].score if vector_hits else 0.0
    t_floor = text_hits[-1].score if text_hits else 0.0
    rows = []
    for hid in list(vec) + [i for i in txt if i not in vec]:
        vr, vh = vec.get(hid, (None, None))
        tr, th = txt.get(hid, (None, None))
        cos = vh.score if vh is not None else None
        bm25 = th.score if th is not None else None
        if fusion.method == "rrf":
            score = (fusion.vector_weight / (fusion.c + vr) if vr else 0.0) + (
                fusion.text_weight / (fusion.c + tr) if tr else 0.0
            )
            relevance = score / ((fusion.vector_weight + fusion.text_weight) / (fusion.c + 1))
        else:
            w = fusion.vector_weight
            score = w * vector_relevance(cos if cos is not None else v_floor) + (1 - w) * text_relevance(
                bm25 if bm25 is not None else t_floor, fusion.bm25_half
            )
            relevance = score
        hit = vh if vh is not None else txt[hid][1]  # a hit of the text list only
        rows.append((-score, vr or 1 << 30, tr or 1 << 30, hid, hit, score, relevance, cos, bm25))
    rows.sort(key=lambda r: r[:4])
    return [
        replace(
            h,
            score=round(score, 6),
            relevance=round(min(1.0, max(0.0, rel)), 4),
            vector_score=None if cos is None else round(cos, 4),
            text_score=None if bm25 is None else round(bm25, 4),
        )
        for *_, h, score, rel, cos, bm25 in rows[:k]
    ]


def relative_path(source: str, roots: list[str]) -> str:
    """A hit's file relative to the SOURCE it was found under (the deepest root holding it; a root
    that is the file itself gives its name), or the stored source where no root holds it."""
    best = None
    for root in roots:
        r = root.rstrip("/") or "/"
        if source == r:
            return os.path.basename(source) or source
        if source.startswith(r if r.endswith("/") else r + "/") and (best is None or len(r) > len(best)):
            best = r
    return source if best is None else os.path.relpath(source, best)


def with_paths(hits: list[SearchHit], roots: list[str]) -> list[SearchHit]:
    return [replace(h, path=relative_path(h.source, roots)) for h in hits]


def table_embeds_context(kb: KnowledgeBase, sample: int = 64) -> Optional[bool]:
    """Whether a table's rows were embedded with their title and heading path (their text_hash is
    the hash of what was embedded): None for an empty table or rows that cannot tell (no heading,
    no title)."""
    from kbingest.pipeline.embed.embedding import embedded_text
    from kbingest.pipeline.kb.ids import text_hash

    if kb.count() == 0 or "text_hash" not in kb._table.schema.names:
        return None if kb.count() == 0 else False
    t = kb._table.search(None).select(["text", "title", "heading_path", "text_hash"]).limit(sample).to_arrow()
    for text, title, hp, h in zip(*(t[c].to_pylist() for c in ("text", "title", "heading_path", "text_hash"))):
        with_context = embedded_text(text or "", title or "", hp or "", True)
        if with_context != text:
            return h == text_hash(with_context)
    return None


def search_kb(
    kb: KnowledgeBase,
    config: JobConfig,
    query: str,
    k: int,
    mode: str = "hybrid",
    embedder_factory: Optional[Callable] = None,
    fusion: Fusion = FUSION,
) -> list[SearchHit]:
    """The k best chunks. vector: cosine similarity, exact (ANN above its threshold); text: BM25 on
    the full-text index; hybrid: both lists, each window(k) deep, fused (`fuse`), then cut to k."""
    if mode not in SEARCH_MODES:
        raise InvalidInput(f"unknown search mode {mode!r}: one of {', '.join(SEARCH_MODES)}")
    if not query.strip():
        raise InvalidInput("the query is empty: say what to search for")
    if kb.count() == 0:
        return []  # nothing to find: the model is not loaded
    vec = None
    if mode != "text":
        embedder = (embedder_factory or query_embedder)(config)
        vec = embedder.embed([query])[0]
    if mode == "text":
        hits = kb.search(None, k, mode="text", text=query)
        return [
            replace(h, relevance=round(text_relevance(h.score, fusion.bm25_half), 4), text_score=h.score) for h in hits
        ]
    if mode == "hybrid":
        state = kb.index_state()
        if state is not None and state.has_fts:
            n = window(k)
            return fuse(kb.search(vec, n, mode="vector"), kb.search(None, n, mode="text", text=query), k, fusion)
        # a table from before full-text indexes: its vector half
    hits = kb.search(vec, k, mode="vector")
    return [replace(h, relevance=round(vector_relevance(h.score), 4), vector_score=h.score) for h in hits]
