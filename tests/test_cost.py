"""Cost in proportion to the work (issue 12): each distinct text is embedded once per job, and
progress stays truthful when most chunks are reused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from kbingest.pipeline.embed.embedding import FakeEmbedder
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.service import Service
from kbingest.pipeline.status import JobStatus

PHRASE = "The same licence footer appears on every page of this manual and says nothing new."


class CountingEmbedder(FakeEmbedder):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts.extend(texts)
        return super().embed(texts)


def _embedded(t) -> list[str]:
    """What a new knowledge base embeds for each row (pipeline/embed/embedding.py embedded_text)."""
    from kbingest.pipeline.embed.embedding import embedded_text

    return [embedded_text(r["text"], r["title"], r["heading_path"]) for r in t.to_pylist()]


def _svc(home, emb):
    return Service(home, embedder_factory=lambda c: emb)


def _kbingest_importing(home, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`kbingest --home HOME ARGS` in a fresh process under `-X importtime`: its result, and the
    modules it imported."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kbingest", "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=timeout,
    )
    imported = {x.rsplit("|", 1)[-1].strip() for x in r.stderr.splitlines() if x.startswith("import time")}
    return r, imported


def _python(code: str) -> subprocess.CompletedProcess:
    """`python -c CODE` in a fresh process."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_repeated_text_is_embedded_once(tmp_path, home):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "repeated.txt").write_text("\n\n".join([PHRASE] * 400))  # one phrase, many identical chunks
    for i in range(3):
        (src / f"page{i}.md").write_text(
            f"# Page {i}\n\nUnique words of page {i} about topic {i}.\n\n## Footer\n\n{PHRASE}\n"
        )
    emb = CountingEmbedder()
    svc = _svc(home, emb)
    job = svc.start(svc.config([str(src)], "rep", embedder="fake", max_tokens=32, overlap_tokens=0))
    snap = job.run()
    assert snap.status == JobStatus.COMPLETED
    m = snap.m
    assert len(emb.texts) == len(set(emb.texts)) == m.chunks_embedded  # every distinct text once
    assert m.chunks_reused > 100 and m.chunks_embedded + m.chunks_reused == m.chunks_created
    emb_phase = next(p for p in snap.phase_details if p.name == "embedding")
    assert emb_phase.items_processed == emb_phase.items_total == m.chunks_created  # progress counts reused ones
    kb = KnowledgeBase(home, "rep")
    assert kb.count() == m.chunks_indexed == m.chunks_created
    t = kb._table.to_arrow()
    want = FakeEmbedder().embed(_embedded(t))  # of what was embedded: title and heading path in front (issue 31)
    assert np.allclose(np.asarray(t["vector"].to_pylist(), dtype=np.float32), want, atol=1e-6)  # right vectors


def test_a_text_the_knowledge_base_holds_is_not_embedded_again(tmp_path, home):
    """Across jobs and documents: a page copied or moved to another folder, and a page that shares
    paragraphs with stored ones, embed only their new texts; the stored vectors are the ones reused."""
    first = tmp_path / "first"
    first.mkdir()
    for i in range(3):
        (first / f"page{i}.md").write_text(
            f"# Page {i}\n\nUnique words of page {i} about topic {i}.\n\n## Footer {i}\n\n{PHRASE} Page {i}.\n"
        )
    emb = CountingEmbedder()
    svc = _svc(home, emb)
    one = svc.start(svc.config([str(first)], "kbwide", embedder="fake", max_tokens=32, overlap_tokens=0)).run()
    assert one.status == JobStatus.COMPLETED and not one.m.chunks_reused
    stored_texts = set(emb.texts)
    second = tmp_path / "moved"
    second.mkdir()
    (second / "page0-copy.md").write_text((first / "page0.md").read_text())
    (second / "page1-edited.md").write_text((first / "page1.md").read_text() + "\n## New\n\nA paragraph never seen.\n")
    emb.texts.clear()
    two = svc.start(svc.config([str(second)], "kbwide", embedder="fake", max_tokens=32, overlap_tokens=0)).run()
    assert two.status == JobStatus.COMPLETED
    assert emb.texts and not set(emb.texts) & stored_texts  # only the new paragraph's chunk(s)
    assert two.m.chunks_embedded == len(emb.texts) and two.m.chunks_reused == two.m.chunks_created - len(emb.texts)
    assert two.m.chunks_reused >= 4
    emb_phase = next(p for p in two.phase_details if p.name == "embedding")
    assert emb_phase.items_processed == emb_phase.items_total == two.m.chunks_created
    t = KnowledgeBase(home, "kbwide")._table.to_arrow()
    assert t.num_rows == one.m.chunks_created + two.m.chunks_created
    want = FakeEmbedder().embed(_embedded(t))
    assert np.allclose(np.asarray(t["vector"].to_pylist(), dtype=np.float32), want, atol=1e-6)
    from kbingest.pipeline.kb.ids import text_hash

    assert t["text_hash"].to_pylist() == [text_hash(x) for x in _embedded(t)]  # the hash of what was embedded


def test_a_stored_vector_of_another_model_is_not_reused(tmp_path, home):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text(f"# A\n\n{PHRASE}\n")
    svc = _svc(home, CountingEmbedder())
    svc.start(svc.config([str(src)], "models", embedder="fake")).run()
    kb = KnowledgeBase(home, "models")
    h = kb._table.to_arrow()["text_hash"][0].as_py()  # the hash of what was embedded (docs/search.md)
    model = kb._table.to_arrow()["model"][0].as_py()
    assert set(kb.vectors_by_hash([h], model)) == {h}
    assert kb.vectors_by_hash([h], model + "-other") == {}


def test_a_document_that_breaks_the_model_does_not_strand_its_shared_text(tmp_path, home):
    """Document A leads a text B shares; A breaks the model: B's row is embedded on its own, B completes."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text(f"# A\n\n{PHRASE}\n\n## Poison\n\nKABOOM is in this one.\n")
    (src / "b.md").write_text(f"# A\n\n{PHRASE}\n\n## Fine\n\nNothing wrong here.\n")
    emb = CountingEmbedder(fail_on="KABOOM")
    svc = _svc(home, emb)
    job = svc.start(svc.config([str(src)], "poison", embedder="fake", batch_size=4, retries=0))
    snap = job.run()
    assert snap.status == JobStatus.COMPLETED and snap.m.documents_failed == 1
    assert {e.path.rsplit("/", 1)[-1] for e in job.errors} == {"a.md"}
    sources = {s.source.rsplit("/", 1)[-1] for s in KnowledgeBase(home, "poison").stored_docs().values()}
    assert sources == {"b.md"}


def test_cold_commands_import_only_what_they_use(tmp_path, pages):
    """status, jobs, pause, cancel and --help import neither lancedb, fastembed, numpy nor textual."""
    from conftest import run_cli

    h = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    for args in (
        ["status"],
        ["status", "--json"],
        ["jobs"],
        ["jobs", "--json"],
        ["pause", "nope-1"],
        ["cancel", "nope-1"],
        ["--help"],
        ["ingest", "--help"],
    ):
        r, imported = _kbingest_importing(h, *args)
        heavy = imported & {"lancedb", "fastembed", "numpy", "pyarrow", "textual", "onnxruntime"}
        assert not heavy, (args, heavy)


def test_search_asks_the_resident_server_first_and_starts_cold_without_it(tmp_path, pages):
    """With `kbingest serve` running on the home, `kbingest search` answers through it: the same hits,
    without importing LanceDB or the model; once it is gone, search starts cold and still answers."""
    import json

    from conftest import run_cli
    from live_server import ProcessServer

    h = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    cold = run_cli("search", "--kb", "docs", "reliability principles", "--json", home=h)
    assert cold.returncode == 0, cold.stderr
    server = ProcessServer(h)
    try:
        assert (h / "serve.json").exists()
        r, imported = _kbingest_importing(h, "search", "--kb", "docs", "reliability principles", "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        assert not imported & {"lancedb", "fastembed", "numpy", "pyarrow"}
        assert [h_["id"] for h_ in json.loads(r.stdout)] == [h_["id"] for h_ in json.loads(cold.stdout)]
        missing = run_cli("search", "--kb", "nope", "x", home=h)
        assert missing.returncode == 2 and "no knowledge base" in missing.stderr  # the server's error, typed
    finally:
        server.stop()
    assert not (h / "serve.json").exists()
    again = run_cli("search", "--kb", "docs", "reliability principles", "--json", home=h)
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(cold.stdout)


def test_a_watch_job_answers_searches_warm_while_it_runs(tmp_path, pages):
    """`kbingest search` in another shell asks a running `ingest --watch` (no LanceDB or model import in
    the search process), sees an edit once the watch has indexed it, and starts cold once it is gone.
    The responder wants the secret written in the home's private announcement."""
    import json
    import shutil
    import signal
    import time
    import urllib.error
    import urllib.request

    from conftest import run_cli
    from test_control import Batch

    h = tmp_path / "h"
    src = tmp_path / "watched"
    shutil.copytree(pages, src)
    w = Batch(
        ["ingest", str(src), "--kb", "docs", "--batch", "--watch", "--embedder", "fake"], h, tmp_path, name="watch"
    )
    try:
        assert w.wait_for(lambda d: d["status"] == "running" and "watching" in d["message"], 90), w.stderr
        announcement = json.loads((h / "serve.json").read_text())
        assert (h / "serve.json").stat().st_mode & 0o077 == 0 and announcement["pid"] == w.p.pid
        with pytest.raises(urllib.error.HTTPError) as no_secret:  # the port alone gives nothing
            urllib.request.urlopen(announcement["url"] + "/api/ingestion/kb/docs/search?q=x", timeout=10)
        assert no_secret.value.code == 401

        def search(query: str) -> tuple[list, set]:
            r, imported = _kbingest_importing(h, "search", "--kb", "docs", query, "--json")
            assert r.returncode == 0, r.stderr[-2000:]
            return json.loads(r.stdout), imported & {"lancedb", "fastembed", "numpy", "pyarrow"}

        hits, heavy = search("reliability principles")
        assert hits and not heavy
        page = sorted(src.rglob("*.md"))[0]
        page.write_text(page.read_text() + "\n\n## Zanzibar quokka\n\nThe zanzibar quokka paragraph.\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            hits, heavy = search("zanzibar quokka")
            if any("quokka" in x["text"] for x in hits):
                break
            time.sleep(0.2)
        assert any("quokka" in x["text"] for x in hits) and not heavy
        missing = run_cli("search", "--kb", "nope", "x", home=h)
        assert missing.returncode == 2 and "no knowledge base" in missing.stderr  # typed, through the responder
    finally:
        w.p.send_signal(signal.SIGTERM)
        assert w.finish(60) == 130, w.stderr
    assert not (h / "serve.json").exists()
    again = run_cli("search", "--kb", "docs", "zanzibar quokka", "--json", home=h)
    assert again.returncode == 0 and any("quokka" in x["text"] for x in json.loads(again.stdout))


def test_lancedb_is_imported_without_the_rest_client_it_never_uses(tmp_path):
    """pipeline/kb/fastimport.py: the REST namespace client's package __init__ (0.9 s) does not run for
    LanceDB on a folder; a name of that package, once used, is there (its __init__ runs then)."""
    code = f"""
import sys
from kbingest.pipeline.kb.fastimport import import_lancedb
import pyarrow as pa
db = import_lancedb().connect({str(tmp_path / "db")!r})
t = db.create_table("t", pa.table({{"a": [1, 2, 3]}}))
assert t.count_rows() == 2 + 1 and t.search(None).where("a > 1").to_arrow().num_rows == 2
assert "lance_namespace_urllib3_client.api" not in sys.modules, "the REST client was imported"
from lance_namespace_urllib3_client import ApiClient  # used: the package's __init__ runs, whole
assert "lance_namespace_urllib3_client.api" in sys.modules and ApiClient.__name__ == "ApiClient"
print("ok")
"""
    r = _python(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_a_cold_search_imports_neither_pandas_nor_the_overrides_checks(tmp_path, pages):
    """pipeline/kb/fastimport.py: `kbingest search` forgoes pandas (pyarrow's dataset module would import
    it: ~0.45 s) and lancedb imports with `overrides` as the marker it is on Python 3.12 (~0.3 s);
    every search mode still answers, and the real `overrides` is there for anything imported after."""
    import json

    from conftest import run_cli

    h = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "docs", "--batch", "--embedder", "fake", home=h).returncode == 0
    for mode in ("hybrid", "vector", "text"):
        r, imported = _kbingest_importing(h, "search", "--kb", "docs", "reliability", "--mode", mode, "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout), f"{mode}: no hits"
        assert "lancedb" in imported, mode
        assert not any(m.startswith("pandas.") for m in imported), f"{mode}: pandas was loaded"  # only tried
        if sys.version_info < (3, 12):
            assert "overrides.overrides" not in imported, mode
    code = """
import sys
from kbingest.pipeline.kb.fastimport import import_lancedb
import_lancedb()
import overrides
assert hasattr(overrides, "__VERSION__") and "overrides.enforce" in sys.modules, "the real package after"
import pandas
print("ok")
"""
    r = _python(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def _ingest_importing(home, src, *extra: str):
    """`kbingest ingest --batch` in a fresh process: (its final status, whether it imported lancedb)."""
    import json

    r, imported = _kbingest_importing(
        home, "ingest", str(src), "--kb", "docs", "--batch", "--embedder", "fake", *extra, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])["metrics"], "lancedb" in imported


def test_an_unchanged_run_opens_no_table_and_a_change_anywhere_is_seen(tmp_path, pages):
    """What the table holds is remembered between runs (pipeline/kb/kbstate.py): an unchanged run imports
    no LanceDB; an edit, a removal, and a write to the table by anything else are all still seen."""
    from kbingest.pipeline.paths import Home

    h = tmp_path / "h"
    n = len(list(pages.rglob("*.md")))
    m, opened = _ingest_importing(h, pages)
    assert m["documents_added"] == n and opened
    m, opened = _ingest_importing(h, pages)
    assert m["documents_skipped"] == n and m["chunks_embedded"] == 0 and not opened  # the table was not opened
    first, second = sorted(pages.rglob("*.md"))[:2]
    first.write_text(first.read_text() + "\n\nAn edit.\n")
    second.unlink()
    m, opened = _ingest_importing(h, pages)
    assert opened and m["documents_replaced"] == 1 and m["documents_removed"] == 1 and m["documents_skipped"] == n - 2
    m, opened = _ingest_importing(h, pages)
    assert not opened and m["documents_skipped"] == n - 1 and not m["documents_removed"]
    kb = KnowledgeBase(Home(h), "docs")  # another writer: a document's rows deleted behind kbingest's back
    victim = sorted(pages.rglob("*.md"))[-1]
    doc = next(d for d, s in kb.stored_docs().items() if s.source.endswith(victim.name))
    kb._table.delete(f"doc_id = '{doc}'")
    m, opened = _ingest_importing(h, pages)
    assert opened and m["documents_added"] == 1 and m["documents_skipped"] == n - 2  # seen, and written again
    assert {s.source for s in KnowledgeBase(Home(h), "docs").stored_docs().values()} == {
        str(p) for p in pages.rglob("*.md")
    }


def test_a_table_outside_the_home_is_always_opened(tmp_path, pages):
    """A --db location may be written by another home, whose lock this one does not see: not remembered."""
    h = tmp_path / "h"
    db = tmp_path / "shared-db"
    _ingest_importing(h, pages, "--db", str(db))
    m, opened = _ingest_importing(h, pages, "--db", str(db))
    assert opened and m["documents_skipped"] == len(list(pages.rglob("*.md")))
    assert not (h / "kbstate").exists() or not any((h / "kbstate").iterdir())


def test_a_cold_search_loads_the_model_while_the_table_opens_and_never_for_an_empty_one(tmp_path, home, monkeypatch):
    """The query model is built in a thread alongside LanceDB's import when the home remembers the
    table holds rows; a text search, or a knowledge base with no rows, loads no model at all."""
    import threading

    from kbingest.pipeline.kb import search

    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text("# Alpha\n\nReliability design for workloads.\n")
    writer = _svc(home, CountingEmbedder())
    assert writer.start(writer.config([str(src)], "full", embedder="fake")).run().status == JobStatus.COMPLETED
    (tmp_path / "none").mkdir()
    assert (
        writer.start(writer.config([str(tmp_path / "none")], "empty", embedder="fake")).run().status
        == JobStatus.COMPLETED
    )

    loads: list[str] = []
    real = search.query_embedder

    def counting(config):
        loads.append(threading.current_thread().name)
        return real(config)

    monkeypatch.setattr(search, "query_embedder", counting)
    monkeypatch.setattr(search, "_query_models", {})
    cold = Service(home)  # no injected factory: the process's own query model, as `kbingest search`
    assert KnowledgeBase(home, "full").remembered_rows() == 1
    hits = cold.search_here("full", "reliability", k=3, mode="hybrid")
    assert hits and "kbingest-query-model" in loads  # loaded by the preloading thread
    loads.clear()
    assert cold.search_here("full", "reliability", k=3, mode="text")
    assert cold.search_here("empty", "reliability", k=3, mode="hybrid") == []
    assert loads == []  # text mode and an empty knowledge base: no model
