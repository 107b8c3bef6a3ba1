"""kbingest tables as RAG frameworks open them (docs/interop.md).

Each framework test builds a knowledge base with `kbingest ingest --batch`, then uses only the
framework's public API, with the query embedded by the model that made the table. The framework
tests need the `interop` extra (pip install -e ".[test,interop]") and are skipped without it; the
schema-migration and model tests need nothing more than `test`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, SMALL_PAGES, copy_pages, run_cli

KB = "docs"


def _ingest(home: Path, docs: Path, *extra: str) -> dict:
    r = run_cli("ingest", str(docs), "--kb", KB, "--batch", *extra, home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A home with knowledge base `docs` made by kbingest from the six small pages (fake embedder)."""
    root = tmp_path_factory.mktemp("interop")
    home = root / "home"
    _ingest(home, copy_pages(root / "docs"), "--embedder", "fake")
    return home


def _table(home: Path):
    import lancedb

    return lancedb.connect(str(home / "lancedb")).open_table(KB)


def _one_document(home: Path) -> tuple[str, str, int]:
    """(source, title, chunk count) of a document whose title no other document has."""
    rows = _table(home).search(None).select(["source", "title"]).limit(None).to_list()
    by_title: dict[str, set[str]] = {}
    for r in rows:
        by_title.setdefault(r["title"], set()).add(r["source"])
    title = next(t for t, sources in sorted(by_title.items()) if t and len(sources) == 1)
    source = next(iter(by_title[title]))
    return source, title, sum(1 for r in rows if r["source"] == source)


def _query_vector(text: str) -> list[float]:
    from kbingest.pipeline.embed.embedding import FakeEmbedder

    return FakeEmbedder().embed([text])[0].tolist()


# ---- the table itself --------------------------------------------------------------------------
def test_rows_carry_metadata_struct_mirroring_flat_columns(built):
    t = _table(built).search(None).limit(None).to_arrow()
    md = t.column("metadata").to_pylist()
    assert len(md) == t.num_rows > 0
    for name in ("source", "heading_path", "title", "doc_id", "position"):
        assert [m[name] for m in md] == t.column(name).to_pylist()
    assert all(m["page"] is None for m in md)  # Markdown has no pages
    assert any(m["heading_path"] for m in md)


def test_model_stored_with_kb_and_shown_by_search_json(built):
    from kbingest.pipeline.kb.table import KnowledgeBase
    from kbingest.pipeline.paths import Home

    field = _table(built).schema.field("vector")
    assert field.metadata[b"lancedb:tag:model"] == b"fake"
    assert json.loads(field.metadata[b"kbingest:embedding"]) == {
        "model": "fake",
        "dimension": 384,
        "distance": "cosine",
        "normalized": True,
    }
    assert KnowledgeBase(Home(built), KB).embedding_info()["model"] == "fake"
    r = run_cli("search", "--kb", KB, "reliability design principles", "-k", "2", "--json", home=built)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["model"] for h in hits] == ["fake", "fake"]


def test_search_without_its_jobs_embeds_with_the_model_the_kb_names(tmp_path):
    """A knowledge base copied without its job store: search takes the model from the table."""
    home = tmp_path / "home"
    _ingest(home, copy_pages(tmp_path / "docs", SMALL_PAGES[:3]), "--embedder", "fake")
    query = ("search", "--kb", KB, "reliability design principles", "-k", "3", "--json")
    with_jobs = run_cli(*query, home=home)
    assert with_jobs.returncode == 0, with_jobs.stderr
    (home / "jobs.json").unlink()
    alone = run_cli(*query, home=home)
    assert alone.returncode == 0, alone.stderr
    # the same hits; `path` is relative to the jobs' sources, so without the jobs it is the stored source
    unplaced = [{k: v for k, v in h.items() if k != "path"} for h in json.loads(with_jobs.stdout)]
    assert [{k: v for k, v in h.items() if k != "path"} for h in json.loads(alone.stdout)] == unplaced
    assert all(h["path"] == h["source"] for h in json.loads(alone.stdout))


# the schema of a knowledge base made by kbingest 0.2.0, before the metadata column: the engine's own
def _v020_schema(dim: int):
    from kbingest.pipeline.kb.table import original_schema

    v020 = original_schema(dim)
    assert v020.names == "id text vector source heading_path doc_id doc_version position title model".split()
    return v020


def test_earlier_table_gains_metadata_on_next_job_with_nothing_embedded(tmp_path):
    import lancedb

    home = tmp_path / "home"
    docs = copy_pages(tmp_path / "docs", SMALL_PAGES[:3])
    _ingest(home, docs, "--embedder", "fake")
    # make it the table kbingest 0.2.0 wrote: the same rows, its schema, no model tag
    db = lancedb.connect(str(home / "lancedb"))
    rows = db.open_table(KB).search(None).limit(None).to_arrow()
    old = _v020_schema(384)
    db.create_table(KB, data=rows.select(old.names).cast(old), mode="overwrite")
    assert db.open_table(KB).schema == old

    last = _ingest(home, docs, "--embedder", "fake")

    assert last["metrics"]["chunks_embedded"] == 0
    t = db.open_table(KB)
    assert "metadata" in t.schema.names
    assert t.schema.field("vector").metadata[b"lancedb:tag:model"] == b"fake"
    got = t.search(None).limit(None).to_arrow()
    assert got.num_rows == rows.num_rows
    md = got.column("metadata").to_pylist()
    assert [m["source"] for m in md] == got.column("source").to_pylist()
    assert [m["heading_path"] for m in md] == got.column("heading_path").to_pylist()
    assert [m["position"] for m in md] == got.column("position").to_pylist()
    assert all(m["page"] is None for m in md)
    # and LanceDB filters on the filled struct
    src = md[0]["source"]
    assert set(
        t.search(None)
        .where(f"metadata.source = '{src}'")
        .select(["source"])
        .limit(None)
        .to_arrow()
        .column("source")
        .to_pylist()
    ) == {src}


# ---- LangChain -----------------------------------------------------------------------------------
def _langchain_embeddings(embedder):
    from langchain_core.embeddings import Embeddings

    class KbEmbeddings(Embeddings):  # as in docs/interop.md
        def embed_documents(self, texts):
            return embedder.embed(list(texts)).tolist()

        def embed_query(self, text):
            return embedder.embed([text])[0].tolist()

    return KbEmbeddings()


@pytest.mark.interop
def test_langchain_community_search_filter_and_metadata(built):
    pytest.importorskip("langchain_community.vectorstores")
    import lancedb
    from langchain_community.vectorstores import LanceDB

    from kbingest.pipeline.embed.embedding import FakeEmbedder

    store = LanceDB(
        connection=lancedb.connect(str(built / "lancedb")),
        table_name=KB,
        embedding=_langchain_embeddings(FakeEmbedder()),
        vector_key="vector",
        text_key="text",
        id_key="id",
    )
    docs = store.similarity_search("reliability design principles", k=4)
    assert len(docs) == 4
    for d in docs:
        assert d.page_content
        assert Path(d.metadata["source"]).is_file()
        assert {"heading_path", "title", "doc_id", "position"} <= set(d.metadata)
    assert any(d.metadata["heading_path"] for d in docs)

    source, title, n = _one_document(built)
    for flt in ({"source": source}, {"title": title}, f"metadata.source = '{source}'"):
        # the store post-filters the k nearest unless told prefilter=True (docs/interop.md)
        hits = store.similarity_search("principles", k=50, filter=flt, prefilter=True)
        assert {d.metadata["source"] for d in hits} == {source}, flt
        assert len(hits) == min(n, 50)


@pytest.mark.interop
@pytest.mark.xfail(
    strict=True,
    raises=TypeError,
    reason="langchain-lancedb 0.1.0 reads `metadata` as a JSON string (json.loads), "
    "so a struct column cannot be read; see docs/interop.md",
)
def test_langchain_lancedb_search_and_metadata(built):
    pytest.importorskip("langchain_lancedb")
    from langchain_lancedb import LanceDB

    from kbingest.pipeline.embed.embedding import FakeEmbedder

    store = LanceDB(embedding_function=_langchain_embeddings(FakeEmbedder()), uri=str(built / "lancedb"), table_name=KB)
    docs = store.similarity_search("reliability design principles", k=3)
    assert docs and all(Path(d.metadata["source"]).is_file() for d in docs)


# ---- LlamaIndex ----------------------------------------------------------------------------------
def _llamaindex_embedding(embedder):
    from typing import Any

    from llama_index.core.embeddings import BaseEmbedding
    from pydantic import PrivateAttr

    class KbEmbedding(BaseEmbedding):  # as in docs/interop.md
        _embedder: Any = PrivateAttr()

        def __init__(self, embedder, **kw):
            super().__init__(model_name=embedder.model, **kw)
            self._embedder = embedder

        def _get_query_embedding(self, query):
            return self._embedder.embed([query])[0].tolist()

        def _get_text_embedding(self, text):
            return self._embedder.embed([text])[0].tolist()

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

    return KbEmbedding(embedder)


@pytest.mark.interop
def test_llamaindex_store_query_filter_and_metadata(built):
    pytest.importorskip("llama_index.vector_stores.lancedb")
    from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters, VectorStoreQuery
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    store = LanceDBVectorStore(
        uri=str(built / "lancedb"),
        table_name=KB,
        vector_column_name="vector",
        text_key="text",
        doc_id_key="doc_id",
        mode="append",
    )
    res = store.query(
        VectorStoreQuery(query_embedding=_query_vector("reliability design principles"), similarity_top_k=4)
    )
    assert len(res.nodes) == 4
    for node in res.nodes:
        assert node.get_content()
        assert Path(node.metadata["source"]).is_file()
        assert {"heading_path", "title", "position"} <= set(node.metadata)
        assert node.ref_doc_id  # the doc_id column
    assert any(node.metadata["heading_path"] for node in res.nodes)

    source, title, n = _one_document(built)
    for key, value in (("source", source), ("title", title)):
        res = store.query(
            VectorStoreQuery(
                query_embedding=_query_vector("principles"),
                similarity_top_k=50,
                filters=MetadataFilters(filters=[ExactMatchFilter(key=key, value=value)]),
            )
        )
        assert {node.metadata["source"] for node in res.nodes} == {source}, key
        assert len(res.nodes) == min(n, 50)


@pytest.mark.interop
def test_llamaindex_retriever_with_filters(built):
    pytest.importorskip("llama_index.vector_stores.lancedb")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    from kbingest.pipeline.embed.embedding import FakeEmbedder

    store = LanceDBVectorStore(
        uri=str(built / "lancedb"),
        table_name=KB,
        vector_column_name="vector",
        text_key="text",
        doc_id_key="doc_id",
        mode="append",
    )
    index = VectorStoreIndex.from_vector_store(store, embed_model=_llamaindex_embedding(FakeEmbedder()))
    source, title, _ = _one_document(built)
    retriever = index.as_retriever(
        similarity_top_k=3, filters=MetadataFilters(filters=[ExactMatchFilter(key="title", value=title)])
    )
    hits = retriever.retrieve("design principles")
    assert hits and {h.node.metadata["source"] for h in hits} == {source}
    assert all(h.node.metadata["title"] == title for h in hits)


# ---- the real model, end to end: the snippets of docs/interop.md ---------------------------------
def _doc_snippets(home: Path) -> str:
    """The Python blocks of docs/interop.md, in order, with HOME pointing at `home`."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "interop.md").read_text(), re.S)
    code = "\n".join(blocks)
    default = 'HOME = os.path.expanduser("~/.local/share/kbingest")'
    assert default in code
    return code.replace(default, f"HOME = {str(home)!r}")


@pytest.mark.interop
@pytest.mark.e2e
def test_docs_snippets_run(tmp_path):
    """Every snippet of docs/interop.md, as written, on a knowledge base kbingest made with the
    real model: each framework finds the page that answers, with its source and heading path."""
    pytest.importorskip("langchain_community.vectorstores")
    pytest.importorskip("llama_index.vector_stores.lancedb")
    pytest.importorskip("polars")
    home = tmp_path / "home"
    _ingest(home, copy_pages(tmp_path / "docs", ["security/principles.md", "cost-optimization/principles.md"]))
    ns: dict = {}
    exec(compile(_doc_snippets(home), "docs/interop.md", "exec"), ns)

    assert ns["info"]["model"] == "all-MiniLM-L6-v2"
    answer = "security/principles.md"
    assert ns["hits"][0]["source"].endswith(answer)
    assert {h["source"] for h in ns["same_doc"]} == {ns["source"]}
    assert ns["docs"][0].metadata["source"].endswith(answer)
    assert ns["docs"][0].metadata["heading_path"]
    assert {d.metadata["source"] for d in ns["one_doc"]} == {ns["docs"][0].metadata["source"]}
    assert len(ns["one_doc"]) == 4
    assert all(d.metadata["position"] < 3 for d in ns["sql"])
    assert ns["nodes"][0].node.metadata["source"].endswith(answer)
    assert ns["nodes"][0].node.metadata["heading_path"]
    assert {n.node.metadata["source"] for n in ns["one_doc_nodes"]} == {ns["nodes"][0].node.metadata["source"]}
    assert {n.metadata["source"] for n in ns["res"].nodes} == {ns["nodes"][0].node.metadata["source"]}
    assert ns["chunks_per_doc"].num_rows == 2
