import pytest

from kbingest.pipeline.status import (
    PHASES,
    TRANSITIONS,
    InvalidTransition,
    JobPhase,
    JobStatus,
    can_transition,
    check_transition,
)


def test_enum_values_are_the_seeds():
    assert [s.value for s in JobStatus][:6] == ["pending", "running", "paused", "completed", "failed", "cancelled"]
    assert JobStatus.SKIPPED.value == "skipped"  # a phase's only (issue 14: a dry run)
    assert [p.value for p in PHASES] == ["loading", "chunking", "embedding", "indexing"]
    assert JobPhase.COMPLETED.value == "completed"


@pytest.mark.parametrize(
    "a,b",
    [
        ("pending", "running"),
        ("running", "paused"),
        ("paused", "running"),
        ("running", "completed"),
        ("running", "failed"),
        ("paused", "cancelled"),
        ("running", "cancelled"),
        ("pending", "cancelled"),
        ("failed", "running"),
        ("completed", "running"),
    ],
)
def test_allowed(a, b):
    assert check_transition(JobStatus(a), JobStatus(b)) == JobStatus(b)


@pytest.mark.parametrize(
    "a,b",
    [
        ("pending", "completed"),
        ("pending", "failed"),
        ("paused", "completed"),
        ("cancelled", "running"),
        ("cancelled", "paused"),
        ("completed", "paused"),
        ("completed", "failed"),
        ("running", "running"),
        ("failed", "completed"),
        ("failed", "paused"),
    ],
)
def test_forbidden_raise(a, b):
    assert not can_transition(JobStatus(a), JobStatus(b))
    with pytest.raises(InvalidTransition, match=f"from {a} to {b}"):
        check_transition(JobStatus(a), JobStatus(b))


def test_table_covers_every_status_and_cancelled_is_final():
    assert set(TRANSITIONS) == set(JobStatus)
    assert TRANSITIONS[JobStatus.CANCELLED] == frozenset()
    assert all(s.is_terminal for s in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED))
    assert not JobStatus.PAUSED.is_terminal


def test_skipped_is_a_phase_status_only():
    """A dry run's embedding and indexing are `skipped`: from pending, final, done for progress; a job never is."""
    assert check_transition(JobStatus.PENDING, JobStatus.SKIPPED, what="phase embedding") == JobStatus.SKIPPED
    assert JobStatus.SKIPPED.is_done and JobStatus.SKIPPED.is_terminal and TRANSITIONS[JobStatus.SKIPPED] == frozenset()
    with pytest.raises(InvalidTransition):
        check_transition(JobStatus.PENDING, JobStatus.SKIPPED)  # what="job"
    with pytest.raises(InvalidTransition):
        check_transition(JobStatus.RUNNING, JobStatus.SKIPPED, what="phase embedding")


@pytest.mark.parametrize("a", ["paused", "failed", "completed"])
def test_a_resumed_job_may_wait_as_pending(a):
    assert check_transition(JobStatus(a), JobStatus.PENDING) == JobStatus.PENDING
