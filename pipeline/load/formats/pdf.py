"""PDF: the text layer, page by page, with pypdfium2 (PDFium, in C; Apache-2.0/BSD).

Each page is loaded, its text read, and the page closed before the next: memory holds the file's
bytes and the text, never all pages' objects. The outline (bookmarks) becomes Markdown headings at
the pages it points to (on the line that carries the bookmark's title when the page has one), so the
Markdown chunker gives chunks their heading path; `page_starts` records where each page begins.

Cleaned: words hyphenated at line ends are joined; lines repeated at the top or bottom of most
pages (running headers, footers, page numbers) are dropped.
Pages without text that draw an image (scanned) are read by OCR (ocr.pdf_pages; --ocr off: not).
Refused, each with its own kind: no text layer nor OCR'd text (no_text_layer), encrypted,
truncated, corrupt, too_large (its streams decode to more than the job's inflation limit, counted
before PDFium sees the bytes: check_decoded_size). Nothing here raises anything but LoadError.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections import Counter
from typing import Optional

import kbingest.pipeline.load.formats.ocr as ocr  # not `from ...formats import`: no cycle through the package (tests/test_architecture.py)
from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError, inflation_limit, too_inflated
from kbingest.pipeline.load.formats.mdtext import heading, plain_lines, squash
from kbingest.pipeline.load.formats.sniff import describe

MAX_PAGES = 100_000  # pages read; beyond, the rest is not loaded (with a warning)
MAX_OUTLINE_ENTRIES = 10_000
MAX_OUTLINE_DEPTH = 6  # Markdown has six heading levels
EDGE_LINES = 2  # lines at the top and at the bottom of a page that may be running text
RUNNING_MIN_PAGES = 3  # documents shorter than this keep every line
RUNNING_SHARE = 0.5  # a line at the edge of more than this share of pages is running text
RUNNING_MAX_CHARS = 100  # longer lines are body text, however often they repeat
MAGIC_WINDOW = 1024  # "%PDF-" may follow junk bytes this far (as readers accept)
PIECE = 1 << 20  # bytes decoded at a time while a stream's decoded size is counted

_HYPHENATED = re.compile(r"-(?<=[^\W\d_]-)\n(?=[a-zäöüßàâçéèêëîïôûùüÿñæœ])")  # starts with a literal: fast to scan
_DIGITS = re.compile(r"\d+")
_PDFIUM = threading.Lock()  # PDFium is not thread-safe: one document at a time per process

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
        key = title.lower()
        if key not in where:
            top.append("\x00" + heading(level, title))
        else:
            lines[where.pop(key)] = "\x00" + heading(level, title)
    return top + lines


def _page_markdown(lines: list[str]) -> str:
    """Page lines as Markdown: headings (marked with NUL) stand in blocks of their own, text is escaped."""
    blocks: list[str] = []
    para: list[str] = []
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
    return LoadError(
        "corrupt",
        "the PDF is damaged and could not be read"
        + (" (bad file structure)" if code in (_ERR_FILE, _ERR_FORMAT) else ""),
    )


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


# ------------------------------------------------------------------ decoded size of the streams
# PDFium decodes a stream whole, into one buffer, when it reads it (a page's content, a font, an
# object stream), and has no limit of its own on FlateDecode or LZWDecode: a 1.6 MB PDF can ask for
# gigabytes. So before PDFium sees the bytes, every stream is decoded here, in bounded pieces and
# discarded, as PDFium would decode it (its filter chain: FlateDecode, LZWDecode, RunLengthDecode,
# ASCIIHexDecode, ASCII85Decode; an image filter ends the chain, as in PDFium, which decodes images
# only to draw them), counting each stage's output. The document is `too_large` when one stream, or
# all streams but images together, decode to more than the job's inflation limit.

_STREAM = re.compile(rb"(?<![A-Za-z0-9])stream[ \t]*(?:\r\n|\n|\r)?")
_TOKEN = re.compile(
    rb"[\x00\t\n\x0c\r ]*(?:%[^\r\n]*[\x00\t\n\x0c\r ]*)*"
    rb"(<<|>>|\[|\]|\(|<[0-9A-Fa-f\x00\t\n\x0c\r ]*>|/[^\x00\t\n\x0c\r ()<>\[\]{}/%]*"
    rb"|[+-]?(?:\d+\.?\d*|\.\d+)|[A-Za-z]+)"
)
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
DICT_WINDOW = 64 * 1024  # a stream's dictionary is looked for this far before its data
MAX_NESTING = 32
_FLATE, _LZW, _A85, _AHX, _RL = "flate", "lzw", "a85", "ahx", "rl"
_FILTERS = {
    b"FlateDecode": _FLATE,
    b"Fl": _FLATE,
    b"LZWDecode": _LZW,
    b"LZW": _LZW,
    b"ASCII85Decode": _A85,
    b"A85": _A85,
    b"ASCIIHexDecode": _AHX,
    b"AHx": _AHX,
    b"RunLengthDecode": _RL,
    b"RL": _RL,
}


class _Name(bytes):
    """A PDF name, #xx escapes decoded."""


class _Ref(tuple):
    """An indirect reference (number, generation)."""


def _tokens(data: bytes, pos: int, end: int):
    while pos < end:
        m = _TOKEN.match(data, pos, end)
        if m is None:
            return
        tok, pos = m.group(1), m.end()
        if tok == b"(":  # a literal string: balanced parentheses, backslash escapes
            depth, i = 1, pos
            while i < end and depth:
                c = data[i]
                i += 2 if c == 0x5C else 1
                depth += (c == 0x28) - (c == 0x29)
            tok, pos = b"()", i
        yield tok


def _parse(tokens, tok, depth: int = 0):
    """The PDF object starting at `tok` (dictionaries, arrays, names, numbers, references; strings and
    keywords as None), reading further tokens from the iterator `tokens`."""
    if depth > MAX_NESTING or tok is None or isinstance(tok, _Ref):
        return tok if isinstance(tok, _Ref) else None
    if tok == b"<<":
        out: dict = {}
        key = None
        for t in tokens:
            if t == b">>":
                return out
            if key is None:
                key = t[1:] if isinstance(t, bytes) and t.startswith(b"/") else None
                continue
            out[_NAME_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), key)] = _parse(tokens, t, depth + 1)
            key = None
        return out
    if tok == b"[":
        items: list = []
        for t in tokens:
            if t == b"]":
                return items
            items.append(_parse(tokens, t, depth + 1))
        return items
    if tok.startswith(b"/"):
        return _Name(_NAME_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), tok[1:]))
    if tok[:1].isdigit() or tok[:1] in b"+-.":
        try:
            return int(tok)
        except ValueError:
            return None
    return None


def _parse_dict(data: bytes, pos: int, end: int) -> Optional[dict]:
    """The dictionary in data[pos:end], references (N G R) kept as _Ref."""
    tokens = _refs(_tokens(data, pos, end))
    first = next(tokens, None)
    if first != b"<<":
        return None
    out = _parse(tokens, first)
    return out if isinstance(out, dict) else None


def _refs(tokens):
    """Tokens, with each `N G R` as one _Ref token (so a dictionary value can be a reference)."""
    held: list = []
    for t in tokens:
        if t == b"R" and len(held) == 2:
            yield _Ref((int(held[0]), int(held[1])))
            held = []
            continue
        if t.isdigit():
            held.append(t)
            if len(held) == 3:
                yield held.pop(0)
            continue
        yield from held
        held = []
        yield t
    yield from held


_OBJ = re.compile(rb"(?<![0-9])(\d+)[\x00\t\n\x0c\r ]+(\d+)[\x00\t\n\x0c\r ]+obj(?![A-Za-z])")


class _Objects:
    """The objects written out in the file (not those inside object streams), found by one pass."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._at: Optional[dict[tuple[int, int], int]] = None

    def resolve(self, value):
        """A reference's object, where it is written out in the file; else the reference itself."""
        if not isinstance(value, _Ref):
            return value
        if self._at is None:  # the last definition is the one in force (incremental updates)
            self._at = {(int(m.group(1)), int(m.group(2))): m.end() for m in _OBJ.finditer(self.data)}
        at = self._at.get(tuple(value))
        if at is None:
            return value
        tokens = _refs(_tokens(self.data, at, min(len(self.data), at + DICT_WINDOW)))
        return _parse(tokens, next(tokens, None))


def _chain(objs: _Objects, d: Optional[dict]) -> tuple[list[str], bool]:
    """The decoders PDFium runs on this stream, and whether it is an image. A filter that cannot be
    read (an indirect reference into an object stream, a dictionary not found) counts as FlateDecode."""
    if d is None:
        return [_FLATE], False
    image = objs.resolve(d.get(b"Subtype")) == b"Image"
    f = objs.resolve(d.get(b"Filter"))
    if f is None:
        return [], image
    names = [objs.resolve(x) for x in f] if isinstance(f, list) else [f]
    chain = []
    for i, n in enumerate(names):
        if not isinstance(n, _Name):
            chain.append(_FLATE)  # unknown: assume the common case
            continue
        if n == b"Crypt":
            continue
        kind = _FILTERS.get(bytes(n))
        if kind is None:
            if i < len(names) - 1:  # PDFium refuses a chain with an image filter before its end
                return [], image
            break  # an image filter: not decoded to read text
        chain.append(kind)
    return chain, image


def _early_change(objs: _Objects, d: Optional[dict]) -> bool:
    p = objs.resolve(d.get(b"DecodeParms")) if d else None
    if isinstance(p, list):
        p = next((q for q in map(objs.resolve, p) if isinstance(q, dict)), None)
    return not (isinstance(p, dict) and objs.resolve(p.get(b"EarlyChange")) == 0)


def _data_end(objs: _Objects, d: Optional[dict], start: int) -> int:
    """Where the stream's data ends, as PDFium finds it: at /Length when "endstream" follows there;
    otherwise the end of the file (each decoder stops at its own end of data)."""
    data = objs.data
    n = objs.resolve(d.get(b"Length")) if d else None
    if isinstance(n, int) and 0 <= n <= len(data) - start:
        if data[start + n : start + n + 64].lstrip(b"\x00\t\n\x0c\r ").startswith(b"endstream"):
            return start + n
    return len(data)


def _pieces(data: bytes, start: int, end: int):
    view = memoryview(data)
    for i in range(start, end, PIECE):
        yield view[i : min(end, i + PIECE)]


def _flate(chunks):
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a zlib (or gzip) header, as PDFium's inflate
    for chunk in chunks:
        while chunk:
            try:
                out = d.decompress(chunk, PIECE)
            except zlib.error:
                return
            chunk = d.unconsumed_tail
            if out:
                yield out
            if d.eof:
                return


def _lzw(chunks, early: bool):
    table = [bytes([i]) for i in range(256)] + [b"", b""]
    bits, acc, nacc, prev, out = 9, 0, 0, None, bytearray()
    for chunk in chunks:
        for byte in bytes(chunk):
            acc, nacc = (acc << 8) | byte, nacc + 8
            while nacc >= bits:
                nacc -= bits
                code = acc >> nacc
                acc &= (1 << nacc) - 1
                if code == 256:
                    del table[258:]
                    bits, prev = 9, None
                    continue
                if code == 257:
                    yield bytes(out)
                    return
                if code < len(table) and code != 256:
                    entry = table[code]
                    if prev is not None and len(table) < 4096:
                        table.append(prev + entry[:1])
                elif code == len(table) and prev is not None:
                    entry = prev + prev[:1]
                    table.append(entry)
                else:
                    yield bytes(out)
                    return
                out += entry
                prev = entry
                n = len(table) + early
                bits = 9 if n < 512 else 10 if n < 1024 else 11 if n < 2048 else 12
                if len(out) >= PIECE:
                    yield bytes(out)
                    out.clear()
    yield bytes(out)


def _run_length(chunks):
    carry = b""
    for chunk in chunks:
        buf, i, out = carry + bytes(chunk), 0, bytearray()
        while i < len(buf):
            n = buf[i]
            if n == 128:
                yield bytes(out)
                return
            need = n + 2 if n < 128 else 2
            if i + need > len(buf):
                break
            out += buf[i + 1 : i + need] if n < 128 else buf[i + 1 : i + 2] * (257 - n)
            i += need
            if len(out) >= PIECE:
                yield bytes(out)
                out.clear()
        carry = buf[i:]
        yield bytes(out)


def _ascii_hex(chunks):
    odd = b""
    for chunk in chunks:
        chunk = bytes(chunk)
        end = chunk.find(b">")
        digits = odd + re.sub(rb"[^0-9A-Fa-f]", b"", chunk if end < 0 else chunk[:end])
        cut = len(digits) & ~1
        yield bytes.fromhex(digits[:cut].decode())
        odd = digits[cut:]
        if end >= 0:
            break
    if odd:
        yield bytes.fromhex((odd + b"0").decode())


def _ascii85(chunks):
    import base64

    carry = b""
    for chunk in chunks:
        bad = re.search(rb"[^!-uz\x00\t\n\x0c\r ]", chunk)  # PDFium stops at the first other byte ("~>")
        text = carry + re.sub(rb"[\x00\t\n\x0c\r ]", b"", bytes(chunk if bad is None else chunk[: bad.start()]))
        whole = re.match(rb"(?:z|[!-u]{5})*", text).end()
        try:
            yield base64.a85decode(text[:whole])
        except ValueError:
            return
        carry = text[whole:]
        if bad is not None:
            break
    if carry:
        yield bytes(4 * len(carry) // 5)  # a partial group: at most this many bytes


class _Over(Exception):
    pass


def _counted(source, counts: list[int], i: int, budget: int):
    for piece in source:
        counts[i] += len(piece)
        if counts[i] > budget:
            raise _Over
        yield piece


def _decoded_size(data: bytes, start: int, end: int, chain: list[str], early: bool, budget: int) -> int:
    """What the stream whose data begins at `start` decodes to through `chain` (the largest stage:
    PDFium decodes each stage whole); raise _Over as soon as a stage passes `budget`."""
    stages, counts = [], []
    source = _pieces(data, start, end)
    for kind in chain:
        source = {_FLATE: _flate, _RL: _run_length, _AHX: _ascii_hex, _A85: _ascii85}.get(
            kind, lambda s: _lzw(s, early)
        )(source)
        counts.append(0)
        source = _counted(source, counts, len(counts) - 1, budget)
        stages.append(source)
    for stage in reversed(stages):  # the last stage first; then what earlier stages have left
        for _ in stage:
            pass
    return max(counts, default=0)


def check_decoded_size(data: bytes, limit: int) -> None:
    """Raise LoadError too_large when a stream of the PDF, or all its streams but images together,
    decode to more than `limit` bytes (see above)."""
    total, objs = 0, _Objects(data)
    for m in _STREAM.finditer(data):
        at = m.start()
        head = data.rfind(b"obj", max(0, at - DICT_WINDOW), at)
        d = None
        if head > 0 and data[head - 3 : head] != b"end":  # the object's header, not an "endobj"
            d = _parse_dict(data, head + 3, at)
        chain, image = _chain(objs, d)
        if not chain:
            continue
        try:
            size = _decoded_size(
                data,
                m.end(),
                _data_end(objs, d, m.end()),
                chain,
                _early_change(objs, d),
                limit if image else limit - total,
            )
        except _Over:
            raise too_inflated("a stream of the PDF" if image or not total else "the PDF's streams", limit) from None
        if not image:
            total += size


def extract_pdf(data: bytes, max_inflated: Optional[int] = None) -> Extracted:
    import pypdfium2 as pdfium

    check_decoded_size(data, inflation_limit() if max_inflated is None else max_inflated)
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
            read = ocr.pdf_pages(pdf, pages)  # pages without text (--ocr auto) or all (force): ocr.py
            for i, r in read.results.items():
                if r.page is not None and r.page.text.strip():
                    pages[i] = r.page.text.split("\n")
        finally:
            pdf.close()
    with_text = sum(1 for lines in pages if any(ln.strip() for ln in lines))
    if not with_text:
        if unreadable == len(pages) and pages:
            raise LoadError("corrupt", f"the PDF is damaged: none of its {len(pages)} pages could be read")
        if read.missing_engine:
            raise ocr.unavailable(
                f"this PDF has no text layer: none of its {len(pages)} pages has text, it is probably scanned; it"
            )
        raise LoadError("no_text_layer", _no_text(len(pages), read, ocr.current().mode))
    drop_running_lines(pages)
    parts, starts, offset = [], [], 0
    for i, lines in enumerate(pages):
        md = _page_markdown(_place_headings(lines, outline.get(i, [])))
        starts.append(offset)
        parts.append(md)
        offset += len(md) + 2  # the blank line between pages
    warnings = list(read.warnings)
    if with_text < len(pages) and not read.missing_engine:
        warnings.append(
            f"{len(pages) - with_text} of {len(pages)} pages have no text"
            + (" (--ocr off: scanned pages are not read)" if ocr.current().mode == "off" else "")
        )
    if count > MAX_PAGES:
        warnings.append(f"only the first {MAX_PAGES} of {count} pages were loaded")
    if b"%%EOF" not in data[-MAGIC_WINDOW:]:
        warnings.append("the PDF looks truncated (no %%EOF at its end): the pages that could be read were loaded")
    page_ocr = (
        tuple(
            (done.page.confidence or 0.0)
            if (done := read.results.get(i)) is not None and done.page is not None
            else None
            for i in range(len(pages))
        )
        if read.results
        else ()
    )
    return Extracted(
        text="\n\n".join(parts),
        markdown=True,
        title=title,
        page_starts=tuple(starts),
        warnings=tuple(warnings),
        page_ocr=page_ocr,
    )


def _no_text(n: int, read: "ocr.PdfOcr", mode: str) -> str:
    if mode == "off":
        return (
            f"no text layer: none of its {n} pages has text, it is probably scanned "
            "(--ocr off: ingest with --ocr auto to read it by OCR)"
        )
    if read.wanted:
        return f"no text found: none of its {n} pages has a text layer, and OCR found no text on them"
    return f"no text layer: none of its {n} pages has text or an image to read by OCR"


class PdfFormat(Format):
    name = "pdf"
    suffixes = (".pdf",)
    description = (
        "the text layer, page by page: bookmarks as the heading path, the page of every chunk; "
        "hyphenation joined, running headers and footers dropped"
    )

    def identify(self, head: bytes) -> Optional[str]:
        return None if b"%PDF-" in head[:MAGIC_WINDOW] else describe(head)

    def extract(self, data: bytes, *, path: str) -> Extracted:
        return extract_pdf(data)

    def extract_within(self, data: bytes, *, path: str, max_inflated: int) -> Extracted:
        return extract_pdf(data, max_inflated)


PDF = PdfFormat()
