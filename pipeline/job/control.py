"""How a running pass is asked to stop, and how stages say they stopped or failed.

One `RunControl` per run: `request(PAUSED|CANCELLED)` comes from any thread (a key in the
dashboard, SIGINT, `kbingest pause` through the job store); stages and executors only read it.
"""

from __future__ import annotations

import threading
from typing import Optional

from kbingest.pipeline.status import JobPhase, JobStatus


class Stopped(Exception):
    """Raised inside a stage or worker when the run is asked to stop."""


class PhaseFailed(Exception):
    """A phase cannot go on: the job fails in it."""

    def __init__(self, phase: JobPhase, message: str) -> None:
        super().__init__(message)
        self.phase = phase


class RunControl:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._drain = threading.Event()
        self.reason: Optional[JobStatus] = None

    def drain(self) -> None:
        """Cancel loading only: no new documents are taken; those loaded are finished and committed."""
        self._drain.set()

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    def request(self, why: JobStatus) -> None:
        """Ask the run to stop: PAUSED (whole documents already embedded are committed) or
        CANCELLED (wins over a pause)."""
        if self.reason is None or why == JobStatus.CANCELLED:
            self.reason = why
        self._event.set()

    def halt(self) -> None:
        """Stop every worker without a reason of the operator's (a failure)."""
        self._event.set()

    @property
    def stopping(self) -> bool:
        return self._event.is_set()

    @property
    def cancelling(self) -> bool:
        return self._event.is_set() and self.reason == JobStatus.CANCELLED

    @property
    def pausing(self) -> bool:
        return self._event.is_set() and self.reason == JobStatus.PAUSED

    def check(self) -> None:
        if self._event.is_set():
            raise Stopped

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


def with_retries(phase: JobPhase, fn, *, retries: int, control: RunControl, on_retry=None, quiet: bool = False):
    """fn() with up to `retries` more attempts and a growing pause between them. A cancel stops
    the attempts. After the last one: None when quiet, else PhaseFailed."""
    import logging
    import time

    from kbingest.pipeline.messages import describe, reason

    log = logging.getLogger("kbingest.engine")
    delay = 0.2
    last: Optional[BaseException] = None
    for attempt in range(retries + 1):
        if control.cancelling:
            raise Stopped
        try:
            return fn()
        except Stopped:
            raise
        except Exception as e:
            last = e
            log.warning("%s", describe(e, doing=f"{phase.value} attempt {attempt + 1}"))
            if on_retry is not None:
                on_retry()
            if attempt < retries:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
    if quiet:
        return None
    assert last is not None  # the loop ran at least once
    raise PhaseFailed(phase, f"{phase.value} failed after {retries + 1} attempts: {reason(last)}")
