"""The dashboard's screens, every one a ModalScreen with one dialog style (`base.MODAL_CSS`):
`modals` (the cancel confirmation, the help built from the bindings) and `console` (an error in full,
the new-job form, search and a result's chunk text)."""

from kbingest.app.screens.console import ChunkScreen, ErrorScreen, NewJobScreen, PathSuggester, SearchScreen
from kbingest.app.screens.modals import KEY_NAMES, ConfirmCancelScreen, HelpScreen, help_from_bindings

__all__ = [
    "ChunkScreen",
    "ErrorScreen",
    "NewJobScreen",
    "PathSuggester",
    "SearchScreen",
    "KEY_NAMES",
    "ConfirmCancelScreen",
    "HelpScreen",
    "help_from_bindings",
]
