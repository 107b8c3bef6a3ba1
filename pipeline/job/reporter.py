"""The Reporter a job gives its stages: progress onto the PhaseTracker, document errors and warnings
kept in order and published in the status (the first MAX_ERRORS_LISTED, and the count).

Every call costs the same however many documents failed before: errors are counted per phase and
only the first few are listed, so 20,000 failing documents take 20,000 times one error's time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Optional

from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.load.loading import within
from kbingest.pipeline.models import DocumentError, utcnow
from kbingest.pipeline.status import JobPhase
from kbingest.pipeline.textsafe import fs_text

log = logging.getLogger("kbingest.engine")

MAX_ERRORS_LISTED = 100  # document errors (and warnings) the status lists; `documents_failed` counts all
PHASE_ERRORS_LISTED = 10  # documents named in a phase's error text
# What a walk of the sources finds: a full pass's count is the job's (the previous full pass's is
# replaced); a watch burst walks a few paths, and counts them in its "this_pass" block only.
WALK_METRICS = ("documents_found", "documents_skipped", "files_ignored", "documents_without_text")
# The job totals every status carries from its first pass on (0 until counted): scripts read them.
JOB_TOTALS = (
    "documents_added",
    "documents_replaced",
    "documents_removed",
    "chunks_created",
    "chunks_embedded",
    "chunks_indexed",
    "commits",
    "document_warnings",
)


class TrackerReporter:
    def __init__(
        self,
        tracker: PhaseTracker,
        errors: Iterable[DocumentError] = (),
        checkpoint: Optional[Callable[[], None]] = None,
    ) -> None:
        self.t = tracker
        self._checkpoint = checkpoint or (lambda: None)
        self._lock = threading.Lock()
        self._errors: list[DocumentError] = list(errors)
        self._warnings: list[dict[str, str]] = []
        self._full_pass = True
        self._skip_credit = 0  # documents this job wrote in earlier passes: skipped now, they are not "unchanged"
        self._by_format: dict[str, int] = dict(tracker.snapshot().m.documents_by_format or {})
        self._recount()

    # ---- progress ---------------------------------------------------------------------------
    def phase_started(self, phase: JobPhase) -> None:
        self.t.start_phase(phase)

    def add_total(self, phase: JobPhase, n: int = 1) -> None:
        self.t.add_total(phase, n)

    def total_known(self, phase: JobPhase) -> None:
        self.t.finish_total(phase)

    def progress(self, phase: JobPhase, n: int = 1, free: bool = False, seconds: Optional[float] = None) -> None:
        self.t.advance(phase, n, free, seconds)

    def add_bytes(self, n: int) -> None:
        self.t.add_bytes(n)

    def settle_bytes(self, n: int, chunks: Optional[int] = None) -> None:
        self.t.settle_bytes(n, chunks)

    def phase_done(self, phase: JobPhase) -> None:
        self.t.complete_phase(phase)

    def count(self, metric: str, n: int = 1) -> None:
        """n more of a counter: in this pass's block, and in the job's totals."""
        self.t.incr_metric(metric, n, this_pass=True)
        if metric in WALK_METRICS and not self._full_pass:
            return
        if metric == "documents_skipped" and self._skip_credit:
            used = min(self._skip_credit, n)
            self._skip_credit -= used
            n -= used
        if n:
            self.t.incr_metric(metric, n)

    def found(self, fmt: str) -> None:
        """A document the walk found, of this format: counted in documents_found and by format (a full
        pass counts anew; a watch burst counts in its "this_pass" block only)."""
        self.count("documents_found")
        if self._full_pass:
            with self._lock:
                self._by_format[fmt] = self._by_format.get(fmt, 0) + 1
                self.t.set_metric("documents_by_format", dict(self._by_format))

    def set(self, metric: str, value: Any) -> None:
        self.t.set_metric(metric, value)

    def message(self, text: str) -> None:
        self.t.set_message(text)

    def checkpoint(self) -> None:
        self._checkpoint()

    # ---- errors and warnings ----------------------------------------------------------------
    @property
    def errors(self) -> list[DocumentError]:
        with self._lock:
            return list(self._errors)

    def doc_error(self, path: str, phase: JobPhase, kind: str, message: str, attempts: int = 1) -> None:
        err = DocumentError(
            path=fs_text(path), phase=phase.value, kind=kind, message=message, attempts=attempts, at=utcnow()
        )
        with self._lock:
            self._errors.append(err)
            self.t.set_metric("documents_failed", len(self._errors))
            if len(self._errors) <= MAX_ERRORS_LISTED:
                self._publish_list()
            self._phase_counts[phase] = self._phase_counts.get(phase, 0) + 1
            named = self._phase_named.setdefault(phase, [])
            if len(named) < PHASE_ERRORS_LISTED:
                named.append(err)
            self._set_phase_error(phase)

    def _set_phase_error(self, phase: JobPhase) -> None:
        n, named = self._phase_counts.get(phase, 0), self._phase_named.get(phase, [])
        if not n:
            self.t.set_phase_error(phase, None)
            return
        listed = "; ".join(f"{e.path} ({e.kind})" for e in named)
        more = f"; and {n - len(named)} more" if n > len(named) else ""
        self.t.set_phase_error(phase, f"{n} document(s) failed: {listed}{more}")

    def _publish_list(self) -> None:
        self.t.set_metric("document_errors", [e.model_dump() for e in self._errors[:MAX_ERRORS_LISTED]])

    def _recount(self) -> None:
        self._phase_counts: dict[JobPhase, int] = {}
        self._phase_named: dict[JobPhase, list[DocumentError]] = {}
        for e in self._errors:
            p = JobPhase(e.phase)
            self._phase_counts[p] = self._phase_counts.get(p, 0) + 1
            if len(self._phase_named.setdefault(p, [])) < PHASE_ERRORS_LISTED:
                self._phase_named[p].append(e)

    def forget(self, scope: Optional[list[str]]) -> None:
        """A pass looks at these paths again (all, for None): their old errors are found again or gone."""
        marks = None if scope is None else [fs_text(p) for p in scope]
        with self._lock:
            self._errors = (
                [] if marks is None else [e for e in self._errors if not any(within(e.path, m) for m in marks)]
            )
            self._recount()
            self.t.set_metric("documents_failed", len(self._errors))
            self._publish_list()

    def warning(self, path: str, warnings: Iterable[str]) -> None:
        """A document indexed with a warning: counted, and the first few listed in the status."""
        for w in warnings:
            log.info("%s: %s", path, w)
            self.t.incr_metric("document_warnings")
            if len(self._warnings) < MAX_ERRORS_LISTED:
                self._warnings.append({"path": fs_text(path), "warning": w})
                self.t.set_metric("document_warning_list", list(self._warnings))

    def new_pass(self, full: bool = True) -> None:
        """A pass begins. The job's totals go on (a resume, retry or watch burst adds to them); the
        "this_pass" block restarts; a full pass walks every source again, so what a walk counts is
        counted anew, and the documents this job wrote before are skipped, not "unchanged".
        Warnings are of one pass."""
        m = self.t.snapshot().m
        self._full_pass = full
        if full:
            self._skip_credit = (m.documents_added or 0) + (m.documents_replaced or 0)
            for key in WALK_METRICS:
                self.t.set_metric(key, 0)
            self._by_format = {}
            self.t.set_metric("documents_by_format", {})
        for key in JOB_TOTALS:
            if getattr(m, key) is None:
                self.t.set_metric(key, 0)
        self.t.set_metric("this_pass", {})
        self._warnings = []
        self.t.set_metric("document_warning_list", [])
