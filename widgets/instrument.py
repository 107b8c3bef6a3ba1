"""The dashboard's instrument panes, from the status snapshot only: rate history (a sparkline per
phase, sampled in the UI), queue gauges with "starved"/"blocked" flags, and the documents in flight.

RateHistory is fed the snapshots the dashboard already polls (no extra reads of the engine); it keeps
one sample per SAMPLE_S per job and phase, HISTORY samples at most (a few minutes).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Optional

from rich.text import Text
from textual.widgets import Static

from kbingest.pipeline.models import JobStatusResponse
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.format import fit, fmt_duration, safe, theme_style

SAMPLE_S = 2.0  # one rate sample per phase every 2 s
HISTORY = 150  # samples kept per phase: the last 5 minutes
STARVED_S = 5.0  # an input queue empty (or an output queue full) this long is flagged
BLOCKS = "▁▂▃▄▅▆▇█"
# (queue metric, writer phase, reader phase)
QUEUES: tuple[tuple[str, str, str], ...] = (
    ("queue_docs", "loading", "chunking"),
    ("queue_chunked", "chunking", "embedding"),
    ("queue_embedded", "embedding", "indexing"),
)
QUEUE_LABEL = {"queue_docs": "docs", "queue_chunked": "chunked", "queue_embedded": "embedded"}


def sparkline(values: list[float], width: int) -> str:
    """The last values as block characters, `width` cells (older samples averaged in bins)."""
    if width <= 0 or not values:
        return ""
    if len(values) > width:  # bins of equal size, the newest at the right
        per = len(values) / width
        values = [
            sum(b) / len(b)
            for b in (values[int(i * per) : max(int((i + 1) * per), int(i * per) + 1)] for i in range(width))
        ]
    top = max(values)
    if top <= 0:
        return BLOCKS[0] * len(values)
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int(v / top * (len(BLOCKS) - 1) + 0.5))] for v in values)


class RateHistory:
    """Items/s per job and phase over the last minutes, from the snapshots the UI sees."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], deque[float]] = {}
        self._last: dict[str, float] = {}

    def record(self, job_id: str, snap: JobStatusResponse, now: float) -> None:
        if snap.status != JobStatus.RUNNING:
            return
        if now - self._last.get(job_id, float("-inf")) < SAMPLE_S:
            return
        self._last[job_id] = now
        for d in snap.phase_details:
            if d.status == JobStatus.RUNNING:
                self.add(job_id, d.name, float(d.rate or 0.0))

    def add(self, job_id: str, phase: str, rate: float) -> None:
        self._series.setdefault((job_id, phase), deque(maxlen=HISTORY)).append(max(0.0, rate))

    def of(self, job_id: Optional[str], phase: str) -> list[float]:
        return list(self._series.get((job_id or "", phase), ()))

    def forget(self, job_id: str) -> None:
        for key in [k for k in self._series if k[0] == job_id]:
            del self._series[key]
        self._last.pop(job_id, None)


def trend(values: list[float]) -> str:
    """ "slowing" when the last quarter runs at under half the rate of the best earlier stretch."""
    if len(values) < 8:
        return ""
    q = max(2, len(values) // 4)
    recent = sum(values[-q:]) / q
    earlier = values[:-q]
    best = max(sum(earlier[i : i + q]) / q for i in range(0, len(earlier) - q + 1)) if len(earlier) >= q else 0
    return "slowing" if best > 0 and recent < best / 2 else ""


def flags(snap: Optional[JobStatusResponse]) -> list[tuple[str, str]]:
    """(phase, why) for each phase starved by its upstream or blocked by its downstream."""
    if snap is None or snap.status != JobStatus.RUNNING:
        return []
    status: dict[str, JobStatus] = {d.name: d.status for d in snap.phase_details}
    out: list[tuple[str, str]] = []
    gauges = [snap.metrics.get(key) for key, _, _ in QUEUES]
    for i, (_key, writer, reader) in enumerate(QUEUES):
        g = gauges[i]
        if not isinstance(g, dict):
            continue
        empty, full = float(g.get("empty_s") or 0), float(g.get("full_s") or 0)
        if empty >= STARVED_S and status.get(writer) == JobStatus.RUNNING and status.get(reader) == JobStatus.RUNNING:
            out.append((reader, f"{reader} starved: waiting on {writer} for {fmt_duration(empty)}"))
        if full >= STARVED_S:
            out.append(
                (writer, f"{writer} blocked: {_behind(gauges, i)} is behind, queue full for {fmt_duration(full)}")
            )
    return out


def _full(g: object) -> bool:
    return isinstance(g, dict) and int(g.get("capacity") or 0) > 0 and int(g.get("depth") or 0) >= int(g["capacity"])


def _behind(gauges: list, i: int) -> str:
    """The phase to blame for queue i being full: the first one downstream whose input is full and
    whose output has room (a reader whose own output is full is held up in turn)."""
    while i + 1 < len(QUEUES) and _full(gauges[i + 1]):
        i += 1
    return QUEUES[i][2]


def _size(n: Optional[int]) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return ""


def _short(path: str, width: int) -> str:
    """A document's path as the pane shows it: its last components, escaped."""
    p = safe(path)
    parts = p.split(os.sep)
    tail = os.sep.join(parts[-2:]) if len(parts) > 2 else p
    return fit(tail, width)


class SnapshotText(Static):
    """A Static showing text made from a snapshot, updated only when that text changed."""

    def show(self, snap: Optional[JobStatusResponse], force: bool = False) -> None:
        text = self.text_of(snap)
        sig = (text.plain, tuple(text.spans))
        if sig != getattr(self, "_sig", None) or force:
            self._sig = sig
            self.update(text)

    def text_of(self, snap: Optional[JobStatusResponse]) -> Text:
        raise NotImplementedError


class FlowPane(SnapshotText):
    """Queue gauges between the phases and the flags, one or two lines."""

    def text_of(self, snap: Optional[JobStatusResponse]) -> Text:
        out = Text(end="", no_wrap=True, overflow="ellipsis")
        if snap is None or not any(isinstance(snap.metrics.get(k), dict) for k, _, _ in QUEUES):
            return out
        muted = theme_style(self.app, "foreground-muted")
        warn = theme_style(self.app, "warning", bold=True)
        out.append("queues ", style=muted)
        for i, (key, _, _) in enumerate(QUEUES):
            g = snap.metrics.get(key) or {}
            depth, cap = int(g.get("depth") or 0), int(g.get("capacity") or 0)
            if i:
                out.append(" → ", style=muted)
            cells = 5
            filled = round(cells * depth / cap) if cap else 0
            out.append(f"{QUEUE_LABEL[key]} ")
            out.append(
                "█" * filled + "░" * (cells - filled),
                style=warn if cap and depth >= cap else theme_style(self.app, "accent"),
            )
            out.append(f" {depth}/{cap}")
        for _, why in flags(snap):
            out.append("\n⚠ ", style=warn)
            out.append(why, style=warn)
        return out


class InFlightPane(SnapshotText):
    """The documents in each phase now, the indexer's next commit and the slowest document."""

    def text_of(self, snap: Optional[JobStatusResponse]) -> Text:
        muted = theme_style(self.app, "foreground-muted")
        out = Text(end="")
        m: dict[str, Any] = snap.metrics if snap is not None else {}
        width = max(20, (self.content_region.width or 60) - 24)
        lines = 0
        for phase, docs in (m.get("in_flight") or {}).items():
            for i, d in enumerate(docs if isinstance(docs, list) else []):
                if lines:
                    out.append("\n")
                out.append(f"{safe(phase) if i == 0 else '':<10} ", style="bold")
                out.append(_short(str(d.get("path", "")), width))
                extra = " · ".join(
                    x for x in (_size(d.get("size")), f"{d['chunks']} chunks" if d.get("chunks") else "") if x
                )
                if extra:
                    out.append(f"  {extra}", style=muted)
                lines += 1
        batch = m.get("commit_batch")
        if isinstance(batch, dict):
            out.append("\n" if lines else "")
            out.append(f"{'commit':<10} ", style="bold")
            out.append(f"{batch.get('documents', 0)} documents, {batch.get('chunks', 0)} chunks waiting")
            lines += 1
        slow = m.get("slowest_document")
        if isinstance(slow, dict):
            out.append("\n" if lines else "")
            out.append(f"{'slowest':<10} ", style="bold")
            out.append(_short(str(slow.get("path", "")), width))
            out.append(f"  {float(slow.get('seconds') or 0):.2f} s in {safe(slow.get('phase'))}", style=muted)
            lines += 1
        if not lines:
            out.append("nothing in flight", style=muted)
        return out
