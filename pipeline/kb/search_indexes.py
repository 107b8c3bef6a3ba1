"""The indexes that keep search fast as a knowledge base grows, and the query settings that use them.

- A full-text (inverted) index on `text`, whatever the size: text and hybrid search need one, and it
  costs milliseconds on a small table.
- An ANN vector index on `vector`, cosine, from `min_rows` rows on (JobConfig.ann_min_rows): below
  it an exact flat scan is fast enough and exact. Retrained when the table has grown RETRAIN_GROWTH
  times past the size it was trained on (its partitions would otherwise grow with the table).

Both are built off the hot path: by `maintain()`, which runs after compaction (pipeline/kb/compaction.py,
in the child process for a large table). LanceDB's own optimize() adds rows written since to both
indexes without retraining, and rows not yet in an index are still found: LanceDB scans them flat
and merges them into the results.

The kind and the query settings (ANN_KIND, QUERY) were chosen by measured recall@10 against exact
search at 1 million rows (docs/scale-out.md, "Search at scale"; python -m bench.search_scale).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

ANN_KINDS = ("IVF_PQ", "IVF_HNSW_SQ")
ANN_KIND = "IVF_HNSW_SQ"
RETRAIN_GROWTH = 4.0  # retrain the ANN index once the table holds 4x the rows it was trained on
ANN_NAME = "vector_ann"  # + "_<rows trained on>": the index's name records its training size
FTS_NAME = "text_fts"
_ANN_RE = re.compile(r"^vector_ann_(\d+)$")


@dataclass(frozen=True)
class QuerySettings:
    """How a vector query uses an ANN index (ignored by a flat scan)."""

    nprobes: int = 20  # IVF partitions searched
    refine_factor: Optional[int] = None  # re-rank k*f candidates on the full vectors (PQ's lost precision)
    ef: Optional[int] = None  # HNSW candidates (LanceDB's default: 1.5 * k)


QUERY = {
    "IVF_PQ": QuerySettings(nprobes=20, refine_factor=10),
    "IVF_HNSW_SQ": QuerySettings(nprobes=20, ef=64),
}


def ann_config(kind: str, rows: int, dim: int):
    """The LanceDB index config of an ANN index of this kind for a table of `rows` vectors of `dim`."""
    from lancedb.index import HnswSq, IvfPq

    if kind == "IVF_PQ":
        sub = next(s for s in (dim // 8, dim // 4, dim // 2, dim, 1) if s and dim % s == 0)  # 8 dims a code
        return IvfPq(distance_type="cosine", num_partitions=partitions(rows), num_sub_vectors=sub)
    if kind == "IVF_HNSW_SQ":
        return HnswSq(distance_type="cosine", num_partitions=max(1, partitions(rows) // 8))  # a graph per partition
    raise ValueError(f"unknown ANN index kind {kind!r}: one of {', '.join(ANN_KINDS)}")


def partitions(rows: int) -> int:
    """IVF partitions: about sqrt(rows), LanceDB's own rule, at least 1."""
    return max(1, int(math.sqrt(max(rows, 1))))


@dataclass(frozen=True)
class IndexState:
    ann_trained_rows: Optional[int]  # None: no ANN index
    ann_name: Optional[str]
    ann_kind: Optional[str]  # IVF_PQ, IVF_HNSW_SQ (or LanceDB's name of another kind)
    has_fts: bool


def state(table) -> IndexState:
    """The table's search indexes, from one listing."""
    trained, name, kind, fts = None, None, None, False
    for ix in table.list_indices():
        cols = list(ix.columns)
        if cols == ["vector"]:
            m = _ANN_RE.match(ix.name)
            trained, name = (int(m.group(1)) if m else 0), ix.name
            t = str(ix.index_type).upper()
            kind = "IVF_HNSW_SQ" if "HNSW" in t else "IVF_PQ" if "PQ" in t else t
        elif cols == ["text"] and str(ix.index_type).upper() in ("FTS", "INVERTED"):
            fts = True
    return IndexState(trained, name, kind, fts)


def _wants_fts(st: IndexState, rows: int) -> bool:
    return not st.has_fts and rows > 0


def _wants_ann(st: IndexState, rows: int, min_rows: int) -> bool:
    grown = st.ann_trained_rows is not None and rows >= RETRAIN_GROWTH * max(st.ann_trained_rows, 1)
    return rows >= min_rows and (st.ann_trained_rows is None or grown)


def wanted(table, min_rows: int) -> bool:
    """Whether `maintain` would build anything on this table now (an index missing, or outgrown)."""
    st, rows = state(table), table.count_rows()
    return _wants_fts(st, rows) or _wants_ann(st, rows, min_rows)


def maintain(table, min_rows: int, kind: str = ANN_KIND) -> dict[str, Any]:
    """Build what is missing: the full-text index, and the ANN index once the table holds `min_rows`
    rows (or retrain it past RETRAIN_GROWTH). Returns what was done and how long it took."""
    from lancedb.index import FTS

    report: dict[str, Any] = {}
    st = state(table)
    rows = table.count_rows()
    if _wants_fts(st, rows):
        t0 = time.perf_counter()
        table.create_index("text", config=FTS(), replace=True, name=FTS_NAME)
        report["fts_built_s"] = round(time.perf_counter() - t0, 3)
    if _wants_ann(st, rows, min_rows):
        dim = table.schema.field("vector").type.list_size
        t0 = time.perf_counter()
        table.create_index("vector", config=ann_config(kind, rows, dim), replace=True, name=f"{ANN_NAME}_{rows}")
        if (
            st.ann_name
            and st.ann_name != f"{ANN_NAME}_{rows}"
            and st.ann_name in {i.name for i in table.list_indices()}
        ):
            table.drop_index(st.ann_name)
        report.update(ann_built_s=round(time.perf_counter() - t0, 3), ann_kind=kind, ann_rows=rows)
    return report


def tune(query, kind: Optional[str]):
    """Apply the query settings of an ANN index of this kind (None: no index, nothing to tune)."""
    s = QUERY.get(kind or "")
    if s is None:
        return query
    query = query.nprobes(s.nprobes)
    if s.refine_factor:
        query = query.refine_factor(s.refine_factor)
    if s.ef:
        query = query.ef(s.ef)
    return query
