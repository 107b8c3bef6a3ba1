"""Which page each chunk starts on, from a paged document's `page_starts`.

The chunker does not carry offsets: its chunks are spans of the document's lines, in document order,
each maybe led by its section's heading path (continuation chunks) and an overlap tail of the chunk
before. So each chunk's start is found by looking its first lines up in the text, moving forward
only, within SEARCH_WINDOW of where the previous chunk was found (chunks are at most a few thousand
characters): linear in the text. A chunk none of whose lines is found stays on the previous one's page.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Optional, Protocol, Sequence

ANCHOR_LINES = 3  # first lines of a chunk looked up, in order; the first one found is its start
MIN_ANCHOR_CHARS = 4  # shorter lines ("|", "```", "1.") say too little about where they are
SEARCH_WINDOW = 1 << 16  # characters after the previous chunk's start where the next one is looked for


class _Chunk(Protocol):
    text: str
    heading_path: str


def page_of(offset: int, page_starts: Sequence[int]) -> int:
    """The 1-based page holding this offset of the text (page_starts[i] is where page i+1 begins)."""
    return max(1, bisect_right(page_starts, offset))


def _anchors(chunk: _Chunk) -> list[str]:
    lines = [ln.strip() for ln in chunk.text.split("\n")]
    lines = [ln for ln in lines if ln]
    if lines and chunk.heading_path and chunk.heading_path.startswith(lines[0]):
        lines = lines[1:]  # the heading-path prefix of a continuation chunk: not text of this place
    return [ln for ln in lines if len(ln) >= MIN_ANCHOR_CHARS][:ANCHOR_LINES]


def chunk_pages(text: str, page_starts: Sequence[int], chunks: Sequence[_Chunk]) -> list[Optional[int]]:
    """The first page (1-based) each chunk spans; all None when the document has no pages."""
    if not page_starts:
        return [None] * len(chunks)
    out: list[Optional[int]] = []
    cursor, start = 0, 0  # where the previous chunk was found; where to look for the next one
    for ch in chunks:
        for anchor in _anchors(ch):
            found = text.find(anchor, start, start + SEARCH_WINDOW)
            if found >= 0:
                cursor, start = found, found + 1  # a chunk starts after the start of the one before
                break
        out.append(page_of(cursor, page_starts))
    return out
