"""Search that stays fast (issue 16, item 5): the full-text index always, the ANN index past its row
threshold, rows written since the last build still found (LanceDB scans them flat), the three
search modes, and `--mode vector` unchanged below the threshold. Real LanceDB, small tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

KB = "k"
DIM = 32


def _rows(start: int, n: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng((seed, start))
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [
        {
            "id": f"{i:06d}",
            "text": f"chunk number {i} about topic{i % 17} and word{i}",
            "vector": v[j].tolist(),
            "source": f"/docs/d{i}.md",
            "heading_path": f"H{i}",
            "doc_id": f"{i:06d}",
            "doc_version": "v",
            "position": 0,
            "title": "",
            "model": "fake",
        }
        for j, i in enumerate(range(start, start + n))
    ]
    return rows, v


def _kb(home, min_rows: int):
    from kbingest.pipeline.kb.table import KnowledgeBase

    kb = KnowledgeBase(home, KB, ann_min_rows=min_rows)
    kb.ensure(DIM)
    return kb


def _write(kb, start: int, n: int) -> np.ndarray:
    rows, v = _rows(start, n)
    kb.write(rows, [r["doc_id"] for r in rows], replacing=[])
    return v


def test_below_the_threshold_only_the_full_text_index_and_vector_search_is_exact(home):
    kb = _kb(home, min_rows=10_000)
    v = _write(kb, 0, 400)
    report = kb.optimize()
    assert "fts_built_s" in report["indexes"] and "ann_built_s" not in report["indexes"]
    st = kb.index_state()
    assert st.has_fts and st.ann_trained_rows is None
    q = v[7] + 0.3 * v[8]
    hits = kb.search(q, 10, mode="vector")
    # exactly what the search before this change returned: the same query, the same scores
    ref = (
        kb._table.search(np.asarray(q, dtype=np.float32), vector_column_name="vector")
        .distance_type("cosine")
        .limit(10)
        .select(["id"])
        .to_list()
    )
    assert [h.id for h in hits] == [r["id"] for r in ref]
    assert [h.score for h in hits] == [round(1.0 - float(r["_distance"]), 4) for r in ref]
    # and that is the exact cosine ranking
    exact = np.argsort(-(v @ (q / np.linalg.norm(q))))[:10]
    assert [int(h.id) for h in hits] == exact.tolist()


def test_past_the_threshold_an_ann_index_and_new_rows_stay_searchable(home):
    kb = _kb(home, min_rows=500)
    _write(kb, 0, 600)
    report = kb.optimize()["indexes"]
    assert report["ann_kind"] == "IVF_HNSW_SQ" and report["ann_rows"] == 600
    st = kb.index_state()
    assert st.has_fts and st.ann_trained_rows == 600
    # rows written after the build: in neither index until the next optimize, found all the same
    v_new = _write(kb, 600, 25)
    stats = kb._table.index_stats(st.ann_name)
    assert stats.num_unindexed_rows == 25
    for j in (0, 11, 24):
        assert kb.search(v_new[j], 5, mode="vector")[0].id == f"{600 + j:06d}"
    assert kb.search(None, 3, mode="text", text="word611")[0].id == "000611"
    assert kb.search(v_new[3], 5, mode="hybrid", text="word603")[0].id == "000603"
    # the next optimize folds them into the index without retraining
    again = kb.optimize()["indexes"]
    assert "ann_built_s" not in again
    assert kb._table.index_stats(st.ann_name).num_unindexed_rows == 0


def test_the_ann_index_is_retrained_when_the_table_has_grown(home):
    from kbingest.pipeline.kb import search_indexes

    kb = _kb(home, min_rows=300)
    _write(kb, 0, 300)
    kb.optimize()
    assert kb.index_state().ann_trained_rows == 300
    _write(kb, 300, int(300 * (search_indexes.RETRAIN_GROWTH - 1)) + 10)
    rep = kb.optimize()["indexes"]
    st = kb.index_state()
    assert rep["ann_rows"] == st.ann_trained_rows == kb.count()
    assert [i.name for i in kb._table.list_indices() if list(i.columns) == ["vector"]] == [st.ann_name]


def test_modes_text_and_hybrid(home):
    from kbingest.pipeline.kb.table import TableError

    kb = _kb(home, min_rows=10_000)
    v = _write(kb, 0, 200)
    # before any full-text index: text says how to get one, hybrid is its vector half
    with pytest.raises(TableError, match="no full-text index yet"):
        kb.search(None, 3, mode="text", text="word5")
    assert [h.id for h in kb.search(v[5], 4, mode="hybrid", text="word5")] == [
        h.id for h in kb.search(v[5], 4, mode="vector")
    ]
    kb.optimize()
    text = kb.search(None, 5, mode="text", text="word42")
    assert text[0].id == "000042" and text[0].score > 0
    # hybrid fuses both: a row first in one list and absent from the other still ranks high
    hyb = kb.search(v[9], 5, mode="hybrid", text="word42")
    assert {"000009", "000042"} <= {h.id for h in hyb[:2]}
    with pytest.raises(ValueError, match="unknown search mode"):
        kb.search(v[0], 3, mode="fuzzy")


@pytest.mark.parametrize("query", ['"unbalanced', "a AND (b OR", "title:x ~2 ^3 *", "\x00\x1b[31m", "ü" * 5000, ""])
def test_hostile_text_queries_are_bounded(home, query):
    kb = _kb(home, min_rows=10_000)
    _write(kb, 0, 50)
    kb.optimize()
    hits = kb.search(None, 3, mode="text", text=query)
    assert isinstance(hits, list)


def test_cli_search_modes(home, pages):
    r = run_cli("ingest", str(pages), "--kb", KB, "--batch", "--embedder", "fake", home=home.root)
    assert r.returncode == 0, r.stderr
    out = {}
    for mode in ("vector", "text", "hybrid"):
        s = run_cli(
            "search", "--kb", KB, "recovery point objective", "--mode", mode, "--json", "-k", "3", home=home.root
        )
        assert s.returncode == 0, s.stderr
        out[mode] = json.loads(s.stdout)
        assert len(out[mode]) == 3
    d = run_cli("search", "--kb", KB, "recovery point objective", "--json", "-k", "3", home=home.root)
    assert json.loads(d.stdout) == out["hybrid"]  # the default
    bad = run_cli("search", "--kb", KB, "x", "--mode", "fuzzy", home=home.root)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
