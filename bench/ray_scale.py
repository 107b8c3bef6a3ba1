"""Ray executor figures (issue 16), one run:

1. the Ray executor on one machine against the thread executor, same corpus, real model,
   alternated A B A B, medians: throughput ratio (goal >= 0.8);
2. one node against two local nodes: rows/s per node;
3. the driver's costs per wave: staging (fragment write + staging commit + read back) and the
   merge_insert commit, rows/s.

    python -m bench.ray_scale [--pages N] [--reps R]     (results: bench/out/ray_scale.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.ray_cluster import start_nodes, stop_nodes

REPO = Path(__file__).resolve().parents[1]
WAF = REPO / "tests" / "data" / "waf" / "well-architected"
OUT = REPO / "bench" / "out" / "ray_scale.json"


def corpus(dest: Path, n: int) -> Path:
    for p in sorted(WAF.rglob("*.md"))[:n]:
        out = dest / p.relative_to(WAF)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)
    return dest


def run(src: Path, home: Path, *opts: str, env: dict | None = None) -> dict:
    cmd = [sys.executable, "-m", "kbingest", "--home", str(home), "ingest", str(src), "--kb", "b", "--batch", *opts]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=dict(os.environ, **(env or {})))
    wall = time.monotonic() - t0
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(opts)}: exit {res.returncode}: {res.stderr[-800:]}")
    final = json.loads(lines[-1])
    start = datetime.fromisoformat(final["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(final["completed_at"].replace("Z", "+00:00"))
    job_s = (end - start).total_seconds()
    rows = final["metrics"]["chunks_indexed"]
    shutil.rmtree(home, ignore_errors=True)
    return {
        "rows": rows,
        "job_s": job_s,
        "wall_s": wall,
        "rows_per_s": rows / job_s,
        "by_node": final["metrics"].get("ray_rows_by_node") or {},
        "waves": final["metrics"].get("ray_waves"),
    }


def driver_costs(rows: int = 2000, table_rows: int = 20000, dim: int = 384) -> dict:
    """Staging and commit on the driver for one wave of `rows` rows, into a table of `table_rows`."""
    import numpy as np

    from kbingest.pipeline.executors.ray import _commit_staging
    from kbingest.pipeline.executors.ray_workers import write_fragments
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    rng = np.random.default_rng(0)

    def make(n: int, start: int) -> list[dict]:
        v = rng.standard_normal((n, dim)).astype("float32")
        return [
            {
                "id": f"{i:016x}",
                "text": "x" * 800,
                "vector": v[i - start].tolist(),
                "source": f"/d/{i // 30}.md",
                "heading_path": "a > b",
                "doc_id": f"{i // 30:016x}",
                "doc_version": "v",
                "position": i % 30,
                "title": "t",
                "model": "m",
            }
            for i in range(start, start + n)
        ]

    tmp = Path(tempfile.mkdtemp(prefix="kbb-"))
    try:
        kb = KnowledgeBase(Home(tmp).ensure(), "b")
        kb.ensure(dim)
        base = make(table_rows, 0)
        kb.write(base, {r["doc_id"] for r in base}, replacing=[])
        wave = make(rows, table_rows)
        uri = kb.staging_uri("bench") + "/rows.lance"
        t0 = time.perf_counter()
        frags = write_fragments(wave, uri, dim)
        t1 = time.perf_counter()
        staged = _commit_staging(uri, frags, dim).to_pylist()
        t2 = time.perf_counter()
        kb.write(staged, {r["doc_id"] for r in staged}, replacing=[])
        t3 = time.perf_counter()
        return {
            "wave_rows": rows,
            "table_rows": table_rows,
            "fragment_write_rows_per_s": rows / (t1 - t0),
            "staging_commit_read_s": t2 - t1,
            "merge_insert_s": t3 - t2,
            "driver_rows_per_s": rows / (t3 - t1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--embedder", default="fastembed")
    ap.add_argument("--two-nodes-only", action="store_true", help="skip the threads/ray comparison")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kbb-"))
    src = corpus(tmp / "docs", args.pages)
    common = ["--embedder", args.embedder]
    out: dict = {"pages": args.pages, "reps": args.reps, "embedder": args.embedder}
    try:
        address, procs, env = (None, [], {}) if args.two_nodes_only else start_nodes(str(tmp / "r1"), nodes=1, cpus=3)
        try:
            threads, rays = [], []
            for i in range(0 if args.two_nodes_only else args.reps):  # A B A B
                threads.append(run(src, tmp / f"t{i}", *common))
                rays.append(
                    run(
                        src,
                        tmp / f"r{i}",
                        *common,
                        "--executor",
                        "ray",
                        "--ray-address",
                        address,
                        "--ray-embed-actors",
                        "2",
                        env=env,
                    )
                )
                print("threads", threads[-1], "\nray", rays[-1], flush=True)
        finally:
            stop_nodes(procs)
        if threads:
            med_t = statistics.median(r["rows_per_s"] for r in threads)
            med_r = statistics.median(r["rows_per_s"] for r in rays)
            out.update(threads=threads, ray_one_node=rays, ratio=med_r / med_t, one_node_rows_per_s=med_r)
        address, procs, env = start_nodes(str(tmp / "r2"), nodes=2, cpus=2)
        try:
            two = run(
                src,
                tmp / "two",
                *common,
                "--executor",
                "ray",
                "--ray-address",
                address,
                "--ray-embed-actors",
                "2",
                env=env,
            )
        finally:
            stop_nodes(procs)
        out.update(
            ray_two_nodes=two, two_nodes_rows_per_s_per_node={n: r / two["job_s"] for n, r in two["by_node"].items()}
        )
        print("two nodes", two, flush=True)
        out["driver"] = driver_costs()
        print("driver", out["driver"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(
        json.dumps(
            {k: out.get(k) for k in ("ratio", "one_node_rows_per_s", "two_nodes_rows_per_s_per_node", "driver")},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
