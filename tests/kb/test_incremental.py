"""Incremental runs, in-process with the fake embedder: only what changed is embedded again, what
is gone is removed, a settings change re-indexes everything, and the table stays compact."""

from __future__ import annotations

from pathlib import Path

from conftest import WAF, copy_pages

KB = "k"


def ingest(home, src: Path, **cfg):
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.models import JobConfig

    config = JobConfig(sources=[str(src.resolve())], kb=KB, embedder="fake", **cfg)
    snap = IngestJob.create(home, open_store(home), config).run()
    assert snap.status.value == "completed", (snap.message, snap.error)
    assert snap.metrics.get("documents_failed", 0) == 0, snap.metrics
    return snap


def rows(home) -> list[dict]:
    import lancedb

    t = lancedb.connect(str(home.lancedb_dir)).open_table(KB)
    return t.to_arrow().select(["id", "doc_id", "doc_version", "source"]).to_pylist()


def table_version(home) -> int:
    import lancedb

    return lancedb.connect(str(home.lancedb_dir)).open_table(KB).version


def vectors(home) -> dict[str, tuple]:
    """id -> vector (rounded: float32 through Arrow), to compare a table with a clean run's."""
    import lancedb

    t = lancedb.connect(str(home.lancedb_dir)).open_table(KB).to_arrow().select(["id", "vector"])
    return {i: tuple(round(x, 5) for x in v) for i, v in zip(t["id"].to_pylist(), t["vector"].to_pylist())}


def by_source(rs: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rs:
        out.setdefault(r["source"], set()).add(r["id"])
    return out


def assert_no_duplicates(rs: list[dict]) -> None:
    ids = [r["id"] for r in rs]
    assert len(ids) == len(set(ids)), "duplicate ids"


def test_unchanged_corpus_embeds_nothing_and_leaves_the_table_alone(home, pages):
    first = ingest(home, pages)
    assert first.metrics["documents_added"] == 6 and first.metrics["chunks_embedded"] > 0
    before, version = sorted(r["id"] for r in rows(home)), table_version(home)

    again = ingest(home, pages)
    m = again.metrics
    assert m["chunks_embedded"] == 0
    assert m["documents_skipped"] == 6
    assert m["documents_added"] == m["documents_replaced"] == m["documents_removed"] == 0
    assert m["chunks_indexed"] == 0 and m["commits"] == 0
    assert sorted(r["id"] for r in rows(home)) == before
    assert table_version(home) == version, "an unchanged corpus must not write to the table"


def test_editing_one_page_reembeds_only_that_page(home, pages, tmp_path):
    from kbingest.pipeline.paths import Home

    ingest(home, pages)
    old = rows(home)
    page = (pages / "security" / "principles.md").resolve()
    old_by_src = by_source(old)
    old_ids = old_by_src[str(page)]
    page.write_text(page.read_text() + "\n\n## Added section\n\nA new paragraph about key rotation and audit.\n")

    snap = ingest(home, pages)
    new = rows(home)
    assert_no_duplicates(new)
    new_by_src = by_source(new)
    m = snap.metrics
    assert m["documents_replaced"] == 1 and m["documents_skipped"] == 5 and m["documents_added"] == 0
    n_page = len(new_by_src[str(page)])
    assert m["chunks_indexed"] == n_page
    # only that page's chunks are embedded; those whose text the edit left alone may keep their vectors
    assert 1 <= m["chunks_embedded"] <= n_page
    assert m["chunks_embedded"] + m.get("chunks_reused", 0) == n_page
    assert not (old_ids & {r["id"] for r in new}), "old chunks of the edited page remain"
    for src, ids_ in old_by_src.items():
        if src != str(page):
            assert new_by_src[src] == ids_, f"{src} changed though it was not edited"
    assert len(new) == len(old) - len(old_ids) + len(new_by_src[str(page)])
    assert len({r["doc_version"] for r in new if r["source"] == str(page)}) == 1
    # exactly what a clean run over the edited pages gives: same ids, same vectors
    clean = Home(tmp_path / "clean-home").ensure()
    ingest(clean, pages)
    assert vectors(home) == vectors(clean)


def test_deleting_one_page_removes_its_chunks(home, pages):
    ingest(home, pages)
    old = rows(home)
    page = (pages / "reliability" / "checklist.md").resolve()
    gone = by_source(old)[str(page)]
    page.unlink()

    snap = ingest(home, pages)
    m = snap.metrics
    assert m["documents_removed"] == 1 and m["documents_skipped"] == 5
    assert m["chunks_embedded"] == 0
    new = rows(home)
    assert_no_duplicates(new)
    assert str(page) not in by_source(new)
    assert {r["id"] for r in new} == {r["id"] for r in old} - gone


def test_settings_change_reindexes_everything_without_leftovers(home, pages, tmp_path):
    from kbingest.pipeline.paths import Home

    ingest(home, pages)
    old = rows(home)
    snap = ingest(home, pages, max_tokens=120, overlap_tokens=16)
    m = snap.metrics
    assert m["documents_replaced"] == 6 and m["documents_skipped"] == 0
    new = rows(home)
    assert_no_duplicates(new)
    assert len(new) > len(old)  # smaller chunks: more of them
    # every chunk is embedded again, save those whose text is unchanged (same model: same vector)
    assert m["chunks_embedded"] + m.get("chunks_reused", 0) == m["chunks_indexed"] == len(new)
    assert m["chunks_embedded"] > len(new) // 2
    assert not ({r["id"] for r in old} & {r["id"] for r in new}), "rows of the old settings remain"
    assert not ({r["doc_version"] for r in old} & {r["doc_version"] for r in new})
    # exactly what a clean run with the new settings gives
    clean = Home(tmp_path / "clean-home").ensure()
    ingest(clean, pages, max_tokens=120, overlap_tokens=16)
    assert {r["id"] for r in new} == {r["id"] for r in rows(clean)}
    assert vectors(home) == vectors(clean)


def _fragments_during(home, src, monkeypatch, **cfg) -> tuple[list[int], int, int]:
    """Fragment counts right after every commit, the commits made, and the fragments at the end."""
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    seen: list[int] = []
    orig = KnowledgeBase.write

    def write(self, rows_, doc_ids, **kw):
        orig(self, rows_, doc_ids, **kw)
        seen.append(self.fragments())

    monkeypatch.setattr(KnowledgeBase, "write", write)
    snap = ingest(home, src, **cfg)
    monkeypatch.setattr(KnowledgeBase, "write", orig)
    return seen, snap.metrics["commits"], KnowledgeBase(Home(home.root), KB).fragments()


def test_fragments_stay_bounded_over_many_commits(home, tmp_path, monkeypatch):
    from kbingest.pipeline.paths import Home

    rel = sorted(str(p.relative_to(WAF)) for p in WAF.rglob("*.md"))[:30]
    src = copy_pages(tmp_path / "src", rel)
    every = 4
    seen, commits, end = _fragments_during(home, src, monkeypatch, commit_rows=1, optimize_every=every)
    assert commits >= 6 * every, commits  # one commit per document
    assert max(seen) <= every + 2, f"fragments grew to {max(seen)} with optimize every {every} commits: {seen}"
    assert end <= 2

    # the same run never optimizing mid-run: the bound above is one that can be broken
    other = Home(tmp_path / "other").ensure()
    seen2, _, _ = _fragments_during(other, src, monkeypatch, commit_rows=1, optimize_every=1000)
    assert max(seen2) > every + 2, seen2

    # and a second pass after edits to every page keeps the bound too (updates and deletes)
    for p in src.rglob("*.md"):
        p.write_text(p.read_text() + "\n\nEdited.\n")
    seen3, commits3, end3 = _fragments_during(home, src, monkeypatch, commit_rows=1, optimize_every=every)
    assert commits3 >= 6 * every
    assert max(seen3) <= every + 2, seen3
    assert end3 <= 2


def test_large_tables_are_optimized_in_a_child_process(home, pages, monkeypatch):
    """From CHILD_ROWS rows on, compaction runs in a child (its memory leaves with it): the table is
    compacted all the same, the job sees the new version, and the child's peak RSS is reported."""
    from kbingest.pipeline.kb import compaction

    monkeypatch.setattr(compaction, "CHILD_ROWS", 1)
    snap = ingest(home, pages, commit_rows=16)  # asserts it completed
    m = snap.metrics
    assert m["commits"] > 2 and m["optimizes"] >= 1 and m.get("optimize_errors") is None
    assert m["optimize_peak_rss_mib"] > 50  # a real child that imported pylance (its own peak, not ours)
    from kbingest.pipeline.kb.table import KnowledgeBase

    kb = KnowledgeBase(home, KB)
    assert kb.fragments() <= 2
    ids = kb.ids()
    assert len(ids) == len(set(ids)) == m["chunks_indexed"]
    # the next job writes on top of the child's version
    (pages / "reliability" / "principles.md").write_text("# Changed\n\nall new text\n")
    again = ingest(home, pages, commit_rows=16)
    assert again.metrics["documents_replaced"] == 1
    assert len(KnowledgeBase(home, KB).ids()) == len(set(KnowledgeBase(home, KB).ids()))
