"""Search that finds the right section (issue 31): hybrid ranking independent of -k (both lists windowed,
fused, then cut), a relevance in [0, 1] and paths relative to the SOURCE, chunks embedded with their
title and heading path (the stored text unchanged), and the version / reuse rule of that setting."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from conftest import run_cli

from kbingest.pipeline.embed.embedding import FakeEmbedder, embedded_text
from kbingest.pipeline.kb import search as search_mod
from kbingest.pipeline.kb.ids import text_hash
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.models import JobConfig, SearchHit
from kbingest.pipeline.service import Service
from kbingest.pipeline.status import JobStatus

QUERIES = [
    "recovery point objective",
    "how do I keep costs under control",
    "protect identities",
    "design for resilience and failures",
    "automate deployments safely",
    "performance targets",
    "least privilege access",
    "monitor health of the workload",
]


class CountingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts.extend(texts)
        return super().embed(texts)


def _svc(home, emb=None):
    emb = emb or FakeEmbedder()
    return Service(home, embedder_factory=lambda c: emb)


def _ingest(svc, src, kb="docs", **kw):
    snap = svc.start(svc.config([str(src)], kb, embedder="fake", **kw)).run()
    assert snap.status == JobStatus.COMPLETED, snap.message
    return snap


# ---- 1. ranking independent of k ---------------------------------------------------------------
def test_hybrid_first_hit_is_the_same_for_k1_and_k10_and_both_lists_are_windowed(home, pages, monkeypatch):
    svc = _svc(home)
    _ingest(svc, pages)
    asked = []
    real = KnowledgeBase.search

    def spy(self, vector, k, mode="vector", text=None):
        asked.append((mode, k))
        return real(self, vector, k, mode=mode, text=text)

    monkeypatch.setattr(KnowledgeBase, "search", spy)
    for q in QUERIES:
        one, ten = svc.search_here("docs", q, 1), svc.search_here("docs", q, 10)
        assert len(one) == 1 and len(ten) == 10
        assert one[0].id == ten[0].id, q
        assert [h.id for h in svc.search_here("docs", q, 3)] == [h.id for h in ten[:3]], q
    assert {m for m, _ in asked} == {"vector", "text"}  # hybrid: both lists, fused here
    assert min(k for _, k in asked) >= search_mod.WINDOW  # each list fetched at least 50 deep, whatever -k
    asked.clear()
    svc.search_here("docs", QUERIES[0], 80)
    assert {k for _, k in asked} == {80}  # max(k, 50)


def test_fuse_keeps_both_components_and_a_relevance_in_0_1():
    def hit(i, score):
        return SearchHit(id=f"h{i}", score=score, source=f"/x/{i}.md", heading_path="", text="", title="")

    vec = [hit(1, 0.8), hit(2, 0.6), hit(3, 0.5)]
    txt = [hit(3, 12.0), hit(4, 7.0)]
    for fusion in (search_mod.FUSION, search_mod.Fusion(method="rrf"), search_mod.Fusion(method="score")):
        out = search_mod.fuse(vec, txt, 10, fusion)
        assert {h.id for h in out} == {"h1", "h2", "h3", "h4"}
        assert all(0.0 <= h.relevance <= 1.0 for h in out)
        assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
        both = next(h for h in out if h.id == "h3")
        assert both.vector_score == 0.5 and both.text_score == 12.0
        assert next(h for h in out if h.id == "h4").vector_score is None
        assert next(h for h in out if h.id == "h1").text_score is None
    first = search_mod.fuse([hit(1, 0.9)], [hit(1, 30.0)], 1, search_mod.Fusion(method="rrf"))[0]
    assert first.relevance == 1.0  # first in both lists: the highest relevance rank fusion gives


def test_relative_path_is_taken_from_the_deepest_source_holding_the_file():
    rel = search_mod.relative_path
    assert rel("/a/docs/sub/x.md", ["/a/docs"]) == "sub/x.md"
    assert rel("/a/docs/sub/x.md", ["/a", "/a/docs/"]) == "sub/x.md"
    assert rel("/a/docs/x.md", ["/a/docs/x.md"]) == "x.md"  # a file given as the source
    assert rel("/a/docsx/x.md", ["/a/docs"]) == "/a/docsx/x.md"  # not under it: the stored source


# ---- 5. results a person can place -------------------------------------------------------------
def test_cli_search_shows_paths_relative_to_the_source_and_a_relevance(home, pages):
    r = run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=home.root)
    assert r.returncode == 0, r.stderr
    for mode in ("hybrid", "vector", "text"):
        out = run_cli(
            "search", "--kb", "docs", "reliability design principles", "--mode", mode, "-k", "5", home=home.root
        )
        assert out.returncode == 0, out.stderr
        lines = [ln for ln in out.stdout.splitlines() if re.match(r"^\d+\. ", ln)]
        assert len(lines) == 5, out.stdout
        assert str(pages) not in out.stdout and str(home.root) not in out.stdout  # no temp folder shown
        for ln in lines:
            m = re.match(r"^\d+\. (\d\.\d\d)  (\S+)  \[", ln)
            assert m, ln
            assert 0.0 <= float(m.group(1)) <= 1.0
            assert (pages / m.group(2)).is_file() and not m.group(2).startswith("/")
    js = json.loads(
        run_cli("search", "--kb", "docs", "reliability design principles", "--json", "-k", "5", home=home.root).stdout
    )
    assert js[0]["source"].startswith(str(pages))  # --json keeps the stored source too
    assert all(h["path"] == str(Path(h["source"]).relative_to(pages)) for h in js)
    assert all(0 <= h["relevance"] <= 1 and "score" in h and "vector_score" in h and "text_score" in h for h in js)
    assert any(h["vector_score"] is not None and h["text_score"] is not None for h in js)


# ---- 3. context in the vectors ---------------------------------------------------------------------
def test_chunks_are_embedded_with_title_and_heading_path_and_stored_as_they_are(home, tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "pump.md").write_text(
        "---\ntitle: Pump Handbook\n---\n\n## Maintenance\n\nReplace the seals every "
        "year.\n\n### Seals\n\nUse the blue seal kit only.\n"
    )
    emb = CountingEmbedder()
    svc = _svc(home, emb)
    snap = _ingest(svc, src)
    job = svc.find(kb="docs")
    assert job.config.embed_context is True  # a new knowledge base: decided at start, recorded
    assert any(t.startswith("Pump Handbook > Maintenance > Seals\n\n") and "blue seal kit" in t for t in emb.texts)
    t = KnowledgeBase(home, "docs")._table.to_arrow()
    texts = t["text"].to_pylist()
    assert all(not x.startswith("Pump Handbook") for x in texts)  # the stored text is the chunk's own
    rows = t.to_pylist()
    for row in rows:  # the vector is of what was embedded, and text_hash names it
        want = embedded_text(row["text"], row["title"], row["heading_path"], True)
        assert row["text_hash"] == text_hash(want)
        assert np.allclose(row["vector"], FakeEmbedder().embed([want])[0], atol=1e-6)
    assert snap.m.chunks_embedded == len(rows)


def test_embedded_text_rule():
    assert embedded_text("body", "T", "T > A > B") == "T > A > B\n\nbody"  # the title once
    assert embedded_text("body", "Doc", "A") == "Doc > A\n\nbody"
    assert embedded_text("A > B\n\nmore", "Doc", "A > B") == "Doc\n\nA > B\n\nmore"  # the chunker's prefix kept once
    assert embedded_text("body", "", "") == "body"
    assert embedded_text("body", "T", "A", context=False) == "body"


# ---- the version and reuse rule ------------------------------------------------------------------
def test_the_setting_is_versioned_and_off_gives_the_versions_of_before():
    base = JobConfig(sources=["."], kb="x")
    before = f"{base.chunk_settings().fingerprint()}|{base.vector_model}"  # the key before the setting
    assert base.version_key() == before  # None: as before
    assert base.model_copy(update={"embed_context": False}).version_key() == before
    assert base.model_copy(update={"embed_context": True}).version_key() != before
    assert "embed_context" in JobConfig.VERSIONED


def test_a_knowledge_base_keeps_how_it_was_embedded_and_reuse_needs_the_same_input(home, tmp_path, pages):
    emb = CountingEmbedder()
    svc = _svc(home, emb)
    first = _ingest(svc, pages, embed_context=False)  # as a knowledge base made before the setting
    assert first.m.chunks_embedded > 0
    emb.texts.clear()
    again = _ingest(svc, pages)  # nothing said: the knowledge base's own way, so nothing to embed
    assert svc.find(kb="docs").config.embed_context is False
    assert again.m.chunks_embedded == 0 and again.m.documents_skipped == len(list(pages.rglob("*.md")))
    moved = pages / "moved"
    moved.mkdir()
    shutil.copy(pages / "reliability" / "principles.md", moved / "principles.md")
    copied = _ingest(svc, pages)
    assert copied.m.chunks_embedded == 0 and copied.m.chunks_reused > 0  # same inputs: stored vectors reused
    emb.texts.clear()
    upgraded = _ingest(svc, pages, embed_context=True)  # asked for: every document is embedded again
    assert upgraded.m.documents_replaced == len(list(pages.rglob("*.md")))
    assert upgraded.m.chunks_embedded > 0
    # a stored vector was reused only where the embedded input is the same (a continuation chunk whose
    # heading-path prefix starts with the title): every row's vector is of what it now embeds
    for row in KnowledgeBase(home, "docs")._table.to_arrow().to_pylist():
        want = embedded_text(row["text"], row["title"], row["heading_path"], True)
        assert row["text_hash"] == text_hash(want)
        assert np.allclose(row["vector"], FakeEmbedder().embed([want])[0], atol=1e-6), row["heading_path"]


def test_a_knowledge_base_copied_without_its_jobs_is_read_for_how_it_was_embedded(tmp_path, pages):
    from kbingest.pipeline.paths import Home

    for made_with in (True, False):
        a = Home(tmp_path / f"a{made_with}").ensure()
        _ingest(_svc(a), pages, embed_context=made_with)
        b = Home(tmp_path / f"b{made_with}").ensure()
        shutil.copytree(a.root / "lancedb", b.root / "lancedb", dirs_exist_ok=True)
        rerun = _ingest(_svc(b), pages)  # no job in this home: the table tells
        assert Service(b).find(kb="docs").config.embed_context is made_with
        assert rerun.m.chunks_embedded == 0 and rerun.m.documents_skipped > 0
