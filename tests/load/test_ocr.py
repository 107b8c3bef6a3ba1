"""OCR in the loading phase (pipeline/load/formats/ocr.py, image.py, the PDF hook): scanned PDFs and images
are read offline with --ocr auto|off|force; bombs and bad images fail as one document's error with
their kind; a pause lands within one page. Fixtures are made here: text typeset with reportlab,
rendered with PDFium to pixels (the text is the truth), put back in an image-only PDF or saved as
PNG / JPEG / TIFF. Pages are small (5 x 2 in) so the real engine reads each in about a second."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli

from kbingest.pipeline.job.control import RunControl, Stopped
from kbingest.pipeline.load.formats import for_path, ocr
from kbingest.pipeline.load.formats.base import LoadError, NoText
from kbingest.pipeline.load.formats.image import IMAGE, MAX_IMAGE_PIXELS
from kbingest.pipeline.load.formats.pdf import PDF
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.status import JobStatus

needs_engine = pytest.mark.skipif(not ocr.available(), reason="the OCR extra (kbingest[ocr]) is not installed")

PAGE_1 = ["Priming the turbine manifold", "before the first start of the season."]
PAGE_2 = ["Retire idle virtual machines", "every week to lower the cost."]
PAGE_SIZE = (360, 144)  # points: 5 x 2 inches


def _typeset(pages: list[list[str]]) -> bytes:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=PAGE_SIZE)
    for lines in pages:
        t = c.beginText(18, PAGE_SIZE[1] - 40)
        t.setFont("Helvetica", 16)
        t.setLeading(24)
        for ln in lines:
            t.textLine(ln)
        c.drawText(t)
        c.showPage()
    c.save()
    return buf.getvalue()


def _pixels(pages: list[list[str]], dpi: int = 200):
    """Each page typeset, then rendered to a grayscale PIL image: what a scanner sees."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(_typeset(pages))
    try:
        return [pdf[i].render(scale=dpi / 72, grayscale=True).to_pil().convert("L") for i in range(len(pdf))]
    finally:
        pdf.close()


def scanned_pdf(pages: list[list[str]], layer: list[str] | None = None) -> bytes:
    """An image-only PDF of these pages; with `layer`, each page also carries this text layer."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=PAGE_SIZE)
    for im in _pixels(pages):
        c.drawImage(ImageReader(im), 0, 0, width=PAGE_SIZE[0], height=PAGE_SIZE[1])
        if layer:  # invisible (render mode 3), as the text layer of a scan: only a text layer reads it
            t = c.beginText(4, 4)
            t.setFont("Helvetica", 6)
            t.setTextRenderMode(3)
            t.textLine(" ".join(layer))
            c.drawText(t)
        c.showPage()
    c.save()
    return buf.getvalue()


def image_bytes(fmt: str, pages: list[list[str]]) -> bytes:
    ims = _pixels(pages)
    buf = io.BytesIO()
    if fmt == "TIFF":
        ims[0].save(buf, "TIFF", save_all=True, append_images=ims[1:])
    else:
        ims[0].save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG of a few hundred bytes whose header claims width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("\\", "").split())


# ---- PDFs ----------------------------------------------------------------------------------------


@needs_engine
def test_scanned_pdf_is_read_by_ocr_page_by_page():
    counted = []
    with ocr.session("auto", on_page=counted.append):
        ex = PDF.extract(scanned_pdf([PAGE_1, PAGE_2]), path="scan.pdf")
    text = _norm(ex.text)
    assert "turbine manifold" in text and "idle virtual machines" in text
    assert len(ex.page_starts) == 2
    assert _norm(ex.text[ex.page_starts[1] :]).startswith("retire idle")  # page 2 holds page 2's text
    assert len(ex.page_ocr) == 2 and all(c is not None and c > ocr.CONFIDENCE_FLOOR for c in ex.page_ocr)
    assert counted == [True, True]  # two pages read, both by OCR
    assert not ex.warnings


def test_ocr_off_keeps_the_no_text_layer_error():
    with ocr.session("off"), pytest.raises(LoadError) as e:
        PDF.extract(scanned_pdf([PAGE_1]), path="scan.pdf")
    assert e.value.kind == "no_text_layer" and "--ocr auto" in e.value.message


@needs_engine
def test_force_rereads_pages_that_have_a_text_layer():
    data = scanned_pdf([PAGE_1], layer=["a stale caption layer that says nothing useful here"])
    with ocr.session("auto"):
        auto = PDF.extract(data, path="x.pdf")
    assert "stale caption" in auto.text and "turbine" not in auto.text.lower() and auto.page_ocr == ()
    with ocr.session("force"):
        forced = PDF.extract(data, path="x.pdf")
    assert "turbine manifold" in _norm(forced.text) and "stale caption" not in forced.text
    assert forced.page_ocr[0] is not None


def test_text_pdf_is_not_ocrd_and_pages_are_counted():
    counted = []
    with ocr.session("auto", on_page=counted.append):
        ex = PDF.extract(_typeset([PAGE_1, PAGE_2]), path="t.pdf")
    assert counted == [False, False] and ex.page_ocr == ()


# ---- images --------------------------------------------------------------------------------------


@needs_engine
@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_image_of_a_page_is_read(fmt, suffix):
    data = image_bytes(fmt, [PAGE_1])
    assert for_path("page" + suffix) is IMAGE and IMAGE.identify(data[:8192]) is None
    ex = IMAGE.extract(data, path="page" + suffix)
    assert "turbine manifold" in _norm(ex.text) and ex.page_starts == (0,) and ex.page_ocr[0] > 0.8


@needs_engine
def test_tiff_frames_are_pages():
    ex = IMAGE.extract(image_bytes("TIFF", [PAGE_1, PAGE_2]), path="scan.tif")
    assert len(ex.page_starts) == 2 and len(ex.page_ocr) == 2
    assert "turbine" in _norm(ex.text[: ex.page_starts[1]]) and "idle virtual" in _norm(ex.text[ex.page_starts[1] :])


def test_bomb_png_fails_fast_in_bounded_memory():
    import tracemalloc

    data = bomb_png()
    assert len(data) < 1000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(LoadError) as e:
            IMAGE.extract(data, path="bomb.png")
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.kind == "too_large" and "100,000 x 100,000" in e.value.message
    assert took < 2.0 and peak < 16 * 2**20


def test_image_just_over_the_pixel_limit_is_refused_before_decoding(monkeypatch):
    side = int(MAX_IMAGE_PIXELS**0.5) + 10  # under Pillow's own bomb limit: only kbingest's stops it

    def no_engine():
        raise AssertionError("refused from the header: no engine, no decoding")

    monkeypatch.setattr(ocr, "_load_engine", no_engine)
    with pytest.raises(LoadError) as e:
        IMAGE.extract(bomb_png(side, side), path="big.png")
    assert e.value.kind == "too_large"


@needs_engine
def test_truncated_jpeg_is_truncated():
    data = image_bytes("JPEG", [PAGE_1])
    with pytest.raises(LoadError) as e:
        IMAGE.extract(data[: len(data) // 2], path="cut.jpg")
    assert e.value.kind == "truncated"


def test_png_that_is_a_pdf_is_wrong_format_and_garbage_is_corrupt(tmp_path):
    from kbingest.pipeline.load.loading import Candidate, LoadLimits, read_document

    p = tmp_path / "page.png"
    p.write_bytes(_typeset([PAGE_1]))
    st = p.stat()
    with pytest.raises(LoadError) as e:
        read_document(Candidate(str(p), str(tmp_path), st.st_size, st.st_mtime_ns), LoadLimits())
    assert e.value.kind == "wrong_format" and "a PDF document" in e.value.message
    with pytest.raises(LoadError) as e:
        IMAGE.extract(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, path="bad.png")
    assert e.value.kind in ("corrupt", "truncated")


def test_images_with_ocr_off_are_no_text_layer():
    with ocr.session("off"), pytest.raises(LoadError) as e:
        IMAGE.extract(bomb_png(100, 100), path="x.png")
    assert e.value.kind == "no_text_layer"


def _picture(size=(240, 160)) -> bytes:
    """A PNG drawing without any text (a logo: a disc and a bar)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    d.ellipse((20, 20, 120, 120), fill=(30, 90, 200))
    d.rectangle((140, 60, 220, 80), fill=(220, 120, 20))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_tiny_image_is_skipped_as_without_text_and_never_ocrd(monkeypatch):
    from PIL import Image

    def no_engine():
        raise AssertionError("a tiny image runs no OCR")

    monkeypatch.setattr(ocr, "_load_engine", no_engine)
    for size in ((16, 16), (300, 20), (60, 60)):  # an icon, a thin rule, under MIN_PIXELS
        buf = io.BytesIO()
        Image.new("RGB", size, "white").save(buf, "PNG")
        with pytest.raises(NoText) as e:
            IMAGE.extract(buf.getvalue(), path="_static/icon.png")
        assert e.value.kind == "no_text" and f"{size[0]} x {size[1]} pixels is too small" in e.value.message


def test_an_image_where_ocr_finds_no_text_is_no_text_not_an_error(monkeypatch):
    monkeypatch.setattr(ocr, "available", lambda engine=None: True)
    monkeypatch.setattr(ocr, "_load_engine", lambda: None)
    monkeypatch.setattr(ocr, "recognize", lambda image: ocr.PageText("", None, 0))
    with pytest.raises(NoText) as e:
        IMAGE.extract(_picture(), path="logo.png")
    assert "OCR found no text in the image" in e.value.message


@needs_engine
def test_a_docs_folder_with_icons_and_logos_ingests_with_exit_0(tmp_path):
    """A built documentation site's _static/ images: skipped with a warning each, counted, not errors."""
    docs = tmp_path / "site"
    (docs / "_static").mkdir(parents=True)
    (docs / "index.md").write_text("# Guide\n\nPriming the turbine manifold before the first start.\n")
    (docs / "_static" / "logo.png").write_bytes(_picture())
    from PIL import Image

    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(docs / "_static" / "favicon.png")
    (docs / "_static" / "scan.png").write_bytes(image_bytes("PNG", [PAGE_1]))  # an image with text is loaded
    r = run_cli("ingest", str(docs), "--kb", "site", "--batch", "--embedder", "fake", home=tmp_path / "home")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    m = json.loads(r.stdout.splitlines()[-1])["metrics"]
    assert not m.get("document_errors") and m.get("documents_failed") in (None, 0)
    assert m["documents_added"] == 2 and m["documents_without_text"] == 2
    warned = {Path(w["path"]).name: w["warning"] for w in m["document_warning_list"]}
    assert "too small to hold text" in warned["favicon.png"] and "no text" in warned["logo.png"]
    assert m["pages_ocr"] == 2  # the logo and the scan; the favicon never reached OCR


def test_a_box_read_as_no_letter_or_digit_is_a_shape_not_text():
    box = [[0, 0], [100, 0], [100, 20], [0, 20]]
    below = [[0, 40], [100, 40], [100, 60], [0, 60]]
    page = ocr._layout([(box, "●-", 0.81), (below, "Retire idle machines.", 0.97)])
    assert page.text == "Retire idle machines." and page.lines == 1 and page.confidence == pytest.approx(0.97)
    assert ocr._layout([(box, "•", 0.9)]) == ocr.PageText("", None, 0)


@needs_engine
def test_the_engine_only_uses_the_models_in_its_wheel_and_never_downloads(monkeypatch):
    """kbingest names RapidOCR's model files: one missing is ocr_unavailable, never a download."""
    monkeypatch.setattr(ocr, "_engine", None)
    monkeypatch.setattr(ocr, "MODEL_FILES", {**ocr.MODEL_FILES, "Rec": "not-in-the-wheel.onnx"})
    with pytest.raises(LoadError) as e:
        ocr._load_engine()
    assert e.value.kind == "ocr_unavailable" and ocr._engine is None


@needs_engine
def test_the_detector_sees_a_page_at_most_det_side_pixels_long():
    """A 300 dpi page is not fed whole to the text detector (its cost and buffers grow with the area):
    it is scaled to ocr.DET_SIDE on its longer side; lines are still cut from the full image."""
    import numpy as np

    engine = ocr._load_engine()
    seen = []
    real = engine.text_det.session

    def spy(x):
        seen.append(x.shape)
        return real(x)

    engine.text_det.session = spy
    try:
        page = ocr.recognize(np.full((ocr.MAX_SIDE, 1697), 255, dtype=np.uint8))  # an A4 page, blank: no lines
    finally:
        engine.text_det.session = real
    assert seen and max(seen[0][2:]) <= ocr.DET_SIDE < ocr.MAX_SIDE
    assert page == ocr.PageText("", None, 0)


# ---- the pool: pause within one page, time limit --------------------------------------------------


def _slow_pages(monkeypatch, seconds: float, started: list):
    monkeypatch.setattr(ocr, "_load_engine", lambda: None)

    def slow(image):
        started.append(image)
        time.sleep(seconds)
        return ocr.PageText(f"page {image}", 0.9, 1)

    monkeypatch.setattr(ocr, "recognize", slow)


def test_a_pause_lands_within_one_page(monkeypatch):
    started: list = []
    _slow_pages(monkeypatch, 1.5, started)
    control = RunControl()
    sess = ocr.Session(mode="auto", stop=control.check)
    got = []
    threading.Timer(0.3, control.request, args=(JobStatus.PAUSED,)).start()  # while the first page runs
    t0 = time.perf_counter()
    with pytest.raises(Stopped):
        for r in ocr.read_pages(((i, i) for i in range(20)), sess):
            got.append(r)
    took = time.perf_counter() - t0
    assert took < 0.3 + ocr.WAIT_SLICE + 0.4  # not even the page running: the loader waits in slices
    time.sleep(1.6)
    assert len(started) <= ocr.WORKERS + 1  # queued pages were dropped, not read after the stop


def test_a_page_over_the_time_limit_is_left_out_with_a_warning(monkeypatch):
    started: list = []
    _slow_pages(monkeypatch, 0.8, started)
    monkeypatch.setattr(ocr, "PAGE_SECONDS", 0.2)
    results = list(ocr.read_pages([(0, 0)], ocr.Session()))
    assert results[0].page is None and "more than" in results[0].warning


# ---- settings ------------------------------------------------------------------------------------


def test_ocr_setting_is_versioned_and_its_default_keeps_versions():
    base = JobConfig(sources=["x"], kb="k")
    assert "ocr" in JobConfig.VERSIONED and base.ocr == "auto"
    assert "ocr" not in base.version_key()  # the default re-ingests nothing
    assert JobConfig(sources=["x"], kb="k", ocr="force").version_key() != base.version_key()


# ---- re-runs: an unchanged scan is not read again -------------------------------------------------


def _ingest(home, src: Path):
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store

    config = JobConfig(sources=[str(src.resolve())], kb="scans", embedder="fake")
    snap = IngestJob.create(home, open_store(home), config).run()
    assert snap.status.value == "completed", (snap.message, snap.error)
    return snap.metrics


def test_an_unchanged_folder_of_scans_is_not_read_again(tmp_path, home, monkeypatch):
    """A document's version comes from its bytes and the settings, before its format extracts it: a
    re-run over unchanged scans calls no OCR engine and extracts nothing; a changed scan is read."""
    from kbingest.pipeline.load import loading

    engine_calls: list = []
    monkeypatch.setattr(ocr, "available", lambda engine=None: True)
    monkeypatch.setattr(ocr, "_load_engine", lambda: None)

    def fake_engine(image):  # behind the same interface as RapidOCR's page reader
        engine_calls.append(image.shape)
        return ocr.PageText(f"Retire idle virtual machines every week, page {len(engine_calls)}.", 0.95, 1)

    monkeypatch.setattr(ocr, "recognize", fake_engine)
    extracted: list = []
    real_extract = loading.loaded_from_bytes

    def counting_extract(path, *args, **kwargs):
        extracted.append(Path(path).name)
        return real_extract(path, *args, **kwargs)

    monkeypatch.setattr(loading, "loaded_from_bytes", counting_extract)

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(scanned_pdf([PAGE_1, PAGE_2]))
    (docs / "photo.png").write_bytes(image_bytes("PNG", [PAGE_1]))
    (docs / "notes.md").write_text("# Notes\n\nPlain text is read as before.\n")

    first = _ingest(home, docs)
    assert len(engine_calls) == 3 and first["documents_added"] == 3 and first["chunks_embedded"] > 0
    assert sorted(extracted) == ["notes.md", "photo.png", "scan.pdf"]

    engine_calls.clear()
    extracted.clear()
    again = _ingest(home, docs)
    assert engine_calls == [] and extracted == []  # nothing parsed, no page read by OCR
    assert again["documents_skipped"] == 3 and not again.get("chunks_embedded") and not again.get("pages_ocr")

    (docs / "photo.png").write_bytes(image_bytes("PNG", [PAGE_2]))  # a new scan under the same name
    changed = _ingest(home, docs)
    assert len(engine_calls) == 1 and extracted == ["photo.png"]
    assert changed["documents_replaced"] == 1 and changed["documents_skipped"] == 2 and changed["pages_ocr"] == 1


# ---- --ocr-engine tesseract: the system's Tesseract behind the same page reader -------------------

needs_tesseract = pytest.mark.skipif(
    __import__("shutil").which("tesseract") is None, reason="tesseract is not installed (Debian's tesseract-ocr)"
)


def test_ocr_engine_setting_is_versioned_and_its_default_keeps_versions():
    base = JobConfig(sources=["x"], kb="k")
    assert "ocr_engine" in JobConfig.VERSIONED and "ocr_engine" in JobConfig.USER_SETTABLE
    assert base.ocr_engine == "rapidocr" and "ocr_engine" not in base.version_key()
    assert JobConfig(sources=["x"], kb="k", ocr_engine="tesseract").version_key() != base.version_key()


def test_tesseract_tsv_becomes_lines_paragraphs_and_a_confidence():
    head = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"

    def word(block, par, line, n, conf, text):
        return f"5\t1\t{block}\t{par}\t{line}\t{n}\t0\t0\t10\t10\t{conf}\t{text}"

    tsv = "\n".join(
        [
            head,
            "4\t1\t1\t1\t1\t0\t0\t0\t10\t10\t-1\t",  # a line row: not a word
            word(1, 1, 1, 1, 90, "Retire"),
            word(1, 1, 1, 2, 80, "idle"),
            word(1, 1, 2, 1, 100, "machines."),
            word(1, 1, 3, 1, 50, "~"),  # a speck read as a symbol: left out
            word(2, 1, 1, 1, 70, "Weekly"),
        ]
    )
    page = ocr._tesseract_layout(tsv)
    assert page.text == "Retire idle\nmachines.\n\nWeekly" and page.lines == 3
    assert page.confidence == pytest.approx((6 * 0.9 + 4 * 0.8 + 9 * 1.0 + 6 * 0.7) / 25)


def test_tesseract_missing_is_ocr_unavailable_in_kbingest_words(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with ocr.session("auto", engine="tesseract"), pytest.raises(LoadError) as e:
        IMAGE.extract(image_bytes("PNG", [PAGE_1]), path="photo.png")
    assert e.value.kind == "ocr_unavailable" and "tesseract-ocr" in e.value.message
    with ocr.session("auto", engine="tesseract"), pytest.raises(LoadError) as e:
        PDF.extract(scanned_pdf([PAGE_1]), path="scan.pdf")
    assert e.value.kind == "ocr_unavailable" and "(tesseract)" in e.value.message


@needs_tesseract
def test_ocr_engine_tesseract_from_the_cli_reads_the_scan_and_search_finds_its_page(tmp_path):
    import os
    import shutil
    import stat

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(scanned_pdf([PAGE_1, PAGE_2]))
    home = tmp_path / "home"
    calls = tmp_path / "tesseract-calls"
    wrapper = tmp_path / "bin" / "tesseract"  # the real one, each call noted: the pages went through it
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {shutil.which("tesseract")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    path = {"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}
    args = ["--kb", "scans", "--batch", "--embedder", "fake", "--chunk-tokens", "16", "--overlap", "0"]
    r = run_cli("ingest", str(docs), *args, "--ocr-engine", "tesseract", home=home, env=path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.splitlines()[-1])["metrics"]
    assert m["documents_added"] == 1 and m["pages_ocr"] == 2
    assert len(calls.read_text().splitlines()) == 2  # one Tesseract run a page
    hits = json.loads(
        run_cli("search", "--kb", "scans", "idle virtual machines", "--json", "--mode", "text", home=home).stdout
    )
    assert hits[0]["page"] == 2 and "virtual machines" in hits[0]["text"].lower()
    assert "turbine" not in hits[0]["text"].lower()


# ---- end to end: the CLI, then search --------------------------------------------------------------


@needs_engine
def test_scanned_pdf_and_photo_ingest_and_search_finds_their_page(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(scanned_pdf([PAGE_1, PAGE_2]))
    (docs / "photo.jpg").write_bytes(image_bytes("JPEG", [["Calibrate the pressure gauge", "after each repair."]]))
    home = tmp_path / "home"
    r = run_cli(
        "ingest",
        str(docs),
        "--kb",
        "scans",
        "--batch",
        "--embedder",
        "fake",
        "--chunk-tokens",
        "16",
        "--overlap",
        "0",
        home=home,
    )  # small chunks: one a page at least
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    m = final["metrics"]
    assert m["documents_added"] == 2 and m["pages_read"] == 3 and m["pages_ocr"] == 3
    assert m["documents_by_format"] == {"pdf": 1, "image": 1}

    hits = json.loads(
        run_cli("search", "--kb", "scans", "idle virtual machines", "--json", "--mode", "text", home=home).stdout
    )
    top = hits[0]
    assert top["source"].endswith("scan.pdf") and "virtual machines" in top["text"].lower()
    assert "turbine" not in top["text"].lower() and top["page"] == 2
    hits = json.loads(
        run_cli("search", "--kb", "scans", "pressure gauge", "--json", "--mode", "text", home=home).stdout
    )
    assert hits[0]["source"].endswith("photo.jpg") and hits[0]["page"] == 1

    import lancedb

    rows = (
        lancedb.connect(str(home / "lancedb"))
        .open_table("scans")
        .search(None)
        .select(["source", "ocr_confidence"])
        .limit(None)
        .to_list()
    )
    assert rows and all(0.8 < row["ocr_confidence"] <= 1.0 for row in rows)


def test_ocr_off_from_the_cli_fails_the_scan_with_no_text_layer(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(scanned_pdf([PAGE_1]))
    (docs / "notes.md").write_text("# Notes\n\nPlain text is read as before.\n")
    r = run_cli(
        "ingest", str(docs), "--kb", "k", "--batch", "--embedder", "fake", "--ocr", "off", home=tmp_path / "home"
    )
    assert r.returncode == 3, r.stderr
    m = json.loads(r.stdout.splitlines()[-1])["metrics"]
    assert [(Path(e["path"]).name, e["kind"]) for e in m["document_errors"]] == [("scan.pdf", "no_text_layer")]
    assert m.get("pages_ocr") in (None, 0) and m["pages_read"] == 1
