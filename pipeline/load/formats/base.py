"""What a document format is: the interface every entry of the format registry implements.

A format turns a document's bytes (already read safely and bounded by the loader) into text plus
structure. It decides for itself whether bytes are its own (`identify`): binary detection is each
format's decision, so a PDF is never refused as "binary" before the PDF reader sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Compressed formats (.docx, PDF streams) are bounded by what they really inflate to, counted while
# inflating, never by what their headers claim: at most INFLATE_FACTOR times the job's file size limit
# (--max-file-mb), and never less than INFLATE_FLOOR. Default: 10 x 20 MiB = 200 MiB.
INFLATE_FACTOR = 10
INFLATE_FLOOR = 64 * 1024 * 1024


def inflation_limit(max_file_bytes: Optional[int] = None) -> int:
    """The most bytes a document of a job with this file size limit (default: the job default) may
    inflate to."""
    if max_file_bytes is None:
        from kbingest.pipeline.models import job_default

        max_file_bytes = job_default("max_file_bytes")
    return max(INFLATE_FLOOR, INFLATE_FACTOR * max_file_bytes)


def too_inflated(what: str, limit: int) -> "LoadError":
    """The error of a document that inflates past `limit` (inflation_limit): kind too_large."""
    return LoadError(
        "too_large",
        f"{what} inflates to more than {limit / 2**20:,.0f} MiB (the limit: "
        f"{INFLATE_FACTOR} x --max-file-mb, at least {INFLATE_FLOOR >> 20} MiB): "
        "not inflated further, not loaded",
    )


class LoadError(Exception):
    """A document that could not be loaded; `kind` is machine-readable, `message` is for a person."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class NoText(LoadError):
    """Not a document to load, and not a broken one either: bytes a format read without fault that
    hold no text (an icon, a logo, a photo). The loader skips it with a warning and counts it
    (documents_without_text); what the knowledge base held of it stays, as for any document not loaded."""

    def __init__(self, message: str) -> None:
        super().__init__("no_text", message)


@dataclass(frozen=True)
class Extracted:
    """A document's text and structure, as one format extracted it."""

    text: str  # Markdown when `markdown`, else plain text
    markdown: bool  # the Markdown chunker applies (headings give the heading path)
    title: Optional[str] = None  # the document's own title (HTML <title>, PDF metadata), if any
    page_starts: tuple[int, ...] = ()  # paged formats: offset in `text` where page i+1 begins
    page_ocr: tuple[Optional[float], ...] = ()  # per page: None read from its text layer, else OCR's confidence
    warnings: tuple[str, ...] = ()  # loaded, but flagged (e.g. invalid UTF-8 replaced)


class Format:
    """One document format. Subclasses set the class attributes and implement `extract`."""

    name: str = ""  # "markdown", "text", "html", "pdf", "docx"
    suffixes: tuple[str, ...] = ()  # lower-case, with the dot
    description: str = ""  # what is extracted (README's table)

    def identify(self, head: bytes) -> Optional[str]:
        """None when `head` (the first bytes) can be this format; else what it really looks like,
        for the error message ("binary data", "a ZIP archive", ...)."""
        return None

    def extract(self, data: bytes, *, path: str) -> Extracted:
        """The text and structure of `data`; raise LoadError(kind, message) when it cannot."""
        raise NotImplementedError

    def extract_within(self, data: bytes, *, path: str, max_inflated: int) -> Extracted:
        """`extract`, with what the document may inflate to (inflation_limit); a format that
        inflates nothing (Markdown, text, HTML) ignores it."""
        return self.extract(data, path=path)
