"""The LanceDB knowledge base: one table per KB at its location (HOME/lancedb by default, or a folder
or s3://bucket/prefix given with --db: pipeline/kb/location.py), as contracts/CLI.md lays out.

Each row also carries a `metadata` struct that mirrors its flat columns (source, heading_path, title,
doc_id, position, page): LangChain's and LlamaIndex's LanceDB stores read a column of that name and
filter on it (docs/interop.md). The vector column's field metadata names the embedding model.

Tables made by an earlier version gain what they lack through MIGRATIONS, applied by `ensure`.

Only one thread writes (the indexer). A batch of documents is written in one merge_insert keyed
by chunk id whose not-matched-by-source clause deletes those documents' stale chunks: a document
is replaced in one commit, never "delete then add". Predicates are built only from hex keys.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, TypeVar

os.environ.setdefault("LANCEDB_LOG", "error")  # its Rust warnings would garble a full-screen app

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from kbingest.pipeline.errors import EngineFailure  # noqa: E402
from kbingest.pipeline.kb import kbstate  # noqa: E402
from kbingest.pipeline.kb.ids import in_predicate  # noqa: E402
from kbingest.pipeline.kb.kbstate import StoredDoc  # noqa: E402,F401  (re-exported)
from kbingest.pipeline.kb.location import KbLocation  # noqa: E402
from kbingest.pipeline.models import SearchHit  # noqa: E402,F401  (re-exported)
from kbingest.pipeline.paths import Home, validate_name  # noqa: E402

SEARCH_MODES = ("vector", "text", "hybrid")
LOOKUP_KEYS = 512  # text hashes a stored-vector query names at most (an IN list, not a table)
_HIT_COLUMNS = ["id", "text", "source", "heading_path", "title", "model"]


class TableError(EngineFailure):
    """A knowledge base's table cannot do what is asked (vectors of another size, no full-text index yet)."""


class KBDamaged(TableError):
    """The files of a knowledge base's table are missing or cut short: `kbingest repair` brings it back."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(
            f"knowledge base {name!r} is damaged ({why}): run `kbingest repair --kb {name}` to bring it back"
        )
        self.name = name
        self.why = why


def damage_of(exc: BaseException) -> Optional[str]:
    """What is damaged, when LanceDB failed because the table's files are missing or truncated;
    None for any other failure (a full disk, a bad query, a bug)."""
    from kbingest.pipeline.messages import failure_kind, library_text

    if isinstance(exc, KBDamaged) or (isinstance(exc, OSError) and exc.errno is not None):
        return None
    text = library_text(exc).lower()
    kind = failure_kind(text)
    if kind == "missing" and "table" in text and "was not found" in text:
        return "its version history (_versions) is missing"
    if kind == "truncated":
        return "a file of its table is truncated or corrupt"
    if kind == "missing" and (".lance" in text or "no such file" in text):
        return "a file of its table is missing"
    return None


_F = TypeVar("_F", bound=Callable[..., Any])


def _damage_checked(fn: _F) -> _F:
    """LanceDB's errors about missing or truncated files become KBDamaged, naming the knowledge base."""

    @functools.wraps(fn)
    def checked(self: "KnowledgeBase", *a: Any, **kw: Any) -> Any:
        try:
            return fn(self, *a, **kw)
        except (RuntimeError, OSError, ValueError) as e:
            why = damage_of(e)
            if why is None:
                raise
            raise KBDamaged(self.name, why) from e

    return checked  # type: ignore[return-value]


log = logging.getLogger(__name__)

MODEL_TAG = "lancedb:tag:model"  # on the vector field: the model that made the vectors (LanceDB's convention)
EMBEDDING_KEY = "kbingest:embedding"  # on the vector field: JSON of what a caller needs to embed queries
DISTANCE = "cosine"  # kbingest's search; the vectors are L2-normalised, so L2 ranks the same


def metadata_type() -> pa.StructType:
    """The `metadata` struct: the flat columns a RAG framework shows with each chunk and filters on."""
    return pa.struct(
        [
            pa.field("source", pa.string()),
            pa.field("heading_path", pa.string()),
            pa.field("title", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("position", pa.int32()),
            pa.field("page", pa.int32()),  # PDFs; null where a format has no pages
        ]
    )


def schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
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
            pa.field("page", pa.int32(), nullable=True),  # first page of the chunk; null where no pages
            pa.field("metadata", metadata_type()),
            pa.field("text_hash", pa.string()),  # ids.text_hash(text): a stored vector is found by its text
            pa.field("ocr_confidence", pa.float32(), nullable=True),  # the chunk's first page was read by OCR, with
            # this mean confidence (0-1); null where it was read from a text layer (docs/formats.md, OCR)
        ]
    )


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
    AddColumn("page", lambda have: "CAST(NULL AS INT)"),
    AddColumn("metadata", lambda have: struct_sql(metadata_type(), have)),
    AddColumn("text_hash", lambda have: "encode(sha256(text), 'hex')"),  # = ids.text_hash, computed by LanceDB
    AddColumn("ocr_confidence", lambda have: "CAST(NULL AS FLOAT)"),  # rows written before OCR: none was
)


def original_schema(dim: int) -> pa.Schema:
    """The schema of a table made before any migration (kbingest 0.2.0): `schema(dim)` without the
    columns MIGRATIONS add."""
    added = {step.name for step in MIGRATIONS}
    return pa.schema([f for f in schema(dim) if f.name not in added])


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


def docs_of_rows(rows: Iterable[tuple[str, str, str]]) -> dict[str, StoredDoc]:
    """(doc_id, doc_version, source) of each row -> each document's version, source and row count."""
    out: dict[str, list[Any]] = {}
    for d, v, s in rows:
        e = out.get(d)
        if e is None:
            out[d] = [v, s, 1]
        else:
            e[2] += 1
    return {d: StoredDoc(v, s, n) for d, (v, s, n) in out.items()}


def _default_ann_min_rows() -> int:
    from kbingest.pipeline.models import JobConfig

    return JobConfig.model_fields["ann_min_rows"].default


def connect(home: Home, location: Optional[KbLocation] = None):
    home.ensure()
    return (location or KbLocation.default(home)).connect()


def _table_names(db) -> list[str]:
    res = db.list_tables()
    return sorted(getattr(res, "tables", res))


def open_table(db, name: str):
    """Table NAME of an open LanceDB connection, or None where it has none yet."""
    return db.open_table(name) if name in _table_names(db) else None


def list_kbs(home: Home, location: Optional[KbLocation] = None) -> list[str]:
    location = location or KbLocation.default(home)
    if not location.exists():
        return []
    return _table_names(connect(home, location))


def stored_vectors(table, hashes: Iterable[str], model: str) -> dict[str, Any]:
    """The vectors an open LanceDB table (or None) holds for these texts (by ids.text_hash) that
    `model` made: what the driver's KnowledgeBase and a Ray worker reading the table both answer."""
    if table is None or "text_hash" not in table.schema.names:
        return {}
    wanted = sorted(set(hashes))
    found: dict[str, Any] = {}
    for i in range(0, len(wanted), LOOKUP_KEYS):
        t = (
            table.search(None)
            .where(in_predicate("text_hash", wanted[i : i + LOOKUP_KEYS]))
            .select(["text_hash", "vector", "model"])
            .limit(None)
            .to_arrow()
        )
        for h, vec, m in zip(t["text_hash"].to_pylist(), t["vector"].to_pylist(), t["model"].to_pylist()):
            if m == model:
                found[h] = vec
    return found


class KnowledgeBase:
    """One knowledge base's table. Nothing is opened (nor LanceDB imported) until something needs the
    table: an unchanged run that knows what the table holds (`remembered`) never opens it."""

    def __init__(
        self, home: Home, name: str, location: Optional[KbLocation] = None, ann_min_rows: Optional[int] = None
    ) -> None:
        self.name = validate_name(name, "knowledge base name")
        self.home = home
        self.location = location or KbLocation.default(home)
        self.ann_min_rows = ann_min_rows if ann_min_rows is not None else _default_ann_min_rows()
        self._optimize_marker = home.optimize_marker(self.name)
        self._conn = None
        self._tbl = None
        self._opened = False
        self.commits = 0
        self.written: dict[str, Optional[StoredDoc]] = {}  # what this object committed: doc_id -> it, None: removed
        self.removal_allowed = False  # the job allows any removal (--allow-mass-removal): it lowers the mark

    @property
    def _db(self):
        if self._conn is None:
            self._conn = connect(self.home, self.location)
        return self._conn

    @property
    def _table(self):
        if not self._opened:
            self._open()
        return self._tbl

    @_table.setter
    def _table(self, table) -> None:
        self._tbl, self._opened = table, True

    @_damage_checked
    def _open(self) -> None:
        self._tbl = open_table(self._db, self.name)
        self._opened = True

    # ---- what it holds, remembered between runs (pipeline/kb/kbstate.py) -------------------------
    @property
    def _remembered_here(self) -> bool:
        """Only HOME/lancedb's tables are remembered: another home's writer would not take this
        home's lock, so a memory of a table at a --db location could be stale unseen."""
        return self.location == KbLocation.default(self.home)

    def _memory(self) -> Optional[kbstate.KbState]:
        return kbstate.read(self.home, self.name) if self._remembered_here else None

    def remembered(self, dim: Optional[int]) -> Optional[dict[str, StoredDoc]]:
        """The documents the table holds, from the home's memory of it, without opening it: when the
        table is as it was at the end of the last pass, of vectors of size `dim`, and migrated."""
        state = self._memory() if dim is not None else None
        if state is None or state.dim != dim or not set(schema(dim).names) <= set(state.columns):
            return None
        return state.docs

    def remembered_rows(self) -> Optional[int]:
        """The chunks the table holds by the home's memory of it (None: not known without opening it)."""
        state = self._memory()
        return None if state is None else sum(d.chunks for d in state.docs.values())

    def high_water(self) -> Optional[int]:
        """The documents this knowledge base held at the end of the last pass that added documents
        (pipeline/kb/kbstate.py), or None: what the mass-removal guard measures removals against. Kept
        for HOME/lancedb only, like what it holds: another home may write a --db location unseen."""
        return kbstate.read_mark(self.home, self.name) if self._remembered_here else None

    def _note_high_water(self, stored: dict[str, StoredDoc]) -> None:
        """After a pass that began with `stored` and committed self.written: a pass that added documents
        sets the mark to the count it leaves, as does one whose removals the operator allowed; any other
        keeps it (removals are measured against it, so successive halvings add up)."""
        if not self.written or not self._remembered_here:
            return
        added = removed = 0
        for doc_id, doc in self.written.items():
            if doc is None:
                removed += doc_id in stored
            else:
                added += doc_id not in stored
        after = len(stored) + added - removed
        mark = self.high_water()
        base = len(stored) if mark is None else mark
        new = after if added or (removed and self.removal_allowed) else max(base, after)
        if new != mark:
            kbstate.write_mark(self.home, self.name, new)

    def remember(self, stored: dict[str, StoredDoc]) -> None:
        """At the end of a pass whose documents began as `stored`: remember them with what this object
        wrote since (the job holds the knowledge base's lock, so no one else wrote), and the
        knowledge base's high-water mark."""
        self._note_high_water(stored)
        if not self._remembered_here:
            return
        if not self._opened and not self.written:
            return  # not opened: the table is as remembered
        if self._table is None:
            kbstate.forget(self.home, self.name)
            return
        docs = dict(stored)
        for doc_id, doc in self.written.items():
            if doc is None:
                docs.pop(doc_id, None)
            else:
                docs[doc_id] = doc
        kbstate.write(self.home, self.name, self.dim or 0, self._table.schema.names, docs)

    def forget(self) -> None:
        """The table may hold what this run does not know (a write failed midway): scan it next time."""
        kbstate.forget(self.home, self.name)

    @classmethod
    def for_job(cls, home: Home, config) -> "KnowledgeBase":
        """The knowledge base a job writes: at the location it recorded, with its index threshold."""
        kb = cls(home, config.kb, KbLocation.of_job(home, config), getattr(config, "ann_min_rows", None))
        kb.removal_allowed = getattr(config, "max_removal_share", 0.0) >= 1.0
        return kb

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
            raise TableError(
                f"knowledge base {self.name!r} holds {self.dim}-dimensional vectors and this model "
                f"makes {dim}: use another --kb for another model"
            )
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
            {"path": "vector", "metadata": {MODEL_TAG: model, EMBEDDING_KEY: json.dumps(self._info(model))}}
        )

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

    @_damage_checked
    def count(self) -> int:
        return self._table.count_rows() if self._table is not None else 0

    @_damage_checked
    def stored_docs(self) -> dict[str, StoredDoc]:
        """doc_id -> the version, source and chunk count the table holds (one scan of 3 columns)."""
        if self._table is None:
            return {}
        t = self._scan(["doc_id", "doc_version", "source"])
        return docs_of_rows(zip(t["doc_id"].to_pylist(), t["doc_version"].to_pylist(), t["source"].to_pylist()))

    @_damage_checked
    def write(
        self, rows: list[dict[str, Any]], doc_ids: Iterable[str], replacing: Optional[Iterable[str]] = None
    ) -> None:
        """Write these documents whole, in one commit: upsert their rows by id and delete their other
        (stale) chunks. `replacing` names those of them the table may hold chunks of (None: any);
        a batch of documents new to the table skips the delete clause, whose outer join reads the
        whole table and so costs time and memory in proportion to it (docs/benchmarks.md, 3.3)."""
        doc_ids = sorted(set(doc_ids))
        if not doc_ids:
            return
        stale = doc_ids if replacing is None else sorted(set(replacing) & set(doc_ids))
        self._note_written(rows, doc_ids)
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

    def _note_written(self, rows: list[dict[str, Any]], doc_ids: list[str]) -> None:
        """Before the commit: a commit that fails is followed by forget(), never by remember()."""
        per = docs_of_rows((r["doc_id"], r["doc_version"], r["source"]) for r in rows)
        for d in doc_ids:
            self.written[d] = per.get(d)

    # ---- staging (the Ray executor's workers write here; the driver commits from it) ---------
    def staging_uri(self, job_id: str) -> str:
        """Where a job's staged rows live: beside the tables, under the knowledge base's location
        (a folder or an object store prefix), never listed as a table."""
        return f"{self.location.uri.rstrip('/')}/_staging/{self.name}/{validate_name(job_id, 'job id')}"

    @staticmethod
    def remove_staging(uri: str) -> None:
        """Delete staged data (all of a job's waves, or one wave): a folder or an object store prefix."""
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
        for attempt in range(3):  # a worker still closing a file there makes a local delete fail once
            try:
                if filesystem.get_file_info(path).type != fs.FileType.NotFound:
                    filesystem.delete_dir(path)
                break
            except OSError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        for parent in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):  # <kb>/, then _staging/
            if os.path.basename(parent) == "_staging" or os.path.basename(os.path.dirname(parent)) == "_staging":
                try:
                    if not filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True)):
                        filesystem.delete_dir(parent)
                except OSError:
                    return  # another job's staging is there

    def _arrow(self, rows: list[dict[str, Any]]) -> pa.Table:
        """The rows as the table's schema wants them: flat columns from the dicts, the metadata
        struct assembled from those columns."""
        full = self._table.schema
        if "metadata" not in full.names:  # not migrated (ensure was not called): flat columns only
            return pa.Table.from_pylist(rows, schema=full)
        flat = pa.Table.from_pylist(rows, schema=pa.schema([f for f in full if f.name != "metadata"]))
        md = struct_from_columns(full.field("metadata").type, flat, rows)
        return pa.Table.from_arrays([md if f.name == "metadata" else flat.column(f.name) for f in full], schema=full)

    @_damage_checked
    def vectors_by_hash(self, hashes: Iterable[str], model: str) -> dict[str, Any]:
        """The stored vectors of these texts (by ids.text_hash) that the same model made, from any
        document of the knowledge base: a text stored once is never embedded again."""
        return stored_vectors(self._table, hashes, model)

    @_damage_checked
    def models(self) -> list[str]:
        """The models whose vectors the table holds (one, unless someone mixed them)."""
        if self._table is None:
            return []
        return sorted({m for m in self._scan(["model"]).column("model").to_pylist() if m})

    @property
    def optimize_pending(self) -> bool:
        """An optimize of this table started and never finished (killed, or failed): redo it."""
        return self._optimize_marker.exists()

    def optimize(self) -> dict:
        """Compact the table, prune old versions and build the search indexes it lacks
        (pipeline/kb/search_indexes.py); a large table in a child process, whose memory goes back to the
        system when it exits (pipeline/kb/compaction.py). Returns a report: where, the child's peak RSS,
        seconds, and the indexes built. A marker file is kept while it runs: one that a kill or a
        failure interrupts is pending, and the next run redoes it."""
        from kbingest.pipeline.kb import compaction, search_indexes

        os.close(self.home.open_file(self._optimize_marker, os.O_WRONLY | os.O_CREAT))  # HOME/pending: no link followed
        if self.count() < compaction.CHILD_ROWS:
            report = compaction.optimize_here(self._table, self.ann_min_rows)
        else:
            build = search_indexes.wanted(self._table, self.ann_min_rows)
            report = compaction.optimize_in_child(self.location, self.name, self.ann_min_rows if build else None)
            self._table = self._db.open_table(self.name)  # the version the child made
        self.home.remove_file(self._optimize_marker)
        return report

    @_damage_checked
    def fragments(self) -> int:
        return self._table.stats()["fragment_stats"]["num_fragments"] if self._table is not None else 0

    def _scan(self, columns: list[str]) -> pa.Table:
        return self._table.search(None).select(columns).limit(None).to_arrow()

    @_damage_checked
    def ids(self) -> list[str]:
        if self._table is None:
            return []
        return self._scan(["id"]).column("id").to_pylist()

    def index_state(self):
        from kbingest.pipeline.kb.search_indexes import state

        return state(self._table) if self._table is not None else None

    @_damage_checked
    def search(
        self, vector: Optional[np.ndarray], k: int, mode: str = "vector", text: Optional[str] = None
    ) -> list[SearchHit]:
        """The k best chunks. vector: cosine similarity (exact below the ANN threshold, through the
        ANN index above it); text: BM25 on the full-text index; hybrid: both, fused by reciprocal
        rank (LanceDB's RRFReranker, k=60). The score is the mode's own: cosine similarity, BM25, RRF."""
        from kbingest.pipeline.kb import search_indexes

        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}: one of {', '.join(SEARCH_MODES)}")
        if self._table is None:
            return []
        st = search_indexes.state(self._table)
        if mode != "vector" and not st.has_fts:
            if mode == "text":
                raise TableError(
                    f"knowledge base {self.name!r} has no full-text index yet (the next job that "
                    "writes to it builds one): use --mode vector or --mode hybrid"
                )
            mode = "vector"  # hybrid on a table from before full-text indexes: its vector half
        kind = st.ann_kind if mode != "text" else None
        if mode == "vector":
            q = self._table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
            q = search_indexes.tune(q.distance_type("cosine"), kind)
            score = lambda r: 1.0 - float(r["_distance"])  # noqa: E731
        elif mode == "text":
            q = self._table.search(text, query_type="fts", fts_columns="text")
            score = lambda r: float(r["_score"])  # noqa: E731
        else:
            from lancedb.rerankers import RRFReranker

            q = (
                self._table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
                .vector(np.asarray(vector, dtype=np.float32))
                .text(text)
                .distance_type("cosine")
            )
            q = search_indexes.tune(q, kind).rerank(RRFReranker())
            score = lambda r: float(r["_relevance_score"])  # noqa: E731
        columns = _HIT_COLUMNS + (["page"] if "page" in self._table.schema.names else [])  # old tables: none
        res = q.limit(k).select(columns).to_list()
        digits = 6 if mode == "hybrid" else 4  # RRF scores are about 1/60
        return [
            SearchHit(
                id=r["id"],
                score=round(score(r), digits),
                source=r["source"],
                heading_path=r["heading_path"],
                text=r["text"],
                title=r.get("title") or "",
                page=r.get("page"),
                model=r.get("model") or "",
            )
            for r in res
        ]
