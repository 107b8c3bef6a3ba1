from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.status import InvalidTransition, JobPhase, JobStatus


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def tracker():
    clock = Clock()
    t = PhaseTracker("j1", "kb", clock=clock, wallclock=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    return t, clock


def detail(snap, name):
    return next(p for p in snap.phase_details if p.name == name)


def test_initial_snapshot_is_pending_loading():
    t, _ = tracker()
    s = t.snapshot()
    assert s.status == JobStatus.PENDING and s.phase == JobPhase.LOADING and s.progress == 0
    assert [p.name for p in s.phase_details] == ["loading", "chunking", "embedding", "indexing"]
    assert all(p.status == JobStatus.PENDING and p.items_total == 0 for p in s.phase_details)


def test_progress_items_rate_eta():
    t, clock = tracker()
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.EMBEDDING)
    t.add_total(JobPhase.EMBEDDING, 100)
    t.finish_total(JobPhase.EMBEDDING)
    clock.t += 10
    t.advance(JobPhase.EMBEDDING, 40)
    d = detail(t.snapshot(), "embedding")
    assert (d.items_processed, d.items_total, d.progress) == (40, 100, 40)
    assert d.rate == pytest.approx(4.0)
    assert d.eta_seconds == pytest.approx(15.0)
    assert d.duration_seconds == pytest.approx(10.0)
    assert d.started_at is not None and d.completed_at is None


def test_eta_unknown_while_total_grows():
    t, clock = tracker()
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.EMBEDDING)
    t.add_total(JobPhase.EMBEDDING, 10)
    clock.t += 5
    t.advance(JobPhase.EMBEDDING, 5)
    assert detail(t.snapshot(), "embedding").eta_seconds is None


def test_phase_is_earliest_not_completed_and_overall_reaches_100():
    t, _ = tracker()
    t.set_status(JobStatus.RUNNING)
    for p in (JobPhase.LOADING, JobPhase.CHUNKING):
        t.add_total(p, 2)
        t.advance(p, 2)
        t.complete_phase(p)
    s = t.snapshot()
    assert s.phase == JobPhase.EMBEDDING
    assert s.progress == pytest.approx(10.0)
    for p in (JobPhase.EMBEDDING, JobPhase.INDEXING):
        t.add_total(p, 3)
        t.advance(p, 3)
        t.complete_phase(p)
    s = t.snapshot()
    assert s.phase == JobPhase.COMPLETED and s.progress == 100.0


def test_overall_progress_never_goes_backwards_when_totals_grow():
    t, _ = tracker()
    t.set_status(JobStatus.RUNNING)
    t.add_total(JobPhase.LOADING, 10)
    t.advance(JobPhase.LOADING, 10)
    t.add_total(JobPhase.EMBEDDING, 2)
    t.advance(JobPhase.EMBEDDING, 2)
    seen = [t.snapshot().progress]
    t.add_total(JobPhase.EMBEDDING, 50)  # the total grows: the raw fraction drops
    seen.append(t.snapshot().progress)
    t.advance(JobPhase.EMBEDDING, 10)
    seen.append(t.snapshot().progress)
    assert seen == sorted(seen)


def test_pause_stops_running_phases_and_resume_restores():
    t, clock = tracker()
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.LOADING)
    clock.t += 3
    t.set_status(JobStatus.PAUSED, "paused")
    s = t.snapshot()
    assert s.status == JobStatus.PAUSED
    assert detail(s, "loading").status == JobStatus.PAUSED
    assert detail(s, "chunking").status == JobStatus.PENDING
    clock.t += 100  # time paused does not count
    assert detail(t.snapshot(), "loading").duration_seconds == pytest.approx(3.0)
    t2 = PhaseTracker.from_snapshot(s, clock=clock)
    assert t2.snapshot().model_dump(exclude={"phase_details"}) == s.model_dump(exclude={"phase_details"})
    t2.set_status(JobStatus.RUNNING)
    assert t2.snapshot().status == JobStatus.RUNNING


def test_fail_and_cancel_mark_phases():
    t, _ = tracker()
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.LOADING)
    t.fail_phase(JobPhase.EMBEDDING, "model broke")
    t.set_status(JobStatus.FAILED, "failed", error="model broke")
    s = t.snapshot()
    assert detail(s, "embedding").status == JobStatus.FAILED and detail(s, "embedding").error == "model broke"
    assert s.error == "model broke" and s.completed_at is not None
    t2, _ = tracker()
    t2.set_status(JobStatus.RUNNING)
    t2.set_status(JobStatus.CANCELLED)
    assert all(p.status == JobStatus.CANCELLED for p in t2.snapshot().phase_details)


def test_illegal_transition_raises():
    t, _ = tracker()
    with pytest.raises(InvalidTransition):
        t.set_status(JobStatus.COMPLETED)
    t.set_status(JobStatus.RUNNING)
    t.set_status(JobStatus.CANCELLED)
    with pytest.raises(InvalidTransition):
        t.set_status(JobStatus.RUNNING)


def test_snapshots_are_immutable():
    t, _ = tracker()
    s = t.snapshot()
    with pytest.raises(ValidationError):  # frozen
        s.status = JobStatus.RUNNING  # type: ignore[misc]


def test_progress_and_eta_scale_totals_that_still_grow():
    """200 documents listed, 88 loaded, 71 chunked into 1926 chunks, 1472 embedded: the job is far
    from 78% done, and the embedding ETA counts the chunks of the documents not chunked yet."""
    t, clock = tracker()
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.LOADING)
    t.add_total(JobPhase.LOADING, 200)
    t.finish_total(JobPhase.LOADING)
    t.advance(JobPhase.LOADING, 88)
    t.start_phase(JobPhase.CHUNKING)
    t.add_total(JobPhase.CHUNKING, 88)
    t.advance(JobPhase.CHUNKING, 71)
    t.start_phase(JobPhase.EMBEDDING)
    t.add_total(JobPhase.EMBEDDING, 1926)
    clock.t += 100
    t.advance(JobPhase.EMBEDDING, 1472)
    s = t.snapshot()
    assert 20 < s.progress < 40
    emb = detail(s, "embedding")
    expected_total = 1926 / ((88 / 200) * (71 / 88))
    assert emb.eta_seconds == pytest.approx((expected_total - 1472) / emb.rate, rel=0.01)


def test_failed_job_shows_the_phase_it_failed_in_not_the_earliest_stopped_one():
    """Issue 18 item 19: loading was stopped (paused) by the failure in indexing; the job's phase
    is indexing, also once restored from the stored snapshot, and a resume clears it."""
    t, _ = tracker()
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.LOADING)
    t.add_total(JobPhase.LOADING, 10)
    t.advance(JobPhase.LOADING, 3)
    t.start_phase(JobPhase.INDEXING)
    t.fail_phase(JobPhase.INDEXING, "disk full")
    t.set_status(JobStatus.FAILED, "failed in indexing", error="disk full")
    s = t.snapshot()
    assert detail(s, "loading").status == JobStatus.PAUSED
    assert s.phase == JobPhase.INDEXING
    restored = PhaseTracker.from_snapshot(s)
    assert restored.snapshot().phase == JobPhase.INDEXING
    restored.set_status(JobStatus.RUNNING)
    restored.reset_phases(keep_progress=True)
    assert restored.snapshot().phase == JobPhase.LOADING


def test_failure_after_every_phase_completed_shows_that_phase():
    t, _ = tracker()
    t.set_status(JobStatus.RUNNING)
    for p in (JobPhase.LOADING, JobPhase.CHUNKING, JobPhase.EMBEDDING, JobPhase.INDEXING):
        t.complete_phase(p)
    t.fail_phase(JobPhase.INDEXING, "optimize broke")
    t.set_status(JobStatus.FAILED, "failed", error="optimize broke")
    assert t.snapshot().phase == JobPhase.INDEXING


def test_every_status_change_is_kept_for_a_slow_poller():
    """A poller that looks once after many changes gets a snapshot of each, in order, then now."""
    t, _ = tracker()
    snaps, seq = t.snapshots_since(0)
    assert [s.status for s in snaps] == [JobStatus.PENDING]  # nothing changed yet: only now
    t.set_status(JobStatus.RUNNING, "ingesting")
    for p in (JobPhase.LOADING, JobPhase.CHUNKING, JobPhase.EMBEDDING, JobPhase.INDEXING):
        t.start_phase(p)
        t.add_total(p, 2)
        t.advance(p, 2)  # progress alone is not a change of status
        t.complete_phase(p)
    t.set_status(JobStatus.COMPLETED, "done")
    snaps, seq2 = t.snapshots_since(seq)
    assert seq2 == seq + 10 and len(snaps) == 11
    assert [s.status for s in snaps[:2]] == [JobStatus.RUNNING, JobStatus.RUNNING]
    assert [detail(s, "chunking").status for s in snaps[2:5]] == [
        JobStatus.PENDING,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
    ]
    assert snaps[-2].status == snaps[-1].status == JobStatus.COMPLETED  # the last change, then now
    assert [s.progress for s in snaps] == sorted(s.progress for s in snaps)
    again, seq3 = t.snapshots_since(seq2)
    assert len(again) == 1 and seq3 == seq2  # nothing new: only now


# ---- issue 30: the job's ETA in chunks to embed, progress that never goes back ----------------------
def _running_pass(t, listed_bytes):
    t.set_status(JobStatus.RUNNING)
    t.start_phase(JobPhase.LOADING)
    t.add_bytes(listed_bytes)
    t.start_phase(JobPhase.CHUNKING)
    t.start_phase(JobPhase.EMBEDDING)


def test_job_eta_counts_bytes_not_chunked_at_the_chunks_per_byte_seen():
    t, clock = tracker()
    _running_pass(t, 1000)
    t.add_total(JobPhase.CHUNKING)
    t.advance(JobPhase.CHUNKING)
    t.settle_bytes(100, chunks=10)  # 0.1 chunk per byte so far
    t.add_total(JobPhase.EMBEDDING, 10)
    clock.t += 10
    t.advance(JobPhase.EMBEDDING, 5)  # 0.5 chunk/s
    s = t.snapshot()
    # 5 chunks known and not embedded + 900 bytes not chunked x 0.1 = 95 chunks at 0.5/s
    assert s.eta_seconds == pytest.approx(190.0)
    assert all(p.eta_seconds is None or p.eta_seconds <= s.eta_seconds for p in s.phase_details)
    emb = detail(s, "embedding")
    assert emb.items_total_estimate == 100 and emb.progress == 5  # 5/~100 beside a 5 % bar
    assert s.progress == pytest.approx(5.0)  # the job's share in the same unit


def test_eta_unknown_until_a_document_is_chunked_and_null_when_not_running():
    t, clock = tracker()
    _running_pass(t, 1000)
    clock.t += 5
    assert t.snapshot().eta_seconds is None
    t.settle_bytes(1000, chunks=20)
    t.add_total(JobPhase.EMBEDDING, 20)
    clock.t += 5
    t.advance(JobPhase.EMBEDDING, 10)
    assert t.snapshot().eta_seconds == pytest.approx(10.0)
    t.set_status(JobStatus.PAUSED)
    assert t.snapshot().eta_seconds is None


def test_reused_vectors_and_skipped_documents_are_free_in_rates_and_eta():
    t, clock = tracker()
    _running_pass(t, 1000)
    t.settle_bytes(1000, chunks=200)
    t.add_total(JobPhase.EMBEDDING, 200)
    t.advance(JobPhase.EMBEDDING, 150, free=True)  # a resume: vectors reused at once
    clock.t += 10
    t.advance(JobPhase.EMBEDDING, 10)
    s = t.snapshot()
    emb = detail(s, "embedding")
    assert emb.rate == pytest.approx(1.0)  # not 16/s
    assert s.eta_seconds == pytest.approx(40.0)


def test_phase_etas_never_beyond_the_jobs():
    t, clock = tracker()
    _running_pass(t, 10_000)
    t.add_total(JobPhase.LOADING, 1000)
    t.finish_total(JobPhase.LOADING)
    t.settle_bytes(5000, chunks=100)
    t.add_total(JobPhase.EMBEDDING, 100)
    clock.t += 10
    t.advance(JobPhase.LOADING, 10)  # loading alone would say 990 s
    t.advance(JobPhase.EMBEDDING, 50)  # the job: 50 + 100 chunks at 5/s = 30 s
    s = t.snapshot()
    assert s.eta_seconds == pytest.approx(30.0)
    assert detail(s, "loading").eta_seconds == pytest.approx(30.0)


def test_bars_and_job_progress_never_go_back_within_a_pass_and_items_agree():
    t, clock = tracker()
    _running_pass(t, 10_000)
    t.add_total(JobPhase.LOADING, 10)
    t.finish_total(JobPhase.LOADING)
    seen: dict[str, int] = {}
    job = 0.0
    # small documents first, then one holding most of the bytes: the estimated totals grow late
    sizes = [100] * 9 + [9100]
    for i, size in enumerate(sizes):
        t.advance(JobPhase.LOADING)
        t.add_total(JobPhase.CHUNKING)
        clock.t += 1
        t.advance(JobPhase.CHUNKING)
        chunks = size // 10 if i < 9 else size // 5  # the big one chunks denser than the rest
        t.settle_bytes(size, chunks=chunks)
        t.add_total(JobPhase.EMBEDDING, chunks)
        if i < 9:
            t.advance(JobPhase.EMBEDDING, chunks)  # 90 of ~1000, then 90 of 1910: the bar holds at 9 %
        s = t.snapshot()
        assert s.progress >= job
        job = s.progress
        for p in s.phase_details:
            assert p.progress >= seen.get(p.name, 0), (i, p)
            seen[p.name] = p.progress
            if p.items_total_estimate is not None:
                assert p.items_total_estimate >= p.items_total
                assert abs(100 * p.items_processed / p.items_total_estimate - p.progress) <= 1.0
            elif p.items_total and p.status == JobStatus.RUNNING:  # held: the items catch up with the bar
                assert 100 * p.items_processed / p.items_total <= p.progress + 1
    emb = detail(t.snapshot(), "embedding")
    assert (emb.items_processed, emb.items_total, emb.progress) == (90, 1910, 9)
