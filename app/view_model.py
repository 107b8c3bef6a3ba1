"""What the dashboard shows, from snapshots and records alone: Textual-free (no widget, no app), so
that it is tested without a terminal. The App (app/dashboard.py) and the widgets render these.

A view here is duck-typed: `widgets.format.JobView` (job_id, kb, snap, errors, local,
running_elsewhere, failed_docs, status).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterable, Mapping, Optional

from kbingest.pipeline.service import printable
from kbingest.pipeline.status import JobStatus

EMBEDDERS = ("fastembed",)  # what the new-job form offers
ENV_TEST_EMBEDDER = "KBINGEST_OFFER_FAKE_EMBEDDER"  # set (tests): the form offers the test embedder `fake` too


def offered_embedders(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The embedders the new-job form offers: the test embedder `fake` only when tests ask for it."""
    return EMBEDDERS + (("fake",) if environ.get(ENV_TEST_EMBEDDER) else ())


def status_text(status: str, message: str) -> str:
    """A status and its message, without the status said twice ("completed: completed: ...")."""
    msg = message or ""
    if msg == status:
        msg = ""
    elif msg.startswith(status + ":"):
        msg = msg[len(status) + 1 :].lstrip()
    return status + (f": {msg}" if msg else "")


def fit_job_id(job_id: str, kb: str, width: int) -> str:
    """A job id in `width` cells, never cut in the middle: the knowledge base's name in front is cut
    first ("do…-20260504-093000-a1b2c3"), then the id's start; its unique end always stays."""
    if width <= 0:
        return ""
    if len(job_id) <= width:
        return job_id
    if width == 1:
        return job_id[-1]
    tail = job_id[len(kb) :] if kb and job_id.startswith(kb) else ""
    if tail and len(tail) + 2 <= width:  # at least one letter of the name, then "…"
        return job_id[: width - len(tail) - 1] + "…" + tail
    return "…" + job_id[len(job_id) - (width - 1) :]


def where_running(v: Any) -> str:
    """Where the job runs, for the job header: here, in another process (its heartbeat's age), or ""."""
    if v.local:
        return "running here"
    if not v.running_elsewhere:
        return ""
    m = v.snap.metrics
    if m.get("not_responding"):
        return "not responding in another process"
    age = m.get("heartbeat_age_seconds")
    return "running in another process" + (f", heartbeat {float(age):.0f} s ago" if age is not None else "")


def resume_refusal(v: Any, live_id: Optional[str]) -> Optional[str]:
    """Why r does nothing on this job, in words (None: r applies, or there is nothing to say)."""
    if v is None:
        return None
    if v.running_elsewhere and v.status in (JobStatus.RUNNING, JobStatus.PENDING):
        return (
            f"{v.job_id} runs in another process (another shell or `kbingest serve`), not here: "
            "p pauses it there, then r resumes it here"
        )
    if v.local:
        return f"{v.job_id} is running here already"
    return None


def job_eta(snap: Any) -> Optional[float]:
    """The job's ETA (seconds) while it runs, from the snapshot's top-level eta_seconds."""
    eta = getattr(snap, "eta_seconds", None)
    return float(eta) if eta is not None and snap.status == JobStatus.RUNNING else None


def hit_label(hit: Any) -> str:
    """A search hit's document: its path relative to the job's source (SearchHit.path), a URI
    whole, else the file's name."""
    path = getattr(hit, "path", "") or ""
    if path:
        return path
    source = str(hit.source)
    return source if "://" in source else (os.path.basename(source) or source)


def summary_counts(v: Any) -> str:
    """The job header's second line: documents found (by format), added, changed, unchanged, removed,
    failed, with warnings; chunks indexed and commits."""
    s = v.snap
    m = s.metrics
    parts = []
    if "documents_found" in m:
        by_format = m.get("documents_by_format") or {}
        formats = f" ({', '.join(f'{n} {f}' for f, n in sorted(by_format.items()))})" if len(by_format) > 1 else ""
        parts.append(f"{m.get('documents_found', 0)} docs found{formats}")
        for key, label in (
            ("documents_added", "added"),
            ("documents_replaced", "changed"),
            ("documents_skipped", "unchanged"),
            ("documents_removed", "removed"),
        ):
            if m.get(key):
                parts.append(f"{m[key]} {label}")
    if v.failed_docs:
        parts.append(f"{v.failed_docs} failed")
    if m.get("document_warnings"):
        parts.append(f"{m['document_warnings']} with warnings")
    chunks = []
    if "chunks_indexed" in m:
        commits = int(m.get("commits") or 0)
        chunks.append(f"{m.get('chunks_indexed', 0)} chunks indexed in {commits} commit{'s' if commits != 1 else ''}")
    line = ", ".join(parts) + (" · " if parts and chunks else "") + ", ".join(chunks)
    return line


# ---- which actions apply to a job (the footer greys the others out) ----------------------------
def can_pause(v: Any) -> bool:
    """p: a job running or waiting, here or in another process."""
    return v is not None and (v.local or v.running_elsewhere) and v.status in (JobStatus.RUNNING, JobStatus.PENDING)


def can_resume(v: Any) -> bool:
    """r: a job at rest (paused, interrupted, failed, pending), or a completed one with failed documents."""
    if v is None or v.local or v.running_elsewhere:
        return False
    s = v.status
    return s in (JobStatus.PAUSED, JobStatus.FAILED, JobStatus.PENDING) or (
        s == JobStatus.COMPLETED and v.failed_docs > 0
    )


def can_drain(v: Any, drain_supported: bool) -> bool:
    """d: a running job, where the service can drain."""
    return v is not None and drain_supported and v.status == JobStatus.RUNNING


def can_cancel(v: Any) -> bool:
    """c: any job that has not ended completed or cancelled."""
    return v is not None and v.status not in (JobStatus.COMPLETED, JobStatus.CANCELLED)


def action_state(v: Any, drain_supported: bool) -> tuple[bool, bool, bool, bool]:
    """(pause, resume, cancel, drain) for the selected job: the footer is refreshed when it changes."""
    return can_pause(v), can_resume(v), can_cancel(v), can_drain(v, drain_supported)


# ---- the job list's title ---------------------------------------------------------------------------
def jobs_title(
    base: str,
    statuses: Iterable[str],
    filter_text: str,
    shown: Optional[int],
    sort_label: Optional[str],
    frozen: bool,
) -> str:
    """The job list's title: the home, the jobs counted by status (most first), the filter and how many
    it shows, the sort when not the default one, and a frozen view said as such."""
    counts = Counter(statuses)
    parts = [base]
    if counts:
        parts.append(", ".join(f"{n} {st}" for st, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    if filter_text:
        parts.append(f"filter {filter_text!r}: {shown if shown is not None else '?'} shown")
    if sort_label is not None:
        parts.append(f"sorted {sort_label}")
    if frozen:
        parts.append("VIEW FROZEN, the jobs go on: f follows live")
    return printable(" · ".join(parts))


def errors_title(failed_docs: int) -> str:
    """The errors pane's title: how many documents failed."""
    n = failed_docs
    return f"errors ({n} document{'s' if n != 1 else ''})" if n else "errors"


def cancel_outcome(job_id: str, outcome: str) -> str:
    """What the service's answer to cancelling a job run elsewhere means, in words."""
    return {"requested": f"asked the process running {job_id} to cancel it", "cancelled": f"{job_id} cancelled"}.get(
        outcome, f"{job_id} was not cancelled: it had ended"
    )


def applies(action: str, v: Any, drain_supported: bool) -> bool:
    """Whether an action of the bindings applies to the selected job (the others do everywhere)."""
    rules = {"pause": can_pause, "resume": can_resume, "cancel": can_cancel}
    if action == "drain":
        return can_drain(v, drain_supported)
    rule = rules.get(action)
    return True if rule is None else rule(v)
