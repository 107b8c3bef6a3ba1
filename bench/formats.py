"""Figure 9: the document formats against what the peers use by default, on the same files.

PDF: kbingest's PDF format (pypdfium2, with outline, running-line and hyphenation cleaning) against
pypdf's `page.extract_text()` (what LangChain's PyPDFLoader and LlamaIndex's PDF reader call):
pages per second and peak RSS, each in its own child process (wait4 gives that child's peak), runs
alternating A B A B; and their text agreement, per page, on words.

HTML: kbingest's HTML format against BeautifulSoup `get_text()` (LangChain's BSHTMLLoader), html2text
and trafilatura: MB/s in one child per tool and repetition, alternating; the share of boilerplate
phrases removed, of content words kept, and of code blocks and table rows kept whole.

The documents: the bench corpus (Markdown) rendered to one PDF with reportlab (headings as
bookmarks, a running header and page footer), and to HTML pages in a site template (header, nav,
sidebar, cookie banner, footer, scripts) whose boilerplate phrases are known; plus, when this machine
has them, real mdBook pages (the Rust book shipped with rustup), whose boilerplate is what lies
outside <main>.

    python -m bench --only formats [--quick]
    python -m bench.formats pdf|html ...    # one child measurement (used by the figure)
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+")
RUNNING_HEADER = "AWS Well-Architected Framework - bench edition"
RUST_BOOK_GLOB = "/root/.rustup/toolchains/*/share/doc/rust/html/book/ch*.html"
BOILERPLATE = [
    "Skip to main content",
    "Sign in to the console",
    "Contact sales and support",
    "We use cookies to give you the best experience",
    "Accept all cookies",
    "Manage cookie preferences",
    "Products Solutions Pricing Documentation",
    "Learn more about partner programs",
    "Was this page helpful",
    "Privacy policy and site terms",
    "Copyright 2024 Example Corp and its affiliates",
    "Follow us on social media",
    "Subscribe to the newsletter for updates",
]


# ---- documents ---------------------------------------------------------------------------------


def _md_blocks(text: str):
    """(kind, text) blocks of a Markdown page: heading level n as ('h', n, text), ('code', lines),
    ('p', text). Front matter, tables and HTML are reduced to paragraphs."""
    from kbingest.pipeline.chunk.chunking import split_front_matter

    _, body = split_front_matter(text)
    lines, i, para = body.split("\n"), 0, []
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("```"):
            if para:
                yield ("p", " ".join(para))
                para = []
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            yield ("code", "\n".join(lines[i + 1 : j]))
            i = j + 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", ln)
        if m:
            if para:
                yield ("p", " ".join(para))
                para = []
            yield ("h", len(m.group(1)), m.group(2).strip())
        elif not ln.strip():
            if para:
                yield ("p", " ".join(para))
                para = []
        else:
            para.append(ln.strip())
        i += 1
    if para:
        yield ("p", " ".join(para))


def make_pdf(pages: list[Path], out: Path, repeat: int = 1) -> int:
    """The Markdown pages as one PDF (each page's headings bookmarked); returns its page count."""
    from xml.sax.saxutils import escape

    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, Preformatted, SimpleDocTemplate

    styles = getSampleStyleSheet()

    class Doc(SimpleDocTemplate):
        def afterFlowable(self, f):  # noqa: N802 (reportlab's name)
            level = getattr(f, "_kb_level", None)
            if level is not None:
                key = f"h{id(f)}"
                self.canv.bookmarkPage(key)
                self.canv.addOutlineEntry(f.getPlainText()[:80], key, level=min(level, self._kb_depth + 1))
                self._kb_depth = level

    def header(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.drawString(72, A4[1] - 40, RUNNING_HEADER)
        canvas.drawString(A4[0] - 120, 30, f"Page {doc.page}")
        canvas.restoreState()

    story = []
    for _ in range(repeat):
        for p in pages:
            for block in _md_blocks(p.read_text(encoding="utf-8", errors="replace")):
                if block[0] == "h":
                    level = min(block[1], 3)
                    para = Paragraph(escape(block[2]), styles[f"Heading{level}"])
                    para._kb_level = level - 1
                    story.append(para)
                elif block[0] == "code":
                    story.append(Preformatted(block[1][:3000], styles["Code"]))
                else:
                    story.append(Paragraph(escape(re.sub(r"[*_`]", "", block[1])), styles["BodyText"]))
    doc = Doc(str(out), pagesize=A4, title="Well-Architected (bench)")
    doc._kb_depth = 0
    doc.build(story, onFirstPage=header, onLaterPages=header)
    import pypdfium2

    pdf = pypdfium2.PdfDocument(str(out))
    n = len(pdf)
    pdf.close()
    return n


def make_html(pages: list[Path], out_dir: Path) -> list[dict[str, Any]]:
    """Each Markdown page as an HTML page of a site template; returns, per page, its file and the
    content's words, code blocks and table rows (the truth the outputs are scored against)."""
    from markdown_it import MarkdownIt
    from selectolax.lexbor import LexborHTMLParser

    md = MarkdownIt("commonmark").enable("table")
    out_dir.mkdir(parents=True, exist_ok=True)
    titles = [p.stem.replace("-", " ") for p in pages]
    docs = []
    for i, p in enumerate(pages):
        from kbingest.pipeline.chunk.chunking import split_front_matter

        _, body = split_front_matter(p.read_text(encoding="utf-8", errors="replace"))
        content = md.render(body)
        related = "".join(
            f'<li><a href="/p{k}">Related page: {titles[k]}</a></li>'
            for k in range(max(0, i - 8), min(len(pages), i + 8))
            if k != i
        )
        b = BOILERPLATE
        html = (
            f'<!doctype html><html><head><meta charset="utf-8"><title>{titles[i]} - Example Docs</title>'
            "<style>body{font-family:sans-serif}.sidebar{float:left}</style>"
            "<script>window.dataLayer=[];function gtag(){dataLayer.push(arguments)}</script></head><body>"
            f'<a class="skip-link" href="#main">{b[0]}</a>'
            f'<div id="cookie-banner" class="consent"><p>{b[3]}.</p><button>{b[4]}</button>'
            f'<a href="/cookies">{b[5]}</a></div>'
            f'<header class="site-header"><a href="/">Example</a><nav><a href="/p">{b[6]}</a>'
            f'<a href="/login">{b[1]}</a><a href="/contact">{b[2]}</a></nav></header>'
            f'<div class="layout"><aside class="sidebar"><ul>{related}</ul></aside>'
            f'<main id="main"><article>{content}</article>'
            f'<div class="feedback"><p>{b[8]}?</p></div></main></div>'
            f'<footer class="site-footer"><p>{b[7]}.</p><p>{b[9]}.</p><p>{b[10]}.</p><p>{b[11]}.</p>'
            f'<p>{b[12]}.</p></footer><script>gtag("config","X-1")</script></body></html>'
        )
        f = out_dir / f"page{i:03d}.html"
        f.write_text(html, encoding="utf-8")
        docs.append(
            _truth(
                f,
                LexborHTMLParser(content),
                boilerplate=BOILERPLATE
                + [f"Related page: {titles[k]}" for k in range(max(0, i - 8), min(len(pages), i + 8)) if k != i],
            )
        )
    return docs


def real_html_pages(limit: int) -> list[dict[str, Any]]:
    """mdBook pages of the Rust book, when rustup installed them: content is <main>."""
    import glob

    from selectolax.lexbor import LexborHTMLParser

    files = sorted(glob.glob(RUST_BOOK_GLOB))[:limit]
    out = []
    for f in files:
        tree = LexborHTMLParser(Path(f).read_text(encoding="utf-8", errors="replace"))
        main = tree.css_first("main")
        if main is None:
            continue
        for n in tree.css("main .buttons, main .ferris-container"):  # mdBook's code-block buttons
            n.decompose()
        inside = " ".join(main.text(deep=True, separator=" ").split())
        outside = set()
        for sel in ("#mdbook-sidebar a", "#mdbook-menu-bar a", "#mdbook-menu-bar h1", "nav a"):
            for n in tree.css(sel):
                t = " ".join(n.text(deep=True, separator=" ").split())
                t = re.sub(r"^[\d.]+\s*", "", t)  # the chapter number
                if len(WORD.findall(t)) >= 3 and t not in inside:
                    outside.add(t)
        out.append(_truth(Path(f), LexborHTMLParser(main.html), boilerplate=sorted(outside)))
    return out


def _truth(path: Path, content, boilerplate: list[str]) -> dict[str, Any]:
    code = [n.text(deep=True).strip("\n") for n in content.css("pre")]
    rows = [
        [" ".join(c.text(deep=True).split()) for c in tr.iter() if c.tag in ("td", "th")] for tr in content.css("tr")
    ]
    for n in content.css("pre"):
        n.decompose()
    words = WORD.findall((content.body or content.root).text(deep=True, separator=" "))
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "words": words,
        "code": [c for c in code if c.strip()],
        "rows": [r for r in rows if any(r)],
        "boilerplate": boilerplate,
    }


# ---- child measurements -----------------------------------------------------------------------


def _pdf_child(tool: str, path: str, texts_out: str) -> dict[str, Any]:
    data = Path(path).read_bytes()
    t0 = time.perf_counter()
    if tool == "kbingest":
        from kbingest.pipeline.load.formats.pdf import PDF

        ex = PDF.extract(data, path=path)
        starts = list(ex.page_starts) + [len(ex.text)]
        texts = [ex.text[a:b] for a, b in zip(starts, starts[1:])]
    else:
        import io

        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        texts = [page.extract_text() or "" for page in reader.pages]
    seconds = time.perf_counter() - t0
    Path(texts_out).write_text(json.dumps(texts))
    return {"pages": len(texts), "seconds": seconds}


def _html_convert(tool: str):
    if tool == "kbingest":
        from kbingest.pipeline.load.formats.html import HTML

        return lambda b: HTML.extract(b, path="x.html").text
    if tool == "bs4-get_text":
        from bs4 import BeautifulSoup

        return lambda b: BeautifulSoup(b, "lxml").get_text()  # LangChain BSHTMLLoader's default
    if tool == "html2text":
        import html2text

        def conv(b: bytes) -> str:
            h = html2text.HTML2Text()
            h.body_width = 0
            return h.handle(b.decode("utf-8", "replace"))

        return conv
    if tool == "trafilatura":
        import trafilatura

        return lambda b: (
            trafilatura.extract(
                b.decode("utf-8", "replace"), output_format="markdown", include_tables=True, include_formatting=True
            )
            or ""
        )
    raise ValueError(tool)


def _html_child(tool: str, files: list[str], texts_out: str) -> dict[str, Any]:
    conv = _html_convert(tool)
    datas = [Path(f).read_bytes() for f in files]
    conv(datas[0])  # imports and first-call setup are not throughput
    t0 = time.perf_counter()
    texts = [conv(d) for d in datas]
    seconds = time.perf_counter() - t0
    Path(texts_out).write_text(json.dumps(texts))
    return {"mb": sum(map(len, datas)) / 1e6, "seconds": seconds}


# ---- scores ----------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return WORD.findall(text.replace("\\", " "))


def page_agreement(a: list[str], b: list[str]) -> float:
    """Mean over pages of the similarity of their word sequences (1.0 = the same words in the same order)."""
    ratios = []
    for x, y in zip(a, b):
        wx, wy = _words(x), _words(y)
        if not wx and not wy:
            continue
        ratios.append(SequenceMatcher(None, wx, wy, autojunk=False).ratio())
    return sum(ratios) / max(1, len(ratios))


def _code_whole(code: str, out_lines: list[str]) -> bool:
    import textwrap

    want = [ln.rstrip() for ln in textwrap.dedent(code).split("\n")]
    while want and not want[-1]:
        want.pop()
    if not want:
        return True
    n = len(want)
    for i, ln in enumerate(out_lines):
        if ln.strip() == want[0].strip() and i + n <= len(out_lines):
            got = [g.rstrip() for g in textwrap.dedent("\n".join(out_lines[i : i + n])).split("\n")]
            if got == want:
                return True
    return False


def _row_whole(row: list[str], out_lines: list[str]) -> bool:
    """The row's cells, in order, on one line (whitespace aside: tools differ in spacing at <br>)."""
    cells = ["".join(c.split()) for c in row if c.strip()]
    for ln in out_lines:
        squashed = "".join(ln.replace("\\|", "|").split())
        pos = 0
        for c in cells:
            pos = squashed.find(c, pos)
            if pos < 0:
                break
            pos += len(c)
        else:
            return True
    return False


def html_scores(truth: list[dict[str, Any]], texts: list[str]) -> dict[str, float]:
    kept = total = bp_removed = bp_total = code_ok = code_total = rows_ok = rows_total = 0
    for t, out in zip(truth, texts):
        have = Counter(_words(out))
        want = Counter(t["words"])
        kept += sum(min(have[w], n) for w, n in want.items())
        total += sum(want.values())
        flat = " ".join(out.split())
        bp_total += len(t["boilerplate"])
        bp_removed += sum(1 for ph in t["boilerplate"] if " ".join(ph.split()) not in flat)
        lines = out.split("\n")
        code_total += len(t["code"])
        code_ok += sum(_code_whole(c, lines) for c in t["code"])
        rows_total += len(t["rows"])
        rows_ok += sum(_row_whole(r, lines) for r in t["rows"])
    return {
        "content_kept": kept / max(1, total),
        "boilerplate_removed": bp_removed / max(1, bp_total),
        "code_whole": code_ok / max(1, code_total),
        "rows_whole": rows_ok / max(1, rows_total),
        "code_blocks": code_total,
        "table_rows": rows_total,
    }


# ---- the figure ------------------------------------------------------------------------------


def _child(ws, args: list[str], tag: str):
    from bench.common import run_proc

    res = run_proc(
        [sys.executable, "-m", "bench.formats", *args],
        ws.root / "logs" / f"formats-{tag}-{time.time_ns()}",
        timeout=3600,
    )
    data = res.final()
    if res.rc != 0 or data is None:
        raise RuntimeError(f"bench.formats {' '.join(args[:2])} exited {res.rc}: {res.stderr_tail()}")
    return data, res


def fig_formats(ctx) -> list:
    """PDF pages/s, peak RSS and text agreement vs pypdf; HTML MB/s and boilerplate removed vs BeautifulSoup, html2text, trafilatura."""
    from bench.common import Row, log, spread

    reps = ctx.reps(3, 1)
    ws = ctx.ws
    rows: list[Row] = []

    # PDF
    n_md = ctx.pages(None, 40)
    md_pages = spread(ws.all_pages, n_md)
    pdf_file = ws.root / "formats" / "corpus.pdf"
    pdf_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_pdf_pages = make_pdf(md_pages, pdf_file, repeat=1)
    log(
        f"figure 9: PDF of {len(md_pages)} corpus pages: {n_pdf_pages} PDF pages, "
        f"{pdf_file.stat().st_size / 1e6:.1f} MB, built in {time.perf_counter() - t0:.0f} s; {reps} reps A B A B"
    )
    rate: dict[str, list[float]] = {"kbingest": [], "pypdf": []}
    rss: dict[str, list[float]] = {"kbingest": [], "pypdf": []}
    texts: dict[str, list[str]] = {}
    for i in range(reps):
        for tool in ("kbingest", "pypdf") if i % 2 == 0 else ("pypdf", "kbingest"):
            out = ws.root / "formats" / f"pdf-{tool}.json"
            data, res = _child(ws, ["pdf", tool, str(pdf_file), str(out)], f"pdf-{tool}")
            rate[tool].append(data["pages"] / data["seconds"])
            rss[tool].append(res.maxrss_mib)
            texts[tool] = json.loads(out.read_text())
            log(f"  {tool}: {data['pages']} pages in {data['seconds']:.2f} s, peak RSS {res.maxrss_mib:.0f} MiB")
    agree = page_agreement(texts["kbingest"], texts["pypdf"])
    ratios = [a / b for a, b in zip(rate["kbingest"], rate["pypdf"])]
    rows.append(
        Row(
            "9.1",
            "PDF text extraction, kbingest (pypdfium2) / pypdf pages per second (same file)",
            unit="x",
            values=ratios,
            op=">=",
            target=3.0,
            goal=">= 3",
            note=f"{n_pdf_pages}-page PDF made from {len(md_pages)} corpus pages (reportlab: bookmarks, "
            f"running header, page numbers); kbingest includes its cleaning (outline headings, "
            f"running lines, hyphenation); pypdf: PdfReader + page.extract_text() (PyPDFLoader). "
            f"Word agreement per page, kbingest vs pypdf: {agree:.3f} (the running header and page "
            f"number kbingest drops are part of the difference).",
        )
    )
    for k, tool in enumerate(("kbingest", "pypdf")):
        rows.append(Row(f"9.{2 + k}", f"PDF pages per second, {tool}", unit="pages/s", values=rate[tool]))
        rows.append(Row(f"9.{4 + k}", f"PDF extraction peak RSS, {tool} (child process)", unit="MiB", values=rss[tool]))
    rows.append(
        Row(
            "9.6",
            "PDF text agreement kbingest vs pypdf (mean per-page word-sequence similarity)",
            unit="",
            values=[agree],
        )
    )

    # HTML
    n_html = ctx.pages(None, 40)
    truth = make_html(spread(ws.all_pages, n_html), ws.root / "formats" / "html")
    sets = [("synthetic", truth)]
    real = real_html_pages(40 if ctx.quick else 120)
    if real:
        sets.append(("mdBook", real))
    tools = ("kbingest", "bs4-get_text", "html2text", "trafilatura")
    key = 7
    for label, pages in sets:
        files = [t["file"] for t in pages]
        mbs: dict[str, list[float]] = {t: [] for t in tools}
        scores: dict[str, dict[str, float]] = {}
        flist = ws.root / "formats" / f"html-{label}.json"
        flist.write_text(json.dumps(files))
        for i in range(reps):
            for tool in tools if i % 2 == 0 else tuple(reversed(tools)):
                out = ws.root / "formats" / f"html-{label}-{tool}.json"
                data, _ = _child(ws, ["html", tool, str(flist), str(out)], f"html-{tool}")
                mbs[tool].append(data["mb"] / data["seconds"])
                if tool not in scores:
                    scores[tool] = html_scores(pages, json.loads(out.read_text()))
        mb = sum(t["bytes"] for t in pages) / 1e6
        peer_best = [max(mbs[t][i] for t in tools if t != "kbingest") for i in range(reps)]
        bs4 = mbs["bs4-get_text"]
        desc = (
            "HTML pages of the corpus in a site template (header, nav, sidebar, cookie banner, footer, scripts)"
            if label == "synthetic"
            else "real mdBook pages (the Rust book from rustup); boilerplate = navigation"
        )
        q = "; ".join(
            f"{t}: boilerplate removed {s['boilerplate_removed']:.0%}, content words kept "
            f"{s['content_kept']:.0%}, code blocks whole {s['code_whole']:.0%} of {s['code_blocks']}, "
            f"table rows whole {s['rows_whole']:.0%} of {s['table_rows']}"
            for t, s in scores.items()
        )
        rows.append(
            Row(
                f"9.{key}",
                f"HTML to text, kbingest / BeautifulSoup get_text MB/s ({label})",
                unit="x",
                values=[a / b for a, b in zip(mbs["kbingest"], bs4)],
                op=">=",
                target=1.0,
                goal="> 1",
                note=f"{len(pages)} pages, {mb:.1f} MB: {desc}. {q}. kbingest / fastest peer: "
                f"{fj_ratio(mbs['kbingest'], peer_best)}.",
            )
        )
        for t in tools:
            rows.append(Row(f"9.{key}.{t}", f"HTML MB/s, {t} ({label})", unit="MB/s", values=mbs[t]))
        s = scores["kbingest"]
        rows.append(
            Row(
                f"9.{key}.boilerplate",
                f"HTML boilerplate phrases removed, kbingest ({label})",
                unit="share",
                values=[s["boilerplate_removed"]],
            )
        )
        if s["code_blocks"]:
            rows.append(
                Row(
                    f"9.{key}.code",
                    f"HTML code blocks kept whole, kbingest ({label})",
                    unit="share",
                    values=[s["code_whole"]],
                    op=">=",
                    target=0.95,
                    goal=">= 0.95",
                )
            )
        if s["table_rows"]:
            rows.append(
                Row(
                    f"9.{key}.tables",
                    f"HTML table rows kept whole, kbingest ({label})",
                    unit="share",
                    values=[s["rows_whole"]],
                    op=">=",
                    target=0.95,
                    goal=">= 0.95",
                )
            )
        key += 1
    return rows


def fj_ratio(a: list[float], b: list[float]) -> str:
    return ", ".join(f"{x / y:.2f}x" for x, y in zip(a, b))


def main(argv: list[str]) -> int:
    kind, tool = argv[0], argv[1]
    if kind == "pdf":
        out = _pdf_child(tool, argv[2], argv[3])
    else:
        out = _html_child(tool, json.loads(Path(argv[2]).read_text()), argv[3])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
