"""The error pane: the failed phase's error and every failed document of the selected job."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from pipeline.status import JobStatus
from widgets.format import JobView, safe, theme_style


class ErrorPane(VerticalScroll):
    """Scrollable; rebuilt only when the errors it shows change."""

    def __init__(self, *, id: Optional[str] = None) -> None:
        super().__init__(id=id)
        self._sig: Optional[tuple] = None
        self.count = 0

    def compose(self) -> ComposeResult:
        yield Static(Text(""), id="error-text", markup=False)

    def show(self, view: Optional[JobView], force: bool = False) -> None:
        if view is None:
            sig: tuple = (None,)
        else:
            s = view.snap
            failed = tuple((p.name, p.error) for p in s.phase_details if p.status == JobStatus.FAILED)
            sig = (view.job_id, s.error, failed, len(view.errors), view.errors[-1] if view.errors else None)
        if sig == self._sig and not force:
            return
        job_changed = self._sig is None or sig[0] != self._sig[0]
        self._sig = sig
        self.count = 0 if view is None else len(view.errors)
        self.query_one("#error-text", Static).update(self._build(view))
        if job_changed:
            self.scroll_home(animate=False)

    def _build(self, view: Optional[JobView]) -> Text:
        app = self.app
        muted = theme_style(app, "foreground-muted")
        err = theme_style(app, "error", bold=True)
        out = Text(end="")
        if view is None:
            out.append("no job selected", style=muted)
            return out
        s = view.snap
        lines: list[Text] = []
        failed = [p for p in s.phase_details if p.status == JobStatus.FAILED]
        for p in failed:
            lines.append(Text.assemble((f"{p.name} failed: ", err), safe(p.error or s.error or "no details")))
        if s.error and not any(p.error == s.error for p in failed):
            lines.append(Text.assemble(("job error: ", err), safe(s.error)))
        for e in view.errors:
            line = Text.assemble(("✗ ", err), (safe(e.path), "bold"))
            detail = f"\n  {safe(e.phase)} · {safe(e.kind)} · {safe(e.message)}"
            if e.attempts > 1:
                detail += f" ({e.attempts} attempts)"
            line.append(detail)
            lines.append(line)
        if len(view.errors) < view.failed_docs:
            lines.append(Text(f"… {view.failed_docs - len(view.errors)} more not listed", style=muted))
        if not lines:
            out.append("no errors", style=muted)
            return out
        return Text("\n", end="").join(lines)
