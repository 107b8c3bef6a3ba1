"""OCR: the text of page images, offline, for the formats (scanned PDF pages, image files).

The engine is RapidOCR (`rapidocr` 3.10, the extra `kbingest[ocr]`): PaddleOCR's PP-OCRv6 small
detection and recognition models, shipped inside its wheel, run on the onnxruntime kbingest already
has. kbingest names the model files (MODEL_FILES): RapidOCR never looks for, or downloads, any other;
a file missing is `ocr_unavailable`. The engine is loaded once per process, at the first page that
needs it; pages run on a pool of its own (WORKERS threads, one onnxruntime thread each: the cores the
embedding phase does not need), at most WORKERS pages in flight, while the loader renders the next.

The loader sets, per document, what OCR may do (`session`): the mode (--ocr auto|off|force), how to
stop (RunControl.check: a pause is honoured within one page, since the loader waits for a page in
slices) and where pages are counted (the loading phase's pages_read / pages_ocr metrics).
Limits: PAGE_SECONDS per page (a page past it is left out, with a warning), MAX_SIDE pixels on a
page image's longer side (larger ones are scaled down first), CONFIDENCE_FLOOR (a page read with less
is flagged). Nothing here raises anything but LoadError, or Stopped from the session's stop.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from kbingest.pipeline.load.formats.base import LoadError

MODES = ("auto", "off", "force")
ENGINE = "rapidocr"  # the package (3.10.x): PP-OCRv6 small det + rec, in its wheel
# the models in rapidocr 3.10's wheel (rapidocr/models/), named so that nothing is downloaded; the angle
# classifier's file is named too, though it is off (RapidOCR would fetch a default one otherwise)
MODEL_FILES = {
    "Det": "PP-OCRv6_det_small.onnx",
    "Rec": "PP-OCRv6_rec_small.onnx",
    "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
}
INSTALL_HINT = "pip install 'kbingest[ocr]'"
ENGINES = ("rapidocr", "tesseract")  # --ocr-engine
TESSERACT_HINT = "install Debian's tesseract-ocr (apt-get install tesseract-ocr), or ingest with --ocr-engine rapidocr"
WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))  # the cores the embedding phase does not need
MAX_SIDE = 2400  # pixels on a page image's longer side given to the engine (A4 at ~200 dpi)
# The text detector sees the page scaled to at most DET_SIDE pixels on its longer side (RapidOCR's
# Det.limit_type "max"; its default, "min" 736, feeds a 300 dpi page to the detector whole, 1697 x 2400):
# at 1280, a third of the time of 2000 and CER unchanged (docs/formats.md, OCR figures). Lines are still
# cut from the MAX_SIDE image for recognition, which is where the time goes (about 90 %).
DET_SIDE = 1280
# One line a recognition call: RapidOCR pads a batch's lines to its widest, so batches of 6 cost
# 1.4 times as much on a page of prose (docs/formats.md, OCR figures).
REC_BATCH = 1
PAGE_SECONDS = 120.0  # one page's OCR; past it, the page is left out (a warning says so)
CONFIDENCE_FLOOR = 0.80  # pages read with a lower mean confidence are flagged
MIN_LAYER_CHARS = 16  # --ocr auto: a PDF page with fewer characters of text layer is read by OCR
WAIT_SLICE = 0.1  # seconds the loader waits for a page between two looks at the stop

log = logging.getLogger("kbingest.ocr")


@dataclass(frozen=True)
class Session:
    """What OCR may do for the document being loaded, and whom it tells."""

    mode: str = "auto"
    stop: Callable[[], None] = lambda: None  # raises Stopped when the run is asked to stop
    on_page: Callable[[bool], None] = lambda ocr: None  # a page was read (ocr: by OCR)
    engine: str = "rapidocr"  # --ocr-engine: rapidocr (the extra kbingest[ocr]) or tesseract (the system's)


_SESSION: contextvars.ContextVar[Session] = contextvars.ContextVar("kbingest_ocr_session", default=Session())  # noqa: B039 (frozen)


def current() -> Session:
    return _SESSION.get()


@contextlib.contextmanager
def session(
    mode: str = "auto",
    stop: Optional[Callable[[], None]] = None,
    on_page: Optional[Callable[[bool], None]] = None,
    engine: str = "rapidocr",
) -> Iterator[Session]:
    """Within it, formats read pages with this mode, engine, stop and counter (the loader: one per document)."""
    if mode not in MODES:
        raise ValueError(f"ocr mode must be one of {', '.join(MODES)}")
    if engine not in ENGINES:
        raise ValueError(f"ocr engine must be one of {', '.join(ENGINES)}")
    s = Session(mode=mode, stop=stop or (lambda: None), on_page=on_page or (lambda ocr: None), engine=engine)
    token = _SESSION.set(s)
    try:
        yield s
    finally:
        _SESSION.reset(token)


@dataclass(frozen=True)
class PageText:
    """One page as OCR read it: plain text (lines; a blank line between paragraphs) and the mean
    confidence of its lines, weighted by their characters (None when it found no text)."""

    text: str
    confidence: Optional[float]
    lines: int


# ---------------------------------------------------------------------------------- the engine
_lock = threading.Lock()
_engine = None
_pool: Optional[ThreadPoolExecutor] = None


def available(engine: Optional[str] = None) -> bool:
    """Whether the session's OCR engine (or `engine`) is here: the extra kbingest[ocr] installed, or
    for --ocr-engine tesseract the `tesseract` command on PATH."""
    if (engine or current().engine) == "tesseract":
        return shutil.which("tesseract") is not None
    try:
        import importlib.util

        return importlib.util.find_spec("rapidocr") is not None
    except (ImportError, ValueError):
        return False


def unavailable(what: str, engine: Optional[str] = None) -> LoadError:
    name, hint = engine_and_hint(engine)
    return LoadError(
        "ocr_unavailable",
        f"{what} needs OCR, and the OCR engine ({name}) is not installed: {hint} (or ingest with --ocr off)",
    )


def engine_and_hint(engine: Optional[str] = None) -> tuple[str, str]:
    """The session's engine (or `engine`) as a person reads it, and how to install it."""
    if (engine or current().engine) == "tesseract":
        return "tesseract", TESSERACT_HINT
    return ENGINE, INSTALL_HINT


def _load_engine():
    global _engine
    with _lock:
        if _engine is None:
            try:
                import rapidocr
                from rapidocr import RapidOCR
            except ImportError as e:  # not installed, or its OpenCV cannot load
                log.debug("OCR engine not importable: %s", e)
                raise unavailable("this page") from None
            quiet = logging.getLogger("RapidOCR")  # it adds a stderr handler of its own: not in a dashboard
            for h in list(quiet.handlers):
                quiet.removeHandler(h)
            quiet.setLevel(logging.WARNING)
            models = os.path.join(os.path.dirname(rapidocr.__file__), "models")
            paths = {task: os.path.join(models, name) for task, name in MODEL_FILES.items()}
            if not all(os.path.isfile(p) for p in paths.values()):  # another rapidocr: never download
                log.debug("OCR models not found: %s", paths)
                raise unavailable("this page")
            # no angle classifier: on upright pages it turned whole lines upside down (garbage, or dropped
            # under text_score) and took a third of the time; pages rotated by 180 degrees are not read
            engine = RapidOCR(
                params={
                    "Global.use_cls": False,
                    "Global.max_side_len": MAX_SIDE,
                    "Global.log_level": "warning",
                    "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                    "Det.model_path": paths["Det"],
                    "Det.limit_type": "max",
                    "Det.limit_side_len": DET_SIDE,
                    "Rec.model_path": paths["Rec"],
                    "Rec.rec_batch_num": REC_BATCH,
                    "Cls.model_path": paths["Cls"],
                }
            )
            for h in list(quiet.handlers):
                quiet.removeHandler(h)
            # RapidOCR loads its models at the first page; here, once, on a line of text drawn for the
            # purpose (its public call: both models load), so a page's time is its own
            engine(_warm_up_image())
            _engine = engine
        return _engine


def _warm_up_image():
    """A small image of one printed word: enough for the detector to find a box and the recogniser to run."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (160, 48), "white")
    ImageDraw.Draw(img).text((10, 16), "kbingest", fill="black")
    return np.asarray(img.resize((480, 144)))


def _workers() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kbingest-ocr")
        return _pool


def _layout(result) -> PageText:
    """Lines in reading order (top to bottom, left to right on one row); a blank line where the gap
    to the next line is larger than a line's height (a new paragraph). A box read as no letter and no
    digit (PP-OCRv6 reads a logo's disc and bar as "●-") is a shape, not text: left out."""
    if not result:
        return PageText("", None, 0)
    items = []
    for box, text, score in result:
        text = (text or "").strip()
        if not any(ch.isalnum() for ch in text):
            continue
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        items.append((min(ys), max(ys), min(xs), text, float(score)))
    if not items:
        return PageText("", None, 0)
    items.sort(key=lambda t: (t[0], t[2]))
    heights = sorted(b - a for a, b, *_ in items)
    h = max(1.0, heights[len(heights) // 2])
    rows: list[list[tuple]] = []
    for it in items:  # boxes whose tops are within half a line height share a row
        if rows and abs(it[0] - rows[-1][0][0]) < 0.5 * h:
            rows[-1].append(it)
        else:
            rows.append([it])
    out: list[str] = []
    prev_bottom = None
    for row in rows:
        row.sort(key=lambda t: t[2])
        top = min(t[0] for t in row)
        if prev_bottom is not None and top - prev_bottom > 1.0 * h:
            out.append("")
        out.append(" ".join(t[3] for t in row))
        prev_bottom = max(t[1] for t in row)
    chars = sum(len(t[3]) for t in items)
    conf = sum(len(t[3]) * t[4] for t in items) / chars if chars else None
    return PageText("\n".join(out), conf, len(items))


def recognize(image) -> PageText:
    """The text of one page image (a 2-D uint8 grayscale array, or H x W x 3 BGR), in this thread."""
    engine = _load_engine()
    out = engine(image)
    boxes, txts, scores = out.boxes, out.txts, out.scores
    if boxes is None or txts is None or scores is None:  # no text found
        return _layout(None)
    return _layout([(box.tolist(), text, score) for box, text, score in zip(boxes, txts, scores)])


# ---------------------------------------------------------------------------------- Tesseract
def tesseract_page(image) -> PageText:
    """The text of one page image by the system's Tesseract (--ocr-engine tesseract), in this thread: the
    image given on stdin as a PNM (no image library needed), one core (OMP_THREAD_LIMIT=1: the pool runs
    pages side by side), its TSV read back. Lines as Tesseract finds them; a blank line between its
    paragraphs; the confidence its words' mean (0-100 -> 0-1), weighted by their characters."""
    import numpy as np

    arr = np.ascontiguousarray(image, dtype=np.uint8)
    if arr.ndim == 3:  # H x W x 3 BGR, as OpenCV gives it: PNM is RGB
        pnm = b"P6\n%d %d\n255\n" % (arr.shape[1], arr.shape[0]) + np.ascontiguousarray(arr[:, :, ::-1]).tobytes()
    else:
        pnm = b"P5\n%d %d\n255\n" % (arr.shape[1], arr.shape[0]) + arr.tobytes()
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    done = subprocess.run(
        ["tesseract", "stdin", "stdout", "-l", "eng", "tsv"],
        input=pnm,
        capture_output=True,
        env=env,
        timeout=PAGE_SECONDS + 10,  # the loader gives up at PAGE_SECONDS; the process does not outlive it long
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"tesseract exited {done.returncode}: {tail[0][:200]}")
    return _tesseract_layout(done.stdout.decode("utf-8", "replace"))


def _tesseract_layout(tsv: str) -> PageText:
    lines: dict[tuple[int, int, int], list[tuple[str, float]]] = {}
    for row in tsv.splitlines()[1:]:
        f = row.split("\t")
        if len(f) < 12 or f[0] != "5":  # words only
            continue
        text = f[11].strip()
        if not text:
            continue
        lines.setdefault((int(f[2]), int(f[3]), int(f[4])), []).append((text, max(0.0, float(f[10])) / 100.0))
    out: list[str] = []
    prev = None
    chars = weighted = 0.0
    count = 0
    for (block, par, _), words in lines.items():  # in Tesseract's reading order
        line = " ".join(w for w, _ in words)
        if not any(ch.isalnum() for ch in line):
            continue
        if prev is not None and prev != (block, par):
            out.append("")
        prev = (block, par)
        out.append(line)
        count += 1
        for w, c in words:
            chars += len(w)
            weighted += len(w) * c
    return PageText("\n".join(out), weighted / chars if chars else None, count)


# ---------------------------------------------------------------------------------- pages
@dataclass(frozen=True)
class PageResult:
    index: int  # the page's 0-based index in its document
    page: Optional[PageText]  # None: left out (timed out or failed), `warning` says why
    warning: Optional[str] = None


def read_pages(images: Iterable[tuple[int, object]], sess: Optional[Session] = None) -> Iterator[PageResult]:
    """OCR each (index, image) on the pool, in order. `images` is consumed lazily (the caller renders
    the next page while the pool reads this one); at most WORKERS + 1 page images are held at once. Between
    slices of WAIT_SLICE the session's stop is called: a pause or cancel lands within one page."""
    sess = sess or current()
    if sess.engine == "tesseract":
        if not available("tesseract"):
            raise unavailable("this page", "tesseract")
        reader = tesseract_page
    else:
        _load_engine()  # in the caller's thread: a missing engine is this document's error, early
        reader = recognize
    pool = _workers()
    inflight: deque[tuple[int, Future, list]] = deque()

    def run(image, started: list):
        started.append(time.monotonic())
        return reader(image)

    try:
        for index, image in images:
            sess.stop()
            started: list = []
            inflight.append((index, pool.submit(run, image, started), started))
            del image
            while len(inflight) > WORKERS:  # WORKERS pages on the pool, one more rendered ahead
                yield _settle(inflight.popleft(), sess)
        while inflight:
            yield _settle(inflight.popleft(), sess)
    finally:
        for _, fut, _ in inflight:  # stopped, or the caller gave up: pages not started are dropped
            fut.cancel()


def _settle(entry: tuple[int, Future, list], sess: Session) -> PageResult:
    index, fut, started = entry
    while True:
        sess.stop()
        try:
            page = fut.result(timeout=WAIT_SLICE)
        except FutureTimeout:
            if started and time.monotonic() - started[0] > PAGE_SECONDS:
                fut.cancel()
                return PageResult(
                    index, None, f"page {index + 1}: OCR took more than {PAGE_SECONDS:.0f} s: its text is left out"
                )
            continue
        except LoadError:
            raise
        except MemoryError:
            return PageResult(index, None, f"page {index + 1}: OCR ran out of memory: its text is left out")
        except Exception as e:  # one page the engine cannot read loses its own text only
            log.debug("OCR failed on page %d", index + 1, exc_info=True)
            return PageResult(index, None, f"page {index + 1}: OCR failed ({type(e).__name__}): its text is left out")
        sess.on_page(True)
        return PageResult(index, page)


def low_confidence(results: list[PageResult], what: str = "page") -> list[str]:
    """Warnings for pages read under CONFIDENCE_FLOOR (one line, listing up to 10 page numbers)."""
    low = [
        (r.index + 1, r.page.confidence)
        for r in results
        if r.page is not None and r.page.confidence is not None and r.page.confidence < CONFIDENCE_FLOOR
    ]
    if not low:
        return []
    shown = ", ".join(f"{n} ({c:.0%})" for n, c in low[:10]) + (" ..." if len(low) > 10 else "")
    return [
        f"{len(low)} {what}{'s' if len(low) > 1 else ''} read by OCR with confidence under "
        f"{CONFIDENCE_FLOOR:.0%}: {shown}: check their text"
    ]


def mean_confidence(results: list[PageResult]) -> Optional[float]:
    confs = [r.page.confidence for r in results if r.page is not None and r.page.confidence is not None]
    return sum(confs) / len(confs) if confs else None


# ---------------------------------------------------------------------------------- PDF pages
RENDER_DPI = 300  # a PDF page is rendered at this resolution, at most MAX_SIDE on its longer side
MAX_OCR_PAGES = 2_000  # pages of one PDF read by OCR; beyond, a warning


@dataclass
class PdfOcr:
    """What OCR did for one PDF: page index -> its result; warnings; whether pages needed an engine
    that is not installed; how many pages were wanted."""

    results: dict[int, PageResult]
    warnings: list[str]
    wanted: int = 0
    missing_engine: bool = False


def _thin(lines: list[str]) -> bool:
    return sum(len(ln.strip()) for ln in lines) < MIN_LAYER_CHARS


def _has_image(pdf, index: int) -> bool:
    import pypdfium2.raw as pdfium_c

    page = None
    try:
        page = pdf[index]
        return next(iter(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])), None) is not None
    except Exception:  # an unreadable page: OCR may still read what it draws
        return True
    finally:
        if page is not None:
            page.close()


def _render(pdf, indexes: list[int]) -> Iterator[tuple[int, object]]:
    """Each page as a grayscale array, RENDER_DPI but at most MAX_SIDE pixels on its longer side (so a
    page of any claimed size renders to bounded memory), rendered as the pool takes them."""
    import numpy as np

    for i in indexes:
        page = bitmap = None
        try:
            page = pdf[i]
            w, h = page.get_size()
            scale = min(RENDER_DPI / 72.0, MAX_SIDE / max(w, h, 1.0))
            bitmap = page.render(scale=scale, grayscale=True)
            arr = np.array(bitmap.to_numpy(), dtype=np.uint8, copy=True)
        except Exception:  # a page PDFium cannot draw loses its own text only
            log.debug("could not render page %d", i + 1, exc_info=True)
            arr = None
        finally:
            if bitmap is not None:
                bitmap.close()
            if page is not None:
                page.close()
        if arr is not None:
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            yield i, arr


def pdf_pages(pdf, pages: list[list[str]], sess: Optional[Session] = None) -> PdfOcr:
    """OCR the pages of an open pypdfium2 document that need it: with --ocr auto those with fewer than
    MIN_LAYER_CHARS characters of text layer that draw an image (a blank page is not read), with force
    every page, with off none. Every page is counted as read (sess.on_page)."""
    sess = sess or current()
    out = PdfOcr({}, [])
    if sess.mode == "off":
        wanted: list[int] = []
    elif sess.mode == "force":
        wanted = list(range(len(pages)))
    else:
        wanted = [i for i, lines in enumerate(pages) if _thin(lines) and _has_image(pdf, i)]
    out.wanted = len(wanted)
    taken = set(wanted[:MAX_OCR_PAGES])
    for i in range(len(pages)):
        if i not in taken:
            sess.on_page(False)
    if not wanted:
        return out
    if not available(sess.engine):
        out.missing_engine = True
        name, hint = engine_and_hint(sess.engine)
        out.warnings.append(
            f"{len(wanted)} of {len(pages)} pages have no text layer and were not read: OCR needs {name} ({hint})"
        )
        return out
    order = sorted(taken)
    for r in read_pages(_render(pdf, order), sess):
        out.results[r.index] = r
    rendered_not = len(order) - len(out.results)
    if rendered_not:
        out.warnings.append(f"{rendered_not} pages could not be rendered for OCR: their text is left out")
    out.warnings += [r.warning for r in out.results.values() if r.warning]
    out.warnings += low_confidence(list(out.results.values()))
    if len(wanted) > MAX_OCR_PAGES:
        out.warnings.append(f"only the first {MAX_OCR_PAGES} of {len(wanted)} pages without text were read by OCR")
    return out
