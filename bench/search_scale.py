"""Search at scale: a knowledge base of N synthetic rows (384-d, clustered so that neighbours mean
something), searched through KnowledgeBase.search as `kbingest search` does, with no index (exact
flat scan) and with each ANN kind of pipeline/kb/search_indexes.py: p50 latency, recall@10 against exact
search (numpy ground truth), index build time; then the full-text index's build time and a text
query's p50.

    python -m bench.search_scale [--rows 1000000] [--queries 50] [--kinds IVF_PQ,IVF_HNSW_SQ] [--no-sweep]
    python -m bench --only search_scale      # the suite's figure: the chosen kind and settings only

Rows are written in batches (memory stays at a batch); the ground truth is kept as a running top-10
per query over the same batches. Prints one JSON object per measurement and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench.common import Row, log
from bench.context import Ctx

DIM = 384
K = 10
BATCH = 50_000
CLUSTERS = 1000
NOISE = 1.0  # per-dimension noise around a cluster centre of unit variance: in-cluster cosine ~0.5
VOCAB = 5000
SETTINGS = {  # query settings swept for each kind: (nprobes, refine_factor, ef)
    "IVF_PQ": [(20, None, None), (20, 5, None), (20, 10, None), (40, 10, None)],
    "IVF_HNSW_SQ": [(10, None, 32), (20, None, 64), (40, None, 128)],
}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Synthetic:
    """Deterministic clustered vectors: batch i is the same whoever asks for it."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed
        self.centres = np.random.default_rng(seed).normal(size=(CLUSTERS, DIM)).astype(np.float32)

    def batch(self, i: int, n: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        c = rng.integers(0, CLUSTERS, n)
        return _unit(self.centres[c] + NOISE * rng.normal(size=(n, DIM)).astype(np.float32))

    def queries(self, n: int) -> np.ndarray:
        return self.batch(10**9, n)


def _rows(vecs: np.ndarray, start: int, rng: np.random.Generator):
    import pyarrow as pa

    from kbingest.pipeline.kb.table import schema

    n = len(vecs)
    words = rng.integers(0, VOCAB, size=(n, 12))
    text = [" ".join(f"w{w}" for w in ws) for ws in words]
    ids = [f"{i:09d}" for i in range(start, start + n)]
    return pa.table(
        {
            "id": ids,
            "text": text,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), DIM),
            "source": pa.array(["/synthetic"] * n),
            "heading_path": pa.array([""] * n),
            "doc_id": ids,
            "doc_version": pa.array(["v"] * n),
            "position": pa.array(np.zeros(n, np.int32)),
            "title": pa.array([""] * n),
            "model": pa.array(["synthetic"] * n),
        },
        schema=schema(DIM),
    )


def build(kb, rows: int, data: Synthetic, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Write ROWS rows in batches; return the exact top-K row numbers per query and the seconds."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.zeros((len(queries), K), np.int64)
    kb.ensure(DIM)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, rows, BATCH)):
        n = min(BATCH, rows - start)
        v = data.batch(b, n)
        kb._table.add(_rows(v, start, rng))
        s = queries @ v.T
        top = np.argpartition(-s, K, axis=1)[:, :K]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + start], 1)
        keep = np.argsort(-cand_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i, time.perf_counter() - t0


def measure(kb, queries: np.ndarray, truth: Optional[np.ndarray], reps: int) -> dict[str, Any]:
    """p50/p90 latency (ms) of KnowledgeBase.search in vector mode over the queries, and recall@K."""
    for q in queries[:3]:
        kb.search(q, K, mode="vector")  # warm the caches (index, file handles)
    lat, cpu, hits = [], [], []
    for q in queries[:reps]:
        t0, c0 = time.perf_counter(), time.process_time()
        res = kb.search(q, K, mode="vector")
        lat.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)  # every thread's CPU: what a busy machine cannot inflate
        hits.append([int(h.id) for h in res])
    out = {
        "p50_ms": round(statistics.median(lat), 1),
        "p90_ms": round(float(np.percentile(lat, 90)), 1),
        "cpu_p50_ms": round(statistics.median(cpu), 1),
        "queries": len(lat),
    }
    if truth is not None:
        rec = [len(set(h) & set(t)) / K for h, t in zip(hits, truth[:reps].tolist())]
        out["recall_at_10"] = round(float(np.mean(rec)), 4)
    return out


def run(
    rows: int, n_queries: int, kinds: list[str], root: Path, flat_reps: int, sweep: bool = True
) -> list[dict[str, Any]]:
    """Every measurement, as dicts; `sweep` tries each kind's SETTINGS, else only the settings the
    search uses (search_indexes.QUERY)."""
    from kbingest.pipeline.kb import search_indexes
    from kbingest.pipeline.kb.location import KbLocation
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    home = Home(root / "home").ensure()
    kb = KnowledgeBase(home, "scale", KbLocation(str(root / "db")), ann_min_rows=10**12)
    data = Synthetic()
    queries = data.queries(n_queries)
    out: list[dict[str, Any]] = []

    def emit(d: dict[str, Any]) -> None:
        d = dict(rows=rows, **d)
        out.append(d)
        print(json.dumps(d), flush=True)

    truth, write_s = build(kb, rows, data, queries)
    t0 = time.perf_counter()
    kb._table.optimize()
    emit({"what": "write", "seconds": round(write_s, 1), "optimize_s": round(time.perf_counter() - t0, 1)})
    emit({"what": "flat (no index)", **measure(kb, queries, truth, flat_reps)})
    for kind in kinds:
        t0 = time.perf_counter()
        kb._table.create_index(
            "vector",
            config=search_indexes.ann_config(kind, rows, DIM),
            replace=True,
            name=f"{search_indexes.ANN_NAME}_{rows}",
        )
        build_s = time.perf_counter() - t0
        saved = dict(search_indexes.QUERY)
        q = saved[kind]
        try:
            for nprobes, refine, ef in SETTINGS[kind] if sweep else [(q.nprobes, q.refine_factor, q.ef)]:
                search_indexes.QUERY[kind] = search_indexes.QuerySettings(nprobes=nprobes, refine_factor=refine, ef=ef)
                emit(
                    {
                        "what": kind,
                        "build_s": round(build_s, 1),
                        "nprobes": nprobes,
                        "refine_factor": refine,
                        "ef": ef,
                        **measure(kb, queries, truth, n_queries),
                    }
                )
        finally:
            search_indexes.QUERY.clear()
            search_indexes.QUERY.update(saved)
        kb._table.drop_index(f"{search_indexes.ANN_NAME}_{rows}")
    t0 = time.perf_counter()
    rep = search_indexes.maintain(kb._table, min_rows=10**12)  # the full-text index only
    fts_s = time.perf_counter() - t0
    lat = []
    for i in range(n_queries):
        t1 = time.perf_counter()
        kb.search(None, K, mode="text", text=f"w{i * 37 % VOCAB} w{i * 91 % VOCAB}")
        lat.append((time.perf_counter() - t1) * 1000)
    emit(
        {
            "what": "full-text",
            "build_s": round(fts_s, 1),
            "built": bool(rep),
            "p50_ms": round(statistics.median(lat), 1),
        }
    )
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| index | query settings | build s | p50 ms | p90 ms | CPU p50 ms | recall@10 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r["what"] == "write":
            continue
        sets = ", ".join(f"{k}={r[k]}" for k in ("nprobes", "refine_factor", "ef") if r.get(k) is not None)
        lines.append(
            f"| {r['what']} | {sets or '-'} | {r.get('build_s', '-')} | {r.get('p50_ms', '-')} | "
            f"{r.get('p90_ms', '-')} | {r.get('cpu_p50_ms', '-')} | {r.get('recall_at_10', '-')} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.search_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--flat-queries", type=int, default=20, help="queries timed without an index (slow)")
    ap.add_argument("--kinds", default=",".join(("IVF_PQ", "IVF_HNSW_SQ")))
    ap.add_argument("--no-sweep", action="store_true", help="only the query settings the search uses")
    ap.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (default: a temp folder, removed)")
    a = ap.parse_args(argv)
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="kbingest-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        res = run(a.rows, a.queries, [k for k in a.kinds.split(",") if k], root, a.flat_queries, sweep=not a.no_sweep)
        print(table(res))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


# ---- search at scale (issue 16): synthetic rows, with and without the ANN index ----------------


def fig_search_scale(ctx: Ctx) -> list[Row]:
    """Search at 1M synthetic rows: p50 and recall@10 with the ANN index, flat p50, build times."""
    from kbingest.pipeline.kb import search_indexes

    rows = 50_000 if ctx.quick else 1_000_000
    kind = search_indexes.ANN_KIND
    root = ctx.ws.root / "search-scale"
    log(f"  {rows} synthetic rows, flat scan then {kind} (bench/search_scale.py)")
    res = run(rows, 50, [kind], root, flat_reps=15, sweep=False)
    flat = next(r for r in res if r["what"].startswith("flat"))
    ann = next(r for r in res if r["what"] == kind)
    fts = next(r for r in res if r["what"] == "full-text")
    n = f"{rows:,} rows, 384-d clustered, {ann['queries']} queries"
    return [
        Row(
            "s.ann_p50",
            f"search p50 with the {kind} index ({n})",
            "ms",
            [ann["p50_ms"]],
            "<",
            50.0,
            "< 50 ms",
            note=f"p90 {ann['p90_ms']} ms; flat scan p50 {flat['p50_ms']} ms",
        ),
        Row(
            "s.ann_recall",
            f"recall@10 with the {kind} index against exact search ({n})",
            "",
            [ann["recall_at_10"]],
            ">=",
            0.95,
            ">= 0.95",
        ),
        Row("s.flat_p50", f"search p50 without an index, exact flat scan ({rows:,} rows)", "ms", [flat["p50_ms"]]),
        Row("s.ann_build", f"{kind} build time ({rows:,} rows, 2 cores)", "s", [ann["build_s"]]),
        Row(
            "s.fts_build",
            f"full-text index build time ({rows:,} rows)",
            "s",
            [fts["build_s"]],
            note=f"text query p50 {fts['p50_ms']} ms",
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
