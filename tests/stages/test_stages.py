"""Each stage alone (pipeline/stages/), with a fake Reporter that records what the stage reports: no
job, no executor, no tracker. The knowledge base is a fake where a stage needs one (ChunkStage,
IndexStage); EmbedStage runs the fake embedder."""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional

import pytest

from kbingest.pipeline.chunk.chunking import Chunker
from kbingest.pipeline.embed.embedding import FakeEmbedder
from kbingest.pipeline.job.control import RunControl
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.stages.base import ChunkStep, Doc, EmbedStep, IndexStep, LoadStep, Reporter
from kbingest.pipeline.stages.chunk import ChunkStage
from kbingest.pipeline.stages.embed import EmbedStage
from kbingest.pipeline.stages.index import IndexStage
from kbingest.pipeline.stages.load import LoadStage
from kbingest.pipeline.status import JobPhase

L, C, E, IX = JobPhase.LOADING, JobPhase.CHUNKING, JobPhase.EMBEDDING, JobPhase.INDEXING


class RecordingReporter:
    """The Reporter protocol, each call kept as (method, args...)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _rec(self, *call: Any) -> None:
        self.calls.append(call)

    def phase_started(self, phase: JobPhase) -> None:
        self._rec("phase_started", phase)

    def add_total(self, phase: JobPhase, n: int = 1) -> None:
        self._rec("add_total", phase, n)

    def total_known(self, phase: JobPhase) -> None:
        self._rec("total_known", phase)

    def progress(self, phase: JobPhase, n: int = 1, free: bool = False, seconds: Optional[float] = None) -> None:
        self._rec("progress", phase, n)

    def add_bytes(self, n: int) -> None:
        self._rec("add_bytes", n)

    def settle_bytes(self, n: int, chunks: Optional[int] = None) -> None:
        self._rec("settle_bytes", n, chunks)

    def phase_done(self, phase: JobPhase) -> None:
        self._rec("phase_done", phase)

    def count(self, metric: str, n: int = 1) -> None:
        self._rec("count", metric, n)

    def found(self, fmt: str) -> None:
        self._rec("found", fmt)

    def set(self, metric: str, value: Any) -> None:
        self._rec("set", metric, value)

    def message(self, text: str) -> None:
        self._rec("message", text)

    def doc_error(self, path: str, phase: JobPhase, kind: str, message: str, attempts: int = 1) -> None:
        self._rec("doc_error", path, phase, kind)

    def warning(self, path: str, warnings: Iterable[str]) -> None:
        self._rec("warning", path, list(warnings))

    def checkpoint(self) -> None:
        self._rec("checkpoint")

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def total(self, name: str, key: Any) -> int:
        return sum(c[1] for c in self.named(name) if c[0] == key)


class FakeTable:
    """What ChunkStage and IndexStage ask of a KnowledgeBase."""

    name = "fake"

    def __init__(self) -> None:
        self.commits = 0
        self.optimize_pending = False
        self.written: list[tuple[list[dict[str, Any]], list[str], list[str]]] = []
        self.dim: int | None = None

    def count(self) -> int:
        return 0

    def ensure(self, dim: int) -> None:
        self.dim = dim

    def write(self, rows: list[dict[str, Any]], doc_ids: list[str], replacing: list[str]) -> None:
        self.written.append((rows, doc_ids, replacing))
        self.commits += 1

    def optimize(self) -> dict[str, Any]:
        return {}


def _config(tmp_path, **kw: Any) -> JobConfig:
    return JobConfig(sources=[str(tmp_path / "src")], kb="kb", embedder="fake", **kw)


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.md").write_text("# Alpha\n\nThe first document, about alpha particles.\n")
    (d / "b.txt").write_text("A plain text document about beta decay.\n")
    (d / "empty.md").write_text("")
    return d


def _loaded(tmp_path, r: Reporter) -> list[Doc]:
    return list(LoadStage(_config(tmp_path), r, RunControl(), stored={}))


def _chunked(tmp_path, docs: list[Doc], r: Reporter) -> list[Doc]:
    c = _config(tmp_path)
    stage = ChunkStage(c, r, Chunker(c.chunk_settings()), FakeTable())  # type: ignore[arg-type]
    out = [d for d in (stage(d) for d in docs) if d is not None]
    stage.finish()
    return out


def test_load_stage_yields_each_changed_document_and_reports_the_walk(tmp_path, src):
    r = RecordingReporter()
    stage: LoadStep = LoadStage(_config(tmp_path), r, RunControl(), stored={})
    docs = list(stage)
    names = sorted(d.path.rsplit("/", 1)[-1] for d in docs)
    assert "a.md" in names and "b.txt" in names
    assert all(
        d.loaded is not None and d.version and not d.replaces for d in docs if d.path.endswith(("a.md", "b.txt"))
    )
    assert r.named("phase_started")[0] == (L,)
    assert ("markdown",) in r.named("found")
    assert r.named("phase_done") == [(L,)]
    assert r.total("progress", L) >= 2


def test_chunk_stage_gives_rows_and_announces_the_work_after_it(tmp_path, src):
    docs = _loaded(tmp_path, RecordingReporter())
    r = RecordingReporter()
    out = _chunked(tmp_path, docs, r)
    rows = sum(len(d.rows) for d in out)
    assert rows >= 2 and all(d.loaded is None for d in out)
    assert r.total("add_total", E) == rows and r.total("add_total", IX) == rows
    assert sum(n for m, n in r.named("count") if m == "chunks_created") == rows
    assert r.named("total_known") == [(E,), (IX,)] and r.named("phase_done") == [(C,)]
    stage: ChunkStep = ChunkStage(_config(tmp_path), r, Chunker(_config(tmp_path).chunk_settings()), FakeTable())  # type: ignore[arg-type]
    removal = Doc(path="gone.md", doc_id="x", version="", replaces=True)
    assert stage(removal) is removal  # a removal passes through


def test_embed_stage_gives_every_row_a_vector_in_batches_of_the_fake_embedder(tmp_path, src):
    docs = _chunked(tmp_path, _loaded(tmp_path, RecordingReporter()), RecordingReporter())
    r = RecordingReporter()
    made: list[FakeEmbedder] = []

    def factory() -> FakeEmbedder:
        made.append(FakeEmbedder())
        return made[-1]

    stage: EmbedStep = EmbedStage(_config(tmp_path, batch_size=1000), r, RunControl(), factory)
    out = [d for doc in docs for d in stage.add(doc)]
    assert out == [] and made == []  # a batch is not full: nothing embedded, no model loaded yet
    out = stage.flush()
    assert [d.path for d in out] == [d.path for d in docs]  # in order
    assert all(len(row["vector"]) == 384 for d in out for row in d.rows) and len(made) == 1
    assert r.total("progress", E) == sum(len(d.rows) for d in docs)
    assert not r.named("doc_error")


def test_index_stage_commits_when_due_and_checkpoints_after(tmp_path, src):
    docs = _chunked(tmp_path, _loaded(tmp_path, RecordingReporter()), RecordingReporter())
    for d in docs:
        for row in d.rows:
            row["vector"] = [0.0] * 4
    table, r = FakeTable(), RecordingReporter()
    stage: IndexStep = IndexStage(_config(tmp_path, commit_rows=10_000), r, RunControl(), table)  # type: ignore[arg-type]
    for d in docs:
        stage.add(d)
    assert not stage.due() and table.written == []  # nothing written before a commit is due
    stage.flush()
    rows = sum(len(d.rows) for d in docs)
    assert len(table.written) == 1 and len(table.written[0][0]) == rows and table.dim == 4
    assert r.total("progress", IX) == rows and r.named("checkpoint") == [()]
    assert r.calls.index(("checkpoint",)) > r.calls.index(("progress", IX, rows))  # checkpoint after the write
    stage.finish()
    assert r.named("phase_done") == [(IX,)]


def test_index_stage_reports_how_long_its_commit_took(tmp_path, src):
    """Issue 30: once all is embedded, the job's ETA is the rows left at the commits' own speed, not
    at the rate the indexer was fed (it waited for embedding): the stage says each commit's time."""
    docs = _chunked(tmp_path, _loaded(tmp_path, RecordingReporter()), RecordingReporter())
    for d in docs:
        for row in d.rows:
            row["vector"] = [0.0] * 4

    class SlowTable(FakeTable):
        def write(self, rows: list[dict[str, Any]], doc_ids: list[str], replacing: list[str]) -> None:
            time.sleep(0.05)
            super().write(rows, doc_ids, replacing)

    timed: list[tuple[int, Optional[float]]] = []

    class Timed(RecordingReporter):
        def progress(self, phase: JobPhase, n: int = 1, free: bool = False, seconds: Optional[float] = None) -> None:
            if phase == IX:
                timed.append((n, seconds))

    stage = IndexStage(_config(tmp_path, commit_rows=10_000), Timed(), RunControl(), SlowTable())  # type: ignore[arg-type]
    for d in docs:
        stage.add(d)
    stage.flush()
    ((n, seconds),) = timed
    assert n == sum(len(d.rows) for d in docs) and seconds is not None and 0.05 <= seconds < 5
