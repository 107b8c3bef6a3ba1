"""The page each chunk starts on, from a paged document's page_starts."""

from __future__ import annotations

from dataclasses import dataclass

import format_fixtures as F

from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings
from kbingest.pipeline.load.formats.pages import chunk_pages, page_of
from kbingest.pipeline.load.formats.pdf import PDF


@dataclass
class C:
    text: str
    heading_path: str = ""


def test_page_of_offsets():
    starts = (0, 10, 25)
    assert [page_of(o, starts) for o in (0, 9, 10, 24, 25, 1000)] == [1, 1, 2, 2, 3, 3]


def test_no_pages_means_none():
    assert chunk_pages("some text", (), [C("some text")]) == [None]


def test_each_chunk_gets_the_page_it_starts_on():
    text = "first page line one\nfirst page line two\n\nsecond page line\n\nthird page line"
    starts = (0, text.index("second"), text.index("third"))
    chunks = [C("first page line one"), C("first page line two\n\nsecond page line"), C("third page line")]
    assert chunk_pages(text, starts, chunks) == [1, 1, 3]


def test_heading_path_prefix_of_continuation_chunk_is_not_its_start():
    text = "# Intro\n\nIntro text on page one.\n\nMore intro text on page two."
    starts = (0, text.index("More"))
    chunks = [C("# Intro\n\nIntro text on page one.", "Intro"), C("Intro\n\nMore intro text on page two.", "Intro")]
    assert chunk_pages(text, starts, chunks) == [1, 2]


def test_repeated_lines_resolve_forward_never_back():
    text = "Note: same\nalpha\n\nNote: same\nbeta\n\nNote: same\ngamma"
    starts = (0, text.index("Note", 1), text.rindex("Note"))
    chunks = [C("Note: same\nalpha"), C("Note: same\nbeta"), C("Note: same\ngamma")]
    assert chunk_pages(text, starts, chunks) == [1, 2, 3]


def test_unfound_chunk_stays_on_previous_page():
    text = "page one words\n\npage two words"
    starts = (0, text.index("page two"))
    assert chunk_pages(text, starts, [C("page two words"), C("text found nowhere")]) == [2, 2]


def test_pdf_chunks_map_to_their_pages():
    ex = PDF.extract(F.outline_pdf(pages_per_chapter=4), path="m.pdf")
    chunks = Chunker(ChunkSettings(max_tokens=40, overlap_tokens=8)).chunk(ex.text, markdown=True).chunks
    pages = chunk_pages(ex.text, ex.page_starts, chunks)
    assert pages == sorted(pages) and pages[0] == 1 and pages[-1] == 12
    for ch, page in zip(chunks, pages):
        for i, word in enumerate(F.PAGE_WORDS):
            if f"Check the {word} valve" in ch.text.split("\n\n", 1)[-1][:40]:
                assert page in (i + 1, i + 11), (ch.text, page)
