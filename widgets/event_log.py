"""The event log: what happened to a job, derived by comparing its successive snapshots.

Status changes, phase changes, new document errors, commits: never one line per document
processed. `diff_events()` is pure, so that it can be tested without an app.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Iterable, Optional

from rich.text import Text
from textual import events
from textual.widgets import RichLog

from kbingest.app.view_model import status_text
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.format import JobView, fmt_duration, safe, status_style, theme_style
from kbingest.widgets.phase_timeline import UNITS

MAX_EVENTS = 500  # kept per job
MAX_ERRORS_LOGGED = 20  # new document errors logged one by one per poll; the rest are summed up
NOTICES = ""  # the EventBook key of the dashboard's own notices: in the events pane whichever job is shown
NOTICE_MARKS = {"warning": "⚠ ", "error": "✗ "}  # a notice's severity, in its text as well as its colour


@dataclass(frozen=True)
class Event:
    at: datetime
    text: str  # plain text, already escaped with printable()
    kind: str = "info"  # a status value (coloured like it), "error", "warning" or "info"


def notice(message: str, severity: str = "information", title: str = "") -> tuple[str, str]:
    """A notice of the dashboard (what a key did, what it refused) as an event: (text, kind). Notices
    go to the events pane rather than toasts over the panes (issue 30 item 5); the severity stays
    visible by its mark and colour."""
    kind = severity if severity in NOTICE_MARKS else "info"
    text = f"{title}: {message}" if title and title not in message else message  # not "frozen: view frozen"
    return NOTICE_MARKS.get(kind, "") + safe(text), kind


def diff_events(prev: Optional[JobView], cur: JobView) -> list[tuple[str, str]]:
    """(text, kind) for each change between two views of the same job."""
    s = cur.snap
    out: list[tuple[str, str]] = []
    if prev is None:
        out.append((safe(status_text(s.status.value, s.message)), s.status.value))
        if s.error and s.error not in s.message:
            out.append((f"error: {safe(s.error)}", "error"))
        if cur.errors:
            out.append((f"{len(cur.errors)} document(s) failed: see errors", "error"))
        return out
    p = prev.snap
    status: list[tuple[str, str]] = []
    if s.status != p.status:
        text = f"{p.status.value} → " + safe(status_text(s.status.value, s.message))
        status.append((text, s.status.value))
    elif s.message != p.message and s.message:
        status.append((safe(s.message), "info"))
    if s.status == JobStatus.RUNNING:  # a start first, then what it started; an end after what ended
        out.extend(status)
    before = {d.name: d for d in p.phase_details}
    for d in s.phase_details:
        old = before.get(d.name)
        if old is not None and old.status == d.status:
            continue
        if d.status == JobStatus.RUNNING:
            out.append((f"{d.name} started", "running"))
        elif d.status == JobStatus.COMPLETED:
            out.append(
                (
                    f"{d.name} completed: {d.items_processed} {UNITS.get(d.name, 'items')} "
                    f"in {fmt_duration(d.duration_seconds)}",
                    "completed",
                )
            )
        elif d.status == JobStatus.FAILED:
            out.append((f"{d.name} failed: {safe(d.error or '')}", "error"))
    commits, was = int(s.metrics.get("commits") or 0), int(p.metrics.get("commits") or 0)
    if commits > was:
        out.append(
            (
                f"committed: {int(s.metrics.get('chunks_indexed') or 0)} chunks indexed in this pass "
                f"({commits} commit{'s' if commits > 1 else ''})",
                "info",
            )
        )
    if len(cur.errors) > len(prev.errors):
        new = cur.errors[len(prev.errors) :]
        for e in new[:MAX_ERRORS_LOGGED]:
            out.append((f"failed in {safe(e.phase)}: {safe(e.path)} ({safe(e.kind)}): {safe(e.message)}", "error"))
        if len(new) > MAX_ERRORS_LOGGED:
            out.append((f"… and {len(new) - MAX_ERRORS_LOGGED} more failed documents: see errors", "error"))
    if s.status != JobStatus.RUNNING:
        out.extend(status)
    if s.error and s.error != p.error and not any(safe(s.error) in t for t, _ in out):
        out.append((f"error: {safe(s.error)}", "error"))
    return out


class EventBook:
    """The recent events of every job seen, a bounded deque each."""

    def __init__(self, maxlen: int = MAX_EVENTS) -> None:
        self.maxlen = maxlen
        self._events: dict[str, deque[Event]] = {}

    def add(self, job_id: str, at: datetime, items: Iterable[tuple[str, str]]) -> list[Event]:
        q = self._events.setdefault(job_id, deque(maxlen=self.maxlen))
        added = [Event(at, text, kind) for text, kind in items]
        q.extend(added)
        return added

    def of(self, job_id: Optional[str]) -> list[Event]:
        """A job's events with the dashboard's notices among them, in time order."""
        own = list(self._events.get(job_id, ())) if job_id else []
        notices = self._events.get(NOTICES)
        if not notices:
            return own
        return sorted(own + list(notices), key=lambda e: e.at)[-self.maxlen :]


class EventLog(RichLog):
    """A RichLog of one job's events, bounded, markup off: each line is a literal Text."""

    def __init__(self, *, id: Optional[str] = None, max_lines: int = MAX_EVENTS) -> None:
        super().__init__(
            id=id, max_lines=max_lines, wrap=True, markup=False, highlight=False, min_width=20, auto_scroll=True
        )
        self.tz: Optional[tzinfo] = None
        self._shown: deque[Event] = deque(maxlen=max_lines)
        self._width = 0

    def line(self, ev: Event) -> Text:
        muted = theme_style(self.app, "foreground-muted")
        if ev.kind in ("error", "warning"):
            style = theme_style(self.app, ev.kind)
        elif ev.kind in ("pending", "running", "paused", "completed", "failed", "cancelled"):
            style = status_style(self.app, ev.kind, bold=False)
        else:
            style = theme_style(self.app, "foreground")
        stamp = ev.at.astimezone(self.tz).strftime("%H:%M:%S")
        return Text.assemble((stamp + " ", muted), (ev.text, style), end="")

    def replace(self, events: Iterable[Event]) -> None:
        self.clear()
        self._shown.clear()
        self.add(events)

    def _write(self, ev: Event) -> None:
        # wrap to the pane's width (the app console's width is not the pane's)
        width = self.scrollable_content_region.width if self._size_known else 0
        self.write(self.line(ev), width=width or None)

    def add(self, events: Iterable[Event]) -> None:
        for ev in events:
            self._shown.append(ev)
            self._write(ev)

    def on_resize(self, event: events.Resize) -> None:
        # lines are wrapped when written: wrap them again to the new width, once laid out
        self.call_after_refresh(self._rewrap)

    def _rewrap(self) -> None:
        width = self.scrollable_content_region.width
        if self._size_known and width and width != self._width:
            self._width = width
            self.clear()
            for ev in self._shown:
                self._write(ev)
