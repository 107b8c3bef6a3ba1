"""The chunking figure."""

from __future__ import annotations

from bench.common import Row, log, run_inproc
from bench.context import Ctx

# ---- figure 2: chunking ----------------------------------------------------------------------


def fig_chunking(ctx: Ctx) -> list[Row]:
    from bench.common import spread

    n_pages = ctx.pages(None, 30)
    pages = spread(ctx.ws.all_pages, n_pages)
    reps = ctx.reps(5, 2)
    log(f"figure 2: chunking {len(pages)} pages with kbingest, langchain-text-splitters and chonkie, {reps} reps")
    data, _ = run_inproc(
        ctx.ws, "chunking", {"pages": [str(p) for p in pages], "reps": reps, "budget": 240, "overlap": 32}, timeout=3600
    )
    mbs = data["mb_per_s"]
    ratios, fastest = [], []
    for i in range(reps):
        peers = {k: v[i] for k, v in mbs.items() if k != "kbingest"}
        best = max(peers, key=peers.get)
        fastest.append(best)
        ratios.append(mbs["kbingest"][i] / peers[best])
    q = data["quality"]
    qtxt = "; ".join(
        f"{k}: {v['chunks']} chunks, mean {v['mean_tokens']:.0f} / max {v['max_tokens']} tokens, "
        f"{v['over_budget']} over 240, {v['with_heading_path']} with a heading path"
        for k, v in q.items()
    )
    rows = [
        Row(
            "2.1",
            "chunking throughput, kbingest Chunker / fastest peer (same pages, tokenizer, 240-token budget)",
            unit="x",
            values=ratios,
            op=">=",
            target=1.5,
            goal=">= 1.5",
            note=f"{len(pages)} pages, {data['mb']:.2f} MB; fastest peer per repetition: {', '.join(fastest)}. "
            f"Output: {qtxt}. {data['chonkie_rules']} langchain: MarkdownHeaderTextSplitter (h1-h6, headers "
            f"kept in the text) then RecursiveCharacterTextSplitter.from_language(MARKDOWN), "
            f"length_function = the same HF tokenizer's count, overlap 32 as kbingest.",
        )
    ]
    for k, v in mbs.items():
        rows.append(
            Row(
                "2." + str({"kbingest": 2, "langchain": 3, "chonkie": 4}.get(k, 9)),
                f"chunking throughput, {k}",
                unit="MB/s",
                values=v,
            )
        )
    return rows
