"""Documentation sites as their generators build them (issue 36): Sphinx and MkDocs sites are built
here, at test time, by the real generators (`sphinx-build`, `mkdocs build` with Material and
mkdocstrings) from tests/data/docsites/; Docusaurus and Javadoc pages are committed fixtures of their
real shape (tests/data/docsites/*.html: how each was made is written at its top). Asserted on what
they ingest to: API entries are headings (the signature, whole), under their section; no permalink
mark anywhere; admonitions labelled; code blocks keep their language and prompts; tables whole; the
generator is named in the document's metadata; the generic path is unchanged for other pages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import format_fixtures as F
import pytest
from conftest import DATA, run_cli

from kbingest.pipeline.chunk.chunking import Chunker, ChunkSettings
from kbingest.pipeline.load.formats.html import HTML, convert

SRC = DATA / "docsites"
MARKS = ("¶", "\u200b", "🔗")


def _build(cmd: list[str], cwd: Path) -> None:
    env = dict(
        os.environ,
        PYTHONDONTWRITEBYTECODE="1",
        NO_MKDOCS_2_WARNING="1",
        # nothing is fetched: a generator that tried would fail here, not wait
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
    )
    r = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.fixture(scope="session")
def sphinx_site(tmp_path_factory) -> Path:
    """tests/data/docsites/sphinx built by sphinx-build (autodoc and napoleon of shelfkit.py)."""
    work = tmp_path_factory.mktemp("sphinx")
    shutil.copytree(SRC, work / "src", ignore=shutil.ignore_patterns("*.html"))
    _build([sys.executable, "-m", "sphinx", "-q", "-b", "html", "src/sphinx", "site"], work)
    return work / "site"


@pytest.fixture(scope="session")
def mkdocs_site(tmp_path_factory) -> Path:
    """tests/data/docsites/mkdocs built by mkdocs (Material theme, mkdocstrings of shelfkit.py)."""
    work = tmp_path_factory.mktemp("mkdocs")
    shutil.copytree(SRC, work / "src", ignore=shutil.ignore_patterns("*.html"))
    _build(
        [sys.executable, "-m", "mkdocs", "build", "-q", "-f", "src/mkdocs/mkdocs.yml", "-d", str(work / "site")], work
    )
    return work / "site"


def _page(path: Path):
    return HTML.extract(path.read_bytes(), path=str(path))


def _chunks(text: str):
    return Chunker(ChunkSettings()).chunk(text, markdown=True)


def _chunk_under(chunked, heading_end: str, words: str):
    """The chunk whose heading path ends with `heading_end` and whose text has `words`."""
    found = [c for c in chunked.chunks if c.heading_path.endswith(heading_end) and words in c.text]
    assert found, [(c.heading_path, c.text[:60]) for c in chunked.chunks]
    return found[0]


# ---- Sphinx -----------------------------------------------------------------------------------------
def test_sphinx_api_entries_are_headings_under_their_section(sphinx_site):
    doc = _chunks(_page(sphinx_site / "api.html").text)
    shelf = "API reference > Shelves > class shelfkit.Shelf"
    _chunk_under(doc, shelf, "in the order they were put on it")
    _chunk_under(doc, shelf + " > add_book(title: str, pages: int = 100) → None", "right end of the shelf")
    _chunk_under(doc, shelf + " > remove_book(title: str) → bool", "when it was not there")
    _chunk_under(doc, "API reference > Shelves > shelfkit.parse_isbn(text: str) → str", "removing its hyphens")
    _chunk_under(doc, "API reference > C interface > int shelf_open(const char *path)", "Open the shelf")
    # every chunk with text that documents an API entry sits under its heading: all but the module's
    # own paragraph (under "Shelves" alone)
    body = [c for c in doc.chunks if "\n" in c.text.strip()]
    api = [c for c in body if "(" in c.heading_path or "class " in c.heading_path]
    assert len(api) == len(body) - 1 == 6


def test_sphinx_pages_have_no_permalink_marks_nor_navigation(sphinx_site):
    pages = [p for p in sphinx_site.glob("*.html") if p.name not in ("genindex.html", "search.html")]
    assert {p.name for p in pages} >= {"index.html", "api.html"}
    for p in pages:
        ex = _page(p)
        for c in _chunks(ex.text).chunks:
            for mark in MARKS:
                assert mark not in c.text and mark not in c.heading_path, (p.name, c.heading_path, c.text)
        for nav in ("Quick search", "Related Topics", "Powered by", "Navigation", "Page source"):
            assert nav not in ex.text, (p.name, nav)


def test_sphinx_admonitions_code_and_tables(sphinx_site):
    text = _page(sphinx_site / "index.html").text
    assert "Warning: Shelves are not thread-safe." in text
    assert "```console\n$ pip install shelfkit\n```" in text  # its language and its prompt
    assert "| shelf | books |\n| --- | --- |\n| small | 20 |\n| large | 40 |" in text  # whole
    assert "Changed in version 2.1: Large shelves hold 40 books." in text
    api = _page(sphinx_site / "api.html").text
    assert "Note: A shelf holds at most 40 books." in api
    assert "```python\n>>> parse_isbn(\"978-3-16-148410-0\")\n'9783161484100'\n```" in api


def test_sphinx_generator_in_the_documents_metadata(sphinx_site):
    ex = _page(sphinx_site / "api.html")
    doc = _chunks(ex.text)
    assert doc.metadata == {"generator": "sphinx"}
    assert ex.title == "API reference — Shelfkit documentation"
    assert not any("generator" in c.text for c in doc.chunks)


# ---- MkDocs -----------------------------------------------------------------------------------------
def test_mkdocs_api_entries_take_their_signature(mkdocs_site):
    ex = _page(mkdocs_site / "api" / "index.html")
    doc = _chunks(ex.text)
    assert doc.metadata == {"generator": "mkdocs"}
    _chunk_under(
        doc, "API reference > Shelf > add_book(title: str, pages: int = 100) -> None", "right end of the shelf"
    )
    _chunk_under(doc, "API reference > Shelf > count_books() -> int", "How many books")
    _chunk_under(doc, "API reference > parse_isbn(text: str) -> str", "removing its hyphens")
    assert "```pycon\n>>> parse_isbn(" in ex.text
    assert "| title | str | The book's title, as printed on its spine. | required |" in ex.text
    assert "Source code in" not in ex.text and "def add_book" not in ex.text  # the source, not the docs


def test_mkdocs_pages_have_no_permalink_marks_and_keep_admonitions_and_code(mkdocs_site):
    ex = _page(mkdocs_site / "index.html")
    assert "Warning: Shelves are not thread-safe." in ex.text
    assert "```console\n$ pip install shelfkit\n```" in ex.text
    assert "| small | 20 |" in ex.text
    for p in (mkdocs_site / "index.html", mkdocs_site / "api" / "index.html"):
        text = _page(p).text
        for c in _chunks(text).chunks:
            assert not any(m in c.text or m in c.heading_path for m in MARKS), c
        for nav in ("Skip to content", "Made with", "Material for MkDocs", "Table of contents"):
            assert nav not in text, (p, nav)


# ---- Docusaurus and Javadoc: committed pages of their real shape --------------------------------------
def test_docusaurus_page():
    ex = _page(SRC / "docusaurus.html")
    doc = _chunks(ex.text)
    assert doc.metadata == {"generator": "docusaurus"}
    assert {"Connecting a pump > Open the port", "Connecting a pump > Install"} <= {c.heading_path for c in doc.chunks}
    assert '```python\nfrom pumpkit import open_port\nport = open_port("/dev/ttyUSB0")\n```' in ex.text  # lines kept
    assert "Warning: Never open the port twice" in ex.text
    assert "$ conda install -c pumps pumpkit" in ex.text  # a tab the reader has not clicked is content too
    assert "| parity | none |" in ex.text
    for chrome in (
        "\u200b",
        "Edit this page",
        "Last updated",
        "unreleased documentation",
        "Version: Next",
        "Pagination intro",
        "Home crumb",
        "Desktop toc link",
        "On this page",
        "Copy",
        "Sidebar intro link",
        "Pumpkit 4 is out",
        "footer",
    ):
        assert chrome not in ex.text, chrome


def test_javadoc_member_details_take_their_signature():
    ex = _page(SRC / "javadoc.html")
    doc = _chunks(ex.text)
    assert doc.metadata == {"generator": "javadoc"}
    _chunk_under(
        doc,
        "Class Pump > Method Details > public void start(int litresPerMinute) throws PumpException",
        "Starts the pump at the given flow",
    )
    _chunk_under(doc, "Class Pump > Method Details > public void stop()", "closes its valve")
    assert "Method Summary" not in ex.text  # each member's first sentence once, in its details


# ---- the generic path, bounds, the user's path ----------------------------------------------------
def test_other_pages_take_the_generic_path():
    markdown, title, generator = convert(F.HTML_PAGE)
    assert generator is None
    assert not markdown.startswith("---")
    assert HTML.extract(F.HTML_PAGE.encode(), path="p.html").text == markdown


def test_heading_text_is_joined_as_written():
    """A heading's inline pieces join as written (Lexbor's css() matches the heading itself: it used
    to count as a block inside it, and every span got a space)."""
    md, _, _ = convert("<main><h2><code>f</code><span>(</span><em>x</em><span>)</span></h2><p>Body.</p></main>")
    assert "## f(x)\n" in md


def test_sphinx_page_nested_deep_is_bounded():
    """A Sphinx page whose API entries nest 100,000 deep loads in bounded time, like any HTML."""
    n = 100_000
    html = (
        '<html><head><meta name="generator" content="Sphinx 9"></head><body><div class="body" role="main">'
        '<h1>Deep<a class="headerlink" href="#deep">¶</a></h1>'
        + '<dl class="py function"><dt class="sig sig-object py">f()<a class="headerlink" href="#f">¶</a></dt><dd>' * n
        + "bottom"
        + "</dd></dl>" * n
        + "</div></body></html>"
    )
    t0 = time.perf_counter()
    md, _, generator = convert(html)
    assert time.perf_counter() - t0 < 30
    assert generator == "sphinx" and "bottom" in md
    assert md.startswith("# Deep\n\n## f()\n\n### f()")  # under their section, each one deeper
    assert "###### f()" in md and "####### " not in md  # nesting stops at Markdown's deepest heading


def test_ingest_of_a_built_sphinx_site_counts_html_and_rows_have_api_headings(sphinx_site, tmp_path):
    """As a user would: the built site's folder ingested headless; its pages count as html, rows carry
    the API headings and no permalink mark."""
    import lancedb

    home = tmp_path / "home"
    r = run_cli("ingest", str(sphinx_site), "--kb", "docs", "--batch", "--embedder", "fake", home=home)
    assert r.returncode in (0, 3), r.stderr  # 3: files of _static/ another format may refuse
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "completed"
    assert not [e for e in final["metrics"].get("document_errors") or [] if e["path"].endswith(".html")]
    assert final["metrics"]["documents_by_format"]["html"] == len(list(sphinx_site.rglob("*.html")))
    rows = (
        lancedb.connect(str(home / "lancedb"))
        .open_table("docs")
        .search(None)
        .select(["text", "heading_path"])
        .limit(None)
        .to_list()
    )
    assert not any(m in r["text"] or m in r["heading_path"] for r in rows for m in MARKS)
    assert any(r["heading_path"].endswith("add_book(title: str, pages: int = 100) → None") for r in rows)
