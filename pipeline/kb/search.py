"""Query a knowledge base with the model it was built with, where its jobs put it."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Mapping, Optional

from kbingest.pipeline.embed.embedding import make_embedder
from kbingest.pipeline.errors import InvalidInput
from kbingest.pipeline.kb.table import SEARCH_MODES, KnowledgeBase, SearchHit
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.paths import Home
from kbingest.pipeline.kb.location import ENV_DB, KbLocation


def locate(home: Home, config: Optional[JobConfig], db: Optional[str] = None,
           db_options: Optional[Mapping[str, str]] = None) -> KbLocation:
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


def search_kb(kb: KnowledgeBase, config: JobConfig, query: str, k: int, mode: str = "hybrid",
              embedder_factory: Optional[Callable] = None) -> list[SearchHit]:
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
    return kb.search(vec, k, mode=mode, text=query)
