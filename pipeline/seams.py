"""The seam between the engine and its front ends, as types mypy checks (`make types`).

`JobService` is what a front end (the dashboard, the CLI) calls: `Service` (pipeline/service.py)
implements it over a home, `RemoteService` (app/remote.py) over HTTP on a `kbingest serve`. A front end
asks the service, never probes it (`getattr`): what one implementation cannot do, it says with a
method (`can_drain`) or a typed error. `JobHandle` is a job to run in this process (what `start`,
`resume` and `retry` return). tests/test_seams_typed.py makes mypy check that both services and both
handles conform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from kbingest.pipeline.models import DocumentError, JobConfig, JobStatusResponse

__all__ = ["JobHandle", "JobInfo", "JobService", "HomeLike"]


class JobHandle(Protocol):
    """A job to run in this process: what `start`, `resume` and `retry` return."""

    job_id: str
    config: JobConfig

    def run(self) -> JobStatusResponse: ...
    def pause(self) -> None: ...
    def cancel(self) -> None: ...
    def snapshot(self) -> JobStatusResponse: ...
    def snapshots_since(self, seq: int) -> tuple[list[JobStatusResponse], int]: ...  # every status change, then now

    @property
    def errors(self) -> list[DocumentError]: ...

    def queue_depths(self) -> dict[str, int]:
        """Documents waiting between phases now, by queue name ({} when its executor has no queues,
        or the job runs elsewhere)."""
        ...

    def job_store(self) -> Optional[object]:
        """The open job store this job writes (None for a job run elsewhere): a front end making a
        Service on the same home shares it (one store per process)."""
        ...


@dataclass(frozen=True)
class JobInfo:
    """A stored job as a front end shows it: its status as it is now (one whose process died shows
    as paused, interrupted), with its config and times."""

    job_id: str
    kb: str
    config: JobConfig
    status: JobStatusResponse
    created_at: str
    updated_at: str

    @property
    def errors(self) -> list[DocumentError]:
        return self.status.errors


class HomeLike(Protocol):
    """What a front end shows of a service's home: its folder, or a server's address."""

    @property
    def root(self) -> str | os.PathLike[str]: ...


class JobService(Protocol):
    """The use cases a front end calls, local (`Service`) or over HTTP (`RemoteService`). Failures
    are typed errors (pipeline/errors.py, `KbError`)."""

    @property
    def home(self) -> HomeLike: ...

    notices: list[str]  # things a person should be told (a store rebuilt...)

    # reading
    def jobs(self) -> list[JobInfo]:
        """Every job, newest first."""
        ...

    def job(self, job_id: str) -> JobInfo: ...

    def find(self, job_id: Optional[str] = None, kb: Optional[str] = None) -> JobInfo:
        """The job with this id; else the newest job of `kb`; else the newest job."""
        ...

    def status(self, job_id: Optional[str] = None, kb: Optional[str] = None) -> JobStatusResponse: ...

    def engine_busy(self, kb: Optional[str] = None) -> Optional[str]:
        """Why a job on `kb` would wait now, or None."""
        ...

    def knowledge_bases(self) -> list[str]:
        """The knowledge bases a new job may name ([] where they cannot be listed)."""
        ...

    def default_embedder(self) -> str:
        """The embedder a new-job form proposes."""
        ...

    @staticmethod
    def as_interrupted(snap: JobStatusResponse) -> JobStatusResponse:
        """A status recorded as running whose process is known to be gone, shown as it is."""
        ...

    # starting (a handle to run)
    def start(self, config: JobConfig, job_id: Optional[str] = None, wait: bool = True) -> JobHandle: ...
    def resume(self, job_id: str, wait: bool = True) -> JobHandle: ...
    def retry(self, job_id: str, paths: Optional[list[str]] = None, wait: bool = True) -> JobHandle: ...

    # steering a job, wherever it runs
    def request_pause(self, job_id: str) -> None: ...

    def request_cancel(self, job_id: str) -> str:
        """ "cancelled" (no engine ran it), "requested" (its engine is asked), "unchanged" (it had ended)."""
        ...

    def pause(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse: ...
    def cancel(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse: ...

    def can_drain(self) -> bool:
        """Whether `drain` is offered (a front end shows the action only then)."""
        ...

    def drain(self, job_id: str, timeout: float = 120.0) -> JobStatusResponse:
        """No new documents; those loaded are committed; waits until the job has completed."""
        ...

    # searching
    def search(self, kb: str, query: str, k: int = 5) -> list[Any]:
        """The k best hits, each with SearchHit's attributes (id, score, source, heading_path, text, title)."""
        ...

    # preferences kept in the home
    def settings(self) -> dict[str, Any]: ...
    def save_settings(self, **updates: Any) -> dict[str, Any]: ...
