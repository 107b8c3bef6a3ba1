"""The error pane: the failed phase's error and every failed document of the selected job."""

from __future__ import annotations

from typing import Optional

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.message import Message
from textual.widgets import Static

from kbingest.pipeline.models import DocumentError
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.format import JobView, safe, theme_style

CHOSEN = "▶"  # the mark of the selected document


class ErrorPane(VerticalScroll):
    """Scrollable; rebuilt only when the errors it shows change. Focused (tab), ↑↓ select a failed
    document and enter opens it (the app shows it in a modal: ErrorPane.Open)."""

    BINDINGS = [
        Binding("up", "move(-1)", "select", key_display="↑↓", id="error_up", tooltip="select a failed document"),
        Binding("down", "move(1)", "select", show=False, id="error_down", tooltip="select a failed document"),
        Binding(
            "enter",
            "open",
            "details",
            id="error_open",
            tooltip="in the errors pane: the selected error in full; there r retries that document alone "
            "and y copies its path",
        ),
    ]

    class Open(Message):
        def __init__(self, error: DocumentError) -> None:
            super().__init__()
            self.error = error

    def __init__(self, *, id: Optional[str] = None) -> None:
        super().__init__(id=id)
        self._sig: Optional[tuple] = None
        self.count = 0
        self.cursor = 0
        self._view: Optional[JobView] = None

    @property
    def selected_error(self) -> Optional[DocumentError]:
        errors = self._view.errors if self._view is not None else []
        return errors[self.cursor] if 0 <= self.cursor < len(errors) else None

    def action_move(self, step: int) -> None:
        if not self.count:
            return
        self.cursor = max(0, min(self.count - 1, self.cursor + step))
        self.show(self._view, force=True)
        self.call_after_refresh(self._keep_cursor_in_sight)

    def _keep_cursor_in_sight(self) -> None:
        """Scroll the selected document (its marked line and the detail under it) into the pane. Its
        line is found in what is drawn: the phase's error above and wrapped lines take room."""
        static = self.query_one("#error-text", Static)
        width, height = static.size
        if not width or not height:
            return
        lines = static.render_lines(Region(0, 0, width, height))
        y = next((i for i, line in enumerate(lines) if line.text.startswith(CHOSEN)), None)
        if y is not None:
            self.scroll_to_region(Region(0, y, width, 2), animate=False, force=True)

    def action_open(self) -> None:
        err = self.selected_error
        if err is not None:
            self.post_message(self.Open(err))

    def on_focus(self) -> None:
        self.show(self._view, force=True)

    def on_blur(self) -> None:
        self.show(self._view, force=True)

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
        self._view = view
        self.count = 0 if view is None else len(view.errors)
        if job_changed:
            self.cursor = 0
        self.cursor = max(0, min(self.cursor, self.count - 1))
        self.query_one("#error-text", Static).update(self._build(view))
        if job_changed:
            self.scroll_home(animate=False)

    def _build(self, view: Optional[JobView]) -> RenderableType:
        app = self.app
        muted = theme_style(app, "foreground-muted")
        err = theme_style(app, "error", bold=True)
        if view is None:
            return Text("no job selected", style=muted, end="")
        s = view.snap
        # a grid: the marker in its own column, so that wrapped lines keep their indent
        grid = Table.grid(expand=True)
        grid.add_column(width=2, no_wrap=True)
        grid.add_column(ratio=1, overflow="fold")
        rows = 0
        failed = [p for p in s.phase_details if p.status == JobStatus.FAILED]
        for p in failed:
            grid.add_row(
                Text("✗", style=err),
                Text.assemble((f"{p.name} failed: ", err), safe(p.error or s.error or "no details")),
            )
            rows += 1
        if s.error and not any(p.error == s.error for p in failed):
            grid.add_row(Text("✗", style=err), Text.assemble(("job error: ", err), safe(s.error)))
            rows += 1
        for i, e in enumerate(view.errors):
            detail = f"{safe(e.phase)} · {safe(e.kind)} · {safe(e.message)}"
            if e.attempts > 1:
                detail += f" ({e.attempts} attempts)"
            chosen = i == self.cursor and self.has_focus
            grid.add_row(
                Text(CHOSEN if chosen else "✗", style=err),
                Text(safe(e.path), style="bold reverse" if chosen else "bold"),
            )
            grid.add_row(Text(""), Text(" " + detail))
            rows += 1
        if len(view.errors) < view.failed_docs:
            grid.add_row(Text(""), Text(f"… {view.failed_docs - len(view.errors)} more not listed", style=muted))
            rows += 1
        if not rows:
            return Text("no errors", style=muted, end="")
        return grid
