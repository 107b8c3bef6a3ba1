"""A job store whose reads are served from memory while the store file is unchanged.

For a process that answers many status reads (`kbingest serve`: dozens of clients polling a few
times a second): every write goes through the store (its lock, its atomic replace), and the next
read parses the file again only if its identity changed. Writes replace the file (a new inode),
so (inode, mtime, size) changes on every write, from any process.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from kbingest.pipeline.jobstore.store import JobStore
from kbingest.pipeline.models import JobRecord


class ReadCachedStore:
    """JobStore's interface; `all()` and `get()` from memory while the file is the same."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._path = str(store.home.store_file)  # stat'ed on every read: a str, not a Path built each time
        self._key: Optional[tuple] = None
        self._recs: list[JobRecord] = []
        self._lock = threading.Lock()
        self.reads = 0  # times the file was parsed (tests, benchmarks)

    def __getattr__(self, name: str) -> Any:  # every write and the rest: the store itself
        return getattr(self._store, name)

    def _file_key(self) -> Optional[tuple]:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def fresh(self) -> bool:
        """True when a read is served from memory (no lock, no parse): a caller on an event loop
        can read without blocking it."""
        key = self._file_key()
        return key is not None and key == self._key

    def all(self) -> list[JobRecord]:
        with self._lock:
            key = self._file_key()  # taken before the read: a write meanwhile makes the next read parse again
            if key is None or key != self._key:
                self._recs = self._store.all()
                self._key = key
                self.reads += 1
            return list(self._recs)

    def get(self, job_id: str) -> Optional[JobRecord]:
        return next((r for r in self.all() if r.job_id == job_id), None)

    def control_of(self, job_id: str) -> Optional[str]:
        rec = self.get(job_id)
        return rec.control if rec else None
