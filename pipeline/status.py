"""Job status and phase enums, and the one table of allowed status transitions."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a phase only: not run by design (a dry run stops after chunking); never a job's

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED)

    @property
    def is_done(self) -> bool:
        """A phase that needs nothing more: completed, or skipped."""
        return self in (JobStatus.COMPLETED, JobStatus.SKIPPED)


class JobPhase(str, Enum):
    LOADING = "loading"
    CHUNKING = "chunking"
    EMBEDDING = "embedding"
    INDEXING = "indexing"
    COMPLETED = "completed"  # the job-level "phase" once every phase is done


PHASES: tuple[JobPhase, ...] = (JobPhase.LOADING, JobPhase.CHUNKING, JobPhase.EMBEDDING, JobPhase.INDEXING)

# The seed's state machine, extended with the two re-entries the CLI contract asks for:
# `resume` of a failed job and retry of the failed documents of a completed job.
# This is the only place that says which status may follow which.
# A job resumed or retried while another writes its knowledge base waits in the queue: pending
# again (paused, failed and completed jobs may go back to pending; docs/queue.md).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.SKIPPED}),
    JobStatus.RUNNING: frozenset({JobStatus.PAUSED, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.PAUSED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.PENDING}),
    JobStatus.FAILED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.PENDING}),
    JobStatus.COMPLETED: frozenset({JobStatus.RUNNING, JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.SKIPPED: frozenset(),
}

# Phase statuses follow the same table (a phase is a small job): check_transition(..., what="phase").
# SKIPPED is a phase's only (pending -> skipped); a job never takes it (check_transition refuses).


class InvalidTransition(ValueError):
    def __init__(self, current: JobStatus, target: JobStatus, what: str = "job") -> None:
        super().__init__(f"{what} cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobStatus, target: JobStatus, what: str = "job") -> JobStatus:
    """Return target if current -> target is allowed, else raise InvalidTransition."""
    if not can_transition(JobStatus(current), JobStatus(target)) or (
        what == "job" and JobStatus(target) == JobStatus.SKIPPED
    ):
        raise InvalidTransition(JobStatus(current), JobStatus(target), what)
    return JobStatus(target)
