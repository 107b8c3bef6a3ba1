"""Formatting shared by the dashboard widgets: durations, rates, times, status colours.

Everything here returns plain `str` or `rich.text.Text`; nothing is ever parsed as markup.
Text that comes from documents, file names or the engine goes through `safe()` (which is
`pipeline.textsafe.printable`) before it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Optional, overload

from rich.style import Style
from rich.text import Text

from kbingest.pipeline.models import DocumentError, JobStatusResponse
from kbingest.pipeline.service import printable
from kbingest.pipeline.status import JobStatus

if TYPE_CHECKING:
    from textual.app import App

DASH = "–"

# Theme variable for each status: colours follow the app's theme ($success, $warning, ...).
STATUS_VARS: dict[str, str] = {
    "pending": "secondary",
    "running": "accent",
    "paused": "warning",
    "completed": "success",
    "failed": "error",
    "cancelled": "foreground-muted",
}


def safe(text: object) -> str:
    """Text from documents, file names or the engine, with control/ANSI/bidi characters escaped."""
    return printable("" if text is None else str(text))


def safe_text(text: object, style: str | Style = "") -> Text:
    """A literal Text (never markup) of escaped text."""
    return Text(safe(text), style=style, end="")


def fit(text: str, width: int) -> str:
    """Cut text to width cells, keeping its start and end (job ids end with a unique suffix)."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return DASH
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 100:
        return f"{h}h{m:02d}m"
    return f"{h}h"


def fmt_clock(seconds: Optional[float]) -> str:
    """An ETA as m:ss or h:mm:ss."""
    if seconds is None:
        return DASH
    total = int(round(max(0.0, float(seconds))))
    m, s = divmod(total, 60)
    h, m = divmod(m, 60)
    if h:
        return f"{h}:{m:02d}:{s:02d}" if h < 100 else f"{h}h"
    return f"{m}:{s:02d}"


def fmt_rate(rate: Optional[float]) -> str:
    if rate is None or rate <= 0:
        return DASH
    if rate >= 1000:
        return f"{rate / 1000:.1f}k/s"
    if rate >= 100:
        return f"{rate:.0f}/s"
    return f"{rate:.1f}/s"


def fmt_count(n: int) -> str:
    return f"{n / 1_000_000:.1f}M" if n >= 10_000_000 else str(n)


@overload
def as_aware(dt: datetime) -> datetime: ...
@overload
def as_aware(dt: None) -> None: ...
@overload
def as_aware(dt: Optional[datetime]) -> Optional[datetime]: ...
def as_aware(dt: Optional[datetime]) -> Optional[datetime]:
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def parse_iso(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    try:
        return as_aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def fmt_started(dt: Optional[datetime], tz: Optional[tzinfo]) -> str:
    dt = as_aware(dt)
    if dt is None:
        return DASH
    return dt.astimezone(tz).strftime("%m-%d %H:%M")


def fmt_time(dt: datetime, tz: Optional[tzinfo]) -> str:
    return as_aware(dt).astimezone(tz).strftime("%H:%M:%S")


def status_style(app: "App", status: str, *, bold: bool = True, warn: bool = False) -> Style:
    """A Rich style in the theme's colour for a job or phase status."""
    var = "warning" if warn else STATUS_VARS.get(status, "foreground")
    return theme_style(app, var, bold=bold)


def theme_style(app: "App", var: str, *, bold: bool = False) -> Style:
    from textual.color import Color

    variables = app.theme_variables or app.get_css_variables()
    try:
        color = Color.parse(variables.get(var, variables.get("foreground", "#e0e0e0")))
        if color.a < 1:  # e.g. a muted foreground: blend it over the background
            color = Color.parse(variables.get("background", "#000000")).tint(color)
        return Style(color=color.rich_color, bold=bold)
    except Exception:  # an odd theme: no colour rather than a crash
        return Style(bold=bold)


@dataclass
class JobView:
    """What the dashboard knows of one job at one moment."""

    job_id: str
    kb: str
    snap: JobStatusResponse
    errors: list[DocumentError] = field(default_factory=list)
    created_at: str = ""
    updated_at: Optional[str] = field(default=None, compare=False)
    local: bool = False  # running in this process (a worker of this dashboard)
    running_elsewhere: bool = False  # running in another process on this home

    @classmethod
    def of_record(cls, info: Any) -> "JobView":
        """A job as the service lists it (a JobInfo): running while its engine holds its knowledge base."""
        snap = info.status
        return cls(
            job_id=info.job_id,
            kb=info.kb,
            snap=snap,
            errors=snap.errors,
            created_at=info.created_at,
            updated_at=info.updated_at,
            running_elsewhere=snap.status == JobStatus.RUNNING,
        )

    @classmethod
    def of_live(cls, job: Any, created_at: str) -> "JobView":
        """A job running in this process (a JobHandle), from its snapshot now."""
        return cls(
            job_id=job.job_id,
            kb=job.config.kb,
            snap=job.snapshot(),
            errors=list(job.errors),
            created_at=created_at,
            local=True,
        )

    @property
    def status(self) -> JobStatus:
        return self.snap.status

    @property
    def interrupted(self) -> bool:
        return self.snap.status == JobStatus.PAUSED and self.snap.message.startswith("interrupted")

    @property
    def failed_docs(self) -> int:
        return max(len(self.errors), int(self.snap.metrics.get("documents_failed") or 0))

    def elapsed(self, now: datetime) -> Optional[float]:
        """Wall time since the job first started: to its end, to now while running; for a stopped
        job (paused, interrupted) to when its phases last ran, from the snapshot alone."""
        start = as_aware(self.snap.started_at)
        if start is None:
            return None
        if self.snap.completed_at is not None:
            end = as_aware(self.snap.completed_at)
        elif self.snap.status == JobStatus.RUNNING:
            end = as_aware(now)
        else:
            ends = [
                as_aware(p.started_at) + timedelta(seconds=p.duration_seconds or 0.0)
                for p in self.snap.phase_details
                if p.started_at is not None
            ]
            if not ends:
                return None
            end = max(ends)
        return max(0.0, (end - start).total_seconds())
