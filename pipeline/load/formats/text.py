"""Plain text and Markdown: decoded from UTF-8/16/32 (BOM-aware), invalid bytes replaced and counted."""

from __future__ import annotations

import codecs
import threading
from typing import Optional

from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError

BINARY_SAMPLE = 8192
_BOMS = (  # UTF-32 first: its little-endian BOM starts with the UTF-16 one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF8, "utf-8"),
)
_TEXT_CONTROLS = frozenset((8, 9, 10, 11, 12, 13, 27))  # \b \t \n \v \f \r ESC
_counter = threading.local()


def _replace_and_count(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):  # registered for decoding only
        raise exc
    _counter.n += 1
    return "\ufffd", exc.end


codecs.register_error("kbingest.count_replace", _replace_and_count)


def looks_binary(codes) -> bool:
    """NUL anywhere in the sample, or more than 30% control characters."""
    codes = list(codes)
    if not codes:
        return False
    if 0 in codes:
        return True
    controls = sum(1 for x in codes if (x < 32 and x not in _TEXT_CONTROLS) or x == 127)
    return controls / len(codes) > 0.3


def decode_counting(body: bytes, encoding: str) -> tuple[str, int]:
    """(text, number of invalid sequences replaced with U+FFFD)."""
    try:
        return body.decode(encoding), 0
    except UnicodeDecodeError:
        _counter.n = 0
        return body.decode(encoding, "kbingest.count_replace"), _counter.n


def bom(data: bytes) -> tuple[str, bytes]:
    """(encoding its byte-order mark names, the bytes after it); ("utf-8", data) without one."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return enc, data[len(bom) :]
    return "utf-8", data


def decode(data: bytes) -> tuple[str, int, str]:
    """(text, number of invalid sequences replaced, encoding name); raise LoadError('binary')."""
    encoding, body = bom(data)
    if encoding == "utf-8" and looks_binary(body[:BINARY_SAMPLE]):
        raise LoadError("binary", "the file looks binary (NUL or control bytes), not text: not loaded")
    text, replaced = decode_counting(body, encoding)
    if encoding != "utf-8" and looks_binary(map(ord, text[:BINARY_SAMPLE])):
        raise LoadError("binary", "the file looks binary (NUL or control characters), not text: not loaded")
    return text, replaced, encoding[:6].upper()  # "UTF-8", "UTF-16" or "UTF-32"


def replaced_warning(replaced: int, encoding: str) -> tuple[str, ...]:
    if not replaced:
        return ()
    return (f"invalid {encoding} replaced at {replaced} place{'s' if replaced != 1 else ''}",)


class TextFormat(Format):
    name = "text"
    suffixes: tuple[str, ...] = (".txt",)
    description = "the text, paragraphs and sentences; no headings"
    markdown = False

    def identify(self, head: bytes) -> Optional[str]:
        return None  # decode() decides on the whole sample, with the BOM

    def extract(self, data: bytes, *, path: str) -> Extracted:
        text, replaced, encoding = decode(data)
        return Extracted(text=text, markdown=self.markdown, warnings=replaced_warning(replaced, encoding))


class MarkdownFormat(TextFormat):
    name = "markdown"
    suffixes = (".md", ".markdown")
    description = "headings as the heading path, front-matter title, code blocks and tables kept whole"
    markdown = True


TEXT = TextFormat()
MARKDOWN = MarkdownFormat()
