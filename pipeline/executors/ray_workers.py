"""What the Ray executor runs on the cluster's workers: the same ChunkStage and EmbedStage as the
thread executor, fed one batch of documents at a time, and the staging of their rows as Lance
fragments. Imported by Ray on each worker (the same kbingest package on every machine).

A worker reports through a `RecordingReporter`: the calls a stage makes (progress, document
errors, warnings, counts) are recorded, sent back with the batch's result, and replayed by the
driver onto the job's real Reporter, so the status says the same as for threads.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import TYPE_CHECKING, Any, Iterable, Optional

from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import Doc

if TYPE_CHECKING:
    from kbingest.pipeline.kb.location import KbLocation

log = logging.getLogger("kbingest.engine")

# Reporter calls a worker records; the pass-level ones (phase_done, total_known) are the driver's.
_REPLAYED = {
    "phase_started",
    "add_total",
    "progress",
    "count",
    "set",
    "doc_error",
    "warning",
    "add_bytes",
    "settle_bytes",
}
ENV_FORWARDED = ("KBINGEST_FAKE_DELAY", "KBINGEST_FAKE_FAIL_ON", "KBINGEST_CRASH_AT", "KBINGEST_CRASH_ONCE")


class RecordingReporter:
    """A Reporter that records what a stage says, for the driver to replay (`replay`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any) -> None:
            if name in _REPLAYED:
                self.calls.append((name, args))

        return record

    def take(self) -> list[tuple[str, tuple]]:
        calls, self.calls = self.calls, []
        return calls


def replay(calls: Iterable[tuple[str, tuple]], reporter: Any) -> None:
    for name, args in calls:
        getattr(reporter, name)(*args)


class TableVectors:
    """The knowledge base's table as a chunking task reads it (opened at the first question, read
    only; the driver alone writes it): the vectors of texts it holds, which ChunkStage gives to the
    rows before they reach an embedding actor, as the driver's KnowledgeBase does with threads.
    It is only an optimisation: a table it cannot read means every text is embedded."""

    def __init__(self, location: "KbLocation", name: str) -> None:
        self.location, self.name = location, name
        self._table: Any = None
        self._opened = False

    def _open(self):
        if not self._opened:
            self._opened = True
            if self.location.is_local and not os.path.isdir(self.location.table_uri(self.name)):
                return None  # a first run: nothing stored (and LanceDB not imported for it)
            from kbingest.pipeline.kb.table import open_table

            try:
                self._table = open_table(self.location.connect(), self.name)  # None: a first run
            except Exception:  # not readable from this worker: embed everything
                log.warning("the stored vectors of %s are not readable on this worker", self.name, exc_info=True)
        return self._table

    def count(self) -> int:
        table = self._open()
        try:
            return table.count_rows() if table is not None else 0
        except Exception:
            log.warning("could not count the rows of %s on this worker", self.name, exc_info=True)
            return 0

    def vectors_by_hash(self, hashes: Iterable[str], model: str) -> dict[str, Any]:
        from kbingest.pipeline.kb.table import stored_vectors

        return stored_vectors(self._open(), hashes, model)


_chunkers: dict[str, Any] = {}


def _chunker(config: JobConfig):
    """One Chunker per worker process and settings (its tokenizer loads once)."""
    from kbingest.pipeline.chunk.chunking import Chunker
    from kbingest.pipeline.embed.embedding import make_embedder
    from kbingest.pipeline.models import DEFAULT_MODEL

    key = config.version_key()
    if key not in _chunkers:
        counter = None  # the shipped tokenizer
        if config.embedder != "fake" and config.model != DEFAULT_MODEL:
            emb = make_embedder(config.embedder, config.model, config.batch_size, 1)
            counter = emb.token_counter() if hasattr(emb, "token_counter") else None
        _chunkers[key] = Chunker(config.chunk_settings(), counter)
    return _chunkers[key]


def pull_and_chunk(batch, config_json: str, plan, staging_uri: str, table: tuple["KbLocation", str]):
    """Ray Data task (a generator): takes groups of loaded documents from the driver's plan queue
    until its end mark, and yields them chunked, with the reports made. A few of these run for the
    whole pass, so the embedding actors after them live as long as the pass (one model load each)."""
    import pyarrow as pa

    from kbingest.pipeline.stages.chunk import ChunkStage

    config = JobConfig.model_validate_json(config_json)
    rec = RecordingReporter()
    stage = ChunkStage(config, rec, _chunker(config), TableVectors(*table))
    while True:
        group = plan.get()
        if group is None:
            return
        docs, reports = [], []
        for blob in group:
            page = None
            if isinstance(blob, tuple):  # a page a worker read (fetch_page_task): (the Doc, its text's ref)
                blob, page = blob
            d: Doc = pickle.loads(blob)
            fetched = fetch_document(d, config, rec, page) if d.fetch is not None else d
            out = stage(fetched) if fetched is not None else None
            docs.append(pickle.dumps(out if out is not None else _failed(d)))
            reports.append(pickle.dumps(rec.take()))
        yield pa.table(
            {
                "doc": pa.array(docs, pa.binary()),
                "reports": pa.array(reports, pa.binary()),
                "staging": pa.array([staging_uri] * len(docs), pa.string()),
            }
        )


def fetch_document(d: Doc, config: JobConfig, rec: RecordingReporter, page: Any = None) -> Optional[Doc]:
    """A document the driver planned from its listing (Doc.fetch), read here from its URI with the
    job's limits and format identification, as the driver reads one with threads; or a page that
    another worker fetched and read (fetch_page_task), its text taken here by `page`, its ObjectRef.
    A read that fails is this document's error (loading), recorded for the driver; the pass goes on.
    Its stored chunks stay."""
    from kbingest.pipeline.load import loading, sources
    from kbingest.pipeline.load.formats import ocr
    from kbingest.pipeline.load.formats.base import LoadError
    from kbingest.pipeline.messages import note_document, reason
    from kbingest.pipeline.status import JobPhase

    f = d.fetch
    assert f is not None
    limits = config.load_limits()

    def page_read(by_ocr: bool) -> None:
        rec.count("pages_read")
        if by_ocr:
            rec.count("pages_ocr")

    note_document(f.uri)
    if page is not None:
        import ray

        try:
            loaded = ray.get(page)
        except Exception as e:  # the worker that read it is gone with its text
            rec.doc_error(f.uri, JobPhase.LOADING, "fetch_failed", f"the page's text was lost: {reason(e)}"[:500])
            rec.settle_bytes(f.size)
            return None
        return Doc(
            path=d.path, doc_id=d.doc_id, version=d.version, replaces=d.replaces, loaded=loaded, canonical=d.canonical
        )
    try:
        data, ctype = sources.read_remote(f.uri, limits)
        fmt = sources.format_for(f.uri, ctype)
        if fmt is None:
            raise LoadError("unsupported_format", "no format reads this document: not loaded")
        with ocr.session(config.ocr, lambda: None, page_read):
            doc = loading.loaded_from_bytes(f.uri, f.root, data, fmt, limits)
    except LoadError as e:
        rec.doc_error(f.uri, JobPhase.LOADING, e.kind, e.message)
        rec.settle_bytes(f.size)
        return None
    except MemoryError as e:
        rec.doc_error(f.uri, JobPhase.LOADING, "out_of_memory", reason(e))
        rec.settle_bytes(f.size)
        return None
    if doc.warnings:
        rec.warning(doc.path, doc.warnings)
    return Doc(
        path=d.path,
        doc_id=d.doc_id,
        version=d.version,
        replaces=d.replaces,
        loaded=doc,
        canonical=d.canonical,
    )


def fetch_page_task(url: str, root: str, headers: dict, old: Optional[dict], config_json: str, prefix: str) -> dict:
    """Ray task: one request of a page of a crawl the driver runs (frontier, robots.txt, politeness,
    validators; a redirect is answered, and the driver starts its next hop), the page fetched and read here (sources.fetch_page: the conditional GET, the same limits, redirect and SSRF
    rules). Its text is put in this node's object store: the driver gets its links, validators, hash
    and format, and the ObjectRef, which it hands to the worker that chunks the page (pull_and_chunk)."""
    import ray

    from kbingest.pipeline.load import loading, sources

    limits = JobConfig.model_validate_json(config_json).load_limits()
    return sources.fetch_page(url, root, headers, old, limits, prefix, keep=ray.put, extract=loading.loaded_from_bytes)


def _failed(d: Doc) -> Doc:
    """A document that failed chunking (its error is in the reports): nothing of it is written."""
    return Doc(path=d.path, doc_id=d.doc_id, version=d.version, replaces=d.replaces, dropped=True)


class ActorRegistry:
    """A Ray actor (no CPU) the driver makes for a pass: each embedding actor registers its handle,
    so that a stopped pass can end them before its staging is removed (Ray Data only lets go of
    its actors, which then finish the batch in flight and write its fragments)."""

    def __init__(self) -> None:
        self.actors: list = []

    def add(self, actor: Any) -> None:
        self.actors.append(actor)

    def take(self) -> list:
        actors, self.actors = self.actors, []
        return actors


class EmbedWriter:
    """Ray Data actor: loads the model once, embeds batches of whole documents with the same
    EmbedStage as threads (retries, a failing document isolated), and writes their rows as Lance
    fragments of the pass's staging dataset (committed by the driver, a wave at a time). Returns one summary row a batch: the fragments, the
    documents (with their row counts), the reports and the node that did it."""

    def __init__(self, config_json: str, env: dict[str, str], gpus: float = 0.0, registry: Any = None) -> None:
        os.environ.update(env)
        if registry is not None:  # before any batch (again after a restart: a handle is killed once)
            import ray

            ray.get(registry.add.remote(ray.get_runtime_context().current_actor))
        from kbingest.pipeline.embed.embedding import make_embedder
        from kbingest.pipeline.job.control import RunControl

        self.config = JobConfig.model_validate_json(config_json)
        c = self.config
        threads = c.threads or 1  # one onnxruntime thread per CPU the actor holds
        self.embedder = make_embedder(c.embedder, c.model, c.batch_size, threads)
        self.control = RunControl()  # the driver stops a wave; a worker finishes its batch
        self.batches = 0

    def __call__(self, batch):
        import pyarrow as pa

        from kbingest.pipeline.stages.embed import EmbedStage

        self.batches += 1
        _fault("ray_actor", self.batches)
        staging_uri = batch.column("staging").to_pylist()[0]
        rec = RecordingReporter()
        stage = EmbedStage(self.config, rec, self.control, lambda: self.embedder)
        calls: list = []
        for blob in batch.column("reports").to_pylist():
            calls.extend(pickle.loads(blob))
        docs: list[Doc] = []
        for blob in batch.column("doc").to_pylist():
            d: Doc = pickle.loads(blob)
            if not d.dropped:
                docs.extend(stage.add(d))
        docs.extend(stage.flush())
        calls.extend(rec.take())
        rows = [dict(row, vector=_floats(row["vector"])) for d in docs if not d.dropped for row in d.rows]
        fragments = write_fragments(rows, staging_uri, self.embedder.dim) if rows else []
        metas = [(d.doc_id, d.path, d.version, d.replaces, d.title, d.dropped, len(d.rows)) for d in docs]
        summary = {
            "fragments": fragments,
            "docs": metas,
            "reports": calls,
            "rows": len(rows),
            "dim": self.embedder.dim,
            "node": _node_id(),
        }
        return pa.table({"summary": pa.array([pickle.dumps(summary)], pa.binary())})


def write_fragments(rows: list[dict], uri: str, dim: int) -> list[str]:
    """Rows -> new Lance fragments under `uri` (not yet part of any version): their JSON metadata."""
    import json

    import pyarrow as pa
    from lance.fragment import write_fragments as lance_write

    from kbingest.pipeline.kb.table import schema

    table = pa.Table.from_pylist(rows, schema=schema(dim))
    # append: the staging dataset may have versions already (the driver commits a wave while the
    # actors go on), or none yet (then the fragments are written as for a new one)
    frags = lance_write(table, uri, schema=schema(dim), mode="append", storage_options=staging_options(uri))
    return [json.dumps(f.to_json()) for f in frags]


def staging_options(uri: str) -> Optional[dict[str, str]]:
    """Lance storage options for staging on object storage: from the AWS_* environment each worker has
    (as the driver's connection does); None for a folder."""
    from kbingest.pipeline.kb.location import KbLocation

    return KbLocation(uri).storage_options() or None


def _floats(v: Any) -> list:
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _node_id() -> Optional[str]:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def _fault(name: str, count: int) -> None:
    """Fault injection for the tests: KBINGEST_CRASH_AT=ray_actor:N kills this actor's process at
    its Nth batch, once (KBINGEST_CRASH_ONCE names a marker file made before dying)."""
    if os.environ.get("KBINGEST_CRASH_AT") != f"{name}:{count}":
        return
    marker = os.environ.get("KBINGEST_CRASH_ONCE")
    if marker:
        if os.path.exists(marker):
            return
        open(marker, "w").close()
    os._exit(1)
