"""The pause figure: how fast pause and resume answer."""

from __future__ import annotations

from typing import Any

from bench.common import Row, default_config, log, run_inproc
from bench.context import Ctx, fj

# ---- figure 6: pause latency ------------------------------------------------------------------


def fig_pause(ctx: Ctx) -> list[Row]:
    n_pages = ctx.pages(40, 8)
    docs = ctx.ws.subset(n_pages)
    trials = ctx.reps(7, 3)
    cfg = default_config()
    variants = [("default", cfg["batch_size"])]
    if not ctx.quick or ctx.reps_opt:
        variants.append(("b16", 16))
    out: dict[str, dict[str, Any]] = {}
    for name, bs in variants:
        home = ctx.ws.home("pause")
        log(
            f"figure 6 ({name}, batch {bs}): {trials} pauses at random instants of a real-model job "
            f"({ctx.corpus_label(n_pages)})"
        )
        data, _ = run_inproc(
            ctx.ws,
            "pause_latency",
            {
                "home": str(home),
                "docs": str(docs),
                "trials": trials,
                "batch_size": bs,
                "threads": cfg["threads"],
                "config": {"batch_size": bs},
                "min_wait": 0.2,
                "max_wait": 6.0,
                "seed": 7,
            },
            timeout=3600,
        )
        for t in data["trials"]:
            log(
                f"  paused {t['wait_s']:.2f} s into embedding: run() returned after {t['latency_s']:.2f} s, "
                f"last write {t['last_write_after_s']:.2f} s after the request, status {t['status']}, "
                f"table version stable: {t['version_stable']}, workers ended {t['workers_done_after_s']}"
            )
        ctx.ws.drop(home)
        out[name] = data
    data = out["default"]
    ts = data["trials"]
    bad = [t for t in ts if t["status"] != "paused" or not t["version_stable"]]
    emb_tail = [t["workers_done_after_s"].get("embedder") for t in ts]
    rows = [
        Row(
            "6.1",
            "pause latency: pause() to job.run() returning (no more LanceDB writes)",
            unit="s",
            values=[t["latency_s"] for t in ts],
            op="<",
            target=2.0,
            goal="< 2 s",
            note=f"in-process IngestJob, real model, batch {cfg['batch_size']}, {ctx.corpus_label(n_pages)}; pause() "
            f"at a random instant 0.2-6 s into the embedding phase, then resumed for the next trial; every trial "
            f"ended paused with a table version that did not move afterwards: "
            f"{'yes' if not bad else 'NO: ' + str(bad)}. The embedder thread ended "
            f"{fj([x for x in emb_tail if x is not None], '.2f')} s after the request: it is what the pause "
            f"waits for",
        ),
        Row(
            "6.2",
            "pause: request to the last LanceDB write (the checkpoint commit of embedded documents)",
            unit="s",
            values=[t["last_write_after_s"] for t in ts],
        ),
    ]
    if "b16" in out:
        rows.append(
            Row(
                "6.3",
                "(reference) pause latency with batch size 16",
                unit="s",
                values=[t["latency_s"] for t in out["b16"]["trials"]],
                op="<",
                target=2.0,
                goal="< 2 s (reference)",
                note="same trials (same seed): the embedder checks for a pause before each batch, so the "
                "latency is about one batch's embedding time",
            )
        )
    return rows
