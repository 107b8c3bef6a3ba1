"""Issue 13's end-to-end figure: a mixed folder (Markdown, HTML, PDF, Word) made from N pages of the
corpus, ingested by `kbingest ingest --batch` (a fresh process) against raw fastembed on the same
chunk texts, alternating. Embedding must stay the only bound: the goal is >= 0.95.

    python -m bench --only mixed --pages 12 --reps 2
"""

from __future__ import annotations

import html
from pathlib import Path

from bench.common import Row, log, median, run_inproc

MIXED_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head><body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a> | <a href="/blog">Blog</a></nav>
<header><p>Site header: sign in, search, language</p></header>
<main>{body}</main>
<footer><p>Copyright, privacy, terms, cookies, contact.</p></footer></body></html>"""


def _lines(md: str) -> list[str]:
    from kbingest.pipeline.chunk.chunking import split_front_matter

    return split_front_matter(md)[1].splitlines()


def to_html(md: str, title: str) -> bytes:
    from markdown_it import MarkdownIt

    return MIXED_PAGE.format(
        title=html.escape(title), body=MarkdownIt("commonmark").enable("table").render("\n".join(_lines(md)))
    ).encode()


def to_docx(md: str, dest: Path) -> None:
    import docx

    d = docx.Document()
    for line in _lines(md):
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            d.add_heading(line.lstrip("#").strip() or "-", level=level)
        elif line.strip():
            d.add_paragraph(line.strip())
    d.save(str(dest))


def to_pdf(md: str, dest: Path, title: str) -> None:
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    story = [Paragraph(html.escape(title), styles["Title"])]
    for line in _lines(md):
        if not line.strip():
            continue
        style = styles["Heading2"] if line.startswith("#") else styles["BodyText"]
        story.append(Paragraph(html.escape(line.lstrip("#").strip()), style))
    SimpleDocTemplate(str(dest), title=title).build(story)


def build_mixed(src: Path, dest: Path) -> dict[str, int]:
    """Every page of `src` as one of four formats in turn; the counts by format."""
    counts = {"markdown": 0, "html": 0, "pdf": 0, "docx": 0}
    for i, page in enumerate(sorted(src.rglob("*.md"))):
        md = page.read_text(encoding="utf-8")
        rel = page.relative_to(src).with_suffix("")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        kind = ("markdown", "html", "pdf", "docx")[i % 4]
        title = rel.name.replace("-", " ")
        if kind == "markdown":
            out.with_suffix(".md").write_text(md, encoding="utf-8")
        elif kind == "html":
            out.with_suffix(".html").write_bytes(to_html(md, title))
        elif kind == "pdf":
            to_pdf(md, out.with_suffix(".pdf"), title)
        else:
            to_docx(md, out.with_suffix(".docx"))
        counts[kind] += 1
    return counts


def rows(ctx) -> list[Row]:
    """Issue 13: a mixed folder (Markdown, HTML, PDF, DOCX) e2e vs raw fastembed (bench/mixed.py)."""
    from bench.context import first_run

    n_pages = ctx.pages(24, 8)
    src = ctx.ws.subset(n_pages)
    docs = ctx.ws.root / f"mixed-{n_pages}"
    counts = build_mixed(src, docs)
    log(f"mixed folder of {n_pages} pages: {counts}")
    ratios, e2e_cps, raw_cps = [], [], []
    raw_bs = ctx.shared.get("fastembed_best_bs", 1)
    for rep in range(ctx.reps(2, 1)):
        run = first_run(ctx, docs, f"mixed{rep}", 5400)
        data, _ = run_inproc(
            ctx.ws,
            "raw_embed",
            {"home": str(run["home"]), "kb": "bench", "sources": [str(docs)], "batch_size": raw_bs, "threads": None},
            timeout=5400,
        )
        e2e_cps.append(run["n"] / run["wall"])
        raw_cps.append(data["chunks_per_s"])
        ratios.append(e2e_cps[-1] / raw_cps[-1])
        log(f"  mixed e2e {e2e_cps[-1]:.2f} chunks/s, raw fastembed {raw_cps[-1]:.2f} chunks/s")
    note = (
        f"{n_pages} pages as {counts}; raw fastembed batch {raw_bs}; e2e {median(e2e_cps):.1f} chunks/s, "
        f"raw {median(raw_cps):.1f} chunks/s"
    )
    return [
        Row(
            "13.e2e",
            "mixed folder (Markdown, HTML, PDF, DOCX) batch ingest / raw fastembed, same chunks",
            values=ratios,
            op=">=",
            target=0.95,
            goal=">= 0.95",
            note=note,
        )
    ]
