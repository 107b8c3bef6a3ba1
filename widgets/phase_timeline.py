"""The phase timeline of one job: a row per phase (loading, chunking, embedding, indexing) with a
progress bar, items processed/total, rate, ETA, phase status and duration."""

from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

from kbingest.pipeline.models import PhaseDetail
from kbingest.pipeline.status import PHASES
from kbingest.widgets.format import DASH, fmt_clock, fmt_count, fmt_duration, fmt_rate, status_style, theme_style
from kbingest.widgets.instrument import sparkline, trend

PHASE_NAMES: tuple[str, ...] = tuple(p.value for p in PHASES)
UNITS = {"loading": "docs", "chunking": "docs", "embedding": "chunks", "indexing": "chunks"}


def _cells(d: Optional[PhaseDetail]) -> tuple[int, str, str, str, str, str]:
    """(progress %, items, rate, ETA, status, duration) as text."""
    if d is None:
        return (0, DASH, DASH, DASH, "pending", DASH)
    status = d.status.value
    if d.items_total or d.items_processed:
        items = f"{fmt_count(d.items_processed)}/{fmt_count(d.items_total)}"
    else:
        items = DASH
    rate = d.rate
    if status != "running":
        # a finished phase shows its average rate; a stopped one nothing live
        rate = (
            d.items_processed / d.duration_seconds
            if status == "completed" and d.duration_seconds and d.items_processed
            else None
        )
    eta = fmt_clock(d.eta_seconds) if status == "running" else DASH
    return (int(d.progress), items, fmt_rate(rate), eta, status, fmt_duration(d.duration_seconds))


class PhaseHeader(Horizontal):
    def compose(self) -> ComposeResult:
        yield Label(Text("phase"), classes="ph-name")
        yield Label(Text("progress"), classes="ph-bar-h")
        yield Label(Text("items", justify="right"), classes="ph-items")
        yield Label(Text("rate", justify="right"), classes="ph-rate")
        yield Label(Text(" history"), classes="ph-spark")
        yield Label(Text("ETA", justify="right"), classes="ph-eta")
        yield Label(Text("status"), classes="ph-status")
        yield Label(Text("time", justify="right"), classes="ph-time")


class PhaseRow(Horizontal):
    """One phase. `show()` updates its widgets only when what they show changed."""

    def __init__(self, phase: str) -> None:
        super().__init__(id=f"phase-{phase}", classes="phase-row")
        self.phase = phase
        self._sig: Optional[tuple] = None

    def compose(self) -> ComposeResult:
        yield Label(Text(self.phase), classes="ph-name")
        yield ProgressBar(total=100, show_eta=False, show_percentage=True, classes="ph-bar")
        yield Label(Text(DASH, justify="right"), classes="ph-items")
        yield Label(Text(DASH, justify="right"), classes="ph-rate")
        yield Label(Text(""), classes="ph-spark")
        yield Label(Text(DASH, justify="right"), classes="ph-eta")
        yield Label(Text("pending"), classes="ph-status")
        yield Label(Text(DASH, justify="right"), classes="ph-time")

    def show(self, detail: Optional[PhaseDetail], history: Optional[list[float]] = None, force: bool = False) -> None:
        spark_label = self.query_one(".ph-spark", Label)
        width = max(0, (spark_label.size.width or 10) - 1)
        spark = sparkline(history or [], width)
        slowing = trend(history or []) == "slowing"
        cells = _cells(detail) + (spark, slowing)
        if cells == self._sig and not force:
            return
        self._sig = cells
        spark_label.update(
            Text(" " + spark, no_wrap=True, style=theme_style(self.app, "warning" if slowing else "accent"))
        )
        progress, items, rate, eta, status, dur = cells[:6]
        self.query_one(ProgressBar).update(total=100, progress=progress)
        self.query_one(".ph-items", Label).update(Text(items, justify="right", no_wrap=True))
        self.query_one(".ph-rate", Label).update(Text(rate, justify="right", no_wrap=True))
        self.query_one(".ph-eta", Label).update(Text(eta, justify="right", no_wrap=True))
        self.query_one(".ph-status", Label).update(Text(status, style=status_style(self.app, status), no_wrap=True))
        self.query_one(".ph-time", Label).update(Text(dur, justify="right", no_wrap=True))


class PhaseTimeline(Vertical):
    """The four phases of the selected job, in pipeline order."""

    def compose(self) -> ComposeResult:
        yield PhaseHeader(classes="phase-header")
        for name in PHASE_NAMES:
            yield PhaseRow(name)

    def show(
        self,
        details: Optional[list[PhaseDetail]],
        force: bool = False,
        history: Optional[dict[str, list[float]]] = None,
    ) -> None:
        by_name: dict[str, PhaseDetail] = {d.name: d for d in (details or [])}
        for row in self.query(PhaseRow):
            row.show(by_name.get(row.phase), (history or {}).get(row.phase), force=force)
