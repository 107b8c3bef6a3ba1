"""pipeline/chunk/chunking.py: sections, packing, splitting, overlap, invariants (on the real tokenizer)."""

from __future__ import annotations

import random
import time

import pytest
from conftest import WAF
from markdown_it import MarkdownIt

from kbingest.pipeline.chunk import chunking
from kbingest.pipeline.chunk.chunking import (
    CHUNKER_VERSION,
    ChunkDraft,
    ChunkedDocument,
    Chunker,
    ChunkingError,
    ChunkSettings,
    _WordCounts,
)
from kbingest.pipeline.chunk.tokens import default_counter

MD = MarkdownIt("commonmark").enable("table")


@pytest.fixture(scope="module")
def counter():
    return default_counter()


def chunk(text: str, counter, markdown: bool = True, **settings) -> ChunkedDocument:
    s = ChunkSettings(**settings)
    doc = Chunker(s, counter).chunk(text, markdown=markdown)
    assert_invariants(doc, s, counter)
    return doc


def assert_invariants(doc: ChunkedDocument, s: ChunkSettings, counter) -> None:
    texts = [c.text for c in doc.chunks]
    assert [c.position for c in doc.chunks] == list(range(len(doc.chunks)))
    for t, n in zip(texts, counter.count_batch(texts)):
        assert t.strip(), "empty or whitespace-only chunk"
        assert n <= s.max_tokens, (n, t[:200])
        assert len(t) <= s.max_chars, (len(t), t[:200])


def body_of(c: ChunkDraft) -> str:
    """A chunk's text without its continuation prefix."""
    prefix = c.heading_path + "\n\n"
    return c.text[len(prefix) :] if c.heading_path and c.text.startswith(prefix) else c.text


def sentences(n: int, seed: int = 0, words: int = 12) -> list[str]:
    rnd = random.Random(seed)
    vocab = (
        "cloud workload reliability design team data service cost model region failure recovery "
        "network identity storage latency budget scale secure monitor review plan"
    ).split()
    return [f"S{i} " + " ".join(rnd.choice(vocab) for _ in range(words)) + "." for i in range(n)]


# ---- settings ---------------------------------------------------------------------------------


def test_settings_validate_and_fingerprint():
    s = ChunkSettings()
    assert (s.max_tokens, s.overlap_tokens, s.max_chars) == (240, 32, 4000)
    assert s.fingerprint() == ChunkSettings().fingerprint()  # stable
    assert CHUNKER_VERSION in s.fingerprint()
    fps = {
        ChunkSettings(max_tokens=200).fingerprint(),
        ChunkSettings(overlap_tokens=0).fingerprint(),
        ChunkSettings(max_chars=1000).fingerprint(),
        s.fingerprint(),
    }
    assert len(fps) == 4  # every setting is in it
    for bad in (
        dict(max_tokens=8193),
        dict(max_tokens=4),
        dict(overlap_tokens=-1),
        dict(overlap_tokens=240),
        dict(max_chars=10),
    ):
        with pytest.raises(ValueError):
            ChunkSettings(**bad)


# ---- front matter, title ----------------------------------------------------------------------

FRONT = """---
title: "Design: principles"
description: Review the design principles  # a comment
author: 'O''Brien'
ms.date: 04/15/2024
tags: [a, b]
nested:
  child: value
empty:
---

# The H1 title

Body text.
"""


def test_front_matter_is_metadata_never_text(counter):
    doc = chunk(FRONT, counter)
    assert doc.title == "Design: principles"
    assert doc.metadata == {
        "title": "Design: principles",
        "description": "Review the design principles",
        "author": "O'Brien",
        "ms.date": "04/15/2024",
    }
    joined = "\n".join(c.text for c in doc.chunks)
    assert "ms.date" not in joined and "author" not in joined and "---" not in joined
    assert doc.chunks[0].text.startswith("# The H1 title")


@pytest.mark.parametrize(
    "text",
    [
        "---\ntitle: never closed\n# Heading\n\ntext",
        "---\n: : :\n\t[\n  - x\n---\ntext",
        "---\n---\ntext",
        "---",
        "---\n",
        "--- \ntitle: x\n...\ntext",
        '---\n\x00\ufeff\ud7ff: "\n---\n',
    ],
)
def test_malformed_front_matter_never_raises(counter, text):
    doc = chunk(text, counter)
    assert isinstance(doc.metadata, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc.metadata.items())


def test_unclosed_or_non_yaml_front_matter_stays_text(counter):
    doc = chunk("---\ntitle: never closed\n\nSome text.", counter)
    assert doc.metadata == {} and "Some text." in doc.chunks[-1].text
    doc = chunk("---\nNot yaml at all\n---\n\nMore.", counter)  # a thematic break, then a setext H2
    assert doc.metadata == {} and doc.chunks[0].heading_path == "Not yaml at all"


def test_title_falls_back_to_first_h1_then_none(counter):
    assert chunk("## Sub\n\ntext\n\n# First *H1*\n\n# Second", counter).title == "First H1"
    assert chunk("## Only an H2\n\ntext", counter).title is None
    assert chunk("---\ntitle: ''\n---\n# From H1", counter).title == "From H1"


# ---- headings and sections --------------------------------------------------------------------

NESTED = """Preamble before any heading.

# Top **bold** `code` [link](http://example.com)

Top text.

## Second

Second text.

### Third

Third text.

## Back to two

Back text.

# New top

Last text.
"""


def test_nested_heading_paths_pop_properly(counter):
    doc = chunk(NESTED, counter)
    got = [(c.heading_path, c.text.splitlines()[0]) for c in doc.chunks]
    assert got == [
        ("", "Preamble before any heading."),
        ("Top bold code link", "# Top **bold** `code` [link](http://example.com)"),  # markup kept in text
        ("Top bold code link > Second", "## Second"),
        ("Top bold code link > Second > Third", "### Third"),
        ("Top bold code link > Back to two", "## Back to two"),  # H2 after H3 pops
        ("New top", "# New top"),
    ]


def test_setext_headings(counter):
    doc = chunk("Main title\n==========\n\nIntro.\n\nA *sub*\n-------\n\nSub text.\n\n### Deep\n\nx", counter)
    assert [c.heading_path for c in doc.chunks] == ["Main title", "Main title > A sub", "Main title > A sub > Deep"]
    assert doc.chunks[1].text.startswith("A *sub*\n-------\n\nSub text.")
    assert doc.title == "Main title"


def test_heading_like_lines_in_code_are_not_headings(counter):
    doc = chunk("# Real\n\n```bash\n# a comment, not a heading\necho hi\n```\n\n    # indented code\n", counter)
    assert {c.heading_path for c in doc.chunks} == {"Real"}


def test_no_headings_at_all(counter):
    text = "\n\n".join(" ".join(sentences(6, seed=i)) for i in range(12))
    doc = chunk(text, counter, max_tokens=80, overlap_tokens=0)
    assert len(doc.chunks) > 3
    assert all(c.heading_path == "" for c in doc.chunks)
    assert all(not c.text.startswith("\n") for c in doc.chunks)
    assert doc.title is None


def test_a_chunk_never_spans_two_sections(counter):
    text = "\n\n".join(f"## Part {i}\n\nShort text {i}." for i in range(8))
    doc = chunk(text, counter)  # everything would fit in one chunk
    assert len(doc.chunks) == 8
    for i, c in enumerate(doc.chunks):
        assert c.text == f"## Part {i}\n\nShort text {i}." and c.heading_path == f"Part {i}"


def test_continuation_chunks_start_with_the_heading_path(counter):
    text = "# Reliability\n\n## Design principles\n\n" + " ".join(sentences(60))
    doc = chunk(text, counter, max_tokens=64, overlap_tokens=0)
    sec = [c for c in doc.chunks if c.heading_path == "Reliability > Design principles"]
    assert len(sec) > 3
    assert sec[0].text.startswith("## Design principles\n\n")
    for c in sec[1:]:
        assert c.text.startswith("Reliability > Design principles\n\n")
        assert c.text.count("Reliability > Design principles") == 1


# ---- packing and splitting --------------------------------------------------------------------


def test_blocks_are_packed_greedily_and_markdown_is_preserved(counter):
    paras = [f"Paragraph {i} with **bold** and a [link](http://x/{i})." for i in range(6)]
    doc = chunk("\n\n".join(paras), counter)
    assert len(doc.chunks) == 1
    assert doc.chunks[0].text == "\n\n".join(paras)


def test_long_paragraph_splits_at_sentence_ends(counter):
    text = " ".join(sentences(80))
    doc = chunk(text, counter, max_tokens=60, overlap_tokens=0)
    assert len(doc.chunks) > 5
    assert all(c.text.endswith(".") for c in doc.chunks)
    assert " ".join(c.text for c in doc.chunks) == text  # nothing lost, nothing repeated


def test_list_over_budget_splits_at_item_boundaries(counter):
    items = [f"- Item {i}: " + " ".join(sentences(2, seed=i, words=6)) for i in range(40)]
    doc = chunk("\n".join(items), counter, max_tokens=60, overlap_tokens=0)
    assert len(doc.chunks) > 5
    pieces = [line for c in doc.chunks for line in c.text.split("\n")]
    assert pieces == items  # whole items, in order


def test_code_fence_kept_whole_when_it_fits(counter):
    fence = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(10)) + "\n```"
    text = " ".join(sentences(14)) + "\n\n" + fence + "\n\nAfter."
    doc = chunk(text, counter, max_tokens=120)
    assert sum(fence in c.text for c in doc.chunks) == 1
    assert all(c.text.count("```") in (0, 2) for c in doc.chunks)


def test_long_code_fence_splits_into_valid_fences(counter):
    lines = [f"result_{i} = compute(value_{i}, factor={i})  # step {i}" for i in range(120)]
    text = "## Code\n\n~~~python title=demo\n" + "\n".join(lines) + "\n~~~\n"
    doc = chunk(text, counter, max_tokens=100, overlap_tokens=0)
    code_chunks = [c for c in doc.chunks if "~~~" in c.text]
    assert len(code_chunks) > 5
    seen = []
    for c in code_chunks:
        fence = body_of(c)[body_of(c).index("~~~python title=demo\n") :]
        assert fence.endswith("\n~~~")
        tokens = [t for t in MD.parse(fence) if t.level == 0]
        assert [t.type for t in tokens] == ["fence"], fence  # one valid fence per piece
        assert tokens[0].info == "python title=demo"
        seen += tokens[0].content.splitlines()
    assert seen == lines  # every line once, in order


def test_unclosed_fence_pieces_are_closed(counter):
    text = "```\n" + "\n".join(f"line number {i} of an unclosed fence" for i in range(80))
    doc = chunk(text, counter, max_tokens=60, overlap_tokens=0)
    assert len(doc.chunks) > 3
    for c in doc.chunks:
        assert c.text.startswith("```\n") and c.text.endswith("\n```")


TABLE_HEAD = "| Name | Description |\n|------|-------------|"


def table(rows: int) -> str:
    return TABLE_HEAD + "\n" + "\n".join(f"| item {i} | the description of item {i} |" for i in range(rows))


def test_table_kept_whole_when_it_fits(counter):
    t = table(8)
    doc = chunk(" ".join(sentences(12)) + "\n\n" + t + "\n\nAfter the table.", counter, max_tokens=150)
    assert sum(t in c.text for c in doc.chunks) == 1


def test_table_over_budget_repeats_its_header(counter):
    t = table(60)
    doc = chunk("# Tables\n\n" + t, counter, max_tokens=80, overlap_tokens=0)
    rows_seen = []
    table_chunks = [c for c in doc.chunks if "| item" in c.text]
    assert len(table_chunks) > 4
    for c in table_chunks:
        body = body_of(c)
        if body.startswith("# Tables"):
            body = body.split("\n\n", 1)[1]
        assert body.startswith(TABLE_HEAD + "\n")
        assert any(tok.type == "table_open" for tok in MD.parse(body))
        rows_seen += body.split("\n")[2:]
    assert rows_seen == t.split("\n")[2:]


def test_giant_unspaced_word_is_capped_by_max_chars(counter):
    word = "x" * 50_000  # one [UNK] token: only the character cap bounds it
    doc = chunk(f"Before.\n\n{word}\n\nAfter.", counter, max_chars=1000, overlap_tokens=0)
    assert all(len(c.text) <= 1000 for c in doc.chunks)
    assert len(doc.chunks) >= 50
    assert "".join(c.text for c in doc.chunks) == f"Before.\n\n{word}\n\nAfter."  # cut, nothing lost


def test_giant_word_of_many_tokens_is_cut_by_characters(counter):
    word = "a." * 3000  # 6000 tokens, no whitespace
    doc = chunk(word, counter, max_tokens=50, overlap_tokens=0)
    assert "".join(c.text for c in doc.chunks) == word


def test_empty_documents_have_no_chunks(counter):
    for text in ("", "   \n\n\t  \n", "---\ntitle: only metadata\n---\n", "\ufeff\r\n\r\n"):
        doc = chunk(text, counter)
        assert doc.chunks == []
    assert chunk("---\ntitle: t\n---\n", counter).title == "t"


def test_plain_text_mode(counter):
    text = "# Not a heading\n\nFirst paragraph.\n\n```\nnot code\n```\n\n" + " ".join(sentences(40))
    doc = chunk(text, counter, markdown=False, max_tokens=60, overlap_tokens=0)
    assert all(c.heading_path == "" for c in doc.chunks)
    assert doc.chunks[0].text.startswith("# Not a heading\n\nFirst paragraph.")
    assert doc.title is None
    assert all(c.text.endswith((".", "```")) for c in doc.chunks)  # paragraphs, then sentences


def test_document_over_the_hard_limit_raises(counter, monkeypatch):
    monkeypatch.setattr(chunking, "MAX_DOCUMENT_CHARS", 1000)
    with pytest.raises(ChunkingError, match="limit"):
        Chunker(ChunkSettings(), counter).chunk("x " * 1000)


# ---- overlap ----------------------------------------------------------------------------------


def test_overlap_off_repeats_nothing(counter):
    paras = [" ".join(sentences(5, seed=i)) for i in range(10)]
    doc = chunk("\n\n".join(paras), counter, max_tokens=70, overlap_tokens=0)
    assert len(doc.chunks) > 3
    assert sum(len(c.text.split()) for c in doc.chunks) == sum(len(p.split()) for p in paras)


def test_overlap_on_carries_the_previous_tail_within_budget(counter):
    text = "# Sec\n\n" + "\n\n".join(" ".join(sentences(5, seed=i)) for i in range(10)) + "\n\n# Next\n\nEnd."
    s = ChunkSettings(max_tokens=70, overlap_tokens=20)
    doc = chunk(text, counter, max_tokens=70, overlap_tokens=20)
    sec = [c for c in doc.chunks if c.heading_path == "Sec"]
    carried = 0
    for prev, cur in zip(sec, sec[1:]):
        prev_body, cur_body = body_of(prev), body_of(cur)
        # the longest start of cur that is the end of prev: the repeated text
        overlap = max((k for k in range(1, len(cur_body) + 1) if prev_body.endswith(cur_body[:k])), default=0)
        if overlap:
            carried += 1
            repeated = cur_body[:overlap]
            assert repeated.endswith((".", ".\n")) or repeated.rstrip().endswith(".")  # whole sentences
            assert counter.count(repeated) <= s.overlap_tokens
    assert carried >= len(sec) // 2
    nxt = [c for c in doc.chunks if c.heading_path == "Next"]
    assert nxt[0].text == "# Next\n\nEnd."  # never crosses a section


def test_overlap_adds_text_compared_to_no_overlap(counter):
    text = " ".join(sentences(60))
    off = chunk(text, counter, max_tokens=60, overlap_tokens=0)
    on = chunk(text, counter, max_tokens=60, overlap_tokens=24)
    assert sum(len(c.text) for c in on.chunks) > sum(len(c.text) for c in off.chunks)
    assert len(on.chunks) >= len(off.chunks)


# ---- counting, determinism, corpus ------------------------------------------------------------


def test_cached_word_counts_are_exact(counter):
    rnd = random.Random(3)
    alphabet = list("abcXYZ019 \t\n.,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`") + list(
        "éüßİΣς—’“…中文字😀\u00a0\u3000\u200b\x00\x01\x0b\x0c\x1c\x1f\x7f\x85\u2028\u0301ﬁ"
    )
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 200))) for _ in range(500)]
    texts += ["word " * 50, "x" * 150, "a." * 300, ""]
    wc = _WordCounts(counter)
    assert wc.count(texts) == counter.count_batch(texts)
    assert wc.count(texts[::-1]) == counter.count_batch(texts[::-1])  # warm cache, same answers


def test_tokenizer_calls_per_document_are_few(counter):
    calls = []

    class Spy:
        def count_batch(self, texts):
            calls.append(("count_batch", len(texts)))
            return counter.count_batch(texts)

        def count(self, text):
            calls.append(("count", 1))
            return counter.count(text)

        def offsets(self, text):
            calls.append(("offsets", 1))
            return counter.offsets(text)

    chunker = Chunker(ChunkSettings(), Spy())
    text = (WAF / "reliability" / "principles.md").read_text(encoding="utf-8")
    first = chunker.chunk(text)
    assert len(first.chunks) > 5
    assert len(calls) <= 2, calls  # one batched call (+ one for oversize blocks)
    calls.clear()
    assert chunker.chunk(text) == first  # second time: every word is known
    assert calls == []


def test_deterministic(counter):
    text = (WAF / "ai" / "design-principles.md").read_text(encoding="utf-8")
    s = ChunkSettings(max_tokens=128, overlap_tokens=16)
    a = Chunker(s, counter).chunk(text)
    b = Chunker(s, counter).chunk(text)
    chunker = Chunker(s, counter)
    chunker.chunk(NESTED)
    assert a == b == chunker.chunk(text)


def test_waf_corpus_invariants(counter):
    pages = sorted(WAF.rglob("*.md"))
    assert len(pages) == 199
    texts = [p.read_text(encoding="utf-8") for p in pages]
    s = ChunkSettings()
    chunker = Chunker(s, counter)
    t0 = time.perf_counter()
    docs = [chunker.chunk(t) for t in texts]
    elapsed = time.perf_counter() - t0
    n_chunks = sum(len(d.chunks) for d in docs)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"\nwaf: {len(pages)} pages, {mb:.2f} MB, {n_chunks} chunks, {elapsed:.2f} s, {mb / elapsed:.2f} MB/s")
    for page, d in zip(pages, docs):
        assert d.chunks, page
        assert d.title, page
        assert_invariants(d, s, counter)
        assert not any(c.text.startswith("---\n") and "ms.date" in c.text for c in d.chunks), page
    assert n_chunks > 3000
