"""End to end on the real stack: the shipped all-MiniLM-L6-v2 through fastembed, a real LanceDB table."""

import json

import pytest
from conftest import copy_pages, run_cli

pytestmark = pytest.mark.e2e

PAGES = ["reliability/principles.md", "security/principles.md", "cost-optimization/principles.md"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    docs = copy_pages(root / "docs", PAGES)
    h = root / "home"
    first = run_cli("ingest", str(docs), "--kb", "waf", "--batch", home=h, timeout=600)
    return h, docs, first


def test_real_ingest_completes_and_table_holds_every_page(ingested, status_validator):
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    h, docs, first = ingested
    assert first.returncode == 0, first.stderr
    lines = [json.loads(x) for x in first.stdout.splitlines()]
    for d in lines:
        status_validator.validate(d)
    final = lines[-1]
    assert final["status"] == "completed"
    kb = KnowledgeBase(Home(h), "waf")
    ids = kb.ids()
    assert len(ids) == len(set(ids)) == final["metrics"]["chunks_indexed"] > 0
    sources = {d.source for d in kb.stored_docs().values()}
    assert sources == {str(docs / p) for p in PAGES}
    assert kb.dim == 384


def test_second_identical_run_adds_no_row(ingested):
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    h, docs, _ = ingested
    before = sorted(KnowledgeBase(Home(h), "waf").ids())
    again = run_cli("ingest", str(docs), "--kb", "waf", "--batch", home=h, timeout=600)
    assert again.returncode == 0, again.stderr
    final = json.loads(again.stdout.splitlines()[-1])
    assert final["metrics"]["chunks_embedded"] == 0
    assert final["metrics"]["documents_skipped"] == len(PAGES)
    assert sorted(KnowledgeBase(Home(h), "waf").ids()) == before


def test_search_finds_the_reliability_page_first(ingested):
    h, docs, _ = ingested
    r = run_cli("search", "--kb", "waf", "how to design for reliability", "--json", home=h, timeout=120)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert hits and hits[0]["source"].endswith("reliability/principles.md")
    assert all(-1.0 <= h_["score"] <= 1.0 for h_ in hits)
    # a security question lands on the security page
    r = run_cli("search", "--kb", "waf", "protect identities and encrypt data", "--json", "-k", "1", home=h)
    assert json.loads(r.stdout)[0]["source"].endswith("security/principles.md")
