"""The format registry: which format reads a document, found by its suffix (LlamaIndex's reader
registry is the model). Adding a format is one module plus one line in `_BUILTIN` below."""

from __future__ import annotations

import os
from typing import Optional

from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError
from kbingest.pipeline.load.formats.docx import DOCX
from kbingest.pipeline.load.formats.html import HTML
from kbingest.pipeline.load.formats.image import IMAGE
from kbingest.pipeline.load.formats.pdf import PDF
from kbingest.pipeline.load.formats.text import MARKDOWN, TEXT

_BUILTIN: tuple[Format, ...] = (
    MARKDOWN,
    TEXT,
    HTML,
    PDF,
    DOCX,
    IMAGE,  # OCR (ocr.py; the extra kbingest[ocr])
)

# Suffixes people expect to be read that no format reads: an error naming why, not a silent skip.
UNSUPPORTED: dict[str, str] = {
    ".doc": "legacy Word (.doc) is not supported: save it as .docx to load it",
}

_by_suffix: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format; its suffixes must not be taken already."""
    for s in fmt.suffixes:
        if s != s.lower() or not s.startswith("."):
            raise ValueError(f"format {fmt.name}: suffix {s!r} must be lower-case and start with a dot")
        if s in _by_suffix and _by_suffix[s] is not fmt:
            raise ValueError(f"suffix {s} is taken by format {_by_suffix[s].name}")
    for s in fmt.suffixes:
        _by_suffix[s] = fmt
    return fmt


def unregister(fmt: Format) -> None:
    for s in fmt.suffixes:
        if _by_suffix.get(s) is fmt:
            del _by_suffix[s]


def for_path(path: str) -> Optional[Format]:
    """The format of a file name, by its suffix (case-insensitive); None when none reads it."""
    name = os.path.basename(path).lower()
    best: Optional[Format] = None
    best_len = 0
    for s, fmt in _by_suffix.items():
        if name.endswith(s) and len(s) > best_len:
            best, best_len = fmt, len(s)
    return best


def unsupported(path: str) -> Optional[str]:
    """Why no format reads this file, when its suffix is one of UNSUPPORTED; else None."""
    name = os.path.basename(path).lower()
    for s, why in UNSUPPORTED.items():
        if name.endswith(s):
            return why
    return None


def formats() -> list[Format]:
    seen: list[Format] = []
    for fmt in _by_suffix.values():
        if fmt not in seen:
            seen.append(fmt)
    return seen


def suffixes() -> tuple[str, ...]:
    return tuple(sorted(_by_suffix))


for _fmt in _BUILTIN:
    register(_fmt)

__all__ = [
    "Extracted",
    "Format",
    "LoadError",
    "register",
    "unregister",
    "for_path",
    "formats",
    "suffixes",
    "unsupported",
    "UNSUPPORTED",
]
