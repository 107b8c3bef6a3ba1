"""Pydantic models of every record that crosses a boundary: status JSON, job store, CLI output."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from kbingest.pipeline.status import JobPhase, JobStatus

PhaseName = Literal["loading", "chunking", "embedding", "indexing"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: Optional[datetime]) -> Optional[str]:
    """ISO 8601 with a Z suffix, as the status schema wants; None stays None."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Timestamps(BaseModel):
    @field_serializer("started_at", "completed_at", check_fields=False)
    def _ser_ts(self, v: Optional[datetime]) -> Optional[str]:
        return iso(v)


class PhaseDetail(_Timestamps):
    """One phase of a job, as the seed defines it, plus rate/ETA/duration (extra keys are allowed)."""

    model_config = ConfigDict(frozen=True)

    name: PhaseName
    status: JobStatus = JobStatus.PENDING
    progress: int = Field(0, ge=0, le=100)
    items_processed: int = Field(0, ge=0)
    items_total: int = Field(0, ge=0)
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    error: Optional[str] = None
    rate: Optional[float] = None  # items per second over the recent window (items with work: this pass's)
    eta_seconds: Optional[float] = None  # never beyond the job's eta_seconds
    items_total_estimate: Optional[int] = Field(
        None,
        ge=0,
        description=(
            "while the total still grows: the items expected in all, an estimate (shown as ~N); "
            "items_processed / items_total_estimate is the phase's progress"
        ),
    )
    duration_seconds: Optional[float] = None


class JobStatusResponse(_Timestamps):
    """The status of one job: the contract of contracts/job_status.schema.json."""

    model_config = ConfigDict(frozen=True)

    job_id: str = Field(min_length=1)
    kb_id: str = Field(min_length=1)
    status: JobStatus
    phase: JobPhase
    progress: float = Field(0.0, ge=0.0, le=100.0)
    message: str = ""
    error: Optional[str] = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    phase_details: list[PhaseDetail] = Field(min_length=4, max_length=4)  # loading, chunking, embedding, indexing
    eta_seconds: Optional[float] = Field(
        None,
        ge=0,
        description=(
            "seconds left of a running job, from the chunks still to embed and this pass's embedding rate "
            "(docs/eta.md); null while unknown"
        ),
    )

    @property
    def m(self) -> "JobMetrics":
        """The metrics, typed."""
        return JobMetrics.model_validate(self.metrics)

    @property
    def errors(self) -> list["DocumentError"]:
        """The document errors the status lists (the first MAX_ERRORS_LISTED; `m.documents_failed` counts all)."""
        return list(self.m.document_errors or [])

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return self.model_dump_json()


@dataclass(frozen=True)
class SearchHit:
    """One search result (the CLI's --json prints its fields)."""

    id: str
    score: float
    source: str
    heading_path: str
    text: str
    title: str
    page: Optional[int] = None
    model: str = ""  # the embedding model of this chunk's vector: embed queries with the same one
    path: str = ""  # the source file relative to the job's SOURCE it was found under (else `source`)
    relevance: Optional[float] = None  # in [0, 1], for people: docs/search.md says how each mode makes it
    vector_score: Optional[float] = None  # cosine similarity (vector and hybrid modes)
    text_score: Optional[float] = None  # BM25 (text and hybrid modes)


class DocumentError(BaseModel):
    """A document that failed, with the phase it failed in."""

    path: str
    phase: PhaseName
    kind: str
    message: str
    attempts: int = 1
    at: Optional[datetime] = Field(None, description="when it failed (UTC); absent in older statuses")


class QueueGauge(BaseModel):
    """One queue between two phases, as the job's monitor last sampled it (about once a second)."""

    depth: int = Field(ge=0)
    capacity: int = Field(ge=0)
    empty_s: float = Field(0.0, ge=0, description="seconds it has been empty (its reader waits)")
    full_s: float = Field(0.0, ge=0, description="seconds it has been full (its writer waits)")


class InFlightDoc(BaseModel):
    """A document in a phase now: being worked on or waiting in the phase's input queue."""

    path: str
    size: Optional[int] = Field(None, description="bytes of the document, when still known")
    chunks: Optional[int] = Field(None, description="its chunks, once chunked")


class CommitBatch(BaseModel):
    """What the indexer holds for its next commit."""

    documents: int = Field(ge=0)
    chunks: int = Field(ge=0)


class SlowestDocument(BaseModel):
    """The document that took longest in one phase (chunking or embedding) so far in this run."""

    path: str
    phase: PhaseName
    seconds: float = Field(ge=0)


class JobMetrics(BaseModel):
    """The metrics of a status snapshot, typed: the one list of their names. The JSON keys are the
    field names, and a key that was never set is left out of the JSON (so the contract is as it was).
    Readers use `snap.m.<name>`; writers name a field (PhaseTracker refuses unknown names)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    documents_found: Optional[int] = None  # documents the walk found this pass
    documents_skipped: Optional[int] = None  # unchanged: the table holds their version
    documents_added: Optional[int] = None
    documents_replaced: Optional[int] = None
    documents_removed: Optional[int] = None
    documents_failed: Optional[int] = None
    documents_indexed: Optional[int] = None  # a job recovered from the knowledge base: what it holds
    files_ignored: Optional[int] = None  # not documents (by name)
    documents_without_text: Optional[int] = None  # read without fault, no text in them (an icon): skipped, warned
    documents_by_format: Optional[dict[str, int]] = None  # documents_found by format (markdown, pdf...)
    pages_read: Optional[int] = None  # pages of paged documents read (PDF pages, image frames)
    pages_ocr: Optional[int] = None  # of which read by OCR (--ocr)
    chunks_created: Optional[int] = None
    chunks_embedded: Optional[int] = None
    chunks_reused: Optional[int] = None  # vectors reused instead of embedded
    chunks_indexed: Optional[int] = None
    commits: Optional[int] = None
    document_warnings: Optional[int] = None
    document_errors: Optional[list[DocumentError]] = None  # the first MAX_ERRORS_LISTED errors
    document_warning_list: Optional[list[dict[str, str]]] = None
    optimizes: Optional[int] = None
    optimize_errors: Optional[int] = None
    optimize_peak_rss_mib: Optional[float] = None
    peak_rss_mib: Optional[float] = None  # the job's process's own peak RSS (not its compaction child's)
    loading_retries: Optional[int] = None
    chunking_retries: Optional[int] = None
    embedding_retries: Optional[int] = None
    indexing_retries: Optional[int] = None
    watch_bursts: Optional[int] = None
    watch_warning: Optional[str] = None
    heartbeat_age_seconds: Optional[float] = None  # added when a running job is read (pipeline/jobstore/liveness.py)
    not_responding: Optional[bool] = None
    last_synced_at: Optional[str] = None  # a watch job: when its last pass ended (ISO 8601, UTC)
    # the job queue (docs/queue.md): set while the job is pending
    queue_position: Optional[int] = None  # 1: next to run on its knowledge base
    waiting_for: Optional[str] = None  # the job that holds (or is ahead on) its knowledge base
    # job totals are the metrics above, across passes; this pass's own counts:
    this_pass: Optional[dict[str, int]] = None
    # drain (loading cancelled, the rest committed) and dry run (--until chunking)
    documents_not_processed: Optional[int] = None
    dry_run: Optional[dict[str, Any]] = None
    ray_waves: Optional[int] = None  # waves the Ray executor committed
    ray_rows_by_node: Optional[dict[str, int]] = None  # rows staged by each Ray node (this run)
    # sampled by the job's monitor thread (instrument.py), about once a second while a pass runs
    queue_docs: Optional[QueueGauge] = None  # loaded, waiting to be chunked
    queue_chunked: Optional[QueueGauge] = None  # chunked, waiting to be embedded
    queue_embedded: Optional[QueueGauge] = None  # embedded, waiting to be indexed
    in_flight: Optional[dict[str, list[InFlightDoc]]] = None  # phase -> at most IN_FLIGHT_LISTED documents
    commit_batch: Optional[CommitBatch] = None
    slowest_document: Optional[SlowestDocument] = None


METRIC_NAMES: frozenset[str] = frozenset(JobMetrics.model_fields)

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # shipped with the package: works offline
# Tokens a model reads, less its special tokens: the largest chunk budget it takes.
MODEL_MAX_TOKENS: dict[str, int] = {DEFAULT_MODEL: 254}
# Vector sizes known without loading a model (the table is checked against them before any work).
MODEL_DIMS: dict[str, int] = {DEFAULT_MODEL: 384, "fake": 384}
MIN_CHUNK_TOKENS = 16
CHUNKER_VERSION = "1"
MAX_TOKENS_LIMIT = 8192  # any model; a model's own cap is JobConfig's rule (MODEL_MAX_TOKENS)


class JobConfig(BaseModel):
    """Everything needed to (re)run a job; stored with the job so that resume repeats it exactly.

    The one place every default and bound of a job setting lives: the CLI's options and help, chunk
    settings and load limits are derived from it."""

    sources: list[str]
    kb: str
    model: str = Field(DEFAULT_MODEL, description="fastembed model name (the default is shipped and works offline)")
    embedder: Literal["fastembed", "fake"] = "fastembed"
    executor: str = Field("threads", description="what runs the pass: threads on this machine, or ray (a Ray cluster)")
    max_tokens: int = Field(
        240,
        ge=MIN_CHUNK_TOKENS,
        le=8192,
        description="chunk budget in model tokens (all-MiniLM-L6-v2 reads 256 with specials)",
    )
    overlap_tokens: int = Field(32, ge=0, description="overlap between chunks, tokens")
    max_chars: int = Field(4000, ge=100)
    # texts per embed() call: the default model's runtime runs them at their own length, one per core
    # (pipeline/embed/runtime.py), so a call needs >= 2 to use 2 cores; 8 keeps a pause within one short call
    batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="chunks per embedding call (the default model runs them one per core, each at its own length)",
    )  # docs/runtime.md
    threads: Optional[int] = Field(None, ge=1, description="cores used by the embedder (default: every core)")
    commit_rows: int = Field(512, ge=1, description="rows per LanceDB commit")
    commit_seconds: float = Field(5.0, gt=0, description="a commit at least this often, seconds")
    optimize_every: int = Field(20, ge=1)
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1, description="skip larger files")
    max_depth: int = Field(64, ge=0, description="folder depth limit")
    max_files: int = Field(100_000, ge=1, description="documents per job limit")
    follow_links: bool = Field(False, description="follow symbolic links, even out of the source folder")
    ocr: Literal["auto", "off", "force"] = Field(
        "auto",
        description=(
            "OCR (offline) of PDF pages without text and of images: auto (pages with no text layer), off (none: "
            "a scanned PDF is the error no_text_layer), force (every page, even one with a text layer)"
        ),
    )
    ocr_engine: Literal["rapidocr", "tesseract"] = Field(
        "rapidocr",
        description=(
            "the OCR engine: rapidocr (offline, the extra kbingest[ocr]) or tesseract (the system's "
            "`tesseract` command, e.g. Debian's tesseract-ocr: more accurate and faster on clean scans)"
        ),
    )
    watch: bool = Field(False, description="keep running and ingest what changes under the sources")
    interval: float = Field(
        60.0,
        ge=1.0,
        le=86400.0,
        description=("--watch over s3:// or http(s):// sources: seconds between two listings or crawls"),
    )
    # set by `kbingest serve` only (never a CLI option or a POST field): its --allow-url prefixes. A URI
    # source (s3://, http(s)://) of the job must lie under one, and a page is never fetched from a
    # loopback, link-local or private address unless its prefix names that host (pipeline/load/sources.py)
    allowed_urls: Optional[list[str]] = Field(
        None, description="the URL prefixes every URI this job reads must lie under (kbingest serve --allow-url)"
    )
    retries: int = Field(3, ge=0, description="attempts after a failed embedding batch or commit")
    until: Optional[Literal["chunking"]] = Field(
        None,
        description=(
            "dry run: stop after this phase (chunking: no model loaded, nothing written; a report of documents, "
            "chunks, tokens and the estimated embedding time)"
        ),
    )
    max_removal_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "a pass that would remove more than this share of a knowledge base's documents (a source that is "
            "empty or unmounted) removes none, and says so; 1.0 allows any removal"
        ),
    )
    db: Optional[str] = Field(
        None, description="where knowledge bases live: a folder or s3://bucket/prefix (default HOME/lancedb)"
    )
    db_options: dict[str, str] = Field(default_factory=dict, description="LanceDB storage options (no secrets)")
    ann_min_rows: int = Field(
        100_000, ge=1, description="rows from which an ANN vector index is built (pipeline/kb/search_indexes.py)"
    )
    # the Ray executor (executor="ray", the extra kbingest[ray]); ignored by the others
    ray_address: Optional[str] = Field(
        None,
        description="Ray cluster to run on: auto or HOST:PORT (default: a local Ray started and stopped with the job)",
    )
    ray_embed_actors: int = Field(2, ge=1, le=4096, description="embedding actors (one model loaded in each)")
    ray_gpus_per_actor: float = Field(0.0, ge=0, le=64, description="GPUs each embedding actor holds")
    ray_wave_docs: int = Field(256, ge=1, le=1_000_000, description="documents per wave (one commit each)")
    # docs/search.md: None is decided when the job is made (Service.start): yes for a new knowledge
    # base, what its jobs did for an existing one (no for one made before this setting)
    embed_context: Optional[bool] = Field(
        None,
        description=(
            "embed each chunk with its document title and heading path in front (the stored text unchanged); "
            "default: yes for a new knowledge base, as it was made for an existing one"
        ),
    )
    # set by `kbingest serve` only (never a CLI option or a POST field): its --allow-root folders, at the
    # POST and again at every HTTP resume. Every pass's walk and read stay inside them, whatever
    # follow_links says; None (the CLI's jobs): the source is the boundary (pipeline/load/loading.py)
    allowed_roots: Optional[list[str]] = Field(
        None,
        description="the folders every file this job reads must "
        "lie in (the --allow-root folders of the server that runs it)",
    )

    # Every setting is either versioned (it changes what a document's chunks or vectors are: the
    # document version is made from it, so changing it re-ingests) or not (changing it skips
    # unchanged documents). A test checks that each field is in exactly one of the two.
    VERSIONED: ClassVar[tuple[str, ...]] = (
        "model",
        "embedder",
        "max_tokens",
        "overlap_tokens",
        "max_chars",
        "embed_context",
        "ocr",
        "ocr_engine",
    )
    UNVERSIONED: ClassVar[tuple[str, ...]] = (
        "sources",
        "kb",
        "executor",
        "batch_size",
        "threads",
        "commit_rows",
        "commit_seconds",
        "optimize_every",
        "max_file_bytes",
        "max_depth",
        "max_files",
        "follow_links",
        "watch",
        "retries",
        "max_removal_share",
        "db",
        "db_options",
        "ann_min_rows",
        "until",
        "interval",
        "allowed_urls",
        "ray_address",
        "ray_embed_actors",
        "ray_gpus_per_actor",
        "ray_wave_docs",
        "allowed_roots",
    )
    # The settings a user may set for a job (a CLI option each, the fields of a POST /jobs body); the
    # others are set by kbingest (sources, kb, db: their own arguments, allowed_roots: a server's) or kept
    # at their default.
    USER_SETTABLE: ClassVar[tuple[str, ...]] = (
        "model",
        "max_tokens",
        "overlap_tokens",
        "batch_size",
        "threads",
        "commit_rows",
        "max_depth",
        "max_files",
        "executor",
        "ray_address",
        "ray_embed_actors",
        "ray_gpus_per_actor",
        "ray_wave_docs",
        "max_file_bytes",
        "follow_links",
        "watch",
        "max_removal_share",
        "until",
        "embedder",
        "embed_context",
        "ocr",
        "ocr_engine",
        "interval",
    )

    @model_validator(mode="after")
    def _chunk_settings_valid(self) -> "JobConfig":
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        cap = MODEL_MAX_TOKENS.get(self.model)
        if cap is not None and self.max_tokens > cap:
            raise ValueError(f"{self.model} reads {cap + 2} tokens with its 2 special tokens: max_tokens at most {cap}")
        if self.until is not None and self.watch:
            raise ValueError("a dry run (--until) stops after one pass: it cannot --watch")
        self.chunk_settings()
        return self

    def chunk_settings(self) -> ChunkSettings:
        return ChunkSettings(max_tokens=self.max_tokens, overlap_tokens=self.overlap_tokens, max_chars=self.max_chars)

    def load_limits(self) -> LoadLimits:
        return LoadLimits(
            max_file_bytes=self.max_file_bytes,
            max_depth=self.max_depth,
            max_files=self.max_files,
            follow_links=self.follow_links,
            allowed_roots=None if self.allowed_roots is None else tuple(self.allowed_roots),
            allowed_urls=None if self.allowed_urls is None else tuple(self.allowed_urls),
        )

    @property
    def vector_model(self) -> str:
        """The name of the model that makes the vectors (stored in every row)."""
        return "fake" if self.embedder == "fake" else self.model

    def version_key(self) -> str:
        """Every versioned setting as one stable string: document versions and chunk ids are derived
        from it. Settings versioned from the start are in the chunker's fingerprint and the model
        name (tables made before keep their versions); one added later contributes only when it is
        not at its default, so adding a setting never re-ingests a knowledge base."""
        key = f"{self.chunk_settings().fingerprint()}|{self.vector_model}"
        for name in self.VERSIONED:
            value = getattr(self, name)
            if name not in _FIRST_VERSIONED and value != job_default(name) and value not in _AS_BEFORE.get(name, ()):
                key += f"|{name}={value}"
        return key

    @property
    def context_embedding(self) -> bool:
        """Whether chunks are embedded with their title and heading path in front (None: not, as before)."""
        return bool(self.embed_context)


_FIRST_VERSIONED = frozenset({"model", "embedder", "max_tokens", "overlap_tokens", "max_chars"})
# values of a later versioned setting that mean what versions before it did: they add nothing to the key
_AS_BEFORE: dict[str, tuple] = {"embed_context": (None, False)}


def job_default(name: str) -> Any:
    """A job setting's default, from JobConfig (the one place that says it)."""
    return JobConfig.model_fields[name].default


@dataclass(frozen=True)
class ChunkSettings:
    """Derived from JobConfig (`config.chunk_settings()`), whose defaults these are."""

    max_tokens: int = job_default("max_tokens")  # budget of a chunk's text, model tokenizer, no specials
    overlap_tokens: int = job_default("overlap_tokens")  # tail of the previous chunk of the section repeated
    max_chars: int = job_default("max_chars")  # hard cap on characters per chunk ([UNK]-only giant words)

    def __post_init__(self) -> None:
        if not MIN_CHUNK_TOKENS <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens must be in {MIN_CHUNK_TOKENS}..{MAX_TOKENS_LIMIT}, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(f"overlap_tokens must be in 0..max_tokens-1, got {self.overlap_tokens}")
        if self.max_chars < 64:
            raise ValueError(f"max_chars must be >= 64, got {self.max_chars}")

    def fingerprint(self) -> str:
        return f"v{CHUNKER_VERSION}-t{self.max_tokens}-o{self.overlap_tokens}-c{self.max_chars}"


@dataclass(frozen=True)
class LoadLimits:
    """Derived from JobConfig (`config.load_limits()`), whose defaults these are."""

    max_file_bytes: int = job_default("max_file_bytes")  # larger files are refused with a reason
    max_depth: int = job_default("max_depth")  # directory depth below a source root (the root is depth 0)
    max_files: int = job_default("max_files")  # documents per job; beyond: one Problem, and the walk stops
    follow_links: bool = job_default("follow_links")  # follow every symlink, even out of the root
    # a job of `kbingest serve`: its --allow-root folders (real paths), which bind every folder walked and
    # every file read, whatever follow_links says (load/loading.py, Bounds); None: the source is the boundary
    allowed_roots: Optional[tuple[str, ...]] = None
    # a job of `kbingest serve`: its --allow-url prefixes, which bind every URI source (load/sources.py); None:
    # a job of the CLI, whose operator may read any URI (loopback included)
    allowed_urls: Optional[tuple[str, ...]] = None


class JobRecord(BaseModel):
    """A job as the job store keeps it (no per-chunk data). Its document errors live in its status
    (the first MAX_ERRORS_LISTED, and the count): stored once."""

    job_id: str
    config: JobConfig
    status: JobStatusResponse
    control: Optional[Literal["pause", "cancel", "drain"]] = None
    owner_pid: Optional[int] = None
    heartbeat_at: Optional[str] = None  # the engine running it last wrote (pipeline/jobstore/liveness.py)
    queued_at: Optional[str] = None  # when it began waiting for its knowledge base (pipeline/jobstore/queue.py)
    created_at: str
    updated_at: str
