"""What a document's first bytes say it really is, for the "wrong_format" error ("not a pdf file:
it looks like a ZIP archive"). Magic numbers only: nothing here parses."""

from __future__ import annotations

from typing import Optional

from kbingest.pipeline.load.formats.text import looks_binary

# (magic at offset 0, what it is)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (.docx, .xlsx, .zip, ...)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (.doc, .xls, .ppt: OLE2)"),
    (b"{\\rtf", "an RTF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP, WAV, AVI)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--")


def what_it_is(head: bytes) -> Optional[str]:
    """A short name for what these bytes are, when their magic or markup says; else None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith(_HTML_STARTS):
        return "HTML or XML text"
    return None


def describe(head: bytes) -> str:
    """What these bytes are, for a message: a known magic, else binary data or plain text."""
    named = what_it_is(head)
    if named:
        return named
    return "binary data" if looks_binary(head) else "plain text"
