"""Modal screens of the dashboard: the cancel confirmation and the help screen (built from the bindings)."""

from __future__ import annotations

from typing import Optional, Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static

from kbingest.app.screens.base import modal_css
from kbingest.widgets.format import safe

KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc"}


def help_from_bindings(bindings: Sequence[Binding]) -> list[tuple[str, str]]:
    """The help screen's rows (keys, what they do), built from the bindings' tooltips: bindings of
    one action, or with one text, share a row ("q, ctrl+c"); one key's several actions (f) share one."""
    rows: list[tuple[list[str], str, list[str]]] = []  # keys, text, actions
    for b in bindings:
        key = KEY_NAMES.get(b.key, b.key)
        row = next((r for r in rows if b.action in r[2] or (b.tooltip and r[1] == b.tooltip)), None)
        if row is not None:
            if key not in row[0]:
                row[0].append(key)
            continue
        if not b.tooltip:
            continue
        same_key = next((i for i, r in enumerate(rows) if r[0] == [key]), None)
        if same_key is not None:
            keys, text, actions = rows[same_key]
            rows[same_key] = (keys, f"{text}; {b.tooltip}", actions + [b.action])
            continue
        rows.append(([key], b.tooltip, [b.action]))
    return [(", ".join(keys), text) for keys, text, _ in rows]


class ConfirmCancelScreen(ModalScreen[bool]):
    """Asks before cancelling a job, saying what will be lost. `y` accepts; `n` or `escape` refuse."""

    DEFAULT_CSS = (
        modal_css("ConfirmCancelScreen", width=74, border="error")
        + """
    ConfirmCancelScreen #question {
        text-style: bold;
        margin-bottom: 1;
    }
    ConfirmCancelScreen #buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ConfirmCancelScreen Button {
        margin-left: 2;
        min-width: 16;
    }
    """
    )

    BINDINGS = [
        Binding("y", "answer(True)", "cancel the job", id="confirm_yes"),
        Binding("n", "answer(False)", "keep it", key_display="n/esc", id="confirm_no"),
        Binding("escape", "answer(False)", "keep it", show=False, id="confirm_escape"),
    ]

    def __init__(self, job_id: str, kb: str, running: bool) -> None:
        super().__init__()
        self.job_id = job_id
        self.kb = kb
        self.running = running

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as d:
            d.border_title = "cancel job"
            yield Label(Text(f"Cancel job {safe(self.job_id)}?"), id="question")
            lost = [
                "chunks embedded but not yet indexed are dropped" if self.running else "the work left to do is dropped",
                f"chunks already indexed stay in knowledge base {safe(self.kb)}",
                "a cancelled job cannot be resumed: a new `kbingest ingest` starts over "
                "(it skips what is already indexed)",
            ]
            yield Static(Text("\n".join(f"• {line}" for line in lost)), id="consequences")
            with Horizontal(id="buttons"):
                yield Button(Text("y  cancel the job"), variant="error", id="yes")
                yield Button(Text("n  keep it"), variant="primary", id="no")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


class HelpScreen(ModalScreen[None]):
    """Every key and what it does; `escape`, `?` or `q` close it."""

    DEFAULT_CSS = (
        modal_css("HelpScreen", dialog="help", width=76)
        + """
    HelpScreen #help-keys {
        height: auto;
    }
    HelpScreen #help-notes {
        margin-top: 1;
        color: $text-muted;
    }
    HelpScreen #help-close {
        color: $text-muted;
    }
    """
    )

    BINDINGS = [
        Binding("escape", "close", "close", key_display="esc/?/q", id="help_close"),
        Binding("question_mark", "close", "close", show=False, id="help_close_question"),
        Binding("q", "close", "close", show=False, id="help_close_q"),
    ]

    def __init__(self, keys: Sequence[tuple[str, str]], notes: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.keys = list(keys)
        self.notes = list(notes or [])

    def compose(self) -> ComposeResult:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column()
        for key, what in self.keys:
            grid.add_row(Text(key), Text(what))
        with VerticalScroll(id="help") as v:
            v.border_title = "kbingest dashboard: keys"
            yield Static(grid, id="help-keys")
            if self.notes:
                yield Static(Text("\n".join(self.notes)), id="help-notes")
            yield Label(Text("escape, ? or q closes this help"), id="help-close")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
