"""Hostile inputs to pipeline/chunk/chunking.py: each one finishes within an asserted time bound and keeps
the chunk invariants (no empty chunk, <= max_chars, <= max_tokens on a sample checked with the
real tokenizer)."""

from __future__ import annotations

import random
import resource
import signal
import time
from contextlib import contextmanager

import pytest

from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings
from kbingest.pipeline.chunk.tokens import default_counter

TIME_BOUND_S = 20.0  # asserted per case
HANG_GUARD_S = 120  # SIGALRM: a hang fails the test instead of blocking the run
MAX_RSS_BYTES = 3 * 1024**3  # peak resident memory of the test process
SETTINGS = ChunkSettings()


@pytest.fixture(scope="module")
def counter():
    return default_counter()


@pytest.fixture(scope="module")
def chunker(counter):
    return Chunker(SETTINGS, counter)


@contextmanager
def hang_guard(seconds: int = HANG_GUARD_S):
    def _raise(signum, frame):
        raise TimeoutError(f"chunking did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def timed_chunk(chunker: Chunker, text: str, markdown: bool = True):
    with hang_guard():
        t0 = time.perf_counter()
        doc = chunker.chunk(text, markdown=markdown)
        elapsed = time.perf_counter() - t0
    print(f" {len(text) / 1e6:.2f} MB -> {len(doc.chunks)} chunks in {elapsed:.2f} s", end="")
    assert elapsed < TIME_BOUND_S, f"took {elapsed:.1f} s"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < MAX_RSS_BYTES
    return doc


def assert_invariants(doc, counter, sample: int = 400) -> None:
    assert doc.chunks
    for c in doc.chunks:
        assert c.text.strip() and len(c.text) <= SETTINGS.max_chars
    step = max(1, len(doc.chunks) // sample)
    checked = doc.chunks[::step] + doc.chunks[-1:]
    counts = counter.count_batch([c.text for c in checked])
    assert max(counts) <= SETTINGS.max_tokens


def natural_words(n_chars: int, seed: int = 0) -> str:
    """A single line of words from a 5,000-word vocabulary (text reuses its words)."""
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 10))) for _ in range(5000)]
    words, size = [], 0
    while size < n_chars:
        w = rnd.choice(vocab) + rnd.choice(("", "", "", ",", "."))
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:n_chars]


def test_10mb_single_line_with_spaces(chunker, counter):
    text = natural_words(10_000_000)
    doc = timed_chunk(chunker, text)
    assert_invariants(doc, counter)
    assert sum(len(c.text.split()) for c in doc.chunks) >= len(text.split())  # nothing lost


def test_10mb_single_line_without_spaces(chunker, counter):
    text = "x" * 10_000_000  # [UNK] pieces: bounded by max_chars
    doc = timed_chunk(chunker, text)
    assert_invariants(doc, counter)
    assert "".join(c.text for c in doc.chunks) == text


def test_10mb_single_line_of_punctuation(chunker, counter):
    text = "a." * 5_000_000  # one token per character, no whitespace
    doc = timed_chunk(chunker, text)
    assert_invariants(doc, counter)
    assert "".join(c.text for c in doc.chunks) == text


def test_5000_nested_list_levels_on_indented_lines(chunker, counter):
    text = "\n".join("  " * i + f"- item {i}" for i in range(5000))  # 25 MB, mostly indentation
    doc = timed_chunk(chunker, text)
    assert_invariants(doc, counter)
    assert "item 4999" in doc.chunks[-1].text


def test_5000_nested_list_levels_on_one_line(chunker, counter):
    doc = timed_chunk(chunker, "- " * 5000 + "deepest")
    assert_invariants(doc, counter)
    assert doc.chunks[-1].text.endswith("deepest")


def test_5000_nested_blockquotes(chunker, counter):
    doc = timed_chunk(chunker, "\n".join("> " * i + f"level {i}" for i in range(0, 5000, 7)))
    assert_invariants(doc, counter)


def test_recursion_error_falls_back_to_plain_text(chunker, counter, monkeypatch):
    def explode(text):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(chunker._md, "parse", explode)
    text = "# Title\n\n" + "\n".join("  " * i + f"- item {i}" for i in range(300))
    doc = timed_chunk(chunker, text)
    assert_invariants(doc, counter)
    assert all(c.heading_path == "" for c in doc.chunks)  # plain-text paragraphs
    assert doc.chunks[0].text.startswith("# Title")


def test_table_of_100k_cells(chunker, counter):
    head = "|" + "|".join(f"col {j}" for j in range(10)) + "|\n|" + "---|" * 10
    rows = ["|" + "|".join(f"r{i}c{j}" for j in range(10)) + "|" for i in range(10_000)]
    doc = timed_chunk(chunker, "## Big table\n\n" + head + "\n" + "\n".join(rows))
    assert_invariants(doc, counter)
    table_chunks = [c for c in doc.chunks if "|r" in c.text]
    assert all(head in c.text for c in table_chunks)  # the header is repeated in every piece
    assert sum(c.text.count("\n|r") for c in table_chunks) == len(rows)


def test_table_of_100k_cells_in_wide_rows(chunker, counter):
    head = "|" + "|".join(f"h{j}" for j in range(1000)) + "|\n|" + "---|" * 1000
    rows = "\n".join("|" + "|".join(f"c{j}" for j in range(1000)) + "|" for _ in range(100))
    doc = timed_chunk(chunker, head + "\n" + rows)  # header too big to repeat
    assert_invariants(doc, counter)


def test_200k_tiny_lines(chunker, counter):
    doc = timed_chunk(chunker, "x\n" * 200_000)
    assert_invariants(doc, counter)


def test_1mb_heading(chunker, counter):
    doc = timed_chunk(chunker, "# " + "word " * 200_000 + "\n\nBody.")
    assert_invariants(doc, counter)
    assert len(doc.chunks[0].heading_path) <= 256
    assert doc.chunks[-1].text.endswith("Body.")
