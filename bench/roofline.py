"""Issue 35's figure `roofline`: the machine's int8 and fp32 GEMM peaks in onnxruntime at the model's
shapes, what the embedding runtime reaches, where the rest of its time goes, the routes measured in
one process against raw fastembed and against the previous runtime, and the vectors' bound on
1,000 real chunks (cosine and the retrieval questions' top 5).

    python -m bench --only roofline            # ~15 min on 2 idle cores
    python -m bench --only roofline --quick    # fewer chunks and shapes
"""

from __future__ import annotations

import os

from bench.common import Row, corpus_root, default_config, log, run_inproc
from bench.context import Ctx, fj

SHAPES = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384), (1024, 384, 1536)]
KINDS = ["fp32", "dqmatmul", "matmulinteger", "qlinear"]
KIND_LABEL = {
    "fp32": "fp32 MatMul",
    "dqmatmul": "DynamicQuantizeMatMul (int8)",
    "matmulinteger": "DynamicQuantizeLinear + MatMulInteger (u8u8)",
    "qlinear": "QLinearMatMul (u8s8, no input quantisation)",
}
TODAY = "today (fp32 fused, 2 sessions)"
NEW = "int8 two terms, 2 sessions (new default)"
SPIN_OFF = "int8 two terms, 1 session x 2 threads, spinning off"


def fig_roofline(ctx: Ctx) -> list[Row]:
    """GEMM peaks, the runtime's GMAC/s and breakdown, the routes, the vectors' bound."""
    load = [os.getloadavg()[0]]
    shapes = SHAPES[:2] if ctx.quick else SHAPES
    log("roofline: GEMM peaks (one onnxruntime node in a loop, best of 3 slices)")
    gemm, _ = run_inproc(
        ctx.ws, "roofline_gemm", {"threads": [1, 2], "kinds": KINDS, "shapes": shapes, "seconds": 0.5}, timeout=1800
    )
    rates = gemm["rates"]
    peak = {
        (k, t): max(r["gmacs"] for r in rates if r["kind"] == k and r["threads"] == t) for k in KINDS for t in (1, 2)
    }
    for r in rates:
        log(f"  {KIND_LABEL[r['kind']]}, {r['threads']} thread(s), {r['shape']}: {r['gmacs']:.1f} GMAC/s")
    load.append(os.getloadavg()[0])
    n_bd = 30 if ctx.quick else 80
    bd, _ = run_inproc(ctx.ws, "roofline_breakdown", {"corpus": str(corpus_root()), "n": n_bd}, timeout=1800)
    for k, d in bd.items():
        s = d["seconds"]
        tot = sum(s.values())
        log(
            f"  breakdown {k}: {d['gmacs_in_run']:.1f} GMAC/s inside run; run {s['run'] / tot:.1%}, tokenise "
            f"{s['tokenise'] / tot:.1%}, pool {s['pool'] / tot:.1%}, feed {s['feed'] / tot:.1%}; ops "
            + ", ".join(f"{o} {v:.0%}" for o, v in list(d["op_share"].items())[:6])
        )
    load.append(os.getloadavg()[0])
    bs = default_config()["batch_size"]
    n = 96 if ctx.quick else 160
    routes = []
    for _rep in range(ctx.reps(2, 1)):
        d, _ = run_inproc(
            ctx.ws,
            "runtime_routes",
            {"corpus": str(corpus_root()), "n": n, "batch_size": bs, "fe_batch": 1, "group": 16},
            timeout=3600,
        )
        routes.append(d)
        sec = d["seconds"]
        for k, v in sec.items():
            log(
                f"  route {k}: {d['n'] / v:.2f} chunks/s, x{sec['fastembed'] / v:.2f} fastembed, "
                f"x{sec[TODAY] / v:.2f} today, cosine min {d['cos_min'][k]:.6f}"
            )
        load.append(d["load"])
    n_vec = 200 if ctx.quick else 1000
    vec, _ = run_inproc(
        ctx.ws,
        "vectors_check",
        {"corpus": str(corpus_root()), "n": n_vec, "batch_size": bs, "samples": 0 if ctx.quick else 20},
        timeout=5400,
    )
    for name in ("default", "fp32"):
        v = vec[name]
        log(
            f"  vectors ({name} runtime) on {vec['n']} distinct chunks: cosine min {v['cos_min']:.7f}; top 5 the "
            f"same for {v['top5_same']}/{vec['questions']} questions (the same 5, any order: {v['top5_same_set']}); "
            "fastembed's score gaps where they differ: " + fj(v["gaps"], ".1e")
        )
    smp = vec.get("samples")
    if smp:
        log(
            f"  vectors (default runtime), {smp['samples']} random samples of {vec['n']} of the corpus's "
            f"{smp['chunks']} chunks: {smp['differ']}/{smp['pairs']} (question, sample) pairs differ; fastembed's "
            "gaps there: " + fj(smp["gaps"], ".1e")
        )
    load.append(os.getloadavg()[0])

    def ratio(name: str, base: str) -> list[float]:
        return [d["seconds"][base] / d["seconds"][name] for d in routes]

    lines = [
        f"Load average (1 min) during the run: {fj(load, '.1f')} on {os.cpu_count()} cores. "
        "Command: `python -m bench --only roofline`.",
        "",
        "| GEMM node | threads | " + " | ".join(f"[{m}x{k}] x [{k}x{n2}]" for m, k, n2 in shapes) + " |",
        "| --- | --- | " + " | ".join("---" for _ in shapes) + " |",
    ]
    for k in KINDS:
        for t in (1, 2):
            cells = [
                next(
                    f"{r['gmacs']:.1f}" for r in rates if r["kind"] == k and r["threads"] == t and r["shape"] == list(s)
                )
                for s in shapes
            ]
            lines.append(f"| {KIND_LABEL[k]} | {t} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| route (same texts, one process) | x fastembed b1 | x today | cosine min |",
        "| --- | --- | --- | --- |",
    ]
    for k in routes[0]["seconds"]:
        lines.append(
            f"| {k} | {fj(ratio(k, 'fastembed'), '.2f')} | {fj(ratio(k, TODAY), '.2f')} "
            f"| {min(d['cos_min'][k] for d in routes):.6f} |"
        )
    ctx.book.note("Roofline: GEMM peaks (GMAC/s) and routes", "\n".join(lines))
    fp, i8 = bd["fp32"], bd["int8"]
    return [
        Row("R.1", "fp32 MatMul peak, 1 thread, the model's shapes", unit="GMAC/s", values=[peak[("fp32", 1)]]),
        Row(
            "R.2",
            "int8 GEMM peak (DynamicQuantizeMatMul), 1 thread, the model's shapes",
            unit="GMAC/s",
            values=[peak[("dqmatmul", 1)]],
            note="QLinearMatMul "
            f"{peak[('qlinear', 1)]:.1f}, DynamicQuantizeLinear + MatMulInteger {peak[('matmulinteger', 1)]:.1f}; "
            f"2 threads: fp32 {peak[('fp32', 2)]:.1f}, int8 {peak[('dqmatmul', 2)]:.1f}",
        ),
        Row(
            "R.3",
            "runtime, 1 session x 1 thread: GMAC/s inside session.run (model MACs / run time), fp32 graph",
            unit="GMAC/s",
            values=[fp["gmacs_in_run"]],
            note=f"{fp['texts']} texts, {fp['tokens_mean']:.0f} tokens on average; ops "
            + ", ".join(f"{o} {v:.0%}" for o, v in list(fp["op_share"].items())[:5]),
        ),
        Row(
            "R.4",
            "runtime, 1 session x 1 thread: GMAC/s inside session.run, two-term int8 graph",
            unit="GMAC/s",
            values=[i8["gmacs_in_run"]],
            note="share of the time per text outside run (tokenise, feed, pool): "
            + f"{1 - i8['seconds']['run'] / sum(i8['seconds'].values()):.1%}; ops "
            + ", ".join(f"{o} {v:.0%}" for o, v in list(i8["op_share"].items())[:6]),
        ),
        Row(
            "R.5",
            "two-term int8 runtime / raw fastembed batch 1, same texts, one process, alternating",
            unit="x",
            values=ratio(NEW, "fastembed"),
            op=">=",
            target=1.5,
            goal=">= 1.5 (issue 35)",
            note=f"{n} WAF chunks, {bs} texts a call; load average {fj(load, '.1f')}",
        ),
        Row(
            "R.6",
            "two-term int8 runtime / today's fp32 runtime, same texts, one process, alternating",
            unit="x",
            values=ratio(NEW, TODAY),
        ),
        Row(
            "R.6b",
            "two-term int8, 1 session x 2 threads with spinning off / 2 sessions x 1 thread (the default)",
            unit="x",
            values=ratio(SPIN_OFF, NEW),
            note="above 1 on the loaded machine (spinning threads of other processes' pools); "
            "the default stays 2 sessions unless a quiet run says otherwise",
        ),
        Row(
            "R.7",
            f"vectors: cosine min to raw fastembed batch 1 on {vec['n']} real chunks (the default embedder)",
            values=[vec["default"]["cos_min"]],
            op=">=",
            target=0.99999,
            goal=">= 0.99999",
        ),
        Row(
            "R.8",
            f"labelled retrieval questions whose top 5 of those {vec['n']} chunks differ from fastembed's",
            values=[vec["questions"] - vec["default"]["top5_same"]],
            op="<=",
            target=0,
            goal="0",
            note=f"{vec['default']['top5_same']}/{vec['questions']} the same in order, "
            f"{vec['default']['top5_same_set']} the same 5 (int8 runtime: {vec['int8']}); "
            f"fastembed's own score gap between the swapped results: {fj(vec['default']['gaps'], '.1e')}; the fp32 "
            f"runtime (cosine min {vec['fp32']['cos_min']:.7f}): {vec['fp32']['top5_same']}/{vec['questions']} "
            f"the same, gaps {fj(vec['fp32']['gaps'], '.1e')}",
        ),
    ] + (
        []
        if not smp
        else [
            Row(
                "R.9",
                f"(question, sample) pairs whose top 5 differ from fastembed's, {smp['samples']} random samples of "
                f"{vec['n']} of the corpus's {smp['chunks']} chunks (the default embedder)",
                values=[smp["differ"]],
                note=f"of {smp['pairs']}; fastembed's own score gap between the results that swap: "
                f"{fj(smp['gaps'], '.1e') or 'none'} (how near a tie must be for the int8 noise to reorder it)",
            )
        ]
    )
