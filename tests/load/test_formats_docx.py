"""Word (.docx) on the format registry: headings, lists, tables; zip bombs refused before inflating;
legacy .doc reported as unsupported."""

from __future__ import annotations

import tracemalloc

import format_fixtures as F
import pytest

from kbingest.pipeline.load.formats import docx as docx_format
from kbingest.pipeline.load.formats.docx import DOCX
from kbingest.pipeline.load.loading import LoadError, LoadLimits, Problem, Skipped, walk


@pytest.fixture(scope="module")
def handbook():
    return DOCX.extract(F.docx_bytes(), path="handbook.docx")


def test_heading_styles_give_heading_path(handbook):
    assert handbook.title == "Pump Handbook"
    assert {"Operation", "Operation > Settings", "Maintenance"} <= F.heading_paths(handbook.text)


def test_lists_and_table_kept(handbook):
    assert "- open the inlet valve\n- check the pressure gauge\n   - inspect the inner seal" in handbook.text
    assert "1. switch on\n1. wait for pressure" in handbook.text
    assert "| Setting | Default |\n| --- | --- |\n| pressure | 2 bar |\n| speed | 1450 rpm |" in handbook.text


def test_zip_bomb_refused_before_inflating():
    bomb = F.zip_bomb_docx(100)  # 100 MiB of XML in ~100 KiB
    tracemalloc.start()
    e = F.extract_error(DOCX, bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert e.kind == "zip_bomb" and "inflates" in e.message
    assert peak < 10 * 2**20


def test_total_uncompressed_size_checked(monkeypatch):
    monkeypatch.setattr(docx_format, "MAX_UNCOMPRESSED", 1000)
    e = F.extract_error(DOCX, F.docx_bytes())
    assert e.kind == "zip_bomb" and "would inflate" in e.message


def test_entry_count_checked():
    e = F.extract_error(DOCX, F.many_entries_zip(10_001))
    assert e.kind == "zip_bomb" and "10,002 files" in e.message


def test_zip_that_is_not_a_word_document():
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "hi")
    e = F.extract_error(DOCX, buf.getvalue())
    assert e.kind == "corrupt" and "word/document.xml" in e.message


def test_damaged_zip_is_corrupt():
    data = F.docx_bytes()
    assert F.extract_error(DOCX, data[: len(data) // 2]).kind == "corrupt"


def test_not_a_zip_is_wrong_format(tmp_path):
    path = F.write(tmp_path / "letter.docx", b"%PDF-1.4\n" + b"x" * 100)
    with pytest.raises(LoadError) as e:
        F.load(path)
    assert e.value.kind == "wrong_format" and "a PDF document" in e.value.message


def test_legacy_doc_is_an_unsupported_format_error_other_suffixes_skipped(tmp_path):
    F.write(tmp_path / "old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))
    F.write(tmp_path / "photo.gif", b"GIF89a" + bytes(64))
    F.write(tmp_path / "new.docx", F.docx_bytes())
    out = {type(x).__name__ + ":" + x.path.rsplit("/", 1)[1]: x for x in walk([str(tmp_path)], LoadLimits())}
    doc = out["Problem:old.doc"]
    assert isinstance(doc, Problem) and doc.kind == "unsupported_format" and "legacy Word (.doc)" in doc.message
    assert isinstance(out["Skipped:photo.gif"], Skipped) and ".docx" in out["Skipped:photo.gif"].reason
    assert "Candidate:new.docx" in out
