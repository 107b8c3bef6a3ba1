"""Issue 31's figure `retrieval`: does search find the section that answers a plain-language question?

The corpus is what the repository ships: the WAF pages (tests/data/waf/well-architected, ~199 Markdown
pages) and the format fixtures (tests/format_fixtures.py: the outline PDF and the Word document),
copied into one folder. bench/data/retrieval_questions.jsonl holds the questions, each with its answering
document (relative to that folder) and heading; every third one (index 2, 5, 8...) is held out: never
used to choose anything, reported apart.

A hit: a result whose file (relative to the corpus folder) is the labelled document and whose heading
path contains the labelled heading (case-insensitive). recall@5: questions with a hit in the first 5;
MRR@5: the mean of 1/rank of the first hit (0 past 5).

In one run, on the same pages and questions:
- kbingest, ingested by the real `kbingest ingest --batch` (real model) into a temp home, twice: with
  the default (title and heading path embedded in front of each chunk) and with `--embed-context no`;
  searched through the service as `kbingest search` does, in each mode (vector, text, hybrid).
- the fusion variants (RRF with weights and constants, score fusion with weights and BM25 scales) on
  the same two windowed candidate lists, chosen on the tuning split only.
- the usual LangChain recipe: RecursiveCharacterTextSplitter(1000, 200) over each document's text (the
  file's own text for Markdown, kbingest's extracted Markdown for PDF and Word), the same model
  (kbingest's default embedder), exact cosine top 5. A recipe chunk has no heading path: it counts as
  a hit when it overlaps the labelled section of the labelled document (lenient to the recipe).

    python -m bench --only retrieval            # ~10 min on 2 idle cores: two real-model ingests, the recipe
    python -m bench --only retrieval --quick    # without the ingest without context (~6 min)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench.common import REPO, Row, corpus_root, log, run_ingest

QUESTIONS = REPO / "bench" / "data" / "retrieval_questions.jsonl"
FIXTURES_DIR = "format-fixtures"
K = 5
KB = "retrieval"


def questions() -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(QUESTIONS.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            q = json.loads(line)
            q["held_out"] = i % 3 == 2
            out.append(q)
    return out


def build_corpus(dest: Path) -> Path:
    """The shipped pages and the format fixtures in one folder."""
    shutil.copytree(corpus_root(), dest)
    spec = importlib.util.spec_from_file_location("format_fixtures", REPO / "tests" / "format_fixtures.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)  # type: ignore[union-attr]
    (dest / FIXTURES_DIR).mkdir()
    (dest / FIXTURES_DIR / "pump-manual.pdf").write_bytes(fx.outline_pdf())
    (dest / FIXTURES_DIR / "pump-handbook.docx").write_bytes(fx.docx_bytes())
    return dest


def is_hit(q: dict[str, Any], path: str, heading_path: str) -> bool:
    return path == q["doc"] and q["heading"].casefold() in (heading_path or "").casefold()


def scores(qs: list[dict[str, Any]], hit_ranks: list[Optional[int]]) -> dict[str, float]:
    """recall@5 and MRR@5 from each question's first hit rank (1-based, None: none in the first 5)."""
    n = len(qs) or 1
    return {
        "recall5": sum(r is not None for r in hit_ranks) / n,
        "mrr5": sum(1.0 / r for r in hit_ranks if r is not None) / n,
    }


def first_hit(q: dict[str, Any], hits: list[tuple[str, str]]) -> Optional[int]:
    for rank, (path, hp) in enumerate(hits[:K], 1):
        if is_hit(q, path, hp):
            return rank
    return None


def by_split(qs: list[dict[str, Any]], ranks: list[Optional[int]]) -> dict[str, dict[str, float]]:
    out = {"all": scores(qs, ranks)}
    for name, held in (("tune", False), ("held_out", True)):
        sel = [(q, r) for q, r in zip(qs, ranks) if q["held_out"] == held]
        out[name] = scores([q for q, _ in sel], [r for _, r in sel])
    return out


# ---- kbingest ------------------------------------------------------------------------------------
def _ingest(ctx, corpus: Path, tag: str, extra: tuple[str, ...]) -> Path:
    home = ctx.ws.home(f"retrieval-{tag}")
    t0 = time.perf_counter()
    res = run_ingest(ctx.ws, home, [corpus], kb=KB, extra=extra, tag=tag, timeout=3600)
    final = res.final()
    if res.rc != 0 or final is None:
        raise RuntimeError(f"ingest ({tag}) exited {res.rc}: {res.stderr_tail()}")
    m = final["metrics"]
    log(
        f"  ingest {tag}: {m.get('chunks_indexed')} chunks, {m.get('chunks_embedded')} embedded, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return home


def kbingest_runs(home: Path, qs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each mode through the service (as `kbingest search` runs), and the two windowed lists of each
    question for the fusion variants."""
    from kbingest.pipeline.kb.search import query_embedder, window, with_paths
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home
    from kbingest.pipeline.service import Service

    svc = Service(home)
    cfg = svc.find(kb=KB).config
    ranks: dict[str, list[Optional[int]]] = {}
    for mode in ("vector", "text", "hybrid"):
        ranks[mode] = [
            first_hit(q, [(h.path, h.heading_path) for h in svc.search_here(KB, q["q"], K, mode)]) for q in qs
        ]
    kb = KnowledgeBase(Home(home), KB)
    emb = query_embedder(cfg)
    lists = []
    for q in qs:
        v = emb.embed([q["q"]])[0]
        n = window(K)
        lists.append(
            (
                with_paths(kb.search(v, n, mode="vector"), cfg.sources),
                with_paths(kb.search(None, n, mode="text", text=q["q"]), cfg.sources),
            )
        )
    k1_vs_k10 = sum(svc.search_here(KB, q["q"], 1)[0].id == svc.search_here(KB, q["q"], 10)[0].id for q in qs)
    return {"ranks": ranks, "lists": lists, "k_agree": k1_vs_k10}


def fusion_grid() -> list[Any]:
    from kbingest.pipeline.kb.search import Fusion

    grid = [
        Fusion(method="rrf", c=c, vector_weight=w, text_weight=1.0) for c in (10, 30, 60) for w in (1.0, 1.5, 2.0, 3.0)
    ]
    grid += [
        Fusion(method="score", vector_weight=w, bm25_half=h)
        for w in (0.5, 0.6, 0.7, 0.8, 0.9)
        for h in (5.0, 10.0, 20.0, 40.0)
    ]
    return grid


def fusion_ranks(qs, lists, fusion) -> list[Optional[int]]:
    from kbingest.pipeline.kb.search import fuse

    return [first_hit(q, [(h.path, h.heading_path) for h in fuse(v, t, K, fusion)]) for q, (v, t) in zip(qs, lists)]


def _label(f) -> str:
    if f.method == "rrf":
        return f"rrf c={f.c:g} wv={f.vector_weight:g}"
    return f"score wv={f.vector_weight:g} half={f.bm25_half:g}"


# ---- the LangChain recipe ----------------------------------------------------------------------
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def section_spans(text: str) -> list[tuple[int, str]]:
    """(offset, heading path) at every ATX heading outside code fences: the path in force from there on."""
    out: list[tuple[int, str]] = [(0, "")]
    stack: list[tuple[int, str]] = []
    fence = None
    pos = 0
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("```") or s.startswith("~~~"):
            fence = None if fence and s.startswith(fence) else (fence or s[:3])
        elif fence is None:
            m = _HEADING.match(s)
            if m and line[:1] == "#":
                level = len(m.group(1))
                stack = [(lv, h) for lv, h in stack if lv < level] + [(level, m.group(2))]
                out.append((pos, " > ".join(h for _, h in stack)))
        pos += len(line)
    return out


def paths_within(spans: list[tuple[int, str]], start: int, end: int) -> str:
    """Every heading path in force somewhere in [start, end), joined (for the containment test)."""
    inside = [hp for off, hp in spans if start < off < end]
    before = [hp for off, hp in spans if off <= start]
    return " | ".join(([before[-1]] if before else []) + inside)


def recipe_documents(corpus: Path) -> list[tuple[str, str]]:
    """(path relative to the corpus, text) of every document: a Markdown file's own text, as a
    LangChain TextLoader gives it; PDF and Word as kbingest extracts them (Markdown)."""
    from kbingest.pipeline.load.loading import Candidate, LoadLimits, read_document

    out = []
    for p in sorted(corpus.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(corpus))
        if p.suffix == ".md":
            out.append((rel, p.read_text(encoding="utf-8", errors="replace")))
        elif p.suffix in (".pdf", ".docx"):
            st = p.stat()
            doc = read_document(Candidate(str(p), str(p.parent), st.st_size, st.st_mtime_ns), LoadLimits())
            out.append((rel, doc.text))
    return out


def recipe_run(corpus: Path, qs: list[dict[str, Any]]) -> dict[str, Any]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from kbingest.pipeline.embed.embedding import make_embedder
    from kbingest.pipeline.models import DEFAULT_MODEL

    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200, add_start_index=True)
    chunks: list[tuple[str, str, str]] = []  # (doc, text, heading paths it overlaps)
    for rel, text in recipe_documents(corpus):
        spans = section_spans(text)
        for d in splitter.create_documents([text]):
            start = d.metadata["start_index"]
            chunks.append((rel, d.page_content, paths_within(spans, start, start + len(d.page_content))))
    t0 = time.perf_counter()
    emb = make_embedder("fastembed", DEFAULT_MODEL, batch_size=8)
    vecs = np.concatenate([emb.embed([c[1] for c in chunks[i : i + 64]]) for i in range(0, len(chunks), 64)])
    log(f"  recipe: {len(chunks)} chunks embedded in {time.perf_counter() - t0:.0f} s")
    qv = emb.embed([q["q"] for q in qs])
    ranks = []
    for q, v in zip(qs, qv):
        top = np.argsort(-(vecs @ v), kind="stable")[:K]  # exact cosine: the vectors are L2-normalised
        ranks.append(first_hit(q, [(chunks[i][0], chunks[i][2]) for i in top]))
    return {"ranks": ranks, "chunks": len(chunks)}


# ---- the figure ----------------------------------------------------------------------------------
def rows(ctx) -> list[Row]:
    load0 = os.getloadavg()
    qs = questions()
    corpus = build_corpus(ctx.ws.root / "retrieval-corpus")
    n_docs = sum(1 for p in corpus.rglob("*") if p.is_file() and p.suffix in (".md", ".pdf", ".docx"))
    log(f"retrieval: {len(qs)} questions ({sum(q['held_out'] for q in qs)} held out), {n_docs} documents")

    home_ctx = _ingest(ctx, corpus, "context", ())
    ours = kbingest_runs(home_ctx, qs)
    plain = None if ctx.quick else kbingest_runs(_ingest(ctx, corpus, "plain", ("--embed-context", "no")), qs)
    recipe = recipe_run(corpus, qs)

    variants = []
    for f in fusion_grid():
        r = fusion_ranks(qs, ours["lists"], f)
        s = by_split(qs, r)
        variants.append((s["tune"]["mrr5"] + s["tune"]["recall5"], f, s))
    variants.sort(key=lambda x: -x[0])
    best = variants[0]
    table = "; ".join(
        f"{_label(f)}: tune {s['tune']['recall5']:.3f}/{s['tune']['mrr5']:.3f} "
        f"held-out {s['held_out']['recall5']:.3f}/{s['held_out']['mrr5']:.3f}"
        for _, f, s in variants[:8]
    )
    log(f"  fusion variants, best first (recall@5/MRR@5): {table}")

    load1 = os.getloadavg()
    machine = (
        f"load average {load0[0]:.2f}/{load0[1]:.2f} at start, {load1[0]:.2f}/{load1[1]:.2f} at end; "
        f"{len(qs)} questions, {n_docs} documents"
    )
    out: list[Row] = []

    def add(
        key: str,
        figure: str,
        split: dict[str, dict[str, float]],
        goal: Optional[tuple[str, float]] = None,
        metric: str = "recall5",
    ) -> None:
        note = f"tune {split['tune'][metric]:.3f}, held-out {split['held_out'][metric]:.3f}; {machine}"
        out.append(
            Row(
                key,
                figure,
                values=[round(split["all"][metric], 4)],
                op=goal[0] if goal else None,
                target=goal[1] if goal else None,
                goal=f"{goal[0]} {goal[1]:g}" if goal else "",
                note=note,
            )
        )

    for mode in ("hybrid", "vector", "text"):
        s = by_split(qs, ours["ranks"][mode])
        default = mode == "hybrid"
        add(f"31.{mode}_recall5", f"{mode} search (default settings): recall@5", s, (">=", 0.85) if default else None)
        add(f"31.{mode}_mrr5", f"{mode} search (default settings): MRR@5", s, (">=", 0.70) if default else None, "mrr5")
    for mode in ("hybrid", "vector") if plain else ():  # --quick: no second ingest
        s = by_split(qs, plain["ranks"][mode])
        add(f"31.plain_{mode}_recall5", f"{mode} search, chunks embedded without title and heading path: recall@5", s)
        add(
            f"31.plain_{mode}_mrr5",
            f"{mode} search, chunks embedded without title and heading path: MRR@5",
            s,
            metric="mrr5",
        )
    rs = by_split(qs, recipe["ranks"])
    add(
        "31.recipe_recall5",
        f"LangChain recipe (1000/200 splitter, same model, exact cosine top 5; {recipe['chunks']} chunks): recall@5",
        rs,
    )
    add("31.recipe_mrr5", "LangChain recipe: MRR@5", rs, metric="mrr5")
    hs = by_split(qs, ours["ranks"]["hybrid"])
    for metric, name in (("recall5", "recall@5"), ("mrr5", "MRR@5")):
        diff = {k: {metric: hs[k][metric] - rs[k][metric]} for k in hs}
        add(f"31.ahead_{metric}", f"default search minus the LangChain recipe: {name}", diff, (">", 0.0), metric)
    _, f, s = best
    out.append(
        Row(
            "31.best_fusion",
            f"best fusion on the tuning split: {_label(f)} (recall@5 of all questions)",
            values=[round(s["all"]["recall5"], 4)],
            note=f"MRR@5 {s['all']['mrr5']:.3f}; best first: {table}",
        )
    )
    out.append(
        Row(
            "31.k_agree",
            "first hit of -k 1 equal to the first of -k 10 (share of questions)",
            values=[round(ours["k_agree"] / len(qs), 4)],
            op=">=",
            target=1.0,
            goal="= 1",
        )
    )
    return out


def fig_retrieval(ctx) -> list[Row]:
    """Issue 31: recall@5 / MRR@5 of vector, text, hybrid and the LangChain recipe on labelled questions."""
    return rows(ctx)
