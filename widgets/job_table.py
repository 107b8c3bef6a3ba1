"""The job list: one row per job in the home, newest first."""
from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Optional

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widgets import DataTable

from kbingest.widgets.format import JobView, fit, fmt_duration, fmt_started, safe, status_style

# (key, label, fixed width or None for "fit the content")
COLUMNS: tuple[tuple[str, str, Optional[int]], ...] = (
    ("job", "job", None),
    ("kb", "kb", None),
    ("status", "status", 9),
    ("progress", "progress", 8),
    ("started", "started", 11),
    ("elapsed", "elapsed", 7),
)
KB_MAX = 16
ID_MIN = 12


class JobTable(DataTable):
    """Jobs with id, knowledge base, status (theme colours), progress, start time and elapsed time.

    Only cells whose text changed are updated; the table is rebuilt only when the set or order
    of jobs changes, or when its width does."""

    BINDINGS = [
        Binding("up", "cursor_up", "select", key_display="↑↓", id="select_up",
                tooltip="select the job above / below"),
        Binding("down", "cursor_down", "select", show=False, id="select_down"),
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
            for (key, _, _), new, new_sig, prev in zip(COLUMNS, cells, sig, old or (None,) * len(COLUMNS)):
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

    def _layout_for(self, views: list[JobView]) -> tuple[int, int]:
        kb_w = max([2] + [len(safe(v.kb)) for v in views])
        kb_w = min(kb_w, KB_MAX)
        id_len = max([3] + [len(safe(v.job_id)) for v in views])
        fixed = kb_w + sum(w for _, _, w in COLUMNS if w) + 2 * len(COLUMNS) + 2  # cell padding, scrollbar
        width = self.scrollable_content_region.width or self.size.width or 80
        id_w = max(ID_MIN, min(id_len, width - fixed))
        return (id_w, kb_w)

    def _rebuild(self, views: list[JobView], now: datetime, tz: Optional[tzinfo], selected: Optional[str],
                 layout: tuple[int, int]) -> None:
        id_w, kb_w = layout
        self.clear(columns=True)
        for key, label, width in COLUMNS:
            w = id_w if key == "job" else kb_w if key == "kb" else width
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

    def _row(self, v: JobView, now: datetime, tz: Optional[tzinfo], layout: tuple[int, int]) -> tuple:
        id_w, kb_w = layout
        s = v.snap
        warn = s.status.value == "completed" and v.failed_docs > 0
        return (
            Text(fit(safe(v.job_id), id_w), no_wrap=True, end=""),
            Text(fit(safe(v.kb), kb_w), no_wrap=True, end=""),
            Text(s.status.value, style=status_style(self.app, s.status.value, warn=warn), no_wrap=True, end=""),
            Text(f"{s.progress:5.1f}%", justify="right", no_wrap=True, end=""),
            Text(fmt_started(s.started_at, tz), no_wrap=True, end=""),
            Text(fmt_duration(v.elapsed(now)), justify="right", no_wrap=True, end=""),
        )


def _signature(cells: tuple) -> tuple:
    """Text equality ignores the base style: compare the text and the style."""
    return tuple((c.plain, str(c.style)) for c in cells)
