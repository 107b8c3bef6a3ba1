"""The job store: TinyDB on an atomic storage, one lock across threads and processes.

Holds jobs, their config, status and document errors; never per-chunk data (that is LanceDB's).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from kbingest.pipeline.models import JobRecord, utcnow, iso
from kbingest.pipeline.paths import Home

log = logging.getLogger("kbingest.store")
TMP_PREFIX = ".jobs.json.tmp-"


class StoreCorrupt(Exception):
    pass


class AtomicJSONStorage(Storage):
    """Every write goes to a temp file, is fsynced, then os.replace'd over the store: a reader or a
    crash sees the old file or the new one, never half of one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> Optional[dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():  # never written so (atomic writes of a whole object): it was truncated
            raise StoreCorrupt(f"job store {self.path} is empty (truncated)")
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise StoreCorrupt(f"job store {self.path} does not parse: {e}") from e
        if not isinstance(data, dict):
            raise StoreCorrupt(f"job store {self.path} does not hold a JSON object")
        return data

    def write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=str(self.path.parent))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(str(self.path.parent), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def close(self) -> None:
        pass


class JobStore:
    """Jobs in TinyDB. Every operation holds a thread lock and an flock on a lock file, so the
    engine, the dashboard and `kbingest pause` in another shell never interleave a write."""

    def __init__(self, home: Home, rebuild: Optional[Callable[[], list[JobRecord]]] = None) -> None:
        self.home = home.ensure()
        self._tlock = threading.RLock()
        self._lockfile = home.store_lock_file
        self.recovered_from: Optional[Path] = None
        self.busy_seconds = 0.0  # time spent inside the store, for the overhead benchmark
        self._db = TinyDB(str(home.store_file), storage=AtomicJSONStorage)
        self._jobs = self._db.table("jobs", cache_size=0)
        with self._locked():  # writers hold this lock while their temp file exists: none is in flight
            self._sweep_temp_files()
            try:
                self._jobs.all()
            except StoreCorrupt as e:
                self._recover(str(e), rebuild)

    def _sweep_temp_files(self) -> None:
        for p in self.home.root.glob(TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def _recover(self, reason: str, rebuild: Optional[Callable[[], list[JobRecord]]]) -> None:
        aside = self.home.store_file.with_name(f"jobs.json.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(self.home.store_file, aside)
        self.recovered_from = aside
        log.warning("%s; moved it aside to %s and rebuilt the store from the knowledge bases", reason, aside)
        self._db = TinyDB(str(self.home.store_file), storage=AtomicJSONStorage)
        self._jobs = self._db.table("jobs", cache_size=0)
        for rec in (rebuild() if rebuild else []):
            self._jobs.insert(rec.model_dump(mode="json"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock:
            t0 = time.perf_counter()
            fd = os.open(str(self._lockfile), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
                self.busy_seconds += time.perf_counter() - t0

    # ---- jobs -------------------------------------------------------------------------------
    def put(self, rec: JobRecord) -> None:
        data = rec.model_dump(mode="json")
        data["updated_at"] = iso(utcnow())
        with self._locked():
            self._jobs.upsert(data, Query().job_id == rec.job_id)

    def get(self, job_id: str) -> Optional[JobRecord]:
        with self._locked():
            doc = self._jobs.get(Query().job_id == job_id)
        return JobRecord.model_validate(doc) if doc else None

    def all(self) -> list[JobRecord]:
        with self._locked():
            docs = self._jobs.all()
        recs = [JobRecord.model_validate(d) for d in docs]
        recs.sort(key=lambda r: r.created_at, reverse=True)
        return recs

    def update(self, job_id: str, fn: Callable[[JobRecord], JobRecord]) -> Optional[JobRecord]:
        """Read-modify-write one job under the lock."""
        with self._locked():
            doc = self._jobs.get(Query().job_id == job_id)
            if not doc:
                return None
            rec = fn(JobRecord.model_validate(doc))
            data = rec.model_dump(mode="json")
            data["updated_at"] = iso(utcnow())
            self._jobs.upsert(data, Query().job_id == job_id)
            return rec

    def remove_job(self, job_id: str, only_if: Optional[Callable[[JobRecord], bool]] = None) -> bool:
        """Remove a job (when `only_if` holds of it, decided under the lock)."""
        with self._locked():
            doc = self._jobs.get(Query().job_id == job_id)
            if not doc or (only_if is not None and not only_if(JobRecord.model_validate(doc))):
                return False
            self._jobs.remove(Query().job_id == job_id)
            return True

    def request(self, job_id: str, control: Optional[str]) -> Optional[JobRecord]:
        """Ask the engine running this job to pause or cancel (None clears the request)."""
        return self.update(job_id, lambda r: r.model_copy(update={"control": control}))

    def control_of(self, job_id: str) -> Optional[str]:
        rec = self.get(job_id)
        return rec.control if rec else None
