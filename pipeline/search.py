"""Query a knowledge base with the model it was built with."""
from __future__ import annotations

from kbingest.pipeline.embedding import DEFAULT_MODEL, FakeEmbedder, make_embedder
from kbingest.pipeline.index import KnowledgeBase, SearchHit
from kbingest.pipeline.paths import Home
from kbingest.pipeline.store import JobStore


class UnknownKB(LookupError):
    pass


def search(home: Home, store: JobStore, kb_name: str, query: str, k: int) -> list[SearchHit]:
    kb = KnowledgeBase(home, kb_name)
    if not kb.exists:
        raise UnknownKB(f"no knowledge base {kb_name!r} in {home.root}")
    jobs = [r for r in store.all() if r.config.kb == kb_name]
    cfg = jobs[0].config if jobs else None
    if cfg is None:  # a knowledge base without its jobs (copied from another home): the model it names
        info = kb.embedding_info() or {}
        model = info.get("model") or DEFAULT_MODEL
        embedder = make_embedder("fake" if model == FakeEmbedder().model else "fastembed", model, batch_size=1)
    else:
        embedder = make_embedder(cfg.embedder, cfg.model, batch_size=1)
    vec = embedder.embed([query])[0]
    return kb.search(vec, k)
