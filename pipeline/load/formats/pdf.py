"""PDF: the text layer, page by page, with pypdfium2 (PDFium, in C; Apache-2.0/BSD).

Each page is loaded, its text read, and the page closed before the next: memory holds the file's
bytes and the text, never all pages' objects. The outline (bookmarks) becomes Markdown headings at
the pages it points to (on the line that carries the bookmark's title when the page has one), so the
Markdown chunker gives chunks their heading path; `page_starts` records where each page begins.

Cleaned: words hyphenated at line ends are joined; lines repeated at the top or bottom of most
pages (running headers, footers, page numbers) are dropped.
Refused, each with its own kind: no text layer (scanned: OCR is not supported), encrypted,
truncated, corrupt. Nothing here raises anything but LoadError.
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Optional

from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError
from kbingest.pipeline.load.formats.mdtext import heading, plain_lines, squash
from kbingest.pipeline.load.formats.sniff import describe

MAX_PAGES = 100_000          # pages read; beyond, the rest is not loaded (with a warning)
MAX_OUTLINE_ENTRIES = 10_000
MAX_OUTLINE_DEPTH = 6        # Markdown has six heading levels
EDGE_LINES = 2               # lines at the top and at the bottom of a page that may be running text
RUNNING_MIN_PAGES = 3        # documents shorter than this keep every line
RUNNING_SHARE = 0.5          # a line at the edge of more than this share of pages is running text
RUNNING_MAX_CHARS = 100      # longer lines are body text, however often they repeat
MAGIC_WINDOW = 1024          # "%PDF-" may follow junk bytes this far (as readers accept)

_HYPHENATED = re.compile(r"-(?<=[^\W\d_]-)\n(?=[a-zäöüßàâçéèêëîïôûùüÿñæœ])")  # starts with a literal: fast to scan
_DIGITS = re.compile(r"\d+")
_PDFIUM = threading.Lock()   # PDFium is not thread-safe: one document at a time per process

# PDFium's FPDF_GetLastError codes
_ERR_FILE, _ERR_FORMAT, _ERR_PASSWORD, _ERR_SECURITY = 2, 3, 4, 5


def _running_key(line: str) -> str:
    return _DIGITS.sub("#", squash(line)).lower()


def drop_running_lines(pages: list[list[str]]) -> int:
    """Remove, in place, lines at the top or bottom EDGE_LINES of pages that repeat (digits aside)
    on more than RUNNING_SHARE of the pages; returns how many lines were removed."""
    if len(pages) < RUNNING_MIN_PAGES:
        return 0
    seen: Counter[str] = Counter()
    for lines in pages:
        edges = {_running_key(ln) for ln in lines[:EDGE_LINES] + lines[-EDGE_LINES:] if ln.strip()}
        seen.update(edges)
    running = {k for k, n in seen.items() if n > RUNNING_SHARE * len(pages) and 0 < len(k) <= RUNNING_MAX_CHARS}
    if not running:
        return 0
    removed = 0
    for lines in pages:
        n = len(lines)
        edge = set(range(min(EDGE_LINES, n))) | set(range(max(0, n - EDGE_LINES), n))
        keep = [ln for i, ln in enumerate(lines) if not (i in edge and _running_key(ln) in running)]
        removed += n - len(keep)
        lines[:] = keep
    return removed


def join_hyphenation(text: str) -> str:
    """'exam-\\nple' -> 'example' where the next line goes on in lower case. (PDFium already joins
    the hyphenations it recognises, marking them with U+FFFE: the mark is removed.)"""
    return _HYPHENATED.sub("", text.replace("\ufffe", ""))


def _outline(pdf) -> dict[int, list[tuple[int, str]]]:
    """page index -> [(heading level, title)] from the bookmarks, in outline order."""
    out: dict[int, list[tuple[int, str]]] = {}
    try:
        for n, bm in enumerate(pdf.get_toc(max_depth=MAX_OUTLINE_DEPTH)):
            if n >= MAX_OUTLINE_ENTRIES:
                break
            dest = bm.get_dest()
            index = dest.get_index() if dest is not None else None
            title = squash(bm.get_title() or "")
            if index is not None and title:
                out.setdefault(index, []).append((bm.level + 1, title))
    except Exception:  # a broken outline costs the headings, never the document
        return {}
    return out


def _place_headings(lines: list[str], entries: list[tuple[int, str]]) -> list[str]:
    """The page's lines with each bookmark's heading on the line that carries its title, or at the top."""
    if not entries:
        return lines
    lines = list(lines)
    longest = max(len(title) for _, title in entries) * 2 + 8  # longer lines cannot be a title
    where: dict[str, int] = {}
    for i, ln in enumerate(lines):
        if len(ln) <= longest:
            where.setdefault(squash(ln).lower(), i)
    top: list[str] = []
    for level, title in entries:
        i = where.pop(title.lower(), None)
        if i is None:
            top.append("\x00" + heading(level, title))
        else:
            lines[i] = "\x00" + heading(level, title)
    return top + lines


def _page_markdown(lines: list[str]) -> str:
    """Page lines as Markdown: headings (marked with NUL) stand in blocks of their own, text is escaped."""
    blocks, para = [], []
    for ln in lines:
        if ln.startswith("\x00"):
            if para:
                blocks.append(plain_lines(join_hyphenation("\n".join(para))))
                para = []
            blocks.append(ln[1:])
        else:
            para.append(ln)
    if para:
        blocks.append(plain_lines(join_hyphenation("\n".join(para))))
    return "\n\n".join(b for b in blocks if b.strip())


def _load_error(e: Exception, data: bytes) -> LoadError:
    code = getattr(e, "err_code", None)
    if code in (_ERR_PASSWORD, _ERR_SECURITY):
        return LoadError("encrypted", "the PDF is encrypted (password-protected): not loaded")
    if b"%%EOF" not in data[-MAGIC_WINDOW:]:
        return LoadError("truncated", "the PDF is truncated (it does not end with %%EOF) and could not be read")
    return LoadError("corrupt", "the PDF is damaged and could not be read"
                     + (" (bad file structure)" if code in (_ERR_FILE, _ERR_FORMAT) else ""))


def _page_text(pdf, index: int) -> Optional[str]:
    page = textpage = None
    try:
        page = pdf[index]
        textpage = page.get_textpage()
        return textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
    except Exception:  # one broken page loses its own text only
        return None
    finally:
        if textpage is not None:
            textpage.close()
        if page is not None:
            page.close()


def extract_pdf(data: bytes) -> Extracted:
    import pypdfium2 as pdfium

    with _PDFIUM:
        try:
            pdf = pdfium.PdfDocument(data)
        except Exception as e:
            raise _load_error(e, data) from None
        try:
            count = len(pdf)
            outline = _outline(pdf)
            try:
                title = squash((pdf.get_metadata_dict(skip_empty=True) or {}).get("Title", "")) or None
            except Exception:
                title = None
            pages: list[list[str]] = []
            unreadable = 0
            for i in range(min(count, MAX_PAGES)):
                text = _page_text(pdf, i)
                unreadable += text is None
                pages.append([ln for ln in (text or "").split("\n")])
        finally:
            pdf.close()
    with_text = sum(1 for lines in pages if any(ln.strip() for ln in lines))
    if not with_text:
        if unreadable == len(pages) and pages:
            raise LoadError("corrupt", f"the PDF is damaged: none of its {len(pages)} pages could be read")
        raise LoadError("no_text_layer", f"no text layer (OCR is not supported): none of its {len(pages)} "
                        "pages has text, it is probably scanned")
    drop_running_lines(pages)
    parts, starts, offset = [], [], 0
    for i, lines in enumerate(pages):
        md = _page_markdown(_place_headings(lines, outline.get(i, [])))
        starts.append(offset)
        parts.append(md)
        offset += len(md) + 2   # the blank line between pages
    warnings = []
    if with_text < len(pages):
        warnings.append(f"{len(pages) - with_text} of {len(pages)} pages have no text (scanned pages are not OCR'd)")
    if count > MAX_PAGES:
        warnings.append(f"only the first {MAX_PAGES} of {count} pages were loaded")
    if b"%%EOF" not in data[-MAGIC_WINDOW:]:
        warnings.append("the PDF looks truncated (no %%EOF at its end): the pages that could be read were loaded")
    return Extracted(text="\n\n".join(parts), markdown=True, title=title, page_starts=tuple(starts),
                     warnings=tuple(warnings))


class PdfFormat(Format):
    name = "pdf"
    suffixes = (".pdf",)
    description = ("the text layer, page by page: bookmarks as the heading path, the page of every chunk; "
                   "hyphenation joined, running headers and footers dropped")

    def identify(self, head: bytes) -> Optional[str]:
        return None if b"%PDF-" in head[:MAGIC_WINDOW] else describe(head)

    def extract(self, data: bytes, *, path: str) -> Extracted:
        return extract_pdf(data)


PDF = PdfFormat()
