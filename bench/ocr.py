"""Figure: OCR (pipeline/load/formats/ocr.py: RapidOCR 3.10, PP-OCRv6 small, on onnxruntime, the default; and
--ocr-engine tesseract) against Tesseract, on the same page images, in the same run.

The pages: a few bench corpus (WAF) pages typeset to PDF with reportlab (bench.formats.make_pdf), each
PDF page rendered by PDFium to a grayscale PNG at 150 and 300 dpi. The truth is each page's own text
layer (what was typeset). Measured per engine and resolution, one child process each (one page at a
time, one core: Tesseract with OMP_THREAD_LIMIT=1, kbingest's engine with its one onnxruntime thread):
  - character error rate: Levenshtein distance / reference length, whitespace runs as one space;
  - word recall: the share of the reference's words (lower case, multiset) found in the output;
  - pages per second (decode + OCR; kbingest's model load is counted apart, once a process);
  - peak RSS (wait4: kbingest's whole child process; each `tesseract` process; kbingest --ocr-engine
    tesseract: its process plus the largest `tesseract` it ran).
Tesseract is Debian's `tesseract-ocr` (`make bench-tools`), called once per page as pytesseract does.

    python -m bench --only ocr [--quick]
    python -m bench.ocr run kbingest|kbingest-tesseract|tesseract DIR OUT.json    # one child measurement
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+")
DPIS = (150, 300)
# kbingest's default engine (RapidOCR), kbingest with --ocr-engine tesseract, and Tesseract as a user runs it
ENGINES = ("kbingest", "kbingest-tesseract", "tesseract")


# ---- scores ------------------------------------------------------------------------------------


def norm(text: str) -> str:
    return " ".join(text.replace("\\", "").split())


def levenshtein(a: str, b: str) -> int:
    """Exact edit distance, one numpy row at a time (insertions along a row by a running minimum)."""
    import numpy as np

    if not a:
        return len(b)
    if not b:
        return len(a)
    bb = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    idx = np.arange(len(b) + 1, dtype=np.int64)
    prev = idx.copy()
    codes = np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32)
    for i, c in enumerate(codes, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        sub = prev[:-1] + (bb != c)
        tmp = np.minimum(prev[1:] + 1, sub)
        cur[1:] = tmp
        cur = np.minimum.accumulate(cur - idx) + idx
        prev = cur
    return int(prev[-1])


def cer(ref: str, hyp: str) -> float:
    r, h = norm(ref), norm(hyp)
    return levenshtein(r, h) / max(1, len(r))


def word_recall(ref: str, hyp: str) -> float:
    rw = Counter(w.lower() for w in WORD.findall(ref))
    hw = Counter(w.lower() for w in WORD.findall(hyp))
    total = sum(rw.values())
    return sum(min(n, hw[w]) for w, n in rw.items()) / max(1, total)


# ---- pages -------------------------------------------------------------------------------------


def make_pages(md_pages: list[Path], out: Path, n: int) -> list[str]:
    """The first n pages of the corpus typeset to PDF, rendered to out/<dpi>/page-NNN.png; their truth."""
    import pypdfium2 as pdfium

    from bench.formats import make_pdf

    out.mkdir(parents=True, exist_ok=True)
    pdf_file = out / "typeset.pdf"
    make_pdf(md_pages, pdf_file)
    pdf = pdfium.PdfDocument(str(pdf_file))
    truth = []
    try:
        for i in range(min(n, len(pdf))):
            page = pdf[i]
            tp = page.get_textpage()
            truth.append(tp.get_text_range())
            tp.close()
            for dpi in DPIS:
                d = out / str(dpi)
                d.mkdir(exist_ok=True)
                page.render(scale=dpi / 72, grayscale=True).to_pil().save(d / f"page-{i:03d}.png")
            page.close()
    finally:
        pdf.close()
    return truth


# ---- children ----------------------------------------------------------------------------------


def run_kbingest(pages: list[Path], engine: str = "rapidocr") -> dict[str, Any]:
    """kbingest's page reader: RapidOCR (the default) or, with engine "tesseract", --ocr-engine tesseract
    (ocr.tesseract_page: one `tesseract` process a page, the page given on stdin)."""
    import resource

    from kbingest.pipeline.load.formats import image, ocr

    t0 = time.perf_counter()
    read = ocr.tesseract_page if engine == "tesseract" else ocr.recognize
    if engine != "tesseract":
        ocr._load_engine()
    load = time.perf_counter() - t0
    texts, t0 = [], time.perf_counter()
    for p in pages:
        im = image._open(p.read_bytes())
        for _, arr in image._frames(im, 1):
            texts.append(read(arr).text)
        im.close()
    out = {"texts": texts, "seconds": time.perf_counter() - t0, "load_seconds": load}
    if engine == "tesseract":  # kbingest's process and the largest `tesseract` it ran: both alive at once
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_kib"] = own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return out


def run_tesseract(pages: list[Path]) -> dict[str, Any]:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    texts, peak, t0 = [], 0, time.perf_counter()
    for p in pages:
        proc = subprocess.Popen(
            ["tesseract", str(p), "stdout", "-l", "eng"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        out = proc.stdout.read()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"tesseract exited {proc.returncode} on {p}")
        peak = max(peak, ru.ru_maxrss)
        texts.append(out.decode("utf-8", "replace"))
    return {"texts": texts, "seconds": time.perf_counter() - t0, "load_seconds": 0.0, "peak_kib": peak}


def _child(ws, engine: str, folder: Path, out: Path):
    from bench.common import run_proc

    res = run_proc(
        [sys.executable, "-m", "bench.ocr", "run", engine, str(folder), str(out)],
        ws.root / "logs" / f"ocr-{engine}-{folder.name}-{time.time_ns()}",
        timeout=3600,
    )
    data = res.final()
    if res.rc != 0 or data is None:
        raise RuntimeError(f"bench.ocr {engine} exited {res.rc}: {res.stderr_tail()}")
    return json.loads(out.read_text()), res


def fig_ocr(ctx) -> list:
    """OCR character error rate, word recall, pages/s and peak RSS: kbingest's engine vs Tesseract."""
    from bench.common import Row, log, spread

    rows: list[Row] = []
    if shutil.which("tesseract") is None:
        return [
            Row(
                "41.0",
                "OCR vs Tesseract",
                status="pending",
                note="tesseract is not installed here: `make bench-tools` (Debian's tesseract-ocr)",
            )
        ]
    ws = ctx.ws
    n = ctx.pages(6, 3) or 6
    root = ws.root / "ocr"
    truth = make_pages(spread(ws.all_pages, 3), root, n)
    version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    load = os.getloadavg()
    log(f"figure ocr: {len(truth)} typeset pages at {DPIS} dpi; {version}; load {load[0]:.2f}")
    got: dict[tuple[str, int], dict[str, Any]] = {}
    for dpi in DPIS:
        for engine in ENGINES:
            data, res = _child(ws, engine, root / str(dpi), root / f"{engine}-{dpi}.json")
            texts = data["texts"]
            data["cer"] = sum(cer(t, h) for t, h in zip(truth, texts)) / len(truth)
            data["recall"] = sum(word_recall(t, h) for t, h in zip(truth, texts)) / len(truth)
            data["pps"] = len(texts) / data["seconds"]
            data["peak_mib"] = (data["peak_kib"] / 1024) if "peak_kib" in data else res.maxrss_mib
            got[(engine, dpi)] = data
            log(
                f"  {engine} {dpi} dpi: CER {data['cer']:.2%}, word recall {data['recall']:.3f}, "
                f"{data['pps']:.2f} pages/s, peak {data['peak_mib']:.0f} MiB"
            )
    load_end = os.getloadavg()
    where = (
        f"{len(truth)} A4 pages typeset from the WAF corpus (reportlab, Helvetica 10 pt), rendered by PDFium; "
        f"one page at a time on one core; {version}; load average {load[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end (2 cores)"
    )
    k, t = got[("kbingest", 300)], got[("tesseract", 300)]
    rows.append(
        Row(
            "41.1",
            "OCR character error rate at 300 dpi, kbingest (RapidOCR PP-OCRv6 small)",
            unit="%",
            values=[100 * k["cer"]],
            op="<=",
            target=2.0,
            goal="<= 2 %",
            note=where,
        )
    )
    rows.append(
        Row(
            "41.2",
            "OCR character error rate at 300 dpi, kbingest - Tesseract",
            unit="points",
            values=[100 * (k["cer"] - t["cer"])],
            op="<=",
            target=0.0,
            goal="<= 0 (no worse)",
            note=f"Tesseract {100 * t['cer']:.2f} %",
        )
    )
    rows.append(
        Row(
            "41.3",
            "OCR pages per second at 300 dpi, kbingest / Tesseract",
            unit="x",
            values=[k["pps"] / t["pps"]],
            op=">=",
            target=1.0,
            goal=">= 1",
            note=f"kbingest {k['pps']:.2f}, Tesseract {t['pps']:.2f} pages/s; kbingest's model load "
            f"{k['load_seconds']:.1f} s once a process, not counted",
        )
    )
    key = 4
    for dpi in DPIS:
        for engine in ("kbingest", "tesseract"):
            d = got[(engine, dpi)]
            rows.append(
                Row(
                    f"41.{key}",
                    f"OCR at {dpi} dpi, {engine}: CER / word recall / pages/s / peak RSS",
                    unit="% CER",
                    values=[100 * d["cer"]],
                    note=f"word recall {d['recall']:.3f}, {d['pps']:.2f} pages/s, peak RSS {d['peak_mib']:.0f} MiB",
                )
            )
            key += 1
    kt = got[("kbingest-tesseract", 300)]
    rows.append(
        Row(
            "41.8",
            "OCR character error rate at 300 dpi, kbingest --ocr-engine tesseract - Tesseract",
            unit="points",
            values=[100 * (kt["cer"] - t["cer"])],
            op="<=",
            target=0.0,
            goal="<= 0 (no worse)",
            note=f"kbingest --ocr-engine tesseract {100 * kt['cer']:.2f} %, Tesseract {100 * t['cer']:.2f} %",
        )
    )
    rows.append(
        Row(
            "41.9",
            "OCR pages per second at 300 dpi, kbingest --ocr-engine tesseract / Tesseract",
            unit="x",
            values=[kt["pps"] / t["pps"]],
            op=">=",
            target=0.95,
            goal=">= 0.95 (the same engine; the page on stdin instead of a file)",
            note=f"kbingest --ocr-engine tesseract {kt['pps']:.2f}, Tesseract {t['pps']:.2f} pages/s",
        )
    )
    key = 10
    for dpi in DPIS:
        d = got[("kbingest-tesseract", dpi)]
        rows.append(
            Row(
                f"41.{key}",
                f"OCR at {dpi} dpi, kbingest --ocr-engine tesseract: CER / word recall / pages/s / peak RSS",
                unit="% CER",
                values=[100 * d["cer"]],
                note=f"word recall {d['recall']:.3f}, {d['pps']:.2f} pages/s, peak RSS {d['peak_mib']:.0f} MiB "
                "(kbingest's process and its largest tesseract)",
            )
        )
        key += 1
    return rows


def main(argv: list[str]) -> None:
    if argv[:1] == ["run"]:
        engine, folder, out = argv[1], Path(argv[2]), Path(argv[3])
        pages = sorted(folder.glob("page-*.png"))
        if engine == "tesseract":
            data = run_tesseract(pages)
        else:
            data = run_kbingest(pages, "tesseract" if engine == "kbingest-tesseract" else "rapidocr")
        out.write_text(json.dumps(data))
        print(json.dumps({"pages": len(pages), "seconds": data["seconds"]}))
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
