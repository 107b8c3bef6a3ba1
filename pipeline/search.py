"""Query a knowledge base with the model it was built with."""
from __future__ import annotations

from typing import Callable, Optional

from kbingest.pipeline.embedding import make_embedder
from kbingest.pipeline.index import KnowledgeBase, SearchHit
from kbingest.pipeline.models import JobConfig


def search_kb(kb: KnowledgeBase, config: JobConfig, query: str, k: int,
              embedder_factory: Optional[Callable] = None) -> list[SearchHit]:
    if kb.count() == 0:
        return []  # nothing to find: the model is not loaded
    embedder = embedder_factory(config) if embedder_factory else make_embedder(
        config.embedder, config.model, batch_size=1)
    vec = embedder.embed([query])[0]
    return kb.search(vec, k)
