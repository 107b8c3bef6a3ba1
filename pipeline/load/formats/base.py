"""What a document format is: the interface every entry of the format registry implements.

A format turns a document's bytes (already read safely and bounded by the loader) into text plus
structure. It decides for itself whether bytes are its own (`identify`): binary detection is each
format's decision, so a PDF is never refused as "binary" before the PDF reader sees it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class LoadError(Exception):
    """A document that could not be loaded; `kind` is machine-readable, `message` is for a person."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Extracted:
    """A document's text and structure, as one format extracted it."""

    text: str                          # Markdown when `markdown`, else plain text
    markdown: bool                     # the Markdown chunker applies (headings give the heading path)
    title: Optional[str] = None        # the document's own title (HTML <title>, PDF metadata), if any
    page_starts: tuple[int, ...] = ()  # paged formats: offset in `text` where page i+1 begins
    warnings: tuple[str, ...] = ()     # loaded, but flagged (e.g. invalid UTF-8 replaced)


class Format:
    """One document format. Subclasses set the class attributes and implement `extract`."""

    name: str = ""                     # "markdown", "text", "html", "pdf", "docx"
    suffixes: tuple[str, ...] = ()     # lower-case, with the dot
    description: str = ""              # what is extracted (README's table)

    def identify(self, head: bytes) -> Optional[str]:
        """None when `head` (the first bytes) can be this format; else what it really looks like,
        for the error message ("binary data", "a ZIP archive", ...)."""
        return None

    def extract(self, data: bytes, *, path: str) -> Extracted:
        """The text and structure of `data`; raise LoadError(kind, message) when it cannot."""
        raise NotImplementedError
