"""Text from documents and file names is attacker-controlled: escape it before a person sees it."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls (ESC, CR, BEL, ...), DEL, bidi overrides/isolates and other format characters.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """The text with every control, escape and bidi character shown as a visible escape.

    Tabs are kept; newlines too when keep_newlines, else shown as \\n. Lone surrogates from
    undecodable file names are shown as \\udcXX escapes rather than crashing an encoder.
    """
    if not keep_newlines:
        text = text.replace("\n", "\\n")
    text = _UNSAFE.sub(_escape_char, text)
    if any(unicodedata.category(c) == "Cs" for c in text):
        text = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cs" else c for c in text)
    return text


def fs_text(path: str) -> str:
    """A file name as valid Unicode, for places that must encode it as UTF-8 (LanceDB, JSON).

    Names are os.fsdecode'd: undecodable bytes survive as lone surrogates, which UTF-8 refuses.
    They are shown as `\\xNN` escapes; every other name comes back unchanged."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return path.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
