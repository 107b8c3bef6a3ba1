"""Query a knowledge base with the model it was built with, where its jobs put it."""
from __future__ import annotations

import os
from typing import Mapping, Optional

from kbingest.pipeline.embedding import make_embedder
from kbingest.pipeline.index import SEARCH_MODES, KnowledgeBase, SearchHit
from kbingest.pipeline.paths import Home
from kbingest.pipeline.storage import ENV_DB, KbLocation
from kbingest.pipeline.store import JobStore


class UnknownKB(LookupError):
    pass


def search(home: Home, store: JobStore, kb_name: str, query: str, k: int, mode: str = "hybrid",
           db: Optional[str] = None, db_options: Optional[Mapping[str, str]] = None) -> list[SearchHit]:
    """The k best chunks for QUERY. The location is `db` (or KBINGEST_DB) when given, else the one the
    newest job of this knowledge base wrote to, else HOME/lancedb."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}: one of {', '.join(SEARCH_MODES)}")
    jobs = [r for r in store.all() if r.config.kb == kb_name]
    cfg = jobs[0].config if jobs else None
    db = db or os.environ.get(ENV_DB) or None
    if db is None and cfg is not None:
        db, db_options = cfg.db, {**cfg.db_options, **(db_options or {})}
    location = KbLocation.resolve(home, db, db_options)
    kb = KnowledgeBase(home, kb_name, location)
    if not kb.exists:
        raise UnknownKB(f"no knowledge base {kb_name!r} in {location}")
    vec = None
    if mode != "text":
        embedder = make_embedder(cfg.embedder if cfg else "fastembed", cfg.model if cfg else "all-MiniLM-L6-v2",
                                 batch_size=1)
        vec = embedder.embed([query])[0]
    return kb.search(vec, k, mode=mode, text=query)

