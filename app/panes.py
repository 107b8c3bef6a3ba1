"""The dashboard's main screen drawn from the App's views: the job list and its title, the selected
job's header, summary, phases, flow, errors and events. A widget is updated only when its text
changed; what the text says comes from the view model (app/view_model.py)."""

from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual import events
from textual.widgets import Input, Static

from kbingest.app.view_model import errors_title, job_eta, jobs_title, summary_counts, where_running
from kbingest.pipeline.service import printable
from kbingest.pipeline.status import JobStatus
from kbingest.widgets.error_pane import ErrorPane
from kbingest.widgets.event_log import EventLog
from kbingest.widgets.format import JobView, fmt_clock, safe, status_style, theme_style
from kbingest.widgets.instrument import FlowPane, InFlightPane
from kbingest.widgets.job_table import SORTS, JobTable
from kbingest.widgets.phase_timeline import PhaseTimeline


class Panes:
    """The main screen's panes of one App (`app`: a KbIngestApp), and what each shows now."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.jobs_base = ""  # "jobs in HOME"
        self._jobs_title_shown: Optional[str] = None
        self._detail_title: Optional[str] = None
        self._summary_sig: Optional[tuple[Any, ...]] = None
        self._errors_title: Optional[str] = None

    def set_up(self) -> None:
        """The panes' titles and classes, at mount."""
        app = self.app
        table = app._q(JobTable)
        table.add_class("pane")
        self.jobs_base = printable(f"jobs in {app.home_label}")
        table.border_title = Text(self.jobs_base)  # Text: never markup
        app._q("#errors").add_class("pane")
        app._q("#errors").border_title = "errors"
        log = app._q(EventLog)
        log.add_class("pane")
        log.border_title = "events"
        log.tz = app.tz
        inflight = app._q("#inflight")
        inflight.add_class("pane")
        inflight.border_title = "in flight"

    def set_frozen(self, frozen: bool) -> None:
        """Freeze the view (the jobs go on), or follow them live again."""
        app = self.app
        if frozen == app.frozen:
            return
        app.frozen = frozen
        app._main.set_class(frozen, "frozen")
        self.update_jobs_title(None, force=True)
        app.refresh_bindings()
        if not frozen:
            app._refresh_views(force=True)  # everything that happened meanwhile, events included

    def show_filter(self) -> None:
        box = self.app._q("#filter", Input)
        box.add_class("shown")
        box.focus()

    def filter_changed(self, event: Input.Changed) -> None:
        """The job list filtered as the user types."""
        if event.input.id != "filter":
            return
        event.stop()
        self.app.filter_text = event.value.strip()
        self.app._refresh_views(force=True)

    def filter_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.stop()
            self.app._q(JobTable).focus()

    def clear_filter(self, event: events.Key) -> None:
        """escape in the filter box: cleared and hidden, the job list focused."""
        app = self.app
        box = app._main.query_one("#filter", Input) if app._main is not None else None
        if box is not None and box.has_focus:
            event.stop()
            box.value = ""
            box.remove_class("shown")
            app._q(JobTable).focus()

    def refresh(self, force: bool) -> None:
        app = self.app
        views = app._ordered()
        if app._selected not in app._views:
            app._selected = views[0].job_id if views else None
        table = app._q(JobTable)
        if force:
            table.forget_rows()
        table.show(views, app.clock(), app.tz, app._selected)
        self.update_jobs_title(len(views))
        self.show_selected(force=force)
        app._update_action_state()

    def update_jobs_title(self, shown: Optional[int], force: bool = False) -> None:
        app = self.app
        title = jobs_title(
            self.jobs_base,
            (v.status.value for v in app._views.values()),
            app.filter_text,
            shown,
            app.sort.label if app.sort is not SORTS[0] else None,
            app.frozen,
        )
        if force or title != self._jobs_title_shown:
            self._jobs_title_shown = title
            app._q(JobTable).border_title = Text(title)

    def show_selected(self, force: bool = False) -> None:
        app = self.app
        view = app._views.get(app._selected) if app._selected else None
        switched = app._shown != app._selected
        app._shown = app._selected
        detail = app._q("#detail")
        if view is None:
            self._detail_title = None
            detail.border_title = "no job selected"
            self._summary_sig = None
            app._q("#summary", Static).update(
                Text("no jobs in this home yet: `kbingest ingest SOURCE --kb NAME` starts one", end="")
            )
        else:
            where = where_running(view)
            title = printable(f"job {view.job_id} · kb {view.kb}" + (f" · {where}" if where else ""))
            if title != self._detail_title:
                self._detail_title = title
                detail.border_title = Text(title)
            summary = self.summary(view)
            sig = (summary.plain, tuple(summary.spans))
            if force or sig != self._summary_sig:  # only when it changed
                self._summary_sig = sig
                app._q("#summary", Static).update(summary)
        history = (
            {p: app.rates.of(view.job_id, p) for p in ("loading", "chunking", "embedding", "indexing")}
            if view
            else None
        )
        app._q(PhaseTimeline).show(view.snap.phase_details if view else None, force=force, history=history)
        app._q(FlowPane).show(view.snap if view else None, force=force)
        app._q(InFlightPane).show(view.snap if view else None, force=force)
        errors = app._q(ErrorPane)
        errors.show(view, force=force)
        n = view.failed_docs if view else 0
        title_now = errors_title(n)
        if title_now != self._errors_title:
            self._errors_title = title_now
            errors.border_title = title_now
        has_errors = bool(n) or bool(view and (view.snap.error or view.status == JobStatus.FAILED))
        app._q("#bottom").set_class(has_errors, "has-errors")  # errors get more room
        if switched or force:
            app._q(EventLog).replace(app._events.of(app._selected))

    def summary(self, v: JobView) -> Text:
        app = self.app
        s = v.snap
        warn = s.status == JobStatus.COMPLETED and v.failed_docs > 0
        out = Text(end="")
        eta = job_eta(s)
        if eta is not None:  # the job's ETA first (issue 30)
            out.append(f"ETA {fmt_clock(eta)}  ", style="bold")
        out.append(s.status.value, style=status_style(app, s.status.value, warn=warn))
        out.append(f" {s.progress:.1f}%  ")
        out.append(safe(s.message))
        line = summary_counts(v)
        if line:
            out.append("\n")
            out.append(safe(line), style=theme_style(app, "foreground-muted"))
        return out
