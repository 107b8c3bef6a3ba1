"""The Textual dashboard: every job in the home, live, with keyboard control.

The UI polls: the job running in this process through `job.snapshot()` a few times a second,
the other jobs through the job store about once a second (read in a thread worker). The engine
never posts to the UI and never waits on it; the UI only updates widgets whose text changed.
A job started here runs in a thread worker calling `job.run()`.

Its shape: the keys in app/bindings.py; what to show, and which action applies, in the Textual-free
view model (app/view_model.py); the panes drawn by app/panes.py; the actions' bodies and the dialogs'
answers in app/actions.py; the dialogs in app/screens/. The App holds the state and the polling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import datetime, tzinfo
from functools import partial
from typing import Any, Callable, Iterator, Mapping, Optional

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Container, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import Worker, WorkerState

from kbingest.app.actions import Actions
from kbingest.app.bindings import BINDINGS, HELP_NOTES, keys_of, palette_commands
from kbingest.app.exit_codes import ExitCode, exit_code_for, exit_code_for_error
from kbingest.app.panes import Panes
from kbingest.app.screens import HelpScreen, help_from_bindings
from kbingest.app.view_model import action_state, applies, resume_refusal
from kbingest.pipeline.models import JobStatusResponse, utcnow
from kbingest.pipeline.service import JobHandle, JobInfo, JobService, KbError, Service, printable
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.error_pane import ErrorPane
from kbingest.widgets.event_log import NOTICES, EventBook, EventLog, diff_events, notice
from kbingest.widgets.format import JobView
from kbingest.widgets.instrument import FlowPane, InFlightPane, RateHistory
from kbingest.widgets.job_table import SORTS, JobTable
from kbingest.widgets.phase_timeline import PhaseTimeline

POLL_S = 0.5  # the job running in this process (2 Hz: each refresh costs the model CPU on 2 cores)
STORE_POLL_S = 1.0  # every job, from the job store


def poll_periods(env: Optional[Mapping[str, str]] = None) -> tuple[float, float]:
    """(live, store) poll periods: POLL_S and STORE_POLL_S, or what `serve --web-refresh` asked for
    (seconds, 0.5 to 60; the job store at half that rate). Each refresh redraws the panes, which on
    2 cores is CPU taken from the job: ten browser sessions at 2 Hz cost it a third of its speed."""
    from kbingest.app.web import REFRESH_ENV, refresh_allowed  # set by `serve --web` for its sessions

    raw = (os.environ if env is None else env).get(REFRESH_ENV, "")
    try:
        live = float(raw)
    except ValueError:
        return POLL_S, STORE_POLL_S
    if not refresh_allowed(live):
        return POLL_S, STORE_POLL_S
    return live, max(STORE_POLL_S, 2 * live)


WIDE = 150  # columns from which errors and log sit side by side
TALL = 36  # rows from which the job list and summary get more room

ENDED = (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED)  # a worker's states once it is over
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
    BINDINGS = [*BINDINGS]  # app/bindings.py: the footer, the help screen and the palette come from them

    def __init__(
        self,
        source: Any,
        job: Optional[JobLike] = None,
        *,
        store: Any = None,
        clock: Optional[Callable[[], datetime]] = None,
        tz: Optional[tzinfo] = None,
        home_label: Optional[str] = None,
        poll_seconds: Optional[float] = None,
        store_poll_seconds: Optional[float] = None,
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
        live, stored = poll_periods()
        self.poll_seconds = live if poll_seconds is None else poll_seconds
        self.store_poll_seconds = stored if store_poll_seconds is None else store_poll_seconds
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
        self.paused_on_quit: list[str] = []  # jobs this dashboard paused when it quit
        self._shutting_down = False
        self._main: Any = None
        self.run_error: Optional[BaseException] = None
        self.rates = RateHistory()
        self.filter_text = ""
        self.sort = SORTS[0]
        self.panes = Panes(self)
        self.actions = Actions(self)

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
        return self._main.query_one(selector) if expect_type is None else self._main.query_one(selector, expect_type)

    @property
    def _ui_ready(self) -> bool:
        return self._main is not None and not self._shutting_down and self._main.is_running

    def on_mount(self) -> None:
        self._main = self.screen
        self.panes.set_up()
        self.actions.restore_theme()
        self._apply_size(self.size.width, self.size.height)
        try:
            self._apply_records(self._read_store())  # the first frame shows every job
        except Exception as e:  # the store unreadable for a moment: the next poll tries again
            self._say(f"cannot read the job store yet: {e}", severity="warning")
        if self.job is not None:
            self.actions.start(self.job)
        self._q(JobTable).focus()
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
            view = JobView.of_record(info)  # as the service sees it: running while its engine holds its kb
            self._ingest(view)
        for job_id in [j for j in self._views if j not in seen and j != live_id]:
            del self._views[job_id]  # removed from the store
        self._refresh_views()

    def _live_view(self) -> Optional[JobView]:
        job = self._live
        return None if job is None else JobView.of_live(job, self._created.get(job.job_id, "~"))

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
            self.panes.refresh(force)
        except NoMatches:  # the app is closing
            pass

    # ---- selection --------------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key is not None else None
        if key is not None and key != self._selected and key in self._views:
            self._selected = key
            if not self._ui_ready:  # the app is closing
                return
            self.panes.show_selected()
            self._update_action_state()

    def action_select_job(self, step: int) -> None:
        table = self._q(JobTable)
        table.action_cursor_up() if step < 0 else table.action_cursor_down()

    def last_status(self, job_id: str) -> Optional[JobStatusResponse]:
        """The newest status the dashboard saw of a job (its final one, once no job runs here)."""
        if self._live is not None and self._live.job_id == job_id:
            return self._live.snapshot()
        v = self._views.get(job_id)
        return v.snap if v is not None else None

    @property
    def selected(self) -> Optional[JobView]:
        return self._views.get(self._selected) if self._selected else None

    # ---- which actions apply (app/view_model.py's rules) ------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("freeze_view", "follow_view"):  # one key, two faces: only one is shown
            return self.frozen == (action == "follow_view")
        return True if applies(action, self.selected, self.service.can_drain()) else None  # None: greyed out

    def _update_action_state(self) -> None:
        state = action_state(self.selected, self.service.can_drain())
        if state != self._actions_state:
            self._actions_state = state
            self.refresh_bindings()

    # ---- actions (their bodies: app/actions.py) -------------------------------------------------
    def _say(self, message: str, severity: str = "information", title: str = "") -> None:
        self._log_events(NOTICES, [notice(message, severity, title)])  # in the events pane, no toast over the panes

    def action_freeze_view(self) -> None:
        self.panes.set_frozen(True)
        self._say("view frozen: the jobs go on working; f follows them live again", title="frozen")

    def action_follow_view(self) -> None:
        self.panes.set_frozen(False)

    def action_pause(self) -> None:
        self.actions.pause()

    def action_resume(self) -> None:
        self.actions.resume()

    def action_cancel(self) -> None:
        self.actions.cancel()

    def action_drain(self) -> None:
        self.actions.drain()

    def action_new_job(self) -> None:
        self.actions.new_job()

    def action_search(self) -> None:
        self.actions.search()

    def on_error_pane_open(self, event: ErrorPane.Open) -> None:
        self.actions.open_error(event.error)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(help_from_bindings(BINDINGS), HELP_NOTES))

    async def action_quit(self) -> None:
        await self.actions.quit()

    # ---- the job list: filter, sort ---------------------------------------------------------------
    def action_filter(self) -> None:
        self.panes.show_filter()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.panes.filter_changed(event)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.panes.filter_submitted(event)

    def on_key(self, event: events.Key) -> None:
        if event.key in keys_of("resume") and self.screen is self._main:
            live_id = self._live.job_id if self._live is not None else None
            if self.actions.explain_refusal(resume_refusal(self.selected, live_id)):  # r greyed out: say why
                event.stop()
                return
        if event.key == "escape":
            self.panes.clear_filter(event)

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._say(f"jobs sorted {self.sort.label}")
        self._refresh_views(force=True)

    def action_toggle_in_flight(self) -> None:
        self._main.toggle_class("show-inflight")

    # ---- themes, the command palette ------------------------------------------------------------
    def watch_theme(self, theme: str) -> None:
        if getattr(self, "_theme_loaded", False):  # set at mount, once the home's theme is restored
            self.actions.keep_theme(theme)

    def get_system_commands(self, screen: Any) -> Iterator[SystemCommand]:
        """Every action of the bindings, with its key (app/bindings.py), then Textual's own (themes, keys...)."""
        yield from palette_commands(self)
        yield from super().get_system_commands(screen)

    # ---- the workers: a job run here, the store read ---------------------------------------------
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
        if worker is self._live_worker and event.state in ENDED:
            self.actions.job_ended(worker, event.state)

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


HELP_KEYS: list[tuple[str, str]] = help_from_bindings(BINDINGS)


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
