"""One embedding budget per home: a watch job's changes go before bulk backfill, and (opt-in)
concurrent jobs take turns at the model.

Modes (`KBINGEST_EMBED_BUDGET`): `priority` (the default): watch bursts first, bulk jobs embed side
by side; `turns`: also one embedding call at a time in the home; `0`: off. The default was chosen by
measurement (docs/queue.md): on the shared 2-core machine, turns made two concurrent jobs slower
than the same two in a row, side by side did not.

In `turns` mode each embedding call takes a slot: an exclusive lock on `locks/embed.lock`. One call runs at a time
in the whole home, whichever process or thread it comes from, with onnxruntime's threads on every
core (its default), so the total stays at the cores: two jobs share the model's throughput instead
of fighting over it. A call is one batch (`batch_size` chunks, 1 by default: ~40 ms on 2 cores), so
the turns are short and another job never waits long.

Priority: a watch job's burst (a save in a watched folder) holds `locks/embed-priority.lock` (shared)
while it runs; a bulk call does not start while some process holds it. A call that had to wait marks
itself in `locks/embed-wait.lock` (shared); a process that ends a call and sees a waiter steps aside
for a moment, so turns alternate instead of the same process taking the lock again at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from kbingest.pipeline.paths import Home

ENV_OFF = "KBINGEST_EMBED_BUDGET"
PRIORITY_POLL_S = 0.005  # how often a bulk call looks whether a watch burst still goes first
STEP_ASIDE_S = 0.002  # how long a process that just embedded lets a waiting one take the next turn


def _open(home: Home, path: Path) -> int:
    return home.open_file(path, os.O_RDWR | os.O_CREAT)  # HOME/locks never followed if it is a link


def _held_by_other(fd: int) -> bool:
    """Some open description holds this file (shared or exclusive): probe with a non-blocking exclusive lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class EmbedBudget:
    """The home's embedding turns, as one job uses them (one instance per job: its own descriptors)."""

    def __init__(self, home: Home) -> None:
        d = home.locks_dir
        self._home = home
        mode = os.environ.get(ENV_OFF, "priority")
        self.enabled = mode != "0"
        self.turns = mode == "turns"
        self._paths = (d / "embed.lock", d / "embed-priority.lock", d / "embed-wait.lock")
        self._fds: tuple[int, int, int] | None = None
        self._local = threading.Lock()  # one call at a time within the job too
        self._priority_depth = 0
        self.waited_s = 0.0  # time this job's calls spent waiting for their turn

    def _descriptors(self) -> tuple[int, int, int]:
        if self._fds is None:
            self._fds = tuple(_open(self._home, p) for p in self._paths)  # type: ignore[assignment]
        return self._fds  # type: ignore[return-value]

    @contextlib.contextmanager
    def priority(self) -> Iterator[None]:
        """While inside, this job's calls go before every bulk job's (a watch burst)."""
        if not self.enabled:
            yield
            return
        fd = self._descriptors()[1]
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._priority_depth += 1
        try:
            yield
        finally:
            self._priority_depth -= 1
            if not self._priority_depth:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One embedding call's turn at the model."""
        if not self.enabled:
            yield
            return
        slot, prio, wait = self._descriptors()
        t0 = time.monotonic()
        if not self._priority_depth:
            while _held_by_other(prio):  # a watch burst goes first
                time.sleep(PRIORITY_POLL_S)
        if not self.turns:
            self.waited_s += time.monotonic() - t0
            yield
            return
        with self._local:
            try:
                fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(wait, fcntl.LOCK_SH)
                try:
                    fcntl.flock(slot, fcntl.LOCK_EX)
                finally:
                    fcntl.flock(wait, fcntl.LOCK_UN)
            self.waited_s += time.monotonic() - t0
            try:
                yield
            finally:
                fcntl.flock(slot, fcntl.LOCK_UN)
            if _held_by_other(wait):
                time.sleep(STEP_ASIDE_S)  # someone waits: its turn next

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None


class BudgetedEmbedder:
    """An embedder whose calls take turns in the home's budget (same interface as the one it wraps)."""

    def __init__(self, inner, budget: EmbedBudget) -> None:
        self._inner = inner
        self.budget = budget
        self.model = inner.model
        self.dim = inner.dim

    def embed(self, texts):
        with self.budget.turn():
            return self._inner.embed(texts)

    def __getattr__(self, name):  # token_counter and the like
        return getattr(self._inner, name)
