"""The LanceDB knowledge base: one table per KB under HOME/lancedb, as contracts/CLI.md lays out.

Only one thread writes (the indexer). A batch of documents is written in one merge_insert keyed
by chunk id whose not-matched-by-source clause deletes those documents' stale chunks: a document
is replaced in one commit, never "delete then add". Predicates are built only from hex keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

os.environ.setdefault("LANCEDB_LOG", "error")  # its Rust warnings would garble a full-screen app

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from kbingest.pipeline.errors import EngineFailure  # noqa: E402
from kbingest.pipeline.ids import in_predicate  # noqa: E402
from kbingest.pipeline.paths import Home, validate_name  # noqa: E402


class IndexError_(EngineFailure):
    pass


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dim)),
        pa.field("source", pa.string()),
        pa.field("heading_path", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("doc_version", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("title", pa.string()),
        pa.field("model", pa.string()),
    ])


@dataclass(frozen=True)
class StoredDoc:
    version: str
    source: str
    chunks: int


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    source: str
    heading_path: str
    text: str
    title: str


def connect(home: Home):
    import lancedb

    home.ensure()
    return lancedb.connect(str(home.lancedb_dir))


def list_kbs(home: Home) -> list[str]:
    if not home.lancedb_dir.exists():
        return []
    db = connect(home)
    res = db.list_tables()
    names = getattr(res, "tables", res)
    return sorted(names)


class KnowledgeBase:
    def __init__(self, home: Home, name: str) -> None:
        self.name = validate_name(name, "knowledge base name")
        self._db = connect(home)
        self._db_dir = str(home.lancedb_dir)
        self._table = None
        self.commits = 0
        if self.name in list_kbs(home):
            self._table = self._db.open_table(self.name)

    @property
    def exists(self) -> bool:
        return self._table is not None

    @property
    def dim(self) -> Optional[int]:
        if self._table is None:
            return None
        return self._table.schema.field("vector").type.list_size

    def ensure(self, dim: int) -> None:
        if self._table is None:
            self._table = self._db.create_table(self.name, schema=schema(dim), exist_ok=True)
        elif self.dim != dim:
            raise IndexError_(f"knowledge base {self.name!r} holds {self.dim}-dimensional vectors and this model "
                              f"makes {dim}: use another --kb for another model")

    def count(self) -> int:
        return self._table.count_rows() if self._table is not None else 0

    def stored_docs(self) -> dict[str, StoredDoc]:
        """doc_id -> the version, source and chunk count the table holds (one scan of 3 columns)."""
        if self._table is None:
            return {}
        t = self._scan(["doc_id", "doc_version", "source"])
        out: dict[str, list[Any]] = {}
        for d, v, s in zip(t["doc_id"].to_pylist(), t["doc_version"].to_pylist(), t["source"].to_pylist()):
            e = out.get(d)
            if e is None:
                out[d] = [v, s, 1]
            else:
                e[2] += 1
        return {d: StoredDoc(v, s, n) for d, (v, s, n) in out.items()}

    def write(self, rows: list[dict[str, Any]], doc_ids: Iterable[str],
              replacing: Optional[Iterable[str]] = None) -> None:
        """Write these documents whole, in one commit: upsert their rows by id and delete their other
        (stale) chunks. `replacing` names those of them the table may hold chunks of (None: any);
        a batch of documents new to the table skips the delete clause, whose outer join reads the
        whole table and so costs time and memory in proportion to it (docs/benchmarks.md, 3.3)."""
        doc_ids = sorted(set(doc_ids))
        if not doc_ids:
            return
        stale = doc_ids if replacing is None else sorted(set(replacing) & set(doc_ids))
        if not rows:
            self._table.delete(in_predicate("doc_id", doc_ids))
        else:
            data = pa.Table.from_pylist(rows, schema=self._table.schema)
            merge = self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            if stale:
                merge = merge.when_not_matched_by_source_delete(in_predicate("doc_id", stale))
            merge.execute(data)
        self.commits += 1

    # ---- staging (the Ray executor's workers write here; the driver commits from it) ---------
    def staging_uri(self, job_id: str) -> str:
        """Where a job's staged rows live: beside the tables, under the knowledge base's location
        (a folder or an object store prefix), never listed as a table."""
        return f"{self._db_dir.rstrip('/')}/_staging/{self.name}/{validate_name(job_id, 'job id')}"

    @staticmethod
    def remove_staging(uri: str) -> None:
        """Delete staged data (all of a job's waves, or one wave): a folder or an object store prefix."""
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
        if filesystem.get_file_info(path).type != fs.FileType.NotFound:
            filesystem.delete_dir(path)
        for parent in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):  # <kb>/, then _staging/
            if os.path.basename(parent) == "_staging" or os.path.basename(os.path.dirname(parent)) == "_staging":
                try:
                    if not filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True)):
                        filesystem.delete_dir(parent)
                except OSError:
                    return  # another job's staging is there

    def vectors_by_text(self, doc_id: str, model: str) -> dict[str, Any]:
        """The vectors this document's stored chunks have, by chunk text, where the same model made
        them: an edit re-embeds only the chunks whose text changed."""
        if self._table is None:
            return {}
        t = (self._table.search(None).where(in_predicate("doc_id", [doc_id]))
             .select(["text", "vector", "model"]).limit(None).to_arrow())
        return {txt: vec for txt, vec, m in zip(t["text"].to_pylist(), t["vector"].to_pylist(), t["model"].to_pylist())
                if m == model}

    def models(self) -> list[str]:
        """The models whose vectors the table holds (one, unless someone mixed them)."""
        if self._table is None:
            return []
        return sorted({m for m in self._scan(["model"]).column("model").to_pylist() if m})

    def optimize(self) -> dict:
        """Compact the table and prune old versions; a large table in a child process, whose memory
        goes back to the system when it exits (pipeline/compaction.py). Returns a report: where,
        the child's peak RSS, seconds."""
        from kbingest.pipeline import compaction

        if self.count() < compaction.CHILD_ROWS:
            return compaction.optimize_here(self._table)
        report = compaction.optimize_in_child(self._db_dir, self.name)
        self._table = self._db.open_table(self.name)  # the version the child made
        return report

    def fragments(self) -> int:
        return self._table.stats()["fragment_stats"]["num_fragments"] if self._table is not None else 0

    def _scan(self, columns: list[str]) -> pa.Table:
        return self._table.search(None).select(columns).limit(None).to_arrow()

    def ids(self) -> list[str]:
        if self._table is None:
            return []
        return self._scan(["id"]).column("id").to_pylist()

    def search(self, vector: np.ndarray, k: int) -> list[SearchHit]:
        if self._table is None:
            return []
        res = (self._table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
               .distance_type("cosine").limit(k)
               .select(["id", "text", "source", "heading_path", "title"]).to_list())
        return [SearchHit(id=r["id"], score=round(1.0 - float(r["_distance"]), 4), source=r["source"],
                          heading_path=r["heading_path"], text=r["text"], title=r.get("title") or "")
                for r in res]
