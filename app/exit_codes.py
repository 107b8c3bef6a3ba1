"""Exit statuses of the CLI, as contracts/CLI.md fixes them: the one place that maps a job's final
status and each typed error of the service to a code."""

from __future__ import annotations

from enum import IntEnum

from kbingest.pipeline.models import JobStatusResponse
from kbingest.pipeline.service import ControlTimeout, EngineFailure, KbBusy, KbError, Unreachable
from kbingest.pipeline.status import JobStatus


class ExitCode(IntEnum):
    OK = 0  # completed, no document errors
    FAILED = 1  # the job failed
    USAGE = 2  # a usage error
    DOCUMENT_ERRORS = 3  # completed, but some documents failed
    CANCELLED = 4
    TIMEOUT = 5  # `pause`/`cancel` waited its --timeout; the request was withdrawn, the job goes on
    PAUSED = 130  # paused by SIGINT, SIGTERM or `kbingest pause`; resumable


def exit_code_for(snap: JobStatusResponse) -> ExitCode:
    if snap.status == JobStatus.COMPLETED:
        return ExitCode.DOCUMENT_ERRORS if snap.m.documents_failed else ExitCode.OK
    if snap.status == JobStatus.CANCELLED:
        return ExitCode.CANCELLED
    if snap.status == JobStatus.PAUSED:
        return ExitCode.PAUSED
    return ExitCode.FAILED


def exit_code_for_error(e: KbError) -> ExitCode:
    """Every typed error is the user's to act on (exit 2), but these."""
    if isinstance(e, ControlTimeout):
        return ExitCode.TIMEOUT
    if isinstance(e, Unreachable):  # --server: no answer (wrong URL, server down): the user's to fix, as before
        return ExitCode.USAGE
    if isinstance(e, (EngineFailure, KbBusy)):  # KbBusy: --no-wait, the job did not run (docs/queue.md)
        return ExitCode.FAILED
    return ExitCode.USAGE
