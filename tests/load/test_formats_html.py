"""HTML on the format registry: main content as Markdown, boilerplate dropped, charset, hostile input."""

from __future__ import annotations

import time

import format_fixtures as F
import pytest
from format_fixtures import HTML_PAGE, nested_div_html, write

from kbingest.pipeline.load.formats import for_path
from kbingest.pipeline.load.formats.html import HTML, flatten_deep
from kbingest.pipeline.load.loading import LoadError


@pytest.fixture(scope="module")
def page():
    return HTML.extract(HTML_PAGE.encode(), path="p.html")


def test_suffixes_are_registered():
    for name in ("a.html", "b.HTM", "c.xhtml"):
        assert for_path(name) is HTML


def test_main_content_kept_boilerplate_dropped(page):
    text = page.text
    assert "The pump exposes a small HTTP API. Call `start()` first." in text
    for boilerplate in (
        "Navigation link",
        "cookies",
        "Accept all",
        "Copyright",
        "Related: the blower",
        "Blog",
        "never indexed",
        "font-family",
    ):
        assert boilerplate not in text, boilerplate


def test_title_and_headings(page):
    assert page.title == "Pump API & Guide"
    assert page.markdown
    assert {"Pump API", "Pump API > Starting the pump", "Pump API > Settings"} <= F.heading_paths(page.text)


def test_code_block_and_table_kept_whole(page):
    assert (
        "```python\ndef start(pump):\n    if pump.pressure < 2:\n        pump.prime()\n\n    return pump.run()\n```"
    ) in page.text
    assert ("| Setting | Default |\n| --- | --- |\n| pressure | 2 bar |\n| speed | 1450 rpm |") in page.text
    assert "- open the valve\n- check the seals\n  1. inlet seal\n  2. outlet seal" in page.text


def test_text_that_looks_like_markdown_is_escaped():
    ex = HTML.extract(b"<p># not a heading</p><p>- not a list</p>", path="x.html")
    assert F.heading_paths(ex.text) == {""}
    assert "\\# not a heading" in ex.text


def test_page_without_main_keeps_body_minus_boilerplate():
    ex = HTML.extract(
        b"<body><nav>menu</nav><div><h2>Only</h2><p>body text</p></div><footer>foot</footer></body>", path="x.html"
    )
    assert ex.text == "## Only\n\nbody text\n"


def test_charset_from_meta_tag():
    data = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>cr\xe8me br\xfbl\xe9e</p></body></html>'
    ex = HTML.extract(data.encode("latin-1"), path="x.html")
    assert ex.title == "Café" and "crème brûlée" in ex.text and ex.warnings == ()


def test_charset_from_bom_utf16(tmp_path):
    data = "\ufeff<html><body><p>Grüße aus UTF-16</p></body></html>".encode("utf-16-le")
    doc = F.load(write(tmp_path / "u16.html", data))
    assert "Grüße aus UTF-16" in doc.text and doc.format == "html"


def test_invalid_utf8_replaced_with_a_warning():
    ex = HTML.extract(b"<p>ok \xff bad</p>", path="x.html")
    assert "\ufffd" in ex.text
    assert ex.warnings == ("invalid UTF-8 replaced at 1 place",)


def test_binary_html_is_wrong_format_naming_what_it_is(tmp_path):
    path = write(tmp_path / "image.html", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(LoadError) as e:
        F.load(path)
    assert e.value.kind == "wrong_format" and "a PNG image" in e.value.message


def test_100k_nested_divs_bounded():
    t = time.monotonic()
    ex = HTML.extract(nested_div_html(100_000), path="deep.html")
    assert "text at the bottom" in ex.text
    assert time.monotonic() - t < 10


def test_unclosed_nesting_two_million_deep_bounded():
    t = time.monotonic()
    ex = HTML.extract(b"<body>" + b"<div>" * 2_000_000 + b"still read", path="deep.html")
    assert "still read" in ex.text
    assert time.monotonic() - t < 20


def test_flatten_deep_keeps_shallow_html_unchanged_and_cuts_deep():
    shallow = "<div><p>a<br>b</p><span>c</span></div>"
    assert flatten_deep(shallow) is shallow
    deep = "<div>" * 10 + "x" + "</div>" * 10
    assert flatten_deep(deep, max_depth=3) == "<div>" * 3 + "x" + "</div>" * 3
