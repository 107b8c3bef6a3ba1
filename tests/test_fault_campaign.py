"""Findings of the fault campaign (issue 18) fixed in the engine: one document however it is
reached; no mass removal by an empty source; document errors cost the same whatever their number."""

from __future__ import annotations

import os

from conftest import SMALL_PAGES, copy_pages

from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.service import Service
from kbingest.pipeline.status import JobStatus


def _ingest(svc: Service, sources, kb="docs", **settings):
    job = svc.start(svc.config([str(s) for s in sources], kb, embedder="fake", **settings))
    return job, job.run()


def test_a_folder_reached_through_a_symlink_is_indexed_once(tmp_path, home):
    corpus = copy_pages(tmp_path / "corpus", SMALL_PAGES[:3])
    link = tmp_path / "corpuslink"
    link.symlink_to(corpus, target_is_directory=True)
    svc = Service(home)
    _, first = _ingest(svc, [corpus])
    rows = KnowledgeBase(home, "docs").count()
    for other in (link, tmp_path / "corpus" / ".." / "corpus", os.path.relpath(corpus)):
        _, snap = _ingest(svc, [other])
        assert snap.status == JobStatus.COMPLETED
        assert snap.m.documents_skipped == 3 and not snap.m.documents_added, other
    kb = KnowledgeBase(home, "docs")
    assert kb.count() == rows and len(set(kb.ids())) == rows
    hits = svc.search("docs", "reliability principles", k=10)
    assert len({h.id for h in hits}) == len(hits)
    assert {h.source for h in hits} <= {str(p) for p in corpus.rglob("*.md")}  # the path the user first gave


def test_an_empty_source_does_not_wipe_the_knowledge_base(tmp_path, home):
    src = copy_pages(tmp_path / "share", SMALL_PAGES)
    svc = Service(home)
    _ingest(svc, [src])
    rows = KnowledgeBase(home, "docs").count()
    for p in src.rglob("*.md"):  # the share is unmounted: the folder is there, empty
        p.unlink()
    job, snap = _ingest(svc, [src])
    assert snap.status == JobStatus.COMPLETED and not snap.m.documents_removed
    assert KnowledgeBase(home, "docs").count() == rows
    refusal = [e for e in job.errors if e.kind == "mass_removal_refused"]
    assert len(refusal) == 1 and f"remove {len(SMALL_PAGES)} of the {len(SMALL_PAGES)}" in refusal[0].message
    _, snap = _ingest(svc, [src], max_removal_share=1.0)  # --allow-mass-removal: the operator means it
    assert snap.m.documents_removed == len(SMALL_PAGES) and KnowledgeBase(home, "docs").count() == 0


def test_removing_a_few_documents_is_not_a_mass_removal(tmp_path, home):
    src = copy_pages(tmp_path / "docs", SMALL_PAGES)
    svc = Service(home)
    _ingest(svc, [src])
    (src / SMALL_PAGES[0]).unlink()
    (src / SMALL_PAGES[1]).unlink()
    job, snap = _ingest(svc, [src])
    assert snap.m.documents_removed == 2 and not job.errors


def test_many_failing_documents_keep_the_store_small(tmp_path, home):
    """5,000 empty files: each is one error, the status lists the first 100 and counts all, and the
    job store stays small (every heartbeat rewrites it: a growing list made the cost quadratic)."""
    src = tmp_path / "empty"
    src.mkdir()
    for i in range(5000):
        (src / f"{i:05d}.md").write_bytes(b"")
    svc = Service(home)
    job, snap = _ingest(svc, [src])
    assert snap.m.documents_failed == 5000 and len(snap.m.document_errors) == 100
    assert len(job.errors) == 5000
    assert os.path.getsize(home.store_file) < 200_000
    assert "5000 document(s) failed" in next(p.error for p in snap.phase_details if p.name == "loading")
