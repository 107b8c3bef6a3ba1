"""What stages share: the document on its way, and the Reporter they report through.

Stages are plain classes: no queues, no threads, no tracker. An executor (pipeline/executors/)
moves documents between them; the job (pipeline/job/engine.py) implements the Reporter over its
PhaseTracker. A stage reads settings from the JobConfig it is given, never from the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Protocol

from kbingest.pipeline.status import JobPhase


@dataclass(frozen=True)
class Fetch:
    """A remote document planned from its listing and not read: whoever chunks it reads it from its URI
    (a Ray worker: pipeline/executors/ray_workers.py), so its bytes never pass through the driver."""

    uri: str  # the document's URI (its identity)
    root: str  # the SOURCE it was listed under
    size: int  # as listed (the ETA's bytes; settled when it is chunked or fails)
    # a page read already where it was fetched (a Ray worker): the handle of its text there (an
    # ObjectRef), read by the worker that chunks it; never pickled with the Doc (the executor carries it)
    loaded: Any = field(default=None, compare=False)


@dataclass
class Doc:
    """A document on its way through the pipeline."""

    path: str  # as the user gave it (shown, stored as `source`)
    doc_id: str  # from the canonical path: one document however it is reached
    version: str  # "" for a document that is gone: its chunks are removed
    replaces: bool  # the table held another version of it
    loaded: Any = None  # the LoadedDocument, until chunked
    title: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)  # chunk rows, vectors added by embedding
    dropped: bool = False  # failed in embedding: nothing of it is written
    canonical: str = ""  # its identity, resolved once at load: doc_id and chunk ids come from it
    fetch: Optional[Fetch] = None  # not loaded yet: read from its URI where it is chunked (loaded is None)

    @property
    def removal(self) -> bool:
        return not self.version


class Reporter(Protocol):
    """How stages report: progress per phase, document errors and warnings, checkpoints."""

    def phase_started(self, phase: JobPhase) -> None: ...
    def add_total(self, phase: JobPhase, n: int = 1) -> None: ...
    def total_known(self, phase: JobPhase) -> None: ...
    # free: no work (reused, skipped); seconds: how long the work took (the indexer's commit)
    def progress(self, phase: JobPhase, n: int = 1, free: bool = False, seconds: Optional[float] = None) -> None: ...
    def add_bytes(self, n: int) -> None: ...  # bytes of documents to chunk in this pass
    def settle_bytes(
        self, n: int, chunks: Optional[int] = None
    ) -> None: ...  # a document's bytes chunked (or not to be)
    def phase_done(self, phase: JobPhase) -> None: ...
    def count(self, metric: str, n: int = 1) -> None: ...
    def found(self, fmt: str) -> None: ...  # a document the walk found, of this format
    def set(self, metric: str, value: Any) -> None: ...
    def message(self, text: str) -> None: ...
    def doc_error(self, path: str, phase: JobPhase, kind: str, message: str, attempts: int = 1) -> None: ...
    def warning(self, path: str, warnings: Iterable[str]) -> None: ...
    def checkpoint(self) -> None: ...


# What an executor calls of each stage (pipeline/executors/): LoadStage, ChunkStage, EmbedStage and
# IndexStage implement them, and the dry run's TallyStage and NoIndexStage (pipeline/stages/dryrun.py).
class LoadStep(Protocol):
    """The documents of a pass, in order: changed ones loaded, gone ones as removals."""

    def __iter__(self) -> Iterator[Doc]: ...


class ChunkStep(Protocol):
    def __call__(self, d: Doc) -> Optional[Doc]:
        """The document with its rows; None when it failed (reported). A removal passes through."""
        ...

    def finish(self) -> None:
        """Every document is chunked."""
        ...


class EmbedStep(Protocol):
    def add(self, d: Doc) -> list[Doc]:
        """Take a chunked document; return the documents whose rows all have vectors now, in order."""
        ...

    def flush(self) -> list[Doc]:
        """Embed what waits for a full batch; return the rest of the documents, in order."""
        ...


class IndexStep(Protocol):
    def add(self, d: Doc) -> None:
        """Take an embedded document (or a removal) for the next commit."""
        ...

    def due(self) -> bool:
        """Whether the next commit is due (rows or time)."""
        ...

    def flush(self) -> None:
        """Commit what was taken (a checkpoint follows)."""
        ...

    def finish(self) -> None:
        """The pass is over and was not stopped: the table's last work (compaction, indexes)."""
        ...


@dataclass
class PassStages:
    """The four stages of one pass, as an executor runs them."""

    load: LoadStep
    chunk: ChunkStep
    embed: EmbedStep
    index: IndexStep
    scope: Optional[list[str]] = None
    job_id: Optional[str] = None  # names the job's staging (the Ray executor)
