"""PDF on the format registry: outline headings, page starts, running lines, hyphenation, and every
way a PDF can be unreadable as a per-document error of its own kind."""

from __future__ import annotations

import time

import format_fixtures as F
import pytest

from kbingest.pipeline.load.formats.pdf import PDF, drop_running_lines, join_hyphenation
from kbingest.pipeline.load.loading import LoadError, LoadLimits


@pytest.fixture(scope="module")
def manual():
    return PDF.extract(F.outline_pdf(), path="manual.pdf")


def test_outline_gives_headings_and_heading_path(manual):
    assert manual.markdown and manual.title == "ACME Pump Manual"
    assert {
        "Safety rules",
        "Installing the pump",
        "Installing the pump > Column layout",
        "Maintenance schedule",
    } <= F.heading_paths(manual.text)
    # the bookmark's title line on its page became the heading: it is not repeated as text
    assert manual.text.count("Safety rules") == 1


def test_page_starts_point_at_each_page(manual):
    assert len(manual.page_starts) == 6 and manual.page_starts[0] == 0
    for i, start in enumerate(manual.page_starts):
        end = manual.page_starts[i + 1] if i + 1 < len(manual.page_starts) else len(manual.text)
        page_text = manual.text[start:end]
        if i == 3:  # the two-column page
            assert "Left column line 0" in page_text and "Right column line 11" in page_text
        else:
            assert f"The marker {F.PAGE_WORDS[i]} closes this page." in page_text


def test_running_header_and_page_numbers_dropped(manual):
    assert F.RUNNING_HEADER not in manual.text
    assert "Page 3" not in manual.text


def test_hyphenation_at_line_end_joined(manual):
    assert "for a clean connection before" in manual.text
    assert join_hyphenation("a connec-\ntion here") == "a connection here"
    assert join_hyphenation("see Section-\nB") == "see Section-\nB"  # upper case goes on: a real hyphen


def test_running_lines_need_most_pages_and_short_lines():
    pages = [["Header", f"body {w}", "Page 1"] for w in ("a", "b", "c", "d")]
    pages[0][1] = "unique body"
    assert drop_running_lines(pages) == 8
    assert all(len(p) == 1 for p in pages)
    two = [["Header", "x"], ["Header", "y"]]
    assert drop_running_lines(two) == 0  # too few pages to tell


def test_scanned_pdf_is_no_text_layer():
    from kbingest.pipeline.load.formats import ocr

    with ocr.session("off"):  # --ocr off: today's error (auto reads it: tests/load/test_ocr.py)
        e = F.extract_error(PDF, F.scanned_pdf())
    assert e.kind == "no_text_layer" and e.message.startswith("no text layer") and "--ocr auto" in e.message


def test_encrypted_pdf():
    e = F.extract_error(PDF, F.encrypted_pdf())
    assert e.kind == "encrypted" and "password" in e.message


def test_truncated_pdf():
    data = F.outline_pdf()
    e = F.extract_error(PDF, data[: len(data) // 3])
    assert e.kind == "truncated"


def test_corrupt_pdf():
    data = F.outline_pdf()
    e = F.extract_error(PDF, data[:100] + b"\x00garbage" * 200 + data[-200:])
    assert e.kind == "corrupt"


def test_not_a_pdf_is_wrong_format_naming_what_it_is(tmp_path):
    path = F.write(tmp_path / "report.pdf", "<html><body>a saved web page</body></html>")
    with pytest.raises(LoadError) as e:
        F.load(path)
    assert e.value.kind == "wrong_format" and "HTML" in e.value.message
    path = F.write(tmp_path / "archive.pdf", F.docx_bytes())
    with pytest.raises(LoadError) as e:
        F.load(path)
    assert "ZIP archive" in e.value.message


def test_deeply_nested_objects_bounded():
    t = time.monotonic()
    with pytest.raises(LoadError) as e:
        PDF.extract(F.nested_objects_pdf(200_000), path="deep.pdf")
    assert e.value.kind in ("no_text_layer", "corrupt")
    assert time.monotonic() - t < 10


def test_max_file_mb_applies_to_pdf(tmp_path):
    path = F.write(tmp_path / "manual.pdf", F.outline_pdf())
    with pytest.raises(LoadError) as e:
        F.load(path, LoadLimits(max_file_bytes=1000))
    assert e.value.kind == "too_large"
    assert F.load(path).format == "pdf"
