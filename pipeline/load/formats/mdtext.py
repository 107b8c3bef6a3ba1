"""Writing Markdown from another format's text: what every converter (HTML, PDF, DOCX) shares."""

from __future__ import annotations

import re

_MD_LINE_START = re.compile(r"^(\s*)(?:\d+(?=[.)])|(?=[#>+*|-]|=+\s*$|`{3}|~{3}))")
MAX_HEADING_LEVEL = 6


def squash(text: str) -> str:
    """Runs of whitespace as one space, trimmed."""
    return " ".join(text.split())


def escape_line_start(line: str) -> str:
    """A line of plain text that Markdown will not read as a heading, list, quote, fence or table."""
    m = _MD_LINE_START.match(line)  # ends where the backslash goes: after "12" of "12.", before "#"
    return line[: m.end()] + "\\" + line[m.end() :] if m else line


_NEEDS_ESCAPE = frozenset("#>+*|-=`~0123456789")


def plain_lines(text: str) -> str:
    """Plain text as Markdown text: each line trimmed (no indented code blocks) and escaped."""
    out = []
    for ln in text.split("\n"):
        ln = ln.strip()
        out.append(escape_line_start(ln) if ln and ln[0] in _NEEDS_ESCAPE else ln)
    return "\n".join(out)


def heading(level: int, text: str) -> str:
    """A Markdown heading line ('' when the text is empty)."""
    text = squash(text)
    return f"{'#' * max(1, min(level, MAX_HEADING_LEVEL))} {text}" if text else ""


def fence(code: str, lang: str = "") -> str:
    """A fenced code block whose fence no line of the code can close."""
    ticks = "```"
    while ticks in code:
        ticks += "`"
    return f"{ticks}{lang}\n{code.strip(chr(10))}\n{ticks}"


def table(rows: list[list[str]]) -> str:
    """A Markdown table (the first row is the header); cells squashed, pipes escaped."""
    rows = [[squash(c).replace("|", "\\|") for c in r] for r in rows if r]
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
