"""Word (.docx): headings (the Heading N and Title styles), paragraphs, lists and tables, as Markdown.

A .docx is a zip archive: its directory is checked (entry count, total uncompressed size, the ratio
of the main document) before anything is inflated, so a zip bomb is a per-document error, never a
memory blow-up. The directory's sizes can lie (zipfile inflates a member whole, whatever size it
declares), so every member is then inflated once here, in bounded pieces and discarded, counting
what it really inflates to: past the job's inflation limit (base.inflation_limit) the document is
`too_large` before python-docx sees it. python-docx parses (lxml, external entities not resolved).
Legacy .doc (OLE2) is not read: see formats.UNSUPPORTED.
"""

from __future__ import annotations

import bz2
import io
import re
import struct
import zipfile
import zlib
from typing import Optional

from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError, inflation_limit, too_inflated
from kbingest.pipeline.load.formats.mdtext import escape_line_start, heading, squash, table
from kbingest.pipeline.load.formats.sniff import describe

MAX_ENTRIES = 10_000  # files in the archive
MAX_UNCOMPRESSED = 256 * 1024 * 1024  # bytes, all entries together, as the directory declares them
MAX_RATIO = 200  # uncompressed / compressed, for any entry over 1 MiB inflated
MAIN_PART = "word/document.xml"
PIECE = 1 << 20  # bytes inflated at a time while counting
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length

_HEADING_STYLE = re.compile(r"heading\s*([1-9])$", re.I)
_LIST_STYLE = re.compile(r"list\s*(bullet|number|paragraph|continue)?\s*([2-9])?$", re.I)


def check_archive(data: bytes) -> zipfile.ZipFile:
    """The zip, once its directory shows it is safe to read; raise LoadError otherwise."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as e:
        raise LoadError("corrupt", f"the .docx is not a readable zip archive ({e}): not loaded") from None
    if len(infos) > MAX_ENTRIES:
        raise LoadError(
            "zip_bomb",
            f"the .docx archive holds {len(infos):,} files (limit {MAX_ENTRIES:,}): not inflated, not loaded",
        )
    total = sum(i.file_size for i in infos)
    if total > MAX_UNCOMPRESSED:
        raise LoadError(
            "zip_bomb",
            f"the .docx would inflate to {total / 2**20:,.0f} MiB "
            f"(limit {MAX_UNCOMPRESSED // 2**20} MiB): not inflated, not loaded",
        )
    for i in infos:
        if i.file_size > 2**20 and i.file_size > MAX_RATIO * max(1, i.compress_size):
            raise LoadError(
                "zip_bomb",
                f"{i.filename} in the .docx inflates {i.file_size // max(1, i.compress_size):,} "
                f"times (limit {MAX_RATIO}): a zip bomb, not loaded",
            )
    if MAIN_PART not in z.namelist():
        raise LoadError("corrupt", f"the archive has no {MAIN_PART}: it is not a Word document")
    return z


def _decompressor(method: int):
    """A decompressor whose `decompress(data, max_length)` bounds its output, for the methods zipfile
    reads; None for stored members."""
    if method == zipfile.ZIP_STORED:
        return None
    if method == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15)
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor()
    # LZMA (and anything else): its decompressor in zipfile inflates a whole read at once; Word never
    # writes it, so it is not read at all
    raise LoadError(
        "corrupt",
        f"the .docx uses zip compression method {method}, which Word does not write: not inflated, not loaded",
    )


def _inflated_size(data: bytes, info: zipfile.ZipInfo, budget: int) -> int:
    """What the member really inflates to (counted, output discarded), stopping past `budget`. The
    compressed bytes are found from the member's local header, as zipfile finds them; the size its
    headers declare plays no part. A member that does not inflate cleanly counts what it gave (the
    parser then fails on it, as before)."""
    start = info.header_offset
    head = data[start : start + _LOCAL_HEADER.size]
    if len(head) < _LOCAL_HEADER.size:
        return 0
    magic, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    if magic != b"PK\x03\x04":
        return 0
    begin = start + _LOCAL_HEADER.size + name_len + extra_len
    raw = memoryview(data)[begin : begin + info.compress_size]
    d = _decompressor(info.compress_type)
    if d is None:
        return len(raw)
    total, pos = 0, 0
    pending: bytes | memoryview = b""
    try:
        while total <= budget and not d.eof:
            if isinstance(d, bz2.BZ2Decompressor):  # holds what it has not given out yet itself
                if d.needs_input:
                    if pos >= len(raw):
                        break
                    pending, pos = raw[pos : pos + PIECE], pos + PIECE
                total += len(d.decompress(pending, PIECE))
                pending = b""
                continue
            if not pending:
                if pos >= len(raw):
                    break
                pending, pos = raw[pos : pos + PIECE], pos + PIECE
            total += len(d.decompress(pending, PIECE))
            pending = d.unconsumed_tail
    except (zlib.error, OSError, EOFError, ValueError):
        pass
    return total


def check_inflation(data: bytes, z: zipfile.ZipFile, limit: int) -> None:
    """Raise LoadError too_large when the archive's members really inflate, together, to more than
    `limit` bytes (python-docx reads the parts it needs whole, each at once)."""
    total = 0
    for info in z.infolist():
        if info.flag_bits & 0x1 or info.is_dir():  # encrypted: zipfile refuses it without a password
            continue
        total += _inflated_size(data, info, limit - total)
        if total > limit:
            raise too_inflated("the .docx", limit)


def _style_name(p) -> str:
    try:
        return (p.style.name or "") if p.style is not None else ""
    except (KeyError, AttributeError, ValueError):
        return ""


def _list_level(p, style: str) -> Optional[tuple[bool, int]]:
    """(numbered, level from 0) when the paragraph is a list item, else None."""
    m = _LIST_STYLE.match(style)
    numbered = bool(m and (m.group(1) or "").lower() == "number")
    level = int(m.group(2)) - 1 if m and m.group(2) else 0
    ppr = p._p.pPr
    num = ppr.numPr if ppr is not None else None
    if num is not None and num.ilvl is not None and num.ilvl.val is not None:
        level = int(num.ilvl.val)
    if m or num is not None:
        return numbered, min(level, 8)
    return None


def _markdown(document, titles: Optional[list[str]] = None) -> str:
    """The body as Markdown; paragraphs in the Title style are also appended to `titles`."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    blocks: list[str] = []
    in_list = False
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = [[c.text for c in row.cells] for row in item.rows]
            blocks.append(table(rows))
            in_list = False
            continue
        if not isinstance(item, Paragraph):
            continue
        text = item.text
        if not text.strip():
            continue
        style = _style_name(item)
        m = _HEADING_STYLE.match(style)
        if m:
            blocks.append(heading(int(m.group(1)), text))
            in_list = False
            continue
        if style.lower() == "title" and titles is not None:
            titles.append(squash(text))
        listed = _list_level(item, style)
        if listed is not None:
            numbered, level = listed
            line = "   " * level + ("1. " if numbered else "- ") + squash(text)
            if in_list:
                blocks[-1] += "\n" + line
            else:
                blocks.append(line)
            in_list = True
            continue
        blocks.append("\n".join(escape_line_start(ln.strip()) for ln in text.split("\n") if ln.strip()))
        in_list = False
    return "\n\n".join(b for b in blocks if b.strip()) + "\n"


class DocxFormat(Format):
    name = "docx"
    suffixes = (".docx",)
    description = "headings (Heading and Title styles) as the heading path, paragraphs, lists and tables"

    def identify(self, head: bytes) -> Optional[str]:
        return None if head.startswith(b"PK\x03\x04") else describe(head)

    def extract(self, data: bytes, *, path: str) -> Extracted:
        return self.extract_within(data, path=path, max_inflated=inflation_limit())

    def extract_within(self, data: bytes, *, path: str, max_inflated: int) -> Extracted:
        import docx

        z = check_archive(data)
        try:
            check_inflation(data, z, max_inflated)
        finally:
            z.close()
        try:
            document = docx.Document(io.BytesIO(data))
        except Exception as e:  # python-docx and lxml raise many kinds on bad parts
            raise LoadError("corrupt", f"the .docx could not be read ({type(e).__name__}): not loaded") from None
        try:
            titles: list[str] = []
            text = _markdown(document, titles)
        except Exception as e:
            raise LoadError("corrupt", f"the .docx could not be read ({type(e).__name__}): not loaded") from None
        title = squash(document.core_properties.title or "") or (titles[0] if titles else None)
        return Extracted(text=text, markdown=True, title=title)


DOCX = DocxFormat()
