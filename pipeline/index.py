"""The LanceDB knowledge base: one table per KB under HOME/lancedb, as contracts/CLI.md lays out.

Each row also carries a `metadata` struct that mirrors its flat columns (source, heading_path, title,
doc_id, position, page): LangChain's and LlamaIndex's LanceDB stores read a column of that name and
filter on it (docs/interop.md). The vector column's field metadata names the embedding model.

Tables made by an earlier version gain what they lack through MIGRATIONS, applied by `ensure`.

Only one thread writes (the indexer). A batch of documents is written in one merge_insert keyed
by chunk id whose not-matched-by-source clause deletes those documents' stale chunks: a document
is replaced in one commit, never "delete then add". Predicates are built only from hex keys.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

os.environ.setdefault("LANCEDB_LOG", "error")  # its Rust warnings would garble a full-screen app

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from kbingest.pipeline.ids import in_predicate  # noqa: E402
from kbingest.pipeline.paths import Home, validate_name  # noqa: E402


log = logging.getLogger(__name__)

MODEL_TAG = "lancedb:tag:model"        # on the vector field: the model that made the vectors (LanceDB's convention)
EMBEDDING_KEY = "kbingest:embedding"   # on the vector field: JSON of what a caller needs to embed queries
DISTANCE = "cosine"                    # kbingest's search; the vectors are L2-normalised, so L2 ranks the same


class IndexError_(RuntimeError):
    pass


def metadata_type() -> pa.StructType:
    """The `metadata` struct: the flat columns a RAG framework shows with each chunk and filters on."""
    return pa.struct([
        pa.field("source", pa.string()),
        pa.field("heading_path", pa.string()),
        pa.field("title", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("page", pa.int32()),  # PDFs; null where a format has no pages
    ])


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
        pa.field("metadata", metadata_type()),
    ])


# ---- schema migrations -------------------------------------------------------------------------
_SQL_TYPES = {pa.string(): "STRING", pa.int32(): "INT"}


@dataclass(frozen=True)
class AddColumn:
    """A column that tables made by an earlier version lack: added in one commit (no rewrite of
    the other columns, no re-embedding), its values computed by LanceDB from a SQL expression
    over the columns the table has (`fill` gets the table's schema, so that it can leave out
    columns an even older table lacks)."""
    name: str
    fill: Callable[[pa.Schema], str]

    def needed(self, table) -> bool:
        return self.name not in table.schema.names

    def apply(self, table) -> None:
        table.add_columns({self.name: self.fill(table.schema)})


def struct_sql(struct: pa.StructType, have: pa.Schema) -> str:
    """named_struct(...) of the flat columns of the same names, cast to the struct's types; a field
    the table has no column for is null."""
    parts = []
    for f in struct:
        value = f.name if f.name in have.names else "NULL"
        parts.append(f"'{f.name}', CAST({value} AS {_SQL_TYPES[f.type]})")
    return f"named_struct({', '.join(parts)})"


# In order: a step may use the columns the steps before it add. Add a step here for each new column.
MIGRATIONS: tuple[AddColumn, ...] = (
    AddColumn("metadata", lambda have: struct_sql(metadata_type(), have)),
)


def migrate(table) -> list[str]:
    """Apply the steps this table needs; returns their column names."""
    done = []
    for step in MIGRATIONS:
        if step.needed(table):
            step.apply(table)
            done.append(step.name)
    return done


def struct_from_columns(struct: pa.StructType, flat: pa.Table, rows: list[dict[str, Any]]) -> pa.StructArray:
    """The struct column for these rows, from the flat columns already built (no per-row Python),
    or from the rows' own keys for a field the table has no flat column for (e.g. "page")."""
    arrays = []
    for f in struct:
        if f.name in flat.column_names:
            col = flat.column(f.name).combine_chunks()
            arrays.append(col if col.type == f.type else col.cast(f.type))
        elif any(f.name in r for r in rows):
            arrays.append(pa.array([r.get(f.name) for r in rows], type=f.type))
        else:
            arrays.append(pa.nulls(flat.num_rows, type=f.type))
    return pa.StructArray.from_arrays(arrays, fields=list(struct))


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
    model: str  # the embedding model of this chunk's vector: embed queries with the same one


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
        """Create the table, or bring an existing one up to this version's schema (MIGRATIONS) and
        tag its vector column with the model its rows were made with."""
        if self._table is None:
            self._table = self._db.create_table(self.name, schema=schema(dim), exist_ok=True)
            return
        if self.dim != dim:
            raise IndexError_(f"knowledge base {self.name!r} holds {self.dim}-dimensional vectors and this model "
                              f"makes {dim}: use another --kb for another model")
        added = migrate(self._table)
        if added:
            log.info("knowledge base %s: added column(s) %s", self.name, ", ".join(added))
        if not self._model_tag():
            model = self._first_model()
            if model:
                self._tag_model(model)

    def _model_tag(self) -> Optional[str]:
        meta = self._table.schema.field("vector").metadata or {}
        tag = meta.get(MODEL_TAG.encode())
        return tag.decode() if tag else None

    def _tag_model(self, model: str) -> None:
        self._table.update_field_metadata(
            {"path": "vector", "metadata": {MODEL_TAG: model, EMBEDDING_KEY: json.dumps(self._info(model))}})

    def _info(self, model: str) -> dict[str, Any]:
        return {"model": model, "dimension": self.dim, "distance": DISTANCE, "normalized": True}

    def embedding_info(self) -> Optional[dict[str, Any]]:
        """What a caller needs to embed queries for this table: model, dimension, distance,
        normalized. Read from the schema (no scan); a table no job has opened since it was made
        by an earlier version has no tag yet, and gives the model of one row."""
        if self._table is None:
            return None
        raw = (self._table.schema.field("vector").metadata or {}).get(EMBEDDING_KEY.encode())
        if raw:
            return json.loads(raw)
        model = self._first_model()
        return self._info(model) if model else None

    def _first_model(self) -> Optional[str]:
        found = self._table.search(None).select(["model"]).limit(1).to_arrow().column("model").to_pylist()
        return found[0] if found else None

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
            data = self._arrow(rows)
            merge = self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            if stale:
                merge = merge.when_not_matched_by_source_delete(in_predicate("doc_id", stale))
            merge.execute(data)
            model = rows[0].get("model")
            if model and model != self._model_tag():
                self._tag_model(model)
        self.commits += 1

    def _arrow(self, rows: list[dict[str, Any]]) -> pa.Table:
        """The rows as the table's schema wants them: flat columns from the dicts, the metadata
        struct assembled from those columns."""
        full = self._table.schema
        if "metadata" not in full.names:  # not migrated (ensure was not called): flat columns only
            return pa.Table.from_pylist(rows, schema=full)
        flat = pa.Table.from_pylist(rows, schema=pa.schema([f for f in full if f.name != "metadata"]))
        md = struct_from_columns(full.field("metadata").type, flat, rows)
        return pa.Table.from_arrays([md if f.name == "metadata" else flat.column(f.name) for f in full], schema=full)

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
               .select(["id", "text", "source", "heading_path", "title", "model"]).to_list())
        return [SearchHit(id=r["id"], score=round(1.0 - float(r["_distance"]), 4), source=r["source"],
                          heading_path=r["heading_path"], text=r["text"], title=r.get("title") or "",
                          model=r.get("model") or "")
                for r in res]
