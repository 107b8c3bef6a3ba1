"""What the dashboard's keys do to jobs: the bodies of its actions and the handling of its dialogs'
answers. The App (app/dashboard.py) keeps its action names (the bindings') and delegates here;
whether an action applies is the view model's (app/view_model.py), what happens then is here.

Everything goes through the service (pipeline/service.py); a job started here runs in the App's
thread worker (`Actions.start`), one at a time.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

from textual.worker import Worker, WorkerState

from kbingest.app.screens import ConfirmCancelScreen, ErrorScreen, NewJobScreen, SearchScreen
from kbingest.app.view_model import can_cancel, can_pause, can_resume, cancel_outcome
from kbingest.pipeline.service import JobHandle, KbError
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.format import safe
from kbingest.widgets.job_table import JobTable

QUIT_DELAY_S = 0.5  # the "paused, checkpoint saved" notice stays this long before the app exits


class Actions:
    """The dashboard's actions on jobs, for one App (`app`: a KbIngestApp)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    # ---- pause, resume, cancel ------------------------------------------------------------------
    def pause(self) -> None:
        app = self.app
        app.panes.set_frozen(False)  # steering a job: show what it does
        v = app.selected
        if not can_pause(v):
            return
        if app._live is not None and app._live.job_id == v.job_id:
            app._live.pause()
        else:  # running in another process (or a server): asked through the service
            try:
                app.service.request_pause(v.job_id)
            except Exception as e:  # it ended meanwhile...
                app._say(f"cannot pause {v.job_id}: {e}", severity="error")
                return
        app._log_events(v.job_id, [("pause asked: finishing the batch in flight, then saving the checkpoint", "info")])
        app._say(f"pausing {v.job_id}: the batch in flight finishes, then the checkpoint is saved")

    def resume(self) -> None:
        app = self.app
        app.panes.set_frozen(False)
        v = app.selected
        if not can_resume(v):
            return
        if app._live is not None:
            app._say(
                f"job {app._live.job_id} is running in this dashboard: one job at a time; "
                "pause it (p) or let it finish, then resume this one",
                severity="warning",
            )
            return
        if app.service.engine_busy(v.kb):  # another job writes this knowledge base (others do not matter)
            app._say(
                f"another job is writing knowledge base {v.kb}: wait for it, or pause it (`kbingest pause JOB_ID`)",
                severity="warning",
            )
            return
        retry = v.status == JobStatus.COMPLETED
        try:
            job = app._job_factory(v.job_id)
        except Exception as e:  # the store changed under us, a cancelled job...
            app._say(f"cannot resume {v.job_id}: {e}", severity="error")
            return
        self.start(job)
        app._say(f"retrying the failed documents of {v.job_id}" if retry else f"resuming {v.job_id}")

    def cancel(self) -> None:
        app = self.app
        app.panes.set_frozen(False)
        v = app.selected
        if not can_cancel(v):
            return
        running = v.local or v.running_elsewhere
        app.push_screen(ConfirmCancelScreen(v.job_id, v.kb, running), partial(self.cancel_answer, v.job_id))

    def cancel_answer(self, job_id: str, yes: Optional[bool]) -> None:
        app = self.app
        if not yes:
            app._say(f"{job_id} not cancelled")
            return
        v = app._views.get(job_id)
        if v is None or not can_cancel(v):
            return
        if app._live is not None and app._live.job_id == job_id:
            app._live.cancel()
            app._log_events(job_id, [("cancel asked: dropping what is not indexed yet", "info")])
            app._say(f"cancelling {job_id}")
            return
        self.cancel_stored(job_id)

    def cancel_stored(self, job_id: str) -> None:
        """Cancel a job this dashboard does not run: in the store, or by asking the engine that
        runs it (decided under the store's lock, against the stored record)."""
        app = self.app
        try:
            outcome = app.service.request_cancel(job_id)
        except Exception as e:
            app._say(f"cannot cancel {job_id}: {e}", severity="error")
            return
        if outcome == "requested":
            app._log_events(job_id, [("cancel asked of the process running it", "info")])
        app._say(cancel_outcome(job_id, outcome))
        app._apply_records(app._read_store())

    def explain_refusal(self, why: Optional[str]) -> bool:
        """r on a job it does not apply to: say why (True when said)."""
        if why is None or can_resume(self.app.selected):
            return False
        self.app._say(why, severity="warning")
        return True

    # ---- drain, new job, search -----------------------------------------------------------------
    def drain(self) -> None:
        app = self.app
        v = app.selected
        drain = app.service.can_drain()
        if v is None or not drain:
            app._say(
                "drain is not available in this version of kbingest" if not drain else "no job selected",
                severity="warning",
            )
            return
        try:
            app.service.drain(v.job_id)
        except Exception as e:
            app._say(f"cannot drain {v.job_id}: {e}", severity="error")
            return
        app._log_events(v.job_id, [("drain asked: no new documents; those loaded are finished", "info")])
        app._say(f"draining {v.job_id}")

    def new_job(self) -> None:
        app = self.app
        try:
            kbs = app.service.knowledge_bases()
        except Exception:
            kbs = []
        default = app.service.default_embedder()
        app.push_screen(NewJobScreen(kbs, embedder=default), self.new_job_answer)

    def new_job_answer(self, config: Any) -> None:
        if config is None:
            return
        self.start_here(
            lambda: self.app.service.start(config),
            "cannot start the job",
            lambda job: f"started {job.job_id} on knowledge base {config.kb}",
        )

    def start_here(self, make: Callable[[], JobHandle], refused: str, started: Callable[[JobHandle], str]) -> None:
        """Start a job from the service in this dashboard (one at a time), saying what happened."""
        app = self.app
        if app._live is not None:
            app._say(
                f"job {app._live.job_id} is running in this dashboard: one job at a time; try again when it ends",
                severity="warning",
            )
            return
        try:
            job = make()
        except KbError as e:
            app._say(f"{refused}: {e}", severity="error")
            return
        self.start(job)
        app._say(started(job))

    def search(self) -> None:
        app = self.app
        v = app.selected
        if v is None:
            app._say("no job selected: its knowledge base is searched", severity="warning")
            return
        app.push_screen(SearchScreen(app.service, v.kb))

    # ---- one error in full ----------------------------------------------------------------------
    def open_error(self, error: Any) -> None:
        app = self.app
        v = app.selected
        if v is None:
            return
        app.push_screen(ErrorScreen(v.job_id, error, app.tz), partial(self.error_answer, v.job_id, error.path))

    def error_answer(self, job_id: str, path: str, answer: Optional[str]) -> None:
        if answer != "retry":
            return
        self.start_here(
            lambda: self.app.service.retry(job_id, paths=[path]),
            f"cannot retry {path}",
            lambda job: f"retrying {path} of {job_id}",
        )

    # ---- running a job here ---------------------------------------------------------------------
    def start(self, job: JobHandle) -> None:
        """Run a job in this dashboard, in a thread worker, until it rests (completed, paused, cancelled, failed)."""
        app = self.app
        app._store_gen += 1
        app._live = job
        app._selected = job.job_id
        app._live_worker = app.run_worker(
            job.run, thread=True, group="job", name=f"run {job.job_id}", exit_on_error=False
        )
        app._poll_live()
        app._q(JobTable).select(job.job_id)

    # ---- the theme, kept in the home -------------------------------------------------------------
    def restore_theme(self) -> None:
        app = self.app
        try:
            theme = app.service.settings().get("theme")
        except Exception:
            theme = None
        if isinstance(theme, str) and theme in app.available_themes and theme != app.theme:
            app.theme = theme
        app._theme_loaded = True

    def keep_theme(self, theme: str) -> None:
        app = self.app
        try:
            if app.service.settings().get("theme") != theme:
                app.service.save_settings(theme=theme)
        except Exception as e:  # a read-only home: the theme still changes, for this run
            app._say(f"theme not kept: {e}", severity="warning")

    # ---- quitting, and the end of a job run here ------------------------------------------------
    async def quit(self) -> None:
        app = self.app
        job = app._live
        if job is not None:
            if not app._quitting:
                app._quitting = True
                job.pause()
                app._log_events(job.job_id, [("quitting: pausing, the checkpoint is being saved", "info")])
                app._say(
                    f"pausing… {job.job_id} finishes the batch in flight and saves its checkpoint, "
                    "then the dashboard quits; start `kbingest` again and press r to resume it",
                    title="quitting",
                )
            else:
                app._say("still pausing… the checkpoint is being saved", title="quitting")
            return
        app.exit()

    def job_ended(self, worker: Worker, state: WorkerState) -> None:
        """The worker running a job here ended: its final view shown, what happened said."""
        app = self.app
        job = app._live
        assert job is not None
        final = app._live_view()
        app._store_gen += 1
        app._live = None
        app._live_worker = None
        if final is not None:
            final.local = False
            app._ingest(final)
        if state == WorkerState.ERROR:
            err = worker.error
            if job is app.job:
                app.run_error = err
            app._log_events(job.job_id, [(f"could not run: {safe(err)}", "error")])
            app._say(f"{job.job_id} could not run: {err}", severity="error")
        elif final is not None:
            s = final.snap
            severity = {"failed": "error", "paused": "information"}.get(s.status.value, "information")
            if s.status == JobStatus.PAUSED:
                app._say(f"{job.job_id} paused: checkpoint saved; r resumes it", title="paused")
            else:
                app._say(f"{job.job_id} {s.status.value}: {s.message}", severity=severity)
        app._refresh_views()
        app._poll_store()
        if app._quitting:
            if final is not None and final.status == JobStatus.PAUSED:
                app.paused_on_quit.append(job.job_id)
            app.set_timer(QUIT_DELAY_S, app.exit)
