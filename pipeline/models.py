"""Pydantic models of every record that crosses a boundary: status JSON, job store, CLI output."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, Optional

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
    rate: Optional[float] = None  # items per second over the recent window
    eta_seconds: Optional[float] = None
    duration_seconds: Optional[float] = None


class JobStatusResponse(_Timestamps):
    """The status of one job: the contract of contracts/job_status.schema.json."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kb_id: str
    status: JobStatus
    phase: JobPhase
    progress: float = Field(0.0, ge=0.0, le=100.0)
    message: str = ""
    error: Optional[str] = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    phase_details: list[PhaseDetail]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return self.model_dump_json()


class DocumentError(BaseModel):
    """A document that failed, with the phase it failed in."""

    path: str
    phase: PhaseName
    kind: str
    message: str
    attempts: int = 1


class JobConfig(BaseModel):
    """Everything needed to (re)run a job; stored with the job so that resume repeats it exactly."""

    sources: list[str]
    kb: str
    model: str = "all-MiniLM-L6-v2"
    embedder: Literal["fastembed", "fake"] = "fastembed"
    max_tokens: int = Field(240, ge=16, le=8192)
    overlap_tokens: int = Field(32, ge=0)
    max_chars: int = Field(4000, ge=100)
    # texts per embed() call: the default model's runtime runs them at their own length, one per core
    # (pipeline/runtime.py), so a call needs >= 2 to use 2 cores; 8 keeps a pause within one short call
    batch_size: int = Field(8, ge=1, le=1024)
    threads: Optional[int] = None
    commit_rows: int = Field(512, ge=1)
    commit_seconds: float = Field(5.0, gt=0)
    optimize_every: int = Field(20, ge=1)
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_depth: int = Field(64, ge=0)
    max_files: int = Field(100_000, ge=1)
    follow_links: bool = False
    watch: bool = False
    retries: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _chunk_settings_valid(self) -> "JobConfig":
        from kbingest.pipeline.chunking import ChunkSettings

        ChunkSettings(max_tokens=self.max_tokens, overlap_tokens=self.overlap_tokens, max_chars=self.max_chars)
        return self


class JobRecord(BaseModel):
    """A job as the job store keeps it (no per-chunk data)."""

    job_id: str
    config: JobConfig
    status: JobStatusResponse
    doc_errors: list[DocumentError] = Field(default_factory=list)
    control: Optional[Literal["pause", "cancel"]] = None
    owner_pid: Optional[int] = None
    created_at: str
    updated_at: str
    retry_paths: Optional[list[str]] = None  # set when only failed documents are retried
