"""The executor interface: what runs a pass's stages (threads here; a distributed engine elsewhere).

An executor gets the four stages of a pass and the run's control. It moves documents from stage
to stage, returns when the pass is done or stopped, and raises PhaseFailed when a phase cannot go
on. Pause and cancel reach it through one call, `stop(reason)`. Adding an executor touches neither
the stages nor the job: one module plus one line in pipeline/executors/__init__.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from kbingest.pipeline.job.control import RunControl
from kbingest.pipeline.stages.base import PassStages
from kbingest.pipeline.status import JobStatus


class Executor(ABC):
    name: str = ""

    def __init__(self, control: RunControl) -> None:
        self.control = control

    @abstractmethod
    def run_pass(self, stages: PassStages) -> None:
        """Run one pass to its end (or until stopped); raise PhaseFailed if a phase fails."""

    def stop(self, reason: JobStatus) -> None:
        """Pause (PAUSED) or cancel (CANCELLED): the one call that reaches a running executor."""
        self.control.request(reason)

    def queue_depths(self) -> dict[str, int]:
        """Documents waiting between phases now, by queue name ({}: this executor has no queues)."""
        return {}

    def close(self) -> None:  # noqa: B027 (a hook: most executors hold nothing)
        """Release what the executor holds (a cluster connection...) when the job's run ends."""
