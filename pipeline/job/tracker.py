"""PhaseTracker: per-phase status, counts, timing, rate and ETA; publishes immutable snapshots.

The job's ETA is measured in the bottleneck's unit, chunks to embed (docs/eta.md): the chunks of the
documents chunked and not embedded yet, plus the bytes of the documents not chunked yet at the chunks
per byte seen so far in this pass; reused chunks and skipped documents are free. Divided by the chunks
embedded per second over the last RATE_WINDOW_S of this pass. Phase ETAs are capped by the job's.
Progress (the job's and each phase's) never goes back within a pass: totals still growing are
estimated, and flagged so (`items_total_estimate`).

Worker threads call the mutators; readers (the batch printer, the dashboard) call `snapshot()`
whenever they like. Nothing here pushes to a reader: readers poll.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional

from kbingest.pipeline.models import METRIC_NAMES, JobStatusResponse, PhaseDetail, utcnow
from kbingest.pipeline.status import PHASES, JobPhase, JobStatus, check_transition

# Share of the overall progress each phase stands for: embedding is where the time goes.
PHASE_WEIGHTS: dict[JobPhase, float] = {
    JobPhase.LOADING: 0.05,
    JobPhase.CHUNKING: 0.05,
    JobPhase.EMBEDDING: 0.80,
    JobPhase.INDEXING: 0.10,
}
RATE_WINDOW_S = 10.0
JOB_RATE_WINDOW_S = 30.0  # the job's ETA divides by a steadier rate: a machine shared with others varies
TRANSITIONS_KEPT = 64  # status-change snapshots kept for pollers (a pass makes about ten)


def _check_metric(key: str) -> None:
    if key not in METRIC_NAMES:  # JobMetrics is the one list of names: a typo fails loudly
        raise KeyError(f"unknown metric {key!r}: declare it in pipeline/models.py JobMetrics")


@dataclass
class _PhaseState:
    name: JobPhase
    status: JobStatus = JobStatus.PENDING
    processed: int = 0
    total: int = 0
    total_final: bool = False  # no more items will be added
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    error: Optional[str] = None
    run_seconds: float = 0.0  # time spent running, across pauses
    running_since: Optional[float] = None
    worked: int = 0  # items processed with work (not reused, not skipped): what the rate counts
    samples: deque = field(default_factory=lambda: deque(maxlen=256))  # (time, worked)
    busy_seconds: float = 0.0  # time the phase's own work took (its commits), apart from waiting for input
    busy_items: int = 0  # the items of that work
    last_frac: float = 0.0  # the progress last published in this pass: never shown lower

    def elapsed(self, now: float) -> float:
        return self.run_seconds + ((now - self.running_since) if self.running_since is not None else 0.0)

    def rate(self, now: float, window: float = RATE_WINDOW_S) -> Optional[float]:
        if not self.samples:
            return None
        t0, n0 = self.samples[0]
        for t, n in self.samples:
            if now - t <= window:
                t0, n0 = t, n
                break
        dt = now - t0
        if dt < 0.5:
            el = self.elapsed(now)
            return (self.worked / el) if el > 0.5 and self.worked else None
        return max(0.0, (self.worked - n0) / dt)


class PhaseTracker:
    """Thread-safe tracker of one job's four phases and its overall status."""

    def __init__(
        self,
        job_id: str,
        kb_id: str,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.job_id = job_id
        self.kb_id = kb_id
        self._clock = clock
        self._wall = wallclock
        self._lock = threading.Lock()
        self._phases: dict[JobPhase, _PhaseState] = {p: _PhaseState(p) for p in PHASES}
        self._status = JobStatus.PENDING
        self._message = "waiting to start"
        self._error: Optional[str] = None
        self._metrics: dict[str, Any] = {}
        self._started_at: Optional[datetime] = None
        self._completed_at: Optional[datetime] = None
        self._progress_floor = 0.0
        self._failed_phase: Optional[JobPhase] = None  # the phase a failed job failed in: its job-level phase
        self._version = 0  # bumped on every change: readers can tell cheaply whether anything moved
        # a snapshot at every change of the job's or a phase's status, numbered: a poller that looks
        # less often than they come (a fast unchanged run) still sees each one (`snapshots_since`)
        self._transitions: deque[tuple[int, JobStatusResponse]] = deque(maxlen=TRANSITIONS_KEPT)
        self._transition_seq = 0
        self._reset_work()

    def _reset_work(self) -> None:
        """This pass's bytes to chunk (docs/eta.md): listed, settled (chunked, skipped or failed),
        and those chunked with the chunks they made (the chunks per byte seen so far)."""
        self._bytes_listed = 0
        self._bytes_settled = 0
        self._bytes_chunked = 0
        self._chunks_from_bytes = 0

    # ---- restoring --------------------------------------------------------------------------
    @classmethod
    def from_snapshot(cls, snap: JobStatusResponse, **kw: Any) -> "PhaseTracker":
        t = cls(snap.job_id, snap.kb_id, **kw)
        t._status = snap.status
        t._message = snap.message
        t._error = snap.error
        t._metrics = dict(snap.metrics)
        t._started_at = snap.started_at
        t._completed_at = snap.completed_at
        t._progress_floor = snap.progress
        if snap.status == JobStatus.FAILED and snap.phase != JobPhase.COMPLETED:
            t._failed_phase = snap.phase
        for d in snap.phase_details:
            st = t._phases[JobPhase(d.name)]
            st.status = d.status
            st.processed, st.total = d.items_processed, d.items_total
            st.started_at, st.completed_at, st.error = d.started_at, d.completed_at, d.error
            st.run_seconds = d.duration_seconds or 0.0
        return t

    # ---- job level --------------------------------------------------------------------------
    @property
    def status(self) -> JobStatus:
        return self._status

    def set_status(self, status: JobStatus, message: Optional[str] = None, error: Optional[str] = None) -> None:
        with self._lock:
            self._status = check_transition(self._status, status)
            now = self._wall()
            if status == JobStatus.RUNNING:
                if self._started_at is None:
                    self._started_at = now
                self._completed_at = None
                self._error = None
                self._failed_phase = None
            elif status.is_terminal:
                self._completed_at = now
            if message is not None:
                self._message = message
            if error is not None:
                self._error = error
            self._stop_phases_for(status)
            self._version += 1
            self._note_transition()

    def _stop_phases_for(self, status: JobStatus) -> None:
        """When the job stops, its running phases stop with it (pending ones stay pending)."""
        if status in (JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED):
            target = JobStatus.CANCELLED if status == JobStatus.CANCELLED else JobStatus.PAUSED
            for st in self._phases.values():
                if st.status == JobStatus.RUNNING or (
                    status == JobStatus.CANCELLED and st.status in (JobStatus.PENDING, JobStatus.PAUSED)
                ):
                    self._phase_to(st, target)

    def set_message(self, message: str) -> None:
        with self._lock:
            if self._message != message:  # unchanged: no new version, so nothing is rewritten
                self._message = message
                self._version += 1

    def set_metric(self, key: str, value: Any) -> None:
        _check_metric(key)
        with self._lock:
            if key not in self._metrics or self._metrics[key] != value:
                self._metrics[key] = value
                self._version += 1

    def incr_metric(self, key: str, n: int = 1, this_pass: bool = False) -> None:
        """Add n to a job total; this_pass: to the "this pass" block only (metrics["this_pass"])."""
        _check_metric(key)
        with self._lock:
            if this_pass:
                block = dict(self._metrics.get("this_pass") or {})
                block[key] = block.get(key, 0) + n
                self._metrics["this_pass"] = block
            else:
                self._metrics[key] = self._metrics.get(key, 0) + n
            self._version += 1

    def drop_metric(self, key: str) -> None:
        """Leave a metric out of the status again (e.g. the queue position once the job runs)."""
        with self._lock:
            if self._metrics.pop(key, None) is not None:
                self._version += 1

    # ---- phase level ------------------------------------------------------------------------
    def _phase_to(self, st: _PhaseState, status: JobStatus) -> None:
        if st.status == status:
            return
        check_transition(st.status, status, what=f"phase {st.name.value}")
        now, wall = self._clock(), self._wall()
        if st.running_since is not None:
            st.run_seconds += now - st.running_since
            st.running_since = None
        if status == JobStatus.RUNNING:
            st.running_since = now
            if st.started_at is None:
                st.started_at = wall
            st.completed_at = None
            st.error = None
        elif status.is_terminal:
            st.completed_at = wall
        st.status = status

    def reset_phases(self, keep_progress: bool = True) -> None:
        """Start a new pass over the sources (a resume, a retry, a watch burst): phase counts restart.

        A resume keeps the overall progress floor, so progress never goes backwards; a new pass
        of work (a retry or a watch burst) starts from 0.
        """
        with self._lock:
            for p in PHASES:
                self._phases[p] = _PhaseState(p)
            if not keep_progress:
                self._progress_floor = 0.0
            self._reset_work()
            self._version += 1

    def start_phase(self, phase: JobPhase) -> None:
        with self._lock:
            st = self._phases[phase]
            if st.status != JobStatus.RUNNING:
                self._phase_to(st, JobStatus.RUNNING)
                st.samples.append((self._clock(), st.worked))
                self._version += 1
                self._note_transition()

    def add_total(self, phase: JobPhase, n: int = 1) -> None:
        """n more items (fewer, when n < 0: items dropped on the way), never below none."""
        with self._lock:
            st = self._phases[phase]
            st.total = max(0, st.total + n)
            self._version += 1

    def finish_total(self, phase: JobPhase) -> None:
        """No more items will be added to this phase."""
        with self._lock:
            self._phases[phase].total_final = True
            self._version += 1

    def advance(self, phase: JobPhase, n: int = 1, free: bool = False, seconds: Optional[float] = None) -> None:
        """n more items done; free: done without work (a reused vector, a skipped document), so
        they count in progress and not in the rate; seconds: how long their work took (the indexer's
        commit), the phase's own speed apart from the time it waited for its input."""
        with self._lock:
            st = self._phases[phase]
            st.processed += n
            if st.processed > st.total:
                st.total = st.processed
            if not free:
                st.worked += n
                st.samples.append((self._clock(), st.worked))
                if seconds is not None and n > 0:
                    st.busy_seconds += max(0.0, seconds)
                    st.busy_items += n
            self._version += 1

    def add_bytes(self, n: int) -> None:
        """n more bytes of documents to read and chunk in this pass."""
        with self._lock:
            self._bytes_listed += max(0, n)
            self._version += 1

    def settle_bytes(self, n: int, chunks: Optional[int] = None) -> None:
        """A document's n bytes need no chunking any more: chunked into `chunks` chunks, or (None)
        skipped, failed or left."""
        with self._lock:
            self._bytes_settled += max(0, n)
            if chunks is not None and n > 0:
                self._bytes_chunked += n
                self._chunks_from_bytes += chunks
            self._version += 1

    def complete_phase(self, phase: JobPhase) -> None:
        with self._lock:
            st = self._phases[phase]
            if st.status == JobStatus.PENDING:
                self._phase_to(st, JobStatus.RUNNING)
            st.total_final = True
            st.total = max(st.total, st.processed)
            changed = st.status != JobStatus.COMPLETED
            self._phase_to(st, JobStatus.COMPLETED)
            self._version += 1
            if changed:
                self._note_transition()

    def skip_phase(self, phase: JobPhase) -> None:
        """The phase is not run by design (a dry run): `skipped`, done for progress."""
        with self._lock:
            st = self._phases[phase]
            if st.status == JobStatus.PENDING:
                self._phase_to(st, JobStatus.SKIPPED)
                self._version += 1
                self._note_transition()

    def fail_phase(self, phase: JobPhase, error: str) -> None:
        """The phase failed. One that had completed already keeps its status (its work is done) and
        gets the error: a failure after it (a final optimize, say) is the job's."""
        with self._lock:
            st = self._phases[phase]
            if st.status in (JobStatus.PENDING, JobStatus.PAUSED):
                self._phase_to(st, JobStatus.RUNNING)
            if not st.status.is_terminal:
                self._phase_to(st, JobStatus.FAILED)
            st.error = error
            self._failed_phase = phase
            self._version += 1
            self._note_transition()

    def set_phase_error(self, phase: JobPhase, error: Optional[str]) -> None:
        """Error text on a phase that goes on (e.g. 'N documents failed')."""
        with self._lock:
            self._phases[phase].error = error
            self._version += 1

    def phase_status(self, phase: JobPhase) -> JobStatus:
        return self._phases[phase].status

    @property
    def version(self) -> int:
        return self._version

    # ---- reading ----------------------------------------------------------------------------
    @staticmethod
    def _done_share(st: _PhaseState) -> float:
        if st.status.is_done:
            return 1.0
        return min(1.0, st.processed / st.total) if st.total > 0 else 0.0

    def _estimated_totals(self) -> dict[JobPhase, Optional[float]]:
        """Each phase's expected item count. A total that still grows is scaled by the share of
        the input that has reached the phase so far (chunking counts documents loaded); embedding
        and indexing count the chunks known plus those the bytes not chunked yet will make."""
        ph = self._phases
        reached = {
            JobPhase.LOADING: 1.0,
            JobPhase.CHUNKING: self._done_share(ph[JobPhase.LOADING]),
        }
        reached[JobPhase.EMBEDDING] = reached[JobPhase.CHUNKING] * self._done_share(ph[JobPhase.CHUNKING])
        reached[JobPhase.INDEXING] = reached[JobPhase.EMBEDDING]
        coming = self._chunks_to_come()
        out: dict[JobPhase, Optional[float]] = {}
        for p in PHASES:
            st = ph[p]
            if st.status.is_done or st.total_final:
                out[p] = float(st.total)
            elif p in (JobPhase.EMBEDDING, JobPhase.INDEXING) and coming is not None:
                out[p] = max(float(st.total) + coming, float(st.processed))
            elif reached[p] > 0 and st.total > 0:
                out[p] = max(st.total / reached[p], float(st.processed))
            else:
                out[p] = None
        return out

    def _chunks_to_come(self) -> Optional[float]:
        """Chunks the documents not chunked yet will make, at the chunks per byte seen so far in this
        pass (0 once chunking is done; None while no document has been chunked)."""
        if self._phases[JobPhase.CHUNKING].status.is_done or self._phases[JobPhase.EMBEDDING].total_final:
            return 0.0
        if not self._bytes_listed:
            return None  # no listing: what is still to come is unknown
        left = max(0, self._bytes_listed - self._bytes_settled)
        if not left:
            return 0.0
        if not self._bytes_chunked:
            return None
        return left * self._chunks_from_bytes / self._bytes_chunked

    def _remaining_work(self) -> Optional[float]:
        """Chunks still to embed in this pass (docs/eta.md); None while unknown."""
        emb = self._phases[JobPhase.EMBEDDING]
        if emb.status.is_done:
            return 0.0
        coming = self._chunks_to_come()
        if coming is None:  # no bytes to go by: the chunks known, scaled by the documents chunked so far
            est = self._estimated_totals()[JobPhase.EMBEDDING]
            return None if est is None else max(0.0, est - emb.processed)
        return max(0, emb.total - emb.processed) + coming

    def _job_eta(self, now: float) -> Optional[float]:
        """Seconds left of a running job: chunks still to embed over the embedding rate of this
        pass; once all is embedded, the indexer's rows left at its commits' own speed."""
        if self._status != JobStatus.RUNNING or all(st.status.is_done for st in self._phases.values()):
            return None  # not running, or between a watch job's bursts: nothing to promise
        emb, idx = self._phases[JobPhase.EMBEDDING], self._phases[JobPhase.INDEXING]
        if emb.status == JobStatus.SKIPPED:  # a dry run: chunking is the last phase
            ch = self._phases[JobPhase.CHUNKING]
            est = self._estimated_totals()[JobPhase.CHUNKING]
            rate = ch.rate(now) if ch.status == JobStatus.RUNNING else None
            if ch.status.is_done:
                return 0.0
            return max(0.0, (est - ch.processed) / rate) if rate and est is not None else None
        work = self._remaining_work()
        if work is None:
            return None
        if work > 0:
            rate = emb.rate(now, JOB_RATE_WINDOW_S) if emb.status == JobStatus.RUNNING else None
            return work / rate if rate else None
        if idx.status.is_done:
            return 0.0
        left = max(0, idx.total - idx.processed)
        if not left:
            return 0.0
        if idx.busy_items:  # the commits' own speed: its rate so far was embedding's, which it waited for
            return left * idx.busy_seconds / idx.busy_items
        rate = idx.rate(now) if idx.status == JobStatus.RUNNING else None
        return (left / rate) if rate else None

    def _work_progress(self) -> Optional[float]:
        """The job's share done in the ETA's unit (chunks embedded over chunks to embed), or None."""
        emb = self._phases[JobPhase.EMBEDDING]
        if emb.status == JobStatus.SKIPPED or emb.status == JobStatus.COMPLETED:
            return None
        work = self._remaining_work()
        if work is None or emb.processed + work <= 0:
            return None
        return emb.processed / (emb.processed + work)

    def _note_transition(self) -> None:
        """Called with the lock held, after a status change."""
        self._transition_seq += 1
        self._transitions.append((self._transition_seq, self._snapshot_locked()))

    def snapshots_since(self, seq: int) -> tuple[list[JobStatusResponse], int]:
        """The snapshots taken at the status changes numbered after `seq` (0: all kept), oldest first,
        then the snapshot of now; and the number to ask with next time. A poller that prints each
        misses no status or phase change however fast they came, and never goes back in time."""
        with self._lock:
            out = [snap for n, snap in self._transitions if n > seq]
            out.append(self._snapshot_locked())
            return out, self._transition_seq

    def snapshot(self) -> JobStatusResponse:
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> JobStatusResponse:
        now = self._clock()
        details = []
        overall = 0.0
        current = JobPhase.COMPLETED
        totals = self._estimated_totals()
        job_eta = self._job_eta(now)
        for p in PHASES:
            st = self._phases[p]
            est = totals[p]
            frac = 1.0 if st.status.is_done else (min(1.0, st.processed / est) if est else 0.0)
            if st.status != JobStatus.SKIPPED:
                frac = max(frac, st.last_frac)  # within a pass a bar never goes back
                st.last_frac = frac
            overall += PHASE_WEIGHTS[p] * frac
            if current == JobPhase.COMPLETED and not st.status.is_done:
                current = p
            rate = st.rate(now) if st.status == JobStatus.RUNNING else None
            eta = None
            if rate and rate > 0 and est is not None and job_eta is not None:
                eta = min(job_eta, max(0.0, (est - st.processed) / rate))  # none beyond the job's
            estimate = None
            if not (st.status.is_done or st.total_final) and est is not None and est > st.total:
                # the items beside the bar: processed / estimate is the bar's fraction
                estimate = max(st.total, int(round(st.processed / frac)) if frac > 0 else int(round(est)))
            details.append(
                PhaseDetail(
                    name=p.value,
                    status=st.status,
                    progress=(
                        100
                        if st.status == JobStatus.COMPLETED
                        else 0
                        if st.status == JobStatus.SKIPPED
                        else int(min(100, max(0, frac * 100)))
                    ),
                    items_processed=st.processed,
                    items_total=st.total,
                    items_total_estimate=estimate,
                    started_at=st.started_at,
                    completed_at=st.completed_at,
                    error=st.error,
                    rate=round(rate, 3) if rate is not None else None,
                    eta_seconds=round(eta, 1) if eta is not None else None,
                    duration_seconds=round(st.elapsed(now), 3) if st.started_at else None,
                )
            )
        if self._status == JobStatus.FAILED and self._failed_phase is not None:
            current = self._failed_phase  # not the earliest phase it stopped, but the one that failed
        work = self._work_progress()
        if work is not None:
            overall = work
        progress = 100.0 if current == JobPhase.COMPLETED else min(99.9, overall * 100)
        self._progress_floor = max(self._progress_floor, progress)
        return JobStatusResponse(
            job_id=self.job_id,
            kb_id=self.kb_id,
            status=self._status,
            phase=current,
            progress=round(self._progress_floor, 2),
            message=self._message,
            error=self._error,
            metrics=dict(self._metrics),
            started_at=self._started_at,
            completed_at=self._completed_at,
            phase_details=details,
            eta_seconds=round(job_eta, 1) if job_eta is not None else None,
        )
