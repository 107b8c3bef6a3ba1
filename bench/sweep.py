"""The sweep figure."""

from __future__ import annotations

from typing import Any

from bench.common import Row, default_config, log, median, run_inproc
from bench.context import Ctx

# ---- tuning: batch size and threads -----------------------------------------------------------


def fig_sweep(ctx: Ctx) -> list[Row]:
    n_pages = ctx.pages(None, 4)
    corpus = ctx.ws.subset(n_pages)
    cfg = default_config()
    ref = (cfg["batch_size"], cfg["threads"])
    configs = [(1, None), (2, None), (4, None), (8, None), (16, None), (32, None), (ref[0], 1), (ref[0], 2)]
    if ref not in configs:
        configs.insert(0, ref)
    n = 64 if ctx.quick else 192
    reps = ctx.reps(3, 1)
    res: dict[tuple, list[dict[str, Any]]] = {c: [] for c in configs}
    for rep in range(reps):
        order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
        log(f"tuning sweep, repetition {rep + 1}/{reps}: {n} chunk texts per configuration")
        for bs, th in order:
            d, pr = run_inproc(
                ctx.ws, "embed_sweep", {"corpus": str(corpus), "n": n, "batch_size": bs, "threads": th}, timeout=1800
            )
            d["rss"] = pr.maxrss_mib
            res[(bs, th)].append(d)
            log(
                f"  batch {bs:3d} threads {th or 'default'}: {d['chunks_per_s']:.2f} chunks/s, "
                f"peak RSS {pr.maxrss_mib:.0f} MiB"
            )
    rows = []
    for bs, th in configs:
        ratios = [res[(bs, th)][i]["chunks_per_s"] / res[ref][i]["chunks_per_s"] for i in range(reps)]
        tag = f"b{bs}-t{th or 'def'}"
        rows.append(
            Row(
                f"8.{configs.index((bs, th)) + 1}",
                f"tuning: batch {bs}, threads {th or 'default'}: chunks/s relative to the default "
                f"(batch {ref[0]}, threads {ref[1] or 'default'})",
                unit="x",
                values=ratios,
                note=f"{tag}: {median([d['chunks_per_s'] for d in res[(bs, th)]]):.2f} chunks/s, peak RSS "
                f"{median([d['rss'] for d in res[(bs, th)]]):.0f} MiB (model alone, no lancedb), "
                f"{n} texts, raw FastEmbedder per process, order rotated per repetition",
            )
        )
    return rows
