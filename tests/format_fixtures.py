"""Documents of every format, built in code (reportlab, python-docx, Pillow: the test extra), so no
binary fixture is shipped and every property a test relies on is visible here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

RUNNING_HEADER = "ACME Field Manual - Confidential"
CHAPTERS = ("Safety rules", "Installing the pump", "Maintenance schedule")
PAGE_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett")


def outline_pdf(pages_per_chapter: int = 2) -> bytes:
    """A PDF with an outline (one bookmark per chapter, a nested one in chapter 2), a running header
    and a page-number footer on every page, a hyphenated line end, and a two-column page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    c.setTitle("ACME Pump Manual")
    width, height = A4
    page = 0
    for ch, name in enumerate(CHAPTERS, 1):
        for k in range(pages_per_chapter):
            page += 1
            c.setFont("Helvetica", 9)
            c.drawString(72, height - 40, RUNNING_HEADER)
            c.drawString(width / 2, 30, f"Page {page}")
            y = height - 90
            if k == 0:
                key = f"ch{ch}"
                c.bookmarkPage(key)
                c.addOutlineEntry(name, key, level=0)
                c.setFont("Helvetica-Bold", 16)
                c.drawString(72, y, name)
                y -= 30
            c.setFont("Helvetica", 11)
            if ch == 2 and k == 1:  # a two-column page with a nested bookmark
                c.bookmarkPage("ch2-columns")
                c.addOutlineEntry("Column layout", "ch2-columns", level=1)
                for i in range(12):
                    c.drawString(72, y - 16 * i, f"Left column line {i} about impellers.")
                for i in range(12):
                    c.drawString(320, y - 16 * i, f"Right column line {i} about seals.")
                c.showPage()
                continue
            word = PAGE_WORDS[(page - 1) % len(PAGE_WORDS)]
            lines = [
                f"In {name.lower()}, {word} says the pump must be primed before use.",
                f"Check the {word} valve and the inlet for a clean connec-",
                "tion before you start the motor.",
                f"The marker {word} closes this page.",
            ]
            for i, line in enumerate(lines):
                c.drawString(72, y - 16 * i, line)
            c.showPage()
    c.save()
    return buf.getvalue()


def many_pages_pdf(pages: int) -> bytes:
    """A long PDF: a paragraph of text on each page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    for p in range(pages):
        t = c.beginText(72, 770)
        t.setFont("Helvetica", 10)
        for i in range(40):
            t.textLine(f"Page {p} line {i}: the quick brown fox jumps over the lazy dog near the river bank.")
        c.drawText(t)
        c.showPage()
    c.save()
    return buf.getvalue()


def scanned_pdf() -> bytes:
    """An image-only PDF, as a scanner makes: a picture of text, no text layer."""
    from PIL import Image, ImageDraw
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    img = Image.new("L", (600, 200), 255)
    ImageDraw.Draw(img).text((20, 80), "This text is only pixels.", fill=0)
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    for _ in range(2):
        c.drawImage(ImageReader(img), 72, 500, width=450, height=150)
        c.showPage()
    c.save()
    return buf.getvalue()


def encrypted_pdf() -> bytes:
    """A PDF that needs a user password to open."""
    from reportlab.lib import pdfencrypt
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    enc = pdfencrypt.StandardEncryption("user-secret", ownerPassword="owner-secret", strength=128)
    c = canvas.Canvas(buf, encrypt=enc)
    c.drawString(72, 720, "Secret text nobody should index.")
    c.showPage()
    c.save()
    return buf.getvalue()


def nested_objects_pdf(depth: int = 100_000) -> bytes:
    """A valid-looking PDF whose page dictionary holds an array nested `depth` deep."""
    nested = b"[" * depth + b"1" + b"]" * depth
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Deep " + nested + b" >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pump API &amp; Guide</title>
<style>body { font-family: sans-serif }</style>
<script>var tracking = "<div>never indexed</div>";</script></head>
<body>
<header class="site-header"><a href="/">ACME</a> <a href="/docs">Docs</a> <a href="/blog">Blog</a></header>
<nav><ul><li><a href="/a">Navigation link one</a></li><li><a href="/b">Navigation link two</a></li></ul></nav>
<div id="cookie-consent">We use cookies to improve your experience. <button>Accept all</button></div>
<main>
<h1>Pump API</h1>
<p>The pump exposes a <strong>small</strong> HTTP API. Call <code>start()</code> first.</p>
<h2>Starting the pump</h2>
<p>Prime the pump, then start it:</p>
<ul><li>open the valve</li><li>check the seals<ol><li>inlet seal</li><li>outlet seal</li></ol></li></ul>
<pre><code class="language-python">def start(pump):
    if pump.pressure &lt; 2:
        pump.prime()

    return pump.run()
</code></pre>
<h2>Settings</h2>
<table><thead><tr><th>Setting</th><th>Default</th></tr></thead>
<tbody><tr><td>pressure</td><td>2 bar</td></tr><tr><td>speed</td><td>1450 rpm</td></tr></tbody></table>
</main>
<aside class="sidebar">Related: the blower API</aside>
<footer class="site-footer">Copyright 2024 ACME Corp. All rights reserved.</footer>
</body></html>
"""


def nested_div_html(depth: int = 100_000) -> bytes:
    return (
        b"<html><head><title>Deep</title></head><body>"
        + b"<div>" * depth
        + b"text at the bottom"
        + b"</div>" * depth
        + b"</body></html>"
    )


def docx_bytes() -> bytes:
    """A Word document with a title, headings on three levels, bulleted and numbered lists and a table."""
    import docx

    d = docx.Document()
    d.add_heading("Pump Handbook", level=0)
    d.add_heading("Operation", level=1)
    d.add_paragraph("Start the pump only when it is primed.")
    d.add_paragraph("open the inlet valve", style="List Bullet")
    d.add_paragraph("check the pressure gauge", style="List Bullet")
    d.add_paragraph("inspect the inner seal", style="List Bullet 2")
    d.add_heading("Settings", level=2)
    d.add_paragraph("switch on", style="List Number")
    d.add_paragraph("wait for pressure", style="List Number")
    t = d.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Setting", "Default"), ("pressure", "2 bar"), ("speed", "1450 rpm")]):
        t.cell(r, 0).text, t.cell(r, 1).text = a, b
    d.add_heading("Maintenance", level=1)
    d.add_paragraph("Replace the seals every year.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def zip_bomb_docx(uncompressed_mb: int = 100) -> bytes:
    """A .docx-looking zip whose document.xml inflates to `uncompressed_mb` MiB (compresses ~1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            block = b"<w:t>" + b"A" * (1 << 20) + b"</w:t>"
            for _ in range(uncompressed_mb):
                f.write(block)
    return buf.getvalue()


def many_entries_zip(entries: int = 20_000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        for i in range(entries):
            z.writestr(f"word/media/e{i}.xml", b"")
    return buf.getvalue()


def load(path: Path, limits=None):
    """read_document on one file, as the loader reads it in a job."""
    from kbingest.pipeline.load.loading import Candidate, LoadLimits, read_document

    st = path.stat()
    return read_document(Candidate(str(path), str(path.parent), st.st_size, st.st_mtime_ns), limits or LoadLimits())


def extract_error(fmt, data: bytes):
    """The LoadError a format raises on these bytes (fails the test when it raises none)."""
    import pytest

    from kbingest.pipeline.load.formats.base import LoadError

    with pytest.raises(LoadError) as e:
        fmt.extract(data, path="x" + fmt.suffixes[0])
    return e.value


def heading_paths(markdown: str) -> set[str]:
    """The heading paths the Markdown chunker gives this text's chunks."""
    from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings

    return {c.heading_path for c in Chunker(ChunkSettings()).chunk(markdown, markdown=True).chunks}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
