"""The job list: one row per job in the home, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Callable, Optional

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widgets import DataTable

from kbingest.app.view_model import fit_job_id
from kbingest.widgets.format import JobView, fit, fmt_duration, fmt_started, fmt_time, safe, status_style

# (key, label, fixed width or None for "fit the content")
COLUMNS: tuple[tuple[str, str, Optional[int]], ...] = (
    ("job", "job", None),
    ("kb", "kb", None),
    ("status", "status", 9),
    ("progress", "progress", 8),
    ("started", "started", 11),
    ("elapsed", "elapsed", 7),
    ("note", "note", None),
)
KB_MAX = 16
ID_MIN = 12
NOTE_MIN = 14  # the note column (a pending job's reason, a watch job's last sync) shows from this width
STATUS_ORDER = {"running": 0, "pending": 1, "paused": 2, "failed": 3, "completed": 4, "cancelled": 5}


def matches(v: JobView, words: list[str]) -> bool:
    """Every word is in the job's knowledge base, status or id (case-insensitive)."""
    hay = f"{v.kb} {v.status.value} {v.job_id}".lower()
    return all(w in hay for w in words)


@dataclass(frozen=True)
class Sort:
    label: str
    key: Optional[Callable[[JobView], Any]]  # None: as given (newest first)

    def apply(self, views: list[JobView], text: str = "") -> list[JobView]:
        words = text.lower().split()
        out = [v for v in views if matches(v, words)] if words else list(views)
        return sorted(out, key=self.key) if self.key is not None else out  # stable: newest first within


SORTS: tuple[Sort, ...] = (
    Sort("newest first", None),
    Sort("by status", lambda v: STATUS_ORDER.get(v.status.value, 9)),
    Sort("by knowledge base", lambda v: v.kb),
)


def note(v: JobView, tz: Optional[tzinfo]) -> str:
    """What the row says beyond its status: why a job waits, when a watch job last synced."""
    s = v.snap
    m = s.m
    if s.status.value == "pending":
        where = f"#{m.queue_position} in line · " if m.queue_position else ""
        return where + (safe(s.message) or "waiting")
    if m.watch_bursts is not None or s.message.startswith("watching"):
        if m.last_synced_at:
            return f"watching · synced {fmt_time(datetime.fromisoformat(m.last_synced_at.replace('Z', '+00:00')), tz)}"
        done = [d.completed_at for d in s.phase_details if d.name == "indexing" and d.completed_at]
        return f"watching · synced {fmt_time(done[0], tz)}" if done else "watching"
    return ""


class JobTable(DataTable):
    """Jobs with id, knowledge base, status (theme colours), progress, start time and elapsed time.

    Only cells whose text changed are updated; the table is rebuilt only when the set or order
    of jobs changes, or when its width does."""

    BINDINGS = [
        Binding("up", "cursor_up", "job", key_display="↑↓", id="select_up", tooltip="select the job above / below"),
        Binding("down", "cursor_down", "job", show=False, id="select_down"),
    ]

    def __init__(self, *, id: Optional[str] = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=True)
        self._order: list[str] = []
        self._row_signatures: dict[str, tuple] = {}
        self._layout: tuple = ()
        self._last: tuple[list[JobView], datetime, Optional[tzinfo], Optional[str]] | None = None

    # ---- public -----------------------------------------------------------------------------
    @property
    def selected_id(self) -> Optional[str]:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def forget_rows(self) -> None:
        """Redraw every row at the next `show` (the theme changed, the view was frozen)."""
        self._row_signatures.clear()

    def show(self, views: list[JobView], now: datetime, tz: Optional[tzinfo], selected: Optional[str]) -> None:
        self._last = (views, now, tz, selected)
        layout = self._layout_for(views)
        order = [v.job_id for v in views]
        if order != self._order or layout != self._layout:
            self._rebuild(views, now, tz, selected, layout)
            return
        for v in views:
            cells = self._row(v, now, tz, layout)
            sig = _signature(cells)
            old = self._row_signatures.get(v.job_id)
            if old == sig:
                continue
            cols = self._columns(layout)
            for (key, _, _), new, new_sig, prev in zip(cols, cells, sig, old or (None,) * len(cols)):
                if new_sig != prev:
                    self.update_cell(v.job_id, key, new)
            self._row_signatures[v.job_id] = sig

    def select(self, job_id: str) -> None:
        if job_id in self._order:
            self.move_cursor(row=self._order.index(job_id))

    # ---- internals --------------------------------------------------------------------------
    def on_resize(self, event: events.Resize) -> None:
        if self._last is not None:
            views, now, tz, _ = self._last
            self.show(views, now, tz, self.selected_id)

    def _layout_for(self, views: list[JobView]) -> tuple[int, int, int]:
        kb_w = max([2] + [len(safe(v.kb)) for v in views])
        kb_w = min(kb_w, KB_MAX)
        id_len = max([3] + [len(safe(v.job_id)) for v in views])
        fixed = kb_w + sum(w for _, _, w in COLUMNS if w) + 2 * len(COLUMNS) + 2  # cell padding, scrollbar
        width = self.scrollable_content_region.width or self.size.width or 80
        id_w = max(ID_MIN, min(id_len, width - fixed))
        note_w = width - fixed - id_w
        return (id_w, kb_w, note_w if note_w >= NOTE_MIN else 0)

    def _rebuild(
        self,
        views: list[JobView],
        now: datetime,
        tz: Optional[tzinfo],
        selected: Optional[str],
        layout: tuple[int, int, int],
    ) -> None:
        id_w, kb_w, note_w = layout
        self.clear(columns=True)
        for key, label, width in self._columns(layout):
            w = id_w if key == "job" else kb_w if key == "kb" else note_w if key == "note" else width
            self.add_column(Text(label), key=key, width=w)
        self._row_signatures.clear()
        for v in views:
            cells = self._row(v, now, tz, layout)
            self.add_row(*cells, key=v.job_id)
            self._row_signatures[v.job_id] = _signature(cells)
        self._order = [v.job_id for v in views]
        self._layout = layout
        if selected in self._order:
            self.move_cursor(row=self._order.index(selected), animate=False)

    @staticmethod
    def _columns(layout: tuple[int, int, int]) -> tuple[tuple[str, str, Optional[int]], ...]:
        return COLUMNS if layout[2] else COLUMNS[:-1]  # the note column only where it fits

    def _row(self, v: JobView, now: datetime, tz: Optional[tzinfo], layout: tuple[int, int, int]) -> tuple:
        id_w, kb_w, note_w = layout
        s = v.snap
        warn = s.status.value == "completed" and v.failed_docs > 0
        cells: tuple[Text, ...] = (
            Text(fit_job_id(safe(v.job_id), safe(v.kb), id_w), no_wrap=True, end=""),
            Text(fit(safe(v.kb), kb_w), no_wrap=True, end=""),
            Text(s.status.value, style=status_style(self.app, s.status.value, warn=warn), no_wrap=True, end=""),
            Text(f"{s.progress:5.1f}%", justify="right", no_wrap=True, end=""),
            Text(fmt_started(s.started_at, tz), no_wrap=True, end=""),
            Text(fmt_duration(v.elapsed(now)), justify="right", no_wrap=True, end=""),
        )
        if note_w:
            cells += (Text(fit(note(v, tz), note_w), no_wrap=True, end="", style="italic"),)
        return cells


def _signature(cells: tuple) -> tuple:
    """Text equality ignores the base style: compare the text and the style."""
    return tuple((c.plain, str(c.style)) for c in cells)
