"""The job store: TinyDB on an atomic storage, one lock across threads and processes.

Holds jobs, their config, status and document errors; never per-chunk data (that is LanceDB's).
Every file is opened without following symlinks (paths.open_private). No lock is waited on for
long: a reader that cannot get the lock answers from the last complete file (atomic writes
guarantee there is one) and says its view may be stale; a writer fails with StoreBusy, naming the
holder. A store that does not parse, or holds a record the models reject, is moved aside and
rebuilt from the valid records and the knowledge bases.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from pydantic import ValidationError
from tinydb import Query, TinyDB
from tinydb.storages import Storage

from kbingest.pipeline.errors import Busy, EngineFailure
from kbingest.pipeline.locking import describe, flock_within, lock_holder
from kbingest.pipeline.models import JobRecord, iso, utcnow
from kbingest.pipeline.paths import Home, open_private

log = logging.getLogger("kbingest.store")
TMP_PREFIX = ".jobs.json.tmp-"
TABLE = "jobs"
READ_WAIT_S = 2.0  # a reader waits this long for the lock, then answers from the last complete file
WRITE_WAIT_S = 10.0  # a writer waits this long, then fails with StoreBusy
T = TypeVar("T")


class StoreCorrupt(Exception):
    pass


class StoreBusy(Busy):
    """Another process has held the job store's lock for longer than a writer waits."""

    def __init__(self, lockfile: Path, pid: Optional[int], waited: float) -> None:
        hint = f"; if it is stopped (Ctrl-Z), continue it with `kill -CONT {pid}`" if pid else ""
        super().__init__(
            f"the job store is locked by {describe(pid)} for more than {waited:g} s ({lockfile}): "
            f"nothing was changed; try again once it is done{hint}"
        )
        self.pid = pid


class StoreWriteError(EngineFailure):
    """The job store could not be saved (disk full, read-only, I/O error): the old file stands."""

    def __init__(self, path: Path, e: OSError) -> None:
        what = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only",
        }.get(e.errno or 0, e.strerror or type(e).__name__)
        super().__init__(
            f"cannot save the job store {path}: {what}; its last saved state is kept. "
            "Free space (or fix the disk), then run the command again"
        )
        self.errno = e.errno


class AtomicJSONStorage(Storage):
    """Every write goes to a temp file, is fsynced, then os.replace'd over the store: a reader or a
    crash sees the old file or the new one, never half of one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> Optional[dict[str, Any]]:
        try:
            fd = open_private(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
        if not raw.strip():  # never written so (atomic writes of a whole object): it was truncated
            raise StoreCorrupt(f"job store {self.path} is empty (truncated)")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise StoreCorrupt(f"job store {self.path} does not parse: {str(e)[:80]}") from None
        _check_shape(self.path, data)
        return data

    def write(self, data: dict[str, Any]) -> None:
        raw = json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode()
        try:
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=str(self.path.parent))  # O_EXCL: no link followed
        except OSError as e:
            raise StoreWriteError(self.path, e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # replaces a planted link itself, never what it points to
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise StoreWriteError(self.path, e) from None
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(str(self.path.parent), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def close(self) -> None:
        pass


def _check_shape(path: Path, data: Any) -> None:
    """What TinyDB needs to read the file at all: {"jobs": {"<int>": {...}, ...}, ...}."""
    if not isinstance(data, dict):
        raise StoreCorrupt(f"job store {path} does not hold a JSON object")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise StoreCorrupt(f"job store {path}: table {name!r} is not an object")
        for key, doc in table.items():
            if not key.isdigit() or not isinstance(doc, dict):
                raise StoreCorrupt(f"job store {path}: record {key[:20]!r} of {name!r} is not a record")


class JobStore:
    """Jobs in TinyDB. Every operation holds a thread lock and an flock on a lock file, so the
    engine, the dashboard and `kbingest pause` in another shell never interleave a write."""

    def __init__(self, home: Home, rebuild: Optional[Callable[[], list[JobRecord]]] = None) -> None:
        self.home = home.ensure()
        self._tlock = threading.RLock()
        self._lockfile = home.store_lock_file
        self._rebuild = rebuild
        self.recovered_from: Optional[Path] = None
        self.stale = False  # some answer came from the file while another process held the lock
        self.stale_note: Optional[str] = None  # why, in one line for a person
        self._on_stale: Optional[Callable[[str], None]] = None
        self.busy_seconds = 0.0  # time spent inside the store, for the overhead benchmark
        self._read_wait = READ_WAIT_S  # 0 once a reader found the lock held, until it is had again
        self._db = TinyDB(str(home.store_file), storage=AtomicJSONStorage)
        self._jobs = self._db.table(TABLE, cache_size=0)
        with self._locked(write=False) as locked:
            if locked:  # writers hold this lock while their temp file exists: none is in flight
                self._sweep_temp_files()
            self._validated(locked)

    def _sweep_temp_files(self) -> None:
        for p in self.home.root.glob(TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def _validated(self, locked: bool) -> None:
        """Every record must validate; what does not is moved aside with the file, and the store
        rebuilt from the valid records and the knowledge bases."""
        try:
            docs = self._jobs.all()
        except StoreCorrupt as e:
            return self._recover(str(e), [], locked)
        keep, bad = [], 0
        for d in docs:
            try:
                JobRecord.model_validate(d)
                keep.append(dict(d))
            except ValidationError:
                bad += 1
        if bad:
            self._recover(f"job store {self.home.store_file}: {bad} record(s) are not valid jobs", keep, locked)

    def _recover(self, reason: str, keep: list[dict[str, Any]], locked: bool) -> None:
        if not locked:  # another process holds the store: not ours to repair now
            raise StoreBusy(self._lockfile, self._holder(), READ_WAIT_S)
        aside = self.home.store_file.with_name(f"jobs.json.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(self.home.store_file, aside)
        self.recovered_from = aside
        # the caller tells a person (recovered_from): logged for the record only
        log.info("%s; moved it aside to %s and rebuilt the store from the knowledge bases", reason, aside)
        self._db = TinyDB(str(self.home.store_file), storage=AtomicJSONStorage)
        self._jobs = self._db.table(TABLE, cache_size=0)
        have = {d["job_id"] for d in keep}
        kbs = {d["config"]["kb"] for d in keep}
        found = [
            r for r in (self._rebuild() if self._rebuild else []) if r.config.kb not in kbs and r.job_id not in have
        ]
        self._jobs.insert_multiple(keep + [r.model_dump(mode="json") for r in found])

    def _holder(self) -> Optional[int]:
        try:
            fd = open_private(self._lockfile, os.O_RDONLY)
        except OSError:
            return None
        try:
            return lock_holder(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self, write: bool = True) -> Iterator[bool]:
        """Hold the store's lock. A writer that cannot get it in WRITE_WAIT_S raises StoreBusy; a
        reader waits READ_WAIT_S, then goes on without it (yields False) and marks the store stale."""
        with self._tlock:
            t0 = time.perf_counter()
            fd = open_private(self._lockfile, os.O_RDWR | os.O_CREAT)
            try:
                locked = flock_within(fd, fcntl.LOCK_EX, WRITE_WAIT_S if write else self._read_wait)
                self._read_wait = READ_WAIT_S if locked else 0.0  # a reader waits out a stuck holder once
                if not locked:
                    pid = lock_holder(fd)
                    if write:
                        raise StoreBusy(self._lockfile, pid, WRITE_WAIT_S)
                    self._mark_stale(pid)
                yield locked
            finally:
                os.close(fd)
                self.busy_seconds += time.perf_counter() - t0

    def notify_stale(self, tell: Callable[[str], None]) -> None:
        """Call tell(one line) once this store's view is stale (at once if it is already)."""
        self._on_stale = tell
        if self.stale_note:
            tell(self.stale_note)

    def _mark_stale(self, pid: Optional[int]) -> None:
        if not self.stale:
            self.stale = True
            self.stale_note = (
                f"the job store is locked by {describe(pid)}: showing its last saved state, which may be stale"
            )
            log.info("%s", self.stale_note)
            if self._on_stale:
                self._on_stale(self.stale_note)

    def _do(self, fn: Callable[[], T], write: bool = True) -> T:
        """Run fn under the lock; a store found damaged meanwhile is recovered, and fn run again."""
        with self._locked(write) as locked:
            try:
                return fn()
            except (StoreCorrupt, ValidationError) as e:
                self._recover(str(e).splitlines()[0], [], locked) if isinstance(e, StoreCorrupt) else self._validated(
                    locked
                )
                return fn()

    # ---- jobs -------------------------------------------------------------------------------
    def put(self, rec: JobRecord) -> None:
        data = rec.model_dump(mode="json")
        data["updated_at"] = iso(utcnow())
        self._do(lambda: self._jobs.upsert(data, Query().job_id == rec.job_id))

    def get(self, job_id: str) -> Optional[JobRecord]:
        def read() -> Optional[JobRecord]:
            doc = self._jobs.get(Query().job_id == job_id)
            return JobRecord.model_validate(doc) if doc else None

        return self._do(read, write=False)

    def all(self) -> list[JobRecord]:
        recs = self._do(lambda: [JobRecord.model_validate(d) for d in self._jobs.all()], write=False)
        recs.sort(key=lambda r: r.created_at, reverse=True)
        return recs

    def update(self, job_id: str, fn: Callable[[JobRecord], JobRecord]) -> Optional[JobRecord]:
        """Read-modify-write one job under the lock."""

        def apply() -> Optional[JobRecord]:
            doc = self._jobs.get(Query().job_id == job_id)
            if not doc:
                return None
            rec = fn(JobRecord.model_validate(doc))
            data = rec.model_dump(mode="json")
            data["updated_at"] = iso(utcnow())
            self._jobs.upsert(data, Query().job_id == job_id)
            return rec

        return self._do(apply)

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
