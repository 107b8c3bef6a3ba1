"""A knowledge base made by the previous version opens and re-runs with 0 chunks embedded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DATA, run_cli

FIXTURE = DATA / "kb-v0.1"
pytestmark = pytest.mark.xdist_group("compat")  # one worker: SOURCE is a fixed path
SOURCE = Path("/tmp/kbingest-compat-v01/docs")  # where version 0.1 read the pages from (its document keys)


@pytest.fixture
def old_kb(tmp_path):
    if SOURCE.parent.exists():
        shutil.rmtree(SOURCE.parent)
    shutil.copytree(FIXTURE / "docs", SOURCE)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    shutil.copytree(FIXTURE / "lancedb", home / "lancedb")
    yield home
    shutil.rmtree(SOURCE.parent, ignore_errors=True)


def test_previous_versions_table_reruns_with_nothing_embedded(old_kb):
    import json

    r = run_cli("ingest", str(SOURCE), "--kb", "compat", "--batch", home=old_kb)
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    m = final["metrics"]
    assert m["documents_skipped"] == 2 and m["chunks_embedded"] == 0 and m["chunks_indexed"] == 0
    assert m.get("documents_added", 0) == 0 and m.get("documents_replaced", 0) == 0
    hits = run_cli("search", "--kb", "compat", "how do I design for reliability", "--json", home=old_kb)
    assert hits.returncode == 0, hits.stderr
    assert json.loads(hits.stdout)[0]["source"] == str(SOURCE / "principles.md")
    from kbingest.pipeline.kb.ids import text_hash
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    t = KnowledgeBase(Home(old_kb), "compat")._table.to_arrow()  # gained by LanceDB's SQL: the same hash
    assert t.num_rows and t["text_hash"].to_pylist() == [text_hash(x) for x in t["text"].to_pylist()]
    (SOURCE / "moved").mkdir()  # a page moved: a new document whose every text the old table holds
    shutil.copy(SOURCE / "principles.md", SOURCE / "moved" / "principles.md")
    r = run_cli("ingest", str(SOURCE), "--kb", "compat", "--batch", home=old_kb)
    m = json.loads(r.stdout.splitlines()[-1])["metrics"]
    assert r.returncode == 0 and m["documents_added"] == 1 and m["chunks_embedded"] == 0 and m["chunks_reused"] > 0
