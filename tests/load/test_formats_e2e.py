"""A mixed folder (Markdown, HTML, PDF, DOCX and bad files of each) ingested headless as a user would:
every format's documents are indexed, every bad file fails with its format's own reason; pages reach
the table and `kbingest search`; a knowledge base from before the page column migrates."""

from __future__ import annotations

import json
from pathlib import Path

import format_fixtures as F
import pytest
from conftest import run_cli
from test_bad_input import ONE_GB_KB, run_measured

FAKE = ("--embedder", "fake")
GOOD = {"notes.md": "markdown", "api.html": "html", "manual.pdf": "pdf", "handbook.docx": "docx"}
BAD = {  # file -> the error kind it must fail with
    "scan.pdf": "no_text_layer",
    "secret.pdf": "encrypted",
    "cut.pdf": "truncated",
    "fake.pdf": "wrong_format",
    "image.html": "wrong_format",
    "bomb.docx": "zip_bomb",
    "old.doc": "unsupported_format",
}


def build_mixed(root: Path, bad: bool = True) -> Path:
    F.write(root / "notes.md", "# Notes\n\n" + "The pump notes say: prime before start. " * 4 + "\n")
    F.write(
        root / "api.html",
        F.HTML_PAGE.replace("<h1>Pump API</h1>", "<h1>Pump API</h1><p>Escape test \x1b[2J\x1b]0;pwned\x07 done.</p>"),
    )
    F.write(root / "manual.pdf", F.outline_pdf())
    F.write(root / "handbook.docx", F.docx_bytes())
    if bad:
        pdf = F.outline_pdf()
        F.write(root / "scan.pdf", F.scanned_pdf())
        F.write(root / "secret.pdf", F.encrypted_pdf())
        F.write(root / "cut.pdf", pdf[: len(pdf) // 3])
        F.write(root / "fake.pdf", "<html><body>a saved page, not a PDF</body></html>")
        F.write(root / "image.html", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
        F.write(root / "bomb.docx", F.zip_bomb_docx(60))
        F.write(root / "old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    return root


def _rows(home: Path, kb: str, columns: list[str]) -> list[dict]:
    import lancedb

    t = lancedb.connect(str(home / "lancedb")).open_table(kb)
    return t.search(None).select(columns).limit(None).to_list()


def _search(home: Path, kb: str, query: str, *extra: str):
    return run_cli("search", "--kb", kb, query, "-k", "100", *extra, home=home)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = build_mixed(tmp_path_factory.mktemp("mixed") / "docs")
    home = tmp_path_factory.mktemp("home")
    r = run_cli("ingest", str(root), "--kb", "mixed", "--batch", "--ocr", "off", *FAKE, home=home)  # scan.pdf: an error
    return root, home, r


def test_every_format_counted_and_every_error_names_its_reason(mixed):
    root, home, r = mixed
    assert r.returncode == 3, r.stderr  # completed with document errors
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "completed"
    m = final["metrics"]
    assert m["documents_added"] == len(GOOD) and m["documents_failed"] == len(BAD)
    kinds = {Path(e["path"]).name: e["kind"] for e in m["document_errors"]}
    assert kinds == BAD
    messages = {Path(e["path"]).name: e["message"] for e in m["document_errors"]}
    assert messages["scan.pdf"].startswith("no text layer") and "--ocr auto" in messages["scan.pdf"]
    assert "legacy Word (.doc)" in messages["old.doc"]
    assert "HTML" in messages["fake.pdf"] and "PNG image" in messages["image.html"]
    loading = next(p for p in final["phase_details"] if p["name"] == "loading")
    assert loading["items_processed"] == loading["items_total"] == len(GOOD) + len(BAD) - 1  # .doc: a walk error
    assert m["documents_by_format"] == {"markdown": 1, "html": 2, "pdf": 5, "docx": 2}  # failed ones too
    for name in BAD:
        assert name in r.stderr  # and the batch summary names each one


def test_rows_carry_format_structure_and_pages(mixed):
    root, home, _ = mixed
    rows = _rows(home, "mixed", ["source", "heading_path", "title", "page", "text"])
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(Path(row["source"]).name, []).append(row)
    assert set(by_file) == set(GOOD)
    pdf = by_file["manual.pdf"]
    assert all(isinstance(r["page"], int) and 1 <= r["page"] <= 6 for r in pdf)
    column = [r for r in pdf if r["heading_path"] == "Installing the pump > Column layout"]
    assert column and column[0]["page"] == 4
    assert {r["title"] for r in pdf} == {"ACME Pump Manual"}
    assert all(r["page"] is None for f in ("notes.md", "api.html", "handbook.docx") for r in by_file[f])
    assert {r["title"] for r in by_file["api.html"]} == {"Pump API & Guide"}
    assert "Pump API > Starting the pump" in {r["heading_path"] for r in by_file["api.html"]}
    assert "Operation > Settings" in {r["heading_path"] for r in by_file["handbook.docx"]}


def test_search_shows_page_and_escapes_document_text(mixed):
    _, home, _ = mixed
    r = _search(home, "mixed", "column layout")
    assert r.returncode == 0, r.stderr
    assert "manual.pdf  p. 4  [Installing the pump > Column layout]" in r.stdout
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "Escape test \\x1b[2J\\x1b]0;pwned\\x07 done." in r.stdout
    hits = json.loads(_search(home, "mixed", "column layout", "--json").stdout)
    pages = {Path(h["source"]).name: h["page"] for h in hits if h["heading_path"].endswith("Column layout")}
    assert pages == {"manual.pdf": 4}
    assert all("page" in h for h in hits)


def test_max_file_mb_applies_to_every_format(tmp_path):
    root = build_mixed(tmp_path / "docs", bad=False)
    r = run_cli(
        "ingest", str(root), "--kb", "small", "--batch", "--max-file-mb", "0.0001", *FAKE, home=tmp_path / "home"
    )
    final = json.loads(r.stdout.splitlines()[-1])
    kinds = {Path(e["path"]).name: e["kind"] for e in final["metrics"]["document_errors"]}
    assert kinds == {name: "too_large" for name in GOOD}


def test_knowledge_base_without_page_column_migrates_and_reembeds_nothing(tmp_path):
    import lancedb

    root = build_mixed(tmp_path / "docs", bad=False)
    home = tmp_path / "home"
    first = run_cli("ingest", str(root), "--kb", "old", "--batch", *FAKE, home=home)
    assert first.returncode == 0, first.stderr
    table = lancedb.connect(str(home / "lancedb")).open_table("old")
    table.drop_columns(["page"])  # now exactly what the previous version wrote
    assert "page" not in table.schema.names
    before = _search(home, "old", "column layout", "--json")  # an old table is searchable as it is
    assert before.returncode == 0 and all(h["page"] is None for h in json.loads(before.stdout))
    again = run_cli("ingest", str(root), "--kb", "old", "--batch", *FAKE, home=home)
    assert again.returncode == 0, again.stderr
    m = json.loads(again.stdout.splitlines()[-1])["metrics"]
    assert m["chunks_embedded"] == 0 and m["documents_skipped"] == len(GOOD)
    table = lancedb.connect(str(home / "lancedb")).open_table("old")
    assert table.schema.field("page").type == "int32" and table.schema.field("page").nullable
    F.write(root / "manual.pdf", F.outline_pdf(pages_per_chapter=3))  # a changed PDF gains its pages
    third = run_cli("ingest", str(root), "--kb", "old", "--batch", *FAKE, home=home)
    assert third.returncode == 0, third.stderr
    pages = [r["page"] for r in _rows(home, "old", ["source", "page"]) if r["source"].endswith("manual.pdf")]
    assert pages and all(isinstance(p, int) for p in pages) and max(pages) > 6


def test_2000_page_pdf_ingests_under_1_gib(tmp_path):
    F.write(tmp_path / "docs" / "long.pdf", F.many_pages_pdf(2000))
    r = run_measured(
        "ingest", str(tmp_path / "docs"), "--kb", "long", "--batch", *FAKE, home=tmp_path / "home", timeout=600
    )
    assert r.returncode == 0, r.stderr
    m = r.final["metrics"]
    assert m["documents_added"] == 1 and m["chunks_indexed"] > 2000
    assert r.maxrss_kb < ONE_GB_KB, f"peak RSS {r.maxrss_kb / 1024:.0f} MiB"
    pages = {row["page"] for row in _rows(tmp_path / "home", "long", ["page"])}
    assert min(pages) == 1 and max(pages) == 2000
