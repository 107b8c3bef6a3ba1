"""File locks of a home: one holder at a time (a lock the kernel releases when its holder dies), such
as a knowledge base's writer lock and a waiting job's place in the queue, and bounded waits for every
lock, naming the holder when the wait runs out."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Optional

from kbingest.pipeline.errors import Busy
from kbingest.pipeline.paths import open_private


class LockHeld(Busy):
    def __init__(self, path: Path, pid: Optional[int]) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{who} holds the lock {path}; "
                         "watch its job with `kbingest` or `kbingest status`, or wait for it to finish")
        self.pid = pid


PROBE_GRACE_S = 0.5  # how long acquire() waits out `is_locked` probes (each holds a shared lock for microseconds)


def flock_within(fd: int, op: int, timeout: float) -> bool:
    """flock(fd, op) without blocking past `timeout` seconds: True once locked, False if not."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)


def lock_holder(fd: int) -> Optional[int]:
    """The pid holding an flock on the file open at fd, from /proc/locks (Linux); None if unknown."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] != "->" and parts[1] == "FLOCK" and parts[5] == ident:
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


def describe(pid: Optional[int]) -> str:
    """'process 123 (flock)', for a one-line message."""
    if not pid:
        return "another process"
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f"process {pid} ({f.read().strip()})"
    except OSError:
        return f"process {pid}"


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self, grace: float = PROBE_GRACE_S) -> "FileLock":
        """Take the lock; `grace` seconds wait out probes (0: a queue's poll, which comes again)."""
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        # a job holds it, or a probe (a dashboard, `kbingest status`) for a moment
        if not flock_within(fd, fcntl.LOCK_EX, grace):
            os.close(fd)
            raise LockHeld(self.path, holder_pid(self.path))
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        return self if self.held else self.acquire()  # a lock acquired already is held for the block

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(path: Path) -> Optional[int]:
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return int(os.read(fd, 32).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """True while some live process holds the lock at `path`. The probe takes a shared
    lock, so two probes never see each other as an engine; an engine starting during a probe waits
    it out (PROBE_GRACE_S)."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock if we got it
    return False
