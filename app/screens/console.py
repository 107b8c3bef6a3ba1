"""The dashboard's console screens: an error in full (retry it, copy its path), the new-job form,
and search in a knowledge base with a result's full chunk text. Every one is a ModalScreen whose
keys are its bindings (shown in its footer); all text from files and the engine is escaped."""

from __future__ import annotations

import os
from datetime import tzinfo
from typing import Any, Optional

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import Suggester, SuggestFromList
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static

from kbingest.app.screens.base import modal_css
from kbingest.app.view_model import hit_label, offered_embedders
from kbingest.pipeline.models import DocumentError, JobConfig
from kbingest.pipeline.service import JobService, KbError, Service
from kbingest.widgets.format import fmt_time, safe

MAX_SUGGESTIONS_SCANNED = 2000  # directory entries read for one completion


def source_label(source: str) -> str:
    """A search hit's document as the results list shows it: a file by its name, a document not on the
    local disk (s3://, http(s)://: docs/sources.md) by its whole URI, which is its identity."""
    if "://" in source:
        return source
    return os.path.basename(source) or source


class ErrorScreen(ModalScreen[Optional[str]]):
    """One failed document in full. Dismisses with "retry" (r), or None."""

    DEFAULT_CSS = (
        modal_css("ErrorScreen")
        + """
    ErrorScreen #error-detail { height: auto; }
    """
    )
    BINDINGS = [
        Binding("r", "retry", "retry this document", id="error_retry"),
        Binding("y", "copy", "copy path", id="error_copy"),
        Binding("escape", "close", "close", key_display="esc", id="error_close"),
    ]

    def __init__(self, job_id: str, error: DocumentError, tz: Optional[tzinfo] = None) -> None:
        super().__init__()
        self.job_id = job_id
        self.error = error
        self.tz = tz

    def compose(self) -> ComposeResult:
        e = self.error
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row(Text("path"), Text(safe(e.path)))
        grid.add_row(Text("phase"), Text(safe(e.phase)))
        grid.add_row(Text("kind"), Text(safe(e.kind)))
        grid.add_row(Text("attempts"), Text(str(e.attempts)))
        grid.add_row(Text("time"), Text(fmt_time(e.at, self.tz) if e.at else "not recorded"))
        grid.add_row(Text("job"), Text(safe(self.job_id)))
        grid.add_row(Text("message"), Text(safe(e.message)))
        with VerticalScroll(id="dialog") as d:
            d.border_title = "error"
            yield Static(grid, id="error-detail")
        yield Footer()

    def action_retry(self) -> None:
        self.dismiss("retry")

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.error.path)
        self.app.notify(Text(f"copied {safe(self.error.path)}"), markup=False)  # type: ignore[arg-type]

    def action_close(self) -> None:
        self.dismiss(None)


class PathSuggester(Suggester):
    """Completes a path from the file system (the entries of its folder, folders first)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> Optional[str]:
        last = value.rsplit(",", 1)[-1].lstrip()
        if not last:
            return None
        head = value[: len(value) - len(last)]
        folder, stem = os.path.split(os.path.expanduser(last))
        try:
            with os.scandir(folder or ".") as it:
                names = []
                for i, entry in enumerate(it):
                    if i >= MAX_SUGGESTIONS_SCANNED:
                        break
                    if entry.name.startswith(stem) and entry.name != stem and not entry.name.startswith("."):
                        names.append(entry.name + (os.sep if entry.is_dir() else ""))
        except OSError:
            return None
        if not names:
            return None
        return head + last[: len(last) - len(stem)] + sorted(names)[0]


def _default(field: str) -> Any:
    return JobConfig.model_fields[field].default


class NewJobScreen(ModalScreen[Optional[JobConfig]]):
    """A new job: sources, knowledge base and the main settings (the CLI's defaults), validated by
    Service.config. Dismisses with the JobConfig, or None."""

    DEFAULT_CSS = (
        modal_css("NewJobScreen")
        + """
    NewJobScreen .row { height: 1; margin-top: 1; }
    NewJobScreen .row Label { width: 16; }
    NewJobScreen .row Input, NewJobScreen .row Select { width: 1fr; }
    NewJobScreen #form-error { color: $error; height: auto; }
    NewJobScreen #buttons { height: 1; margin-top: 1; align-horizontal: right; }
    """
    )
    BINDINGS = [
        Binding("ctrl+s", "submit", "start", id="form_submit"),
        Binding("escape", "close", "close", key_display="esc", id="form_close"),
    ]
    SETTINGS = ("max_tokens", "overlap_tokens", "batch_size")

    def __init__(self, knowledge_bases: list[str], embedder: str = "fastembed") -> None:
        super().__init__()
        self.knowledge_bases = knowledge_bases
        self.embedder = embedder

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as d:
            d.border_title = "new job"
            with Horizontal(classes="row"):
                yield Label("sources")
                yield Input(
                    placeholder="folders or files, comma separated",
                    id="sources",
                    suggester=PathSuggester(),
                    compact=True,
                )
            with Horizontal(classes="row"):
                yield Label("knowledge base")
                yield Input(
                    placeholder=", ".join(self.knowledge_bases[:4]) or "a name",
                    id="kb",
                    suggester=SuggestFromList(self.knowledge_bases, case_sensitive=True),
                    compact=True,
                )
            with Horizontal(classes="row"):
                yield Label("embedder")
                offered = offered_embedders()
                offered += () if self.embedder in offered else (self.embedder,)
                yield Select(
                    [(e, e) for e in offered], value=self.embedder, allow_blank=False, id="embedder", compact=True
                )
            for name in self.SETTINGS:
                with Horizontal(classes="row"):
                    yield Label(name.replace("_", " "))
                    yield Input(str(_default(name)), id=name, type="integer", compact=True)
            yield Static(Text(""), id="form-error")
            with Horizontal(id="buttons"):
                yield Button(Text("start (ctrl+s)"), variant="primary", id="start", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#sources", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_submit()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        sources = [s.strip() for s in self.query_one("#sources", Input).value.split(",") if s.strip()]
        kb = self.query_one("#kb", Input).value.strip()
        settings: dict[str, Any] = {"embedder": self.query_one("#embedder", Select).value}
        for name in self.SETTINGS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            settings[name] = int(raw) if raw.lstrip("-").isdigit() else raw
        error = None if sources else "sources: give at least one folder or file"
        error = error or (None if kb else "knowledge base: give a name")
        if error is None:
            try:
                config = Service.config([os.path.expanduser(s) for s in sources], kb, **settings)
            except KbError as e:
                error = str(e)
            else:
                self.dismiss(config)
                return
        self.query_one("#form-error", Static).update(Text(safe(error)))

    def action_close(self) -> None:
        self.dismiss(None)


class ChunkScreen(ModalScreen[None]):
    """A search result's full chunk text."""

    DEFAULT_CSS = modal_css("ChunkScreen")
    BINDINGS = [Binding("escape", "close", "close", key_display="esc", id="chunk_close")]

    def __init__(self, hit: Any) -> None:
        super().__init__()
        self.hit = hit

    def compose(self) -> ComposeResult:
        h = self.hit
        with VerticalScroll(id="dialog") as d:
            d.border_title = Text(safe(f"{h.source} · {h.heading_path}"))
            yield Static(Text("\n".join(safe(line) for line in str(h.text).splitlines())), id="chunk-text")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)


class SearchScreen(ModalScreen[None]):
    """Search one knowledge base: type, enter; ↑↓ and enter open a result's full text."""

    DEFAULT_CSS = (
        modal_css("SearchScreen")
        + """
    SearchScreen #results { height: auto; max-height: 20; }
    SearchScreen #search-status { color: $text-muted; height: auto; }
    """
    )
    BINDINGS = [Binding("escape", "close", "close", key_display="esc", id="search_close")]
    K = 10

    def __init__(self, service: JobService, kb: str) -> None:
        super().__init__()
        self.service = service
        self.kb = kb
        self.hits: list[Any] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as d:
            d.border_title = Text(safe(f"search knowledge base {self.kb}"))
            yield Input(placeholder="a question or words, then enter", id="query", compact=True)
            yield Static(Text(""), id="search-status")
            yield DataTable(id="results", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#results", DataTable)
        table.add_column("score", key="score", width=6)
        table.add_column("source", key="source")
        table.add_column("heading", key="heading")
        table.add_column("page", key="page", width=4)
        self.query_one("#query", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        query = event.value.strip()
        if query:
            self.query_one("#search-status", Static).update(Text("searching…"))
            self._search(query)

    @work(thread=True, exclusive=True, group="search")
    def _search(self, query: str) -> None:
        try:
            hits = list(self.service.search(self.kb, query, k=self.K))
        except KbError as e:
            self.app.call_from_thread(self._show, [], str(e))
            return
        self.app.call_from_thread(self._show, hits, None)

    def _show(self, hits: list[Any], error: Optional[str]) -> None:
        self.hits = hits
        table = self.query_one("#results", DataTable)
        table.clear()
        for i, h in enumerate(hits):
            page = getattr(h, "page", None)
            table.add_row(
                Text(f"{h.score:.3f}"),
                Text(safe(hit_label(h))),
                Text(safe(h.heading_path)),
                Text("" if page is None else str(page)),
                key=str(i),
            )
        status = error or (
            f"{len(hits)} result{'s' if len(hits) != 1 else ''}: ↑↓ and enter open one" if hits else "no results"
        )
        self.query_one("#search-status", Static).update(Text(safe(status)))
        if hits:
            table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        i = int(event.row_key.value or 0)
        if 0 <= i < len(self.hits):
            self.app.push_screen(ChunkScreen(self.hits[i]))

    def action_close(self) -> None:
        self.dismiss(None)
