"""How the CLI words a status for a person: durations, counts, estimates, the metrics as sentences
(never a Python dict), the jobs table, and "did you mean" for a mistyped word.

Only formatting: no engine calls. `kbingest status --json` is the one for scripts.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional

from kbingest.pipeline.models import JobStatusResponse, PhaseDetail


def duration(seconds: Optional[float]) -> str:
    """12s, 4m05s, 2h03m; '' for None."""
    if seconds is None:
        return ""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def count(n: Optional[int]) -> str:
    return "" if n is None else f"{n:,}"


def items(p: PhaseDetail) -> str:
    """'19/19', or '19/~105' while the total is an estimate (items/bar agree: 19/105 is the bar)."""
    if p.items_total_estimate is not None:
        return f"{count(p.items_processed)}/~{count(p.items_total_estimate)}"
    return f"{count(p.items_processed)}/{count(p.items_total)}"


def size(n: Optional[int]) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def eta(seconds: Optional[float]) -> str:
    return f"ETA {duration(seconds)}" if seconds is not None else ""


def progress_line(s: JobStatusResponse) -> str:
    """The one line `--batch` rewrites on a terminal's stderr: the job's ETA first, then its phase."""
    cur = next((p for p in s.phase_details if p.name == s.phase), None)
    parts = [f"{s.status.value:9}", f"{s.progress:5.1f}%"]
    if s.eta_seconds is not None:
        parts.append(eta(s.eta_seconds))
    parts.append(s.phase.value)
    if cur is not None:
        parts.append(items(cur))
        if cur.rate:
            parts.append(f"{cur.rate:.1f}/s")
    return " ".join(parts)


# ---- the metrics, in words ------------------------------------------------------------------------
_SHOWN_ELSEWHERE = {
    "document_errors",
    "document_warning_list",
    "this_pass",
    "dry_run",
    "documents_by_format",
    "queue_docs",
    "queue_chunked",
    "queue_embedded",
    "in_flight",
    "commit_batch",
    "slowest_document",
}
_GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "documents",
        [
            ("documents_found", "found"),
            ("documents_skipped", "unchanged"),
            ("documents_added", "added"),
            ("documents_replaced", "replaced"),
            ("documents_removed", "removed"),
            ("documents_failed", "failed"),
            ("documents_not_processed", "not processed"),
            ("documents_indexed", "indexed"),
            ("files_ignored", "files ignored"),
        ],
    ),
    (
        "chunks",
        [
            ("chunks_created", "created"),
            ("chunks_embedded", "embedded"),
            ("chunks_reused", "reused"),
            ("chunks_indexed", "indexed"),
            ("commits", "commits"),
            ("optimizes", "optimizes"),
        ],
    ),
]
_QUEUES = [
    ("queue_docs", "loaded → chunking"),
    ("queue_chunked", "chunked → embedding"),
    ("queue_embedded", "embedded → indexing"),
]


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return count(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_plain(x) for x in v)
    return str(v)


def metric_lines(m: dict[str, Any]) -> list[str]:
    """The metrics as a person reads them: grouped counts, the queues, what is in flight."""
    out: list[str] = []
    used: set[str] = set(_SHOWN_ELSEWHERE)
    for title, keys in _GROUPS:
        parts = [f"{count(m[k])} {word}" for k, word in keys if isinstance(m.get(k), int) and m.get(k)]
        used.update(k for k, _ in keys)
        if parts:
            out.append(f"{title}: " + ", ".join(parts))
    by_format = m.get("documents_by_format") or {}
    if by_format:
        out.append("formats: " + ", ".join(f"{count(n)} {f}" for f, n in sorted(by_format.items())))
    queues = []
    for key, name in _QUEUES:
        g = m.get(key)
        if isinstance(g, dict):
            q = f"{name} {g.get('depth', 0)}/{g.get('capacity', 0)}"
            if g.get("full_s"):
                q += f" (full {duration(g['full_s'])})"
            elif g.get("empty_s"):
                q += f" (empty {duration(g['empty_s'])})"
            queues.append(q)
    if queues:
        out.append("queues: " + "; ".join(queues))
    for phase, docs in (m.get("in_flight") or {}).items():
        named = ", ".join(
            d.get("path", "") + (f" ({size(d.get('size'))})" if d.get("size") is not None else "") for d in docs
        )
        out.append(f"in {phase}: {named}")
    cb = m.get("commit_batch")
    if isinstance(cb, dict) and (cb.get("documents") or cb.get("chunks")):
        out.append(f"next commit: {count(cb.get('documents'))} document(s), {count(cb.get('chunks'))} chunks")
    slow = m.get("slowest_document")
    if isinstance(slow, dict):
        out.append(f"slowest document: {slow.get('path')} ({slow.get('phase')}, {slow.get('seconds'):.1f}s)")
    rest = [(k, v) for k, v in sorted(m.items()) if k not in used and v is not None and v != {} and v != []]
    for k, v in rest:
        out.append(f"{k.replace('_', ' ')}: {_plain(v)}")
    return out


def this_pass_line(block: Optional[dict[str, int]]) -> Optional[str]:
    if not block:
        return None
    return "this pass: " + ", ".join(f"{k.replace('_', ' ')} {count(v)}" for k, v in sorted(block.items()))


def phase_line(p: PhaseDetail) -> str:
    rate = f"{p.rate:.1f}/s" if p.rate else ""
    dur = duration(p.duration_seconds)
    cells = [
        f"{p.name:9}",
        f"{p.status.value:9}",
        f"{p.progress:3d}%",
        f"{items(p):>15}",
        f"{rate:>9}",
        f"{eta(p.eta_seconds):>10}",
        f"{dur:>7}",
    ]
    return "  ".join(cells).rstrip()


# ---- the jobs table -------------------------------------------------------------------------------
JOBS_HEADER = ("JOB", "KB", "STATUS", "PROGRESS", "ETA", "CREATED")


def jobs_table(rows: Iterable[tuple[str, JobStatusResponse, str]]) -> list[str]:
    """A header row, then one row per job: job id, knowledge base, status, progress, ETA, created."""
    cells = [JOBS_HEADER] + [
        (job_id, s.kb_id, s.status.value, f"{s.progress:.1f}%", duration(s.eta_seconds) or "-", created)
        for job_id, s, created in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(JOBS_HEADER))]
    return [
        "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in cells
    ]


# ---- did you mean ---------------------------------------------------------------------------------
def did_you_mean(word: str, choices: Iterable[str]) -> Optional[str]:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None
