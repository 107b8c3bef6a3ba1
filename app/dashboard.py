"""The Textual dashboard: every job in the home, live, with keyboard control.

The UI polls: the job running in this process through `job.snapshot()` a few times a second,
the other jobs through the job store about once a second (read in a thread worker). The engine
never posts to the UI and never waits on it; the UI only updates widgets whose text changed.
A job started here runs in a thread worker calling `job.run()`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from datetime import datetime, tzinfo
from functools import partial
from typing import Any, Callable, Optional

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import Worker, WorkerState

from kbingest.app.exit_codes import ExitCode, exit_code_for, exit_code_for_error
from kbingest.app.screens import (
    KEY_NAMES,
    ConfirmCancelScreen,
    ErrorScreen,
    HelpScreen,
    NewJobScreen,
    SearchScreen,
    help_from_bindings,
)
from kbingest.app.view_model import job_eta, resume_refusal, summary_counts, where_running
from kbingest.pipeline.models import JobStatusResponse, utcnow
from kbingest.pipeline.service import JobHandle, JobInfo, JobService, KbError, Service, printable
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.error_pane import ErrorPane
from kbingest.widgets.event_log import NOTICES, EventBook, EventLog, diff_events, notice
from kbingest.widgets.format import JobView, fmt_clock, safe, status_style, theme_style
from kbingest.widgets.instrument import FlowPane, InFlightPane, RateHistory
from kbingest.widgets.job_table import SORTS, JobTable
from kbingest.widgets.phase_timeline import PhaseTimeline

POLL_S = 0.5  # the job running in this process (2 Hz: each refresh costs the model CPU on 2 cores)
STORE_POLL_S = 1.0  # every job, from the job store
WIDE = 150  # columns from which errors and log sit side by side
TALL = 36  # rows from which the job list and summary get more room
QUIT_DELAY_S = 0.5  # the "paused, checkpoint saved" notice stays this long before the app exits

HELP_NOTES = [
    "Items: documents for loading and chunking, chunks for embedding and indexing.",
    'A job whose process died shows as paused, "interrupted…"; r resumes it.',
    "Greyed keys in the footer do not apply to the selected job.",
    "In the errors pane (tab to it): ↑↓ select a document, enter shows its error in full; there r retries "
    "that document alone and y copies its path.",
    "ctrl+p opens the command palette: every action above, and the themes (the choice is kept in the home).",
    "history: items/s of each phase over the last minutes (yellow: slowing down). queues: documents waiting "
    "between the phases; a phase waiting on an empty queue is flagged starved, one held by a full queue blocked.",
]


# the palette's names of actions whose footer label is cut short to fit 80 columns
PALETTE_TITLES = {"freeze_view": "freeze view", "follow_view": "live view", "new_job": "new job", "search": "search"}

JobLike = JobHandle  # what the dashboard runs: a job from the service, or a fake in tests


def _short_path(path: str) -> str:
    user = os.path.expanduser("~")
    if user not in ("", "/") and (path == user or path.startswith(user + os.sep)):
        return "~" + path[len(user) :]
    return path


class KbIngestApp(App[None]):
    """The kbingest dashboard.

    source: the service (or a home folder, for which one is made); job: a job to start (or resume)
    in this process, or None to only show jobs. Everything the app does to jobs goes through the
    service (pipeline/service.py). clock (a callable returning an aware datetime) and tz set what elapsed times and
    timestamps are rendered against, for deterministic snapshot tests; home_label replaces the
    home path shown in the job list's title.
    """

    TITLE = "kbingest"
    CSS_PATH = "dashboard.tcss"
    ENABLE_COMMAND_PALETTE = True
    NOTIFICATION_TIMEOUT = 4

    # The one list of keys: the footer, the help screen (help_from_bindings) and, with their
    # tooltips, every description of a key come from here.
    BINDINGS = [
        Binding(
            "p",
            "pause",
            "pause",
            id="pause",
            tooltip="pause the selected job: it finishes the batch in flight, saves its checkpoint, then stops",
        ),
        Binding(
            "r",
            "resume",
            "resume",
            id="resume",
            tooltip="resume the selected paused, interrupted or failed job, or retry the failed documents "
            "of a finished one",
        ),
        Binding(
            "c",
            "cancel",
            "cancel",
            id="cancel",
            tooltip="cancel the selected job (asks first: y cancels, n or escape keeps it)",
        ),
        Binding("question_mark", "help", "help", key_display="?", id="help", tooltip="this help"),
        Binding(
            "q",
            "quit",
            "quit",
            key_display="q/^c",
            id="quit",
            tooltip="quit; a job running here is paused first, its checkpoint saved: "
            "start `kbingest` again and press r to resume it",
        ),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True, id="quit_ctrl_c"),
        Binding("up", "select_job(-1)", "job", key_display="↑↓", id="select_up", tooltip="select a job"),
        Binding("down", "select_job(1)", "job", show=False, id="select_down", tooltip="select a job"),
        Binding(
            "f", "freeze_view", "freeze", id="freeze", tooltip="freeze the view to read it: the jobs go on working"
        ),
        Binding("f", "follow_view", "live", id="follow", tooltip="f again follows them live"),
        Binding(
            "d",
            "drain",
            "drain",
            id="drain",
            tooltip="drain the selected job: it loads no new documents, finishes those loaded, then completes",
        ),
        Binding(
            "n",
            "new_job",
            "new",
            id="new_job",
            tooltip="a new job: sources, knowledge base and settings; it starts here",
        ),
        Binding(
            "slash",
            "search",
            "find",
            key_display="/",
            id="search",
            tooltip="search the selected job's knowledge base; enter on a result shows its full text",
        ),
        Binding(
            "l",
            "filter",
            "filter",
            show=False,
            id="filter",
            tooltip="filter the job list as you type (knowledge base, status or id); escape clears it",
        ),
        Binding(
            "o",
            "sort",
            "sort",
            show=False,
            id="sort",
            tooltip="sort the job list: newest first, by status, by knowledge base",
        ),
        Binding(
            "i",
            "toggle_in_flight",
            "in flight",
            show=False,
            id="in_flight",
            tooltip="show the documents in flight, the next commit and the slowest document "
            "(always shown on a tall terminal)",
        ),
        Binding(
            "tab",
            "app.focus_next",
            "next pane",
            show=False,
            id="next_pane",
            tooltip="move to the errors or the events, to scroll them",
        ),
    ]

    def __init__(
        self,
        source: Any,
        job: Optional[JobLike] = None,
        *,
        store: Any = None,
        clock: Optional[Callable[[], datetime]] = None,
        tz: Optional[tzinfo] = None,
        home_label: Optional[str] = None,
        poll_seconds: float = POLL_S,
        store_poll_seconds: float = STORE_POLL_S,
        job_factory: Optional[Callable[[str], JobLike]] = None,
    ) -> None:
        super().__init__()
        # one store per process where possible: the job's own (opening a JobStore sweeps its temp files).
        # A service (local, or app/remote.py's over HTTP) is used as it is.
        self.service: JobService = (
            source
            if hasattr(source, "jobs")
            else Service(source, store=store if store is not None else (job.job_store() if job is not None else None))
        )
        self.home = self.service.home
        self.job = job
        self.clock = clock or utcnow
        self.tz = tz
        self.home_label = home_label if home_label is not None else _short_path(str(self.home.root))
        self.poll_seconds = poll_seconds
        self.store_poll_seconds = store_poll_seconds
        self._job_factory = job_factory or self.service.resume
        self._live: Optional[JobLike] = None
        self._live_worker: Optional[Worker] = None
        self._store_worker: Optional[Worker] = None
        self._store_gen = 0  # bumped when a job starts or ends here: older store reads are stale
        self._views: dict[str, JobView] = {}
        self._created: dict[str, str] = {}
        self._selected: Optional[str] = job.job_id if job is not None else None
        self._shown: Optional[str] = None  # the job the detail panes show
        self._events = EventBook()
        self._actions_state: tuple = ()
        self._quitting = False
        self.frozen = False  # the view, not the work: polls go on, the screen stops changing
        self._jobs_title = ""
        self.paused_on_quit: list[str] = []  # jobs this dashboard paused when it quit
        self._shutting_down = False
        self._detail_title: Optional[str] = None
        self._summary_sig: Optional[tuple] = None
        self._errors_title: Optional[str] = None
        self._main: Any = None
        self.run_error: Optional[BaseException] = None
        self.rates = RateHistory()
        self.filter_text = ""
        self.sort = SORTS[0]

    # ---- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter jobs: knowledge base, status or id (escape clears)", id="filter", compact=True)
        yield JobTable(id="jobs")
        with Vertical(id="detail", classes="pane"):
            yield Static(Text(""), id="summary", markup=False)
            yield PhaseTimeline(id="phases")
            yield FlowPane(Text(""), id="flow", markup=False)
        with Container(id="bottom"):
            yield ErrorPane(id="errors")
            yield InFlightPane(Text(""), id="inflight", markup=False)
            yield EventLog(id="log")
        yield Footer(compact=True, show_command_palette=False)  # 80 columns hold every key shown (^p: in the help)

    def _q(self, selector: Any, expect_type: Any = None) -> Any:
        """A widget of the main screen (App.query_one searches the active screen: a modal, maybe)."""
        if expect_type is None:
            return self._main.query_one(selector)
        return self._main.query_one(selector, expect_type)

    @property
    def _ui_ready(self) -> bool:
        return self._main is not None and not self._shutting_down and self._main.is_running

    def on_mount(self) -> None:
        self._main = self.screen
        table = self._q(JobTable)
        table.add_class("pane")
        self._jobs_title = printable(f"jobs in {self.home_label}")
        table.border_title = Text(self._jobs_title)  # Text: never markup
        self._q("#errors").add_class("pane")
        self._q("#errors").border_title = "errors"
        log = self._q(EventLog)
        log.add_class("pane")
        log.border_title = "events"
        log.tz = self.tz
        inflight = self._q("#inflight")
        inflight.add_class("pane")
        inflight.border_title = "in flight"
        self._restore_theme()
        self._apply_size(self.size.width, self.size.height)
        try:
            self._apply_records(self._read_store())  # the first frame shows every job
        except Exception as e:  # the store unreadable for a moment: the next poll tries again
            self._say(f"cannot read the job store yet: {e}", severity="warning")
        if self.job is not None:
            self._start(self.job)
        table.focus()
        if not self.is_headless:
            # `kill PID` pauses a job running here, as it does in batch mode (SIGINT never comes:
            # the terminal is raw, ctrl+c is a key)
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        self.set_interval(self.poll_seconds, self._poll_live, name="poll-live")
        self.set_interval(self.store_poll_seconds, self._poll_store, name="poll-store")
        self.theme_changed_signal.subscribe(self, lambda _theme: self._refresh_views(force=True))

    def _on_sigterm(self) -> None:
        self.call_later(self.action_quit)

    def on_resize(self, event: events.Resize) -> None:
        self._apply_size(event.size.width, event.size.height)

    def _apply_size(self, width: int, height: int) -> None:
        if self._main is not None:
            self._main.set_class(width >= WIDE, "wide")
            self._main.set_class(height >= TALL, "tall")

    # ---- reading jobs -----------------------------------------------------------------------
    def _read_store(self) -> list[JobInfo]:
        """Every stored job with the status to show (runs in a thread worker, but at mount)."""
        return self.service.jobs()

    def _read_store_tagged(self, gen: int) -> tuple[int, list[JobInfo]]:
        return gen, self._read_store()

    def _poll_store(self) -> None:
        if self._store_worker is not None and self._store_worker.state in (WorkerState.PENDING, WorkerState.RUNNING):
            return
        self._store_worker = self.run_worker(
            partial(self._read_store_tagged, self._store_gen),
            thread=True,
            group="store",
            name="read-store",
            exit_on_error=False,
        )

    def _apply_records(self, items: list[JobInfo]) -> None:
        live_id = self._live.job_id if self._live is not None else None
        seen = set()
        for info in items:
            seen.add(info.job_id)
            self._created[info.job_id] = info.created_at
            if info.job_id == live_id:
                continue  # the live snapshot is newer than the store's
            snap = info.status  # as the service sees it: running while its engine holds its knowledge base
            running_elsewhere = snap.status == JobStatus.RUNNING
            view = JobView(
                job_id=info.job_id,
                kb=info.kb,
                snap=snap,
                errors=snap.errors,
                created_at=info.created_at,
                updated_at=info.updated_at,
                running_elsewhere=running_elsewhere,
            )
            self._ingest(view)
        for job_id in [j for j in self._views if j not in seen and j != live_id]:
            del self._views[job_id]  # removed from the store
        self._refresh_views()

    def _live_view(self) -> Optional[JobView]:
        job = self._live
        if job is None:
            return None
        return JobView(
            job_id=job.job_id,
            kb=job.config.kb,
            snap=job.snapshot(),
            errors=list(job.errors),
            created_at=self._created.get(job.job_id, "~"),
            local=True,
        )

    def _poll_live(self) -> None:
        view = self._live_view()
        if view is None:
            if any(v.status == JobStatus.RUNNING for v in self._views.values()):
                self._refresh_views()  # elapsed times move on
            return
        prev = self._views.get(view.job_id)
        if prev is not None and prev.local and prev.snap == view.snap and len(prev.errors) == len(view.errors):
            return  # nothing moved
        self._ingest(view)
        self._refresh_views()

    def _ingest(self, view: JobView) -> None:
        prev = self._views.get(view.job_id)
        if prev == view:
            return
        self._views[view.job_id] = view
        self.rates.record(view.job_id, view.snap, time.monotonic())
        self._log_events(view.job_id, diff_events(prev, view))

    def _log_events(self, job_id: str, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        added = self._events.add(job_id, self.clock(), items)
        if self._ui_ready and (job_id == NOTICES or (job_id == self._shown and not self.frozen)):
            self._q(EventLog).add(added)

    # ---- rendering --------------------------------------------------------------------------
    def _ordered(self) -> list[JobView]:
        views = sorted(self._views.values(), key=lambda v: self._created.get(v.job_id) or "~", reverse=True)
        return self.sort.apply(views, self.filter_text)

    def _refresh_views(self, force: bool = False) -> None:
        if not self._ui_ready or (self.frozen and not force):
            return
        try:
            self._refresh_views_now(force)
        except NoMatches:  # the app is closing
            pass

    def _refresh_views_now(self, force: bool) -> None:
        views = self._ordered()
        if self._selected not in self._views:
            self._selected = views[0].job_id if views else None
        table = self._q(JobTable)
        if force:
            table.forget_rows()
        table.show(views, self.clock(), self.tz, self._selected)
        self._update_jobs_title(len(views))
        self._show_selected(force=force)
        self._update_action_state()

    def _show_selected(self, force: bool = False) -> None:
        view = self._views.get(self._selected) if self._selected else None
        switched = self._shown != self._selected
        self._shown = self._selected
        detail = self._q("#detail")
        if view is None:
            self._detail_title = None
            detail.border_title = "no job selected"
            self._summary_sig = None
            self._q("#summary", Static).update(
                Text("no jobs in this home yet: `kbingest ingest SOURCE --kb NAME` starts one", end="")
            )
        else:
            where = where_running(view)
            title = printable(f"job {view.job_id} · kb {view.kb}" + (f" · {where}" if where else ""))
            if title != self._detail_title:
                self._detail_title = title
                detail.border_title = Text(title)
            summary = self._summary(view)
            sig = (summary.plain, tuple(summary.spans))
            if force or sig != self._summary_sig:  # only when it changed
                self._summary_sig = sig
                self._q("#summary", Static).update(summary)
        history = (
            {p: self.rates.of(view.job_id, p) for p in ("loading", "chunking", "embedding", "indexing")}
            if view
            else None
        )
        self._q(PhaseTimeline).show(view.snap.phase_details if view else None, force=force, history=history)
        self._q(FlowPane).show(view.snap if view else None, force=force)
        self._q(InFlightPane).show(view.snap if view else None, force=force)
        errors = self._q(ErrorPane)
        errors.show(view, force=force)
        n = view.failed_docs if view else 0
        errors_title = f"errors ({n} document{'s' if n != 1 else ''})" if n else "errors"
        if errors_title != self._errors_title:
            self._errors_title = errors_title
            errors.border_title = errors_title
        has_errors = bool(n) or bool(view and (view.snap.error or view.status == JobStatus.FAILED))
        self._q("#bottom").set_class(has_errors, "has-errors")  # errors get more room
        if switched or force:
            self._q(EventLog).replace(self._events.of(self._selected))

    def _summary(self, v: JobView) -> Text:
        s = v.snap
        warn = s.status == JobStatus.COMPLETED and v.failed_docs > 0
        out = Text(end="")
        eta = job_eta(s)
        if eta is not None:  # the job's ETA first (issue 30)
            out.append(f"ETA {fmt_clock(eta)}  ", style="bold")
        out.append(s.status.value, style=status_style(self, s.status.value, warn=warn))
        out.append(f" {s.progress:.1f}%  ")
        out.append(safe(s.message))
        line = summary_counts(v)
        if line:
            out.append("\n")
            out.append(safe(line), style=theme_style(self, "foreground-muted"))
        return out

    # ---- selection --------------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key is not None else None
        if key is not None and key != self._selected and key in self._views:
            self._selected = key
            if not self._ui_ready:  # the app is closing
                return
            self._show_selected()
            self._update_action_state()

    def action_select_job(self, step: int) -> None:
        table = self._q(JobTable)
        if step < 0:
            table.action_cursor_up()
        else:
            table.action_cursor_down()

    def last_status(self, job_id: str) -> Optional[JobStatusResponse]:
        """The newest status the dashboard saw of a job (its final one, once no job runs here)."""
        if self._live is not None and self._live.job_id == job_id:
            return self._live.snapshot()
        v = self._views.get(job_id)
        return v.snap if v is not None else None

    @property
    def selected(self) -> Optional[JobView]:
        return self._views.get(self._selected) if self._selected else None

    # ---- which actions apply ----------------------------------------------------------------
    def _can_pause(self, v: Optional[JobView]) -> bool:
        return v is not None and (v.local or v.running_elsewhere) and v.status in (JobStatus.RUNNING, JobStatus.PENDING)

    def _can_resume(self, v: Optional[JobView]) -> bool:
        if v is None or v.local or v.running_elsewhere:
            return False
        s = v.status
        return s in (JobStatus.PAUSED, JobStatus.FAILED, JobStatus.PENDING) or (
            s == JobStatus.COMPLETED and v.failed_docs > 0
        )

    def _can_drain(self, v: Optional[JobView]) -> bool:
        return v is not None and self.service.can_drain() and v.status == JobStatus.RUNNING

    def _can_cancel(self, v: Optional[JobView]) -> bool:
        return v is not None and v.status not in (JobStatus.COMPLETED, JobStatus.CANCELLED)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("freeze_view", "follow_view"):  # one key, two faces: only one is shown
            return self.frozen == (action == "follow_view")
        check = {
            "pause": self._can_pause,
            "resume": self._can_resume,
            "cancel": self._can_cancel,
            "drain": self._can_drain,
        }.get(action)
        if check is None:
            return True
        return True if check(self.selected) else None  # None: shown greyed out in the footer

    def _update_action_state(self) -> None:
        v = self.selected
        state = (self._can_pause(v), self._can_resume(v), self._can_cancel(v), self._can_drain(v))
        if state != self._actions_state:
            self._actions_state = state
            self.refresh_bindings()

    # ---- actions ----------------------------------------------------------------------------
    def _say(self, message: str, severity: str = "information", title: str = "") -> None:
        self._log_events(NOTICES, [notice(message, severity, title)])  # in the events pane, no toast over the panes

    def action_freeze_view(self) -> None:
        self._set_frozen(True)
        self._say("view frozen: the jobs go on working; f follows them live again", title="frozen")

    def action_follow_view(self) -> None:
        self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> None:
        if frozen == self.frozen:
            return
        self.frozen = frozen
        self._main.set_class(frozen, "frozen")
        self._update_jobs_title(None, force=True)
        self.refresh_bindings()
        if not frozen:
            self._refresh_views(force=True)  # everything that happened meanwhile, events included

    def action_pause(self) -> None:
        self._set_frozen(False)  # steering a job: show what it does
        v = self.selected
        if not self._can_pause(v):
            return
        if self._live is not None and self._live.job_id == v.job_id:
            self._live.pause()
        else:  # running in another process (or a server): asked through the service
            try:
                self.service.request_pause(v.job_id)
            except Exception as e:  # it ended meanwhile...
                self._say(f"cannot pause {v.job_id}: {e}", severity="error")
                return
        self._log_events(v.job_id, [("pause asked: finishing the batch in flight, then saving the checkpoint", "info")])
        self._say(f"pausing {v.job_id}: the batch in flight finishes, then the checkpoint is saved")

    def action_resume(self) -> None:
        self._set_frozen(False)
        v = self.selected
        if not self._can_resume(v):
            return
        if self._live is not None:
            self._say(
                f"job {self._live.job_id} is running in this dashboard: one job at a time; "
                "pause it (p) or let it finish, then resume this one",
                severity="warning",
            )
            return
        if self.service.engine_busy(v.kb):  # another job writes this knowledge base (others do not matter)
            self._say(
                f"another job is writing knowledge base {v.kb}: wait for it, or pause it (`kbingest pause JOB_ID`)",
                severity="warning",
            )
            return
        retry = v.status == JobStatus.COMPLETED
        try:
            job = self._job_factory(v.job_id)
        except Exception as e:  # the store changed under us, a cancelled job...
            self._say(f"cannot resume {v.job_id}: {e}", severity="error")
            return
        self._start(job)
        self._say(f"retrying the failed documents of {v.job_id}" if retry else f"resuming {v.job_id}")

    def action_cancel(self) -> None:
        self._set_frozen(False)
        v = self.selected
        if not self._can_cancel(v):
            return
        running = v.local or v.running_elsewhere
        self.push_screen(ConfirmCancelScreen(v.job_id, v.kb, running), partial(self._cancel_answer, v.job_id))

    def _cancel_answer(self, job_id: str, yes: Optional[bool]) -> None:
        if not yes:
            self._say(f"{job_id} not cancelled")
            return
        v = self._views.get(job_id)
        if v is None or not self._can_cancel(v):
            return
        if self._live is not None and self._live.job_id == job_id:
            self._live.cancel()
            self._log_events(job_id, [("cancel asked: dropping what is not indexed yet", "info")])
            self._say(f"cancelling {job_id}")
            return
        self._cancel_stored(job_id)

    def _cancel_stored(self, job_id: str) -> None:
        """Cancel a job this dashboard does not run: in the store, or by asking the engine that
        runs it (decided under the store's lock, against the stored record)."""
        try:
            outcome = self.service.request_cancel(job_id)
        except Exception as e:
            self._say(f"cannot cancel {job_id}: {e}", severity="error")
            return
        if outcome == "requested":
            self._log_events(job_id, [("cancel asked of the process running it", "info")])
        self._say(
            {"requested": f"asked the process running {job_id} to cancel it", "cancelled": f"{job_id} cancelled"}.get(
                outcome, f"{job_id} was not cancelled: it had ended"
            )
        )
        self._apply_records(self._read_store())

    # ---- the job list: filter, sort, counts ---------------------------------------------------
    def _update_jobs_title(self, shown: Optional[int], force: bool = False) -> None:
        counts = Counter(v.status.value for v in self._views.values())
        parts = [self._jobs_title]
        if counts:
            parts.append(", ".join(f"{n} {st}" for st, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
        if self.filter_text:
            parts.append(f"filter {self.filter_text!r}: {shown if shown is not None else '?'} shown")
        if self.sort is not SORTS[0]:
            parts.append(f"sorted {self.sort.label}")
        if self.frozen:
            parts.append("VIEW FROZEN, the jobs go on: f follows live")
        title = printable(" · ".join(parts))
        if force or title != getattr(self, "_jobs_title_shown", None):
            self._jobs_title_shown = title
            self._q(JobTable).border_title = Text(title)

    def action_filter(self) -> None:
        box = self._q("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "filter":
            return
        event.stop()
        self.filter_text = event.value.strip()
        self._refresh_views(force=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.stop()
            self._q(JobTable).focus()

    def on_key(self, event: events.Key) -> None:
        if event.key in self._keys_of("resume") and self.screen is self._main:
            why = resume_refusal(self.selected, self._live.job_id if self._live is not None else None)
            if why is not None and not self._can_resume(self.selected):  # r greyed out: say why
                event.stop()
                self._say(why, severity="warning")
                return
        box = self._main.query_one("#filter", Input) if self._main is not None else None
        if event.key == "escape" and box is not None and box.has_focus:
            event.stop()
            box.value = ""
            box.remove_class("shown")
            self._q(JobTable).focus()

    def _keys_of(self, action: str) -> set[str]:
        return {b.key for b in self.BINDINGS if b.action == action}

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._say(f"jobs sorted {self.sort.label}")
        self._refresh_views(force=True)

    def action_toggle_in_flight(self) -> None:
        self._main.toggle_class("show-inflight")

    # ---- themes -------------------------------------------------------------------------------
    def _restore_theme(self) -> None:
        try:
            theme = self.service.settings().get("theme")
        except Exception:
            theme = None
        if isinstance(theme, str) and theme in self.available_themes and theme != self.theme:
            self.theme = theme
        self._theme_loaded = True

    def watch_theme(self, theme: str) -> None:
        if not getattr(self, "_theme_loaded", False):
            return
        try:
            if self.service.settings().get("theme") != theme:
                self.service.save_settings(theme=theme)
        except Exception as e:  # a read-only home: the theme still changes, for this run
            self._say(f"theme not kept: {e}", severity="warning")

    # ---- the command palette ------------------------------------------------------------------
    def get_system_commands(self, screen: Any):
        """Every action of the bindings, with its key, then Textual's own (themes, keys...)."""
        seen: set[str] = set()
        for b in self.BINDINGS:
            if not b.tooltip or b.action in seen or b.action.startswith(("select_job", "app.")):
                continue
            seen.add(b.action)
            if self.check_action(b.action, ()) is False:  # the other face of a toggle (f)
                continue
            key = b.key_display or KEY_NAMES.get(b.key, b.key)
            title = PALETTE_TITLES.get(b.action, b.description)
            yield SystemCommand(f"{title.capitalize()} ({key})", b.tooltip, partial(self.run_action, b.action))
        yield SystemCommand(
            "Retry failed documents (r)",
            "retry the failed documents of the selected "
            "finished job (r resumes it; enter on an error retries one document)",
            partial(self.run_action, "resume"),
        )
        yield from super().get_system_commands(screen)

    # ---- drain, new job, search -----------------------------------------------------------------
    def action_drain(self) -> None:
        v = self.selected
        drain = self.service.can_drain()
        if v is None or not drain:
            self._say(
                "drain is not available in this version of kbingest" if not drain else "no job selected",
                severity="warning",
            )
            return
        try:
            self.service.drain(v.job_id)
        except Exception as e:
            self._say(f"cannot drain {v.job_id}: {e}", severity="error")
            return
        self._log_events(v.job_id, [("drain asked: no new documents; those loaded are finished", "info")])
        self._say(f"draining {v.job_id}")

    def action_new_job(self) -> None:
        try:
            kbs = self.service.knowledge_bases()
        except Exception:
            kbs = []
        default = self.service.default_embedder()
        self.push_screen(NewJobScreen(kbs, embedder=default), self._new_job_answer)

    def _new_job_answer(self, config: Any) -> None:
        if config is None:
            return
        self._start_here(
            lambda: self.service.start(config),
            "cannot start the job",
            lambda job: f"started {job.job_id} on knowledge base {config.kb}",
        )

    def _start_here(self, make: Callable[[], JobLike], refused: str, started: Callable[[JobLike], str]) -> None:
        """Start a job from the service in this dashboard (one at a time), saying what happened."""
        if self._live is not None:
            self._say(
                f"job {self._live.job_id} is running in this dashboard: one job at a time; try again when it ends",
                severity="warning",
            )
            return
        try:
            job = make()
        except KbError as e:
            self._say(f"{refused}: {e}", severity="error")
            return
        self._start(job)
        self._say(started(job))

    def action_search(self) -> None:
        v = self.selected
        if v is None:
            self._say("no job selected: its knowledge base is searched", severity="warning")
            return
        self.push_screen(SearchScreen(self.service, v.kb))

    # ---- one error in full ----------------------------------------------------------------------
    def on_error_pane_open(self, event: ErrorPane.Open) -> None:
        v = self.selected
        if v is None:
            return
        self.push_screen(
            ErrorScreen(v.job_id, event.error, self.tz), partial(self._error_answer, v.job_id, event.error.path)
        )

    def _error_answer(self, job_id: str, path: str, answer: Optional[str]) -> None:
        if answer != "retry":
            return
        self._start_here(
            lambda: self.service.retry(job_id, paths=[path]),
            f"cannot retry {path}",
            lambda job: f"retrying {path} of {job_id}",
        )

    def action_help(self) -> None:
        self.push_screen(HelpScreen(help_from_bindings(self.BINDINGS), HELP_NOTES))

    async def action_quit(self) -> None:
        job = self._live
        if job is not None:
            if not self._quitting:
                self._quitting = True
                job.pause()
                self._log_events(job.job_id, [("quitting: pausing, the checkpoint is being saved", "info")])
                self._say(
                    f"pausing… {job.job_id} finishes the batch in flight and saves its checkpoint, "
                    "then the dashboard quits; start `kbingest` again and press r to resume it",
                    title="quitting",
                )
            else:
                self._say("still pausing… the checkpoint is being saved", title="quitting")
            return
        self.exit()

    # ---- running a job here -----------------------------------------------------------------
    def _start(self, job: JobLike) -> None:
        self._store_gen += 1
        self._live = job
        self._selected = job.job_id
        self._live_worker = self.run_worker(
            partial(self._run_job, job), thread=True, group="job", name=f"run {job.job_id}", exit_on_error=False
        )
        self._poll_live()
        self._q(JobTable).select(job.job_id)

    def _run_job(self, job: JobLike) -> JobStatusResponse:
        """In a thread worker: the job runs until it rests (completed, paused, cancelled, failed)."""
        return job.run()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "store":
            if event.state == WorkerState.SUCCESS and worker.result is not None:
                gen, items = worker.result
                if gen == self._store_gen:  # else a job started or ended here meanwhile: read again
                    self._apply_records(items)
            if worker is self._store_worker and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
                self._store_worker = None
            return
        if worker is not self._live_worker or event.state not in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            return
        job = self._live
        assert job is not None
        final = self._live_view()
        self._store_gen += 1
        self._live = None
        self._live_worker = None
        if final is not None:
            final.local = False
            self._ingest(final)
        if event.state == WorkerState.ERROR:
            err = worker.error
            if job is self.job:
                self.run_error = err
            self._log_events(job.job_id, [(f"could not run: {safe(err)}", "error")])
            self._say(f"{job.job_id} could not run: {err}", severity="error")
        elif final is not None:
            s = final.snap
            severity = {"failed": "error", "paused": "information"}.get(s.status.value, "information")
            if s.status == JobStatus.PAUSED:
                self._say(f"{job.job_id} paused: checkpoint saved; r resumes it", title="paused")
            else:
                self._say(f"{job.job_id} {s.status.value}: {s.message}", severity=severity)
        self._refresh_views()
        self._poll_store()
        if self._quitting:
            if final is not None and final.status == JobStatus.PAUSED:
                self.paused_on_quit.append(job.job_id)
            self.set_timer(QUIT_DELAY_S, self.exit)

    def exit(self, *args: Any, **kwargs: Any) -> None:
        self._shutting_down = True  # no widget is updated from here on
        super().exit(*args, **kwargs)

    def on_unmount(self) -> None:
        self._shutting_down = True
        # However the app ends, a job running in this process is paused (its checkpoint saved),
        # never left running without a UI.
        if self._live is not None:
            try:
                self._live.pause()
            except Exception:
                pass


HELP_KEYS: list[tuple[str, str]] = help_from_bindings(KbIngestApp.BINDINGS)


def run_dashboard(service: JobService, job: Optional[JobHandle]) -> ExitCode:
    """Open the dashboard on every job of the service's home; start `job` in it if given.

    Returns the exit code of the started job (from its final snapshot), else ExitCode.OK."""
    app = KbIngestApp(service, job)
    app.run()
    for job_id in app.paused_on_quit:
        if job is None or job_id != job.job_id:
            sys.stderr.write(
                printable(
                    f"kbingest: job {job_id} paused, checkpoint saved; `kbingest` then r, "
                    f"or `kbingest resume {job_id}`, continues it"
                )
                + "\n"
            )
    if job is None:
        return ExitCode.OK
    if isinstance(app.run_error, KbError):
        sys.stderr.write(printable(f"kbingest: {app.run_error}") + "\n")
        return exit_code_for_error(app.run_error)
    if app.run_error is not None:
        sys.stderr.write(printable(f"kbingest: job {job.job_id} could not run: {app.run_error}") + "\n")
        return ExitCode.FAILED
    snap = app.last_status(job.job_id) or job.snapshot()  # r may have run it again in the dashboard
    if snap.status in (JobStatus.RUNNING, JobStatus.PENDING):  # run by a server (--server): it goes on there
        sys.stderr.write(
            printable(f"kbingest: job {job.job_id} goes on in {app.home_label} ({snap.status.value})") + "\n"
        )
        return ExitCode.OK
    if snap.status == JobStatus.PAUSED:
        sys.stderr.write(
            printable(
                f"kbingest: job {job.job_id} paused, checkpoint saved; `kbingest` then r, "
                f"or `kbingest resume {job.job_id}`, continues it"
            )
            + "\n"
        )
    else:
        sys.stderr.write(printable(f"kbingest: job {job.job_id}: {snap.message}") + "\n")
    return exit_code_for(snap)
