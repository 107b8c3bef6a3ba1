"""The typed errors of the service layer. Each maps to one CLI exit code (app/exit_codes.py) and,
for an HTTP front end, one status; `kind` is the machine-readable name both show."""

from __future__ import annotations


class KbError(Exception):
    """An error a front end shows as one line (never a traceback)."""

    kind = "error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(KbError):
    """Bad names, paths or settings; `setting` names the JobConfig field at fault, if one is."""

    kind = "invalid_input"
    http_status = 422

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class NotFound(KbError):
    """No such job or knowledge base."""

    kind = "not_found"
    http_status = 404


class WrongState(KbError):
    """The action does not apply to the job as it is (resume a cancelled job, pause a paused one)."""

    kind = "wrong_state"
    http_status = 409


class Busy(KbError):
    """Another engine holds what this needs (the home's or a knowledge base's lock)."""

    kind = "busy"
    http_status = 409


class KbBusy(Busy):
    """`--no-wait`: another job writes the knowledge base (or jobs wait for it); the job was not
    started. Exit 1 (the job did not run), where other Busy errors are usage errors."""


class Forbidden(KbError):
    kind = "forbidden"
    http_status = 403


class ControlTimeout(KbError):
    """A pause or cancel was asked, and the job had not stopped when the wait ended."""

    kind = "timeout"
    http_status = 504


class EngineFailure(KbError):
    """The model or the knowledge base cannot be used (loading the model failed, the table is damaged)."""

    kind = "engine_failure"
    http_status = 500


class Unreachable(KbError):
    """`--server URL`: the server could not be reached, or broke off (refused, unknown host, timed out)."""

    kind = "unreachable"
    http_status = 502


class Unsupported(KbError):
    """This front end's service cannot do that (over `--server`: what only the server's home holds)."""

    kind = "unsupported"
    http_status = 501
