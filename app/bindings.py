"""The dashboard's keys: the one list of bindings (footer, help screen and command palette come from
it), the help's notes, and the palette's commands built from the bindings."""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator

from textual.app import App, SystemCommand
from textual.binding import Binding

from kbingest.app.screens import KEY_NAMES

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
    Binding("f", "freeze_view", "freeze", id="freeze", tooltip="freeze the view to read it: the jobs go on working"),
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


def palette_commands(app: App[Any]) -> Iterator[SystemCommand]:
    """Every action of the bindings, with its key (the App adds Textual's own: themes, keys...)."""
    seen: set[str] = set()
    for b in BINDINGS:
        if not b.tooltip or b.action in seen or b.action.startswith(("select_job", "app.")):
            continue
        seen.add(b.action)
        if app.check_action(b.action, ()) is False:  # the other face of a toggle (f)
            continue
        key = b.key_display or KEY_NAMES.get(b.key, b.key)
        title = PALETTE_TITLES.get(b.action, b.description)
        yield SystemCommand(f"{title.capitalize()} ({key})", b.tooltip, partial(app.run_action, b.action))
    yield SystemCommand(
        "Retry failed documents (r)",
        "retry the failed documents of the selected "
        "finished job (r resumes it; enter on an error retries one document)",
        partial(app.run_action, "resume"),
    )


def keys_of(action: str) -> set[str]:
    """The keys bound to an action."""
    return {b.key for b in BINDINGS if b.action == action}
