"""Issue 36's figure `docsites`: a documentation site as its generator builds it.

The site: the Sphinx API reference of the standard library's `statistics` module (autodoc of its
docstrings, `sphinx-build` of this machine's Sphinx, alabaster theme), built into the bench workspace.

- Share of the API reference's chunks (those with text below their heading) whose heading path ends
  in an API entry (a signature), with the Sphinx profile (pipeline/load/formats/docsites.py) and on the
  generic HTML path (the profile switched off in this process).
- Share of all the site's chunks with a permalink mark (`¶`) in their text or heading path (goal 0).
- Retrieval: QUESTIONS about individual functions, each labelled with its entry's heading; the site
  ingested by the real `kbingest ingest --batch` (real model) and searched as `kbingest search` does
  (hybrid, k=5). A hit: a chunk of api.html whose heading path has the label. The generic path's
  baseline: the same pages converted by the generic path, ingested as Markdown (the same chunks the
  generic HTML path gives); as no heading there names a function, a chunk counts as a hit when its
  text has the function's signature (lenient to the baseline).

    python -m bench --only docsites
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from bench.common import Row, goal_row, log, run_ingest

MODULE = "statistics"
K = 5
KB = "docsites"

# (question, label): the label is the end of the heading path's entry, written " > name(" so that
# "median(" is not found in "median_low("
QUESTIONS: list[tuple[str, str]] = [
    ("How do I get the middle value of a list of numbers?", "> statistics.median("),
    (
        "Which function gives the smaller of the two middle values when there is an even number of data points?",
        "> statistics.median_low(",
    ),
    (
        "Which function gives the larger of the two middle values for an even number of data points?",
        "> statistics.median_high(",
    ),
    ("How do I compute the median of grouped continuous data using interpolation?", "> statistics.median_grouped("),
    ("What is the single most common value in discrete or nominal data?", "> statistics.mode("),
    ("How do I get a list of all the most frequently occurring values?", "> statistics.multimode("),
    ("Fast arithmetic mean that converts the data to floats", "> statistics.fmean("),
    ("Average of rates such as speeds: the harmonic mean", "> statistics.harmonic_mean("),
    ("How do I compute the geometric mean of positive numbers?", "> statistics.geometric_mean("),
    ("Divide the data into intervals with equal probability and return the cut points", "> statistics.quantiles("),
    ("Standard deviation of a sample of the population", "> statistics.stdev("),
    ("Standard deviation of an entire population", "> statistics.pstdev("),
    ("Variance of a sample of data", "> statistics.variance("),
    ("Population variance of the data", "> statistics.pvariance("),
    ("Pearson's correlation coefficient of two inputs", "> statistics.correlation("),
    ("Sample covariance of two inputs", "> statistics.covariance("),
    ("Slope and intercept of a simple linear regression", "> statistics.linear_regression("),
    ("Probability that a normally distributed variable is less than or equal to x", "> cdf("),
    ("Value of x for a given cumulative probability of a normal distribution", "> inv_cdf("),
    ("Make a normal distribution estimated from sample data", "from_samples("),
]

CONF = """project = "statistics"
extensions = ["sphinx.ext.autodoc"]
html_theme = "alabaster"
"""
INDEX = """statistics
==========

.. toctree::

   api
"""
API = f"""API reference
=============

.. automodule:: {MODULE}
   :members:
"""


def build_site(root: Path) -> Path:
    """The Sphinx site of MODULE's API reference, built by sphinx-build; returns its output folder."""
    src, out = root / "src", root / "site"
    src.mkdir(parents=True, exist_ok=True)
    (src / "conf.py").write_text(CONF)
    (src / "index.rst").write_text(INDEX)
    (src / "api.rst").write_text(API)
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    if r.returncode != 0:
        raise RuntimeError(f"sphinx-build exited {r.returncode}: {r.stderr[-500:]}")
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


def _chunked(path: Path, generic: bool):
    from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings
    from kbingest.pipeline.load.formats import html as H

    detect = H.docsites.detect
    if generic:
        H.docsites.detect = lambda tree: None  # the generic path, in this process only
    try:
        ex = H.HTML.extract(path.read_bytes(), path=str(path))
    finally:
        H.docsites.detect = detect
    return ex, Chunker(ChunkSettings()).chunk(ex.text, markdown=True)


def _is_api(heading_path: str) -> bool:
    last = heading_path.rsplit(" > ", 1)[-1]
    return "(" in last or last.startswith(("class ", "exception ", "classmethod ", "property ", "attribute "))


def shares(site: Path, generic: bool) -> dict[str, Any]:
    api_chunks = body = marks = total = 0
    for p in _pages(site):
        _, doc = _chunked(p, generic)
        for c in doc.chunks:
            total += 1
            marks += "¶" in c.text or "¶" in c.heading_path
            if p.name == "api.html" and "\n" in c.text.strip():  # text below its heading
                body += 1
                api_chunks += _is_api(c.heading_path)
    return {"api": api_chunks / max(body, 1), "marks": marks / max(total, 1), "body": body, "total": total}


def generic_markdown(site: Path, dest: Path) -> Path:
    """Each page as the generic HTML path converts it, as Markdown with its <title> as front matter."""
    for p in _pages(site):
        ex, _ = _chunked(p, generic=True)
        out = dest / p.relative_to(site).with_suffix(".md")
        out.parent.mkdir(parents=True, exist_ok=True)
        title = (ex.title or "").replace("\n", " ").replace('"', "'")
        out.write_text(f'---\ntitle: "{title}"\n---\n' + ex.text, encoding="utf-8")
    return dest


def _ingest(ctx, source: Path, tag: str) -> Path:
    home = ctx.ws.home(f"docsites-{tag}")
    t0 = time.perf_counter()
    res = run_ingest(ctx.ws, home, [source], kb=KB, tag=tag, timeout=1800)
    final = res.final()
    if res.rc not in (0, 3) or final is None or final.get("status") != "completed":
        raise RuntimeError(f"ingest ({tag}) exited {res.rc}: {res.stderr_tail()}")
    log(f"  ingest {tag}: {final['metrics'].get('chunks_indexed')} chunks, {time.perf_counter() - t0:.0f} s")
    return home


def ranks(home: Path, doc: str, lenient: bool) -> list[Optional[int]]:
    from kbingest.pipeline.service import Service

    svc = Service(home)
    out: list[Optional[int]] = []
    for q, label in QUESTIONS:
        name = label.removeprefix("> ")
        first = None
        for rank, h in enumerate(svc.search_here(KB, q, K, "hybrid")[:K], 1):
            if Path(h.path or h.source).name != doc:
                continue
            if label.casefold() in f"> {h.heading_path}".casefold() or (lenient and name in h.text):
                first = rank
                break
        out.append(first)
    return out


def scores(rs: list[Optional[int]]) -> tuple[float, float]:
    n = len(rs) or 1
    return sum(r is not None for r in rs) / n, sum(1.0 / r for r in rs if r is not None) / n


def fig_docsites(ctx) -> list[Row]:
    """Issue 36: API entries as headings, permalink marks, retrieval of single functions on a Sphinx site."""
    load0 = os.getloadavg()
    root = ctx.ws.root / "docsites"
    site = build_site(root)
    ours, generic = shares(site, generic=False), shares(site, generic=True)
    log(
        f"  chunks under an API heading: {ours['api']:.3f} (generic path {generic['api']:.3f}); "
        f"with a permalink mark: {ours['marks']:.3f} (generic {generic['marks']:.3f})"
    )
    home = _ingest(ctx, site, "sphinx")
    home_generic = _ingest(ctx, generic_markdown(site, root / "generic"), "generic")
    r_ours = scores(ranks(home, "api.html", lenient=False))
    r_generic = scores(ranks(home_generic, "api.md", lenient=True))
    log(
        f"  recall@5 / MRR@5: {r_ours[0]:.3f} / {r_ours[1]:.3f} (generic path, lenient: "
        f"{r_generic[0]:.3f} / {r_generic[1]:.3f})"
    )
    load1 = os.getloadavg()
    note = (
        f"Sphinx API reference of `{MODULE}` ({ours['body']} chunks with text on api.html, {ours['total']} "
        f"on the site); load average {load0[0]:.2f} at start, {load1[0]:.2f} at end"
    )
    figures = {
        "36.api_share": "chunks of a generated API reference under an API heading (Sphinx profile)",
        "36.mark_share": "chunks with a permalink mark (¶) in text or heading path",
        "36.recall5": f"questions about single functions ({len(QUESTIONS)}): recall@5, hybrid search",
        "36.mrr5": f"questions about single functions ({len(QUESTIONS)}): MRR@5, hybrid search",
    }
    generic_path = {
        "36.api_share": f"generic HTML path: {generic['api']:.3f}",
        "36.mark_share": f"generic HTML path: {generic['marks']:.3f}",
        "36.recall5": f"generic HTML path (a hit: the signature in the chunk's text): {r_generic[0]:.3f}",
        "36.mrr5": f"generic HTML path (lenient): {r_generic[1]:.3f}",
    }
    measured = {  # ours, and the goal
        "36.api_share": (ours["api"], ">= 0.8"),
        "36.mark_share": (ours["marks"], "= 0"),
        "36.recall5": (r_ours[0], ">= 0.8"),
        "36.mrr5": (r_ours[1], ">= 0.6"),
    }
    return [
        goal_row(key, figures[key], [round(value, 4)], goal, note=f"{generic_path[key]}; {note}")
        for key, (value, goal) in measured.items()
    ]
