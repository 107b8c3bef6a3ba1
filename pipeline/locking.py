"""One engine per home at a time: an OS file lock the kernel releases when the holder dies."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Optional

from kbingest.pipeline.errors import Busy


class HomeLocked(Busy):
    def __init__(self, path: Path, pid: Optional[int]) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{who} is already running a job in this home (lock {path}); "
                         "watch it with `kbingest` or `kbingest status`, or wait for it to finish")
        self.pid = pid


PROBE_GRACE_S = 0.5  # how long acquire() waits out `is_locked` probes (each holds a shared lock for microseconds)


class EngineLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self, grace: float = PROBE_GRACE_S) -> "EngineLock":
        """Take the lock; `grace` seconds wait out probes (0: a queue's poll, which comes again)."""
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + grace
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # an engine holds it, or a probe (a dashboard, `kbingest status`) for a moment
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise HomeLocked(self.path, holder_pid(self.path)) from None
                time.sleep(0.02)
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

    def __enter__(self) -> "EngineLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(path: Path) -> bool:
    """True while some live process holds the engine lock of this home. The probe takes a shared
    lock, so two probes never see each other as an engine; an engine starting during a probe waits
    it out (PROBE_GRACE_S)."""
    if not path.exists():
        return False
    fd = os.open(str(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock if we got it
    return False
