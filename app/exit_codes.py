"""Exit statuses of the CLI, as contracts/CLI.md fixes them."""
from __future__ import annotations

from enum import IntEnum

from kbingest.pipeline.models import JobStatusResponse
from kbingest.pipeline.status import JobStatus


class ExitCode(IntEnum):
    OK = 0               # completed, no document errors
    FAILED = 1           # the job failed
    USAGE = 2            # a usage error
    DOCUMENT_ERRORS = 3  # completed, but some documents failed
    CANCELLED = 4
    PAUSED = 130         # paused by SIGINT, SIGTERM or `kbingest pause`; resumable


def exit_code_for(snap: JobStatusResponse) -> ExitCode:
    if snap.status == JobStatus.COMPLETED:
        return ExitCode.DOCUMENT_ERRORS if snap.metrics.get("documents_failed") else ExitCode.OK
    if snap.status == JobStatus.CANCELLED:
        return ExitCode.CANCELLED
    if snap.status == JobStatus.PAUSED:
        return ExitCode.PAUSED
    return ExitCode.FAILED
