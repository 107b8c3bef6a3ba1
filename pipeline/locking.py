"""File locks of a home: one holder at a time (a lock the kernel releases when its holder dies), such
as a knowledge base's writer lock and a waiting job's place in the queue, and bounded waits for every
lock, naming the holder when the wait runs out; and the writer lock of a knowledge base where its
table lives (a lock file beside it, or a lease object on S3), which every home writing that location
sees."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from kbingest.pipeline.errors import Busy, EngineFailure, KbError
from kbingest.pipeline.paths import open_private

log = logging.getLogger("kbingest.engine")


class LockHeld(Busy):
    def __init__(self, path: Path, pid: Optional[int]) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"{who} holds the lock {path}; watch its job with `kbingest` or `kbingest status`, or wait for it to finish"
        )
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
    """An flock on a lock file of a home. `root`: the home, when the file is in a folder below it
    (HOME/locks): every folder is then opened without following a link (paths.open_private)."""

    def __init__(self, path: Path, root: Optional[Path] = None) -> None:
        self.path = path
        self.root = root
        self._fd: Optional[int] = None

    def acquire(self, grace: float = PROBE_GRACE_S) -> "FileLock":
        """Take the lock; `grace` seconds wait out probes (0: a queue's poll, which comes again)."""
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT, root=self.root)
        # a job holds it, or a probe (a dashboard, `kbingest status`) for a moment
        if not flock_within(fd, fcntl.LOCK_EX, grace):
            os.close(fd)
            raise LockHeld(self.path, holder_pid(self.path, self.root))
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


def holder_pid(path: Path, root: Optional[Path] = None) -> Optional[int]:
    try:
        fd = open_private(path, os.O_RDONLY, root=root)
    except FileNotFoundError:
        return None
    try:
        return int(os.read(fd, 32).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def is_locked(path: Path, root: Optional[Path] = None) -> bool:
    """True while some live process holds the lock at `path`. The probe takes a shared
    lock, so two probes never see each other as an engine; an engine starting during a probe waits
    it out (PROBE_GRACE_S)."""
    try:
        fd = open_private(path, os.O_RDONLY, root=root)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock if we got it
    return False


# ---- the writer lock of a knowledge base, where its table lives ------------------------------------
# Two homes may name one --db location: the home's lock (HOME/locks) does not see the other home, so
# the lock that keeps one writer per table lives with the table (issue 27).
LOCATION_DIR = ".kbingest"  # what kbingest keeps in a folder location (beside the *.lance tables)
ENV_LEASE_S = "KBINGEST_LEASE_S"
LEASE_S = 30.0  # an S3 lease not renewed for this long may be taken over


def _who(info: dict) -> str:
    """'process 123 (kbingest) on host h, home /x, job J', from a lock's record."""
    pid, host = info.get("pid"), info.get("host")
    try:
        pid = int(pid) if pid else None
    except (TypeError, ValueError):
        pid = None
    here = host in (None, socket.gethostname())
    out = describe(pid) if here else (f"process {pid}" if pid else "another process")
    if host and not here:
        out += f" on host {host}"
    extra = [f"{k} {info[k]}" for k in ("home", "job") if info.get(k)]
    return out + (f" ({', '.join(extra)})" if extra else "")


class WriterLock:
    """One writer per knowledge base at its location. try_acquire() takes it now or says no;
    holder() names who has it; release() gives it back."""

    where: str = ""

    def __init__(self, kb: str, info: dict) -> None:
        self.kb = kb
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), **info}
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def holder(self) -> str:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FolderWriterLock(WriterLock):
    """An flock on DB/.kbingest/locks/KB.lock, beside the table: the kernel releases it when its
    holder dies. The folders are opened without following a link (paths.open_folder); the file holds
    the holder's pid, host, home and job, for the one line that names it."""

    def __init__(self, db: str, kb: str, info: dict) -> None:
        super().__init__(kb, info)
        self.db = Path(db)
        self.path = self.db / LOCATION_DIR / "locks" / f"{kb}.lock"
        self.where = str(self.path)
        self._fd: Optional[int] = None

    def try_acquire(self) -> bool:
        if self._held:
            return True
        try:
            self.db.mkdir(parents=True, exist_ok=True, mode=0o700)  # as connecting would
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT, root=self.db, home=False)
        except OSError as e:
            raise EngineFailure(f"cannot take the writer lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        self._fd, self._held = fd, True
        return True

    def holder(self) -> str:
        try:
            fd = open_private(self.path, os.O_RDONLY, root=self.db, home=False)
        except (OSError, KbError):
            return "another process"
        try:
            try:
                info = json.loads(os.read(fd, 4096).decode() or "{}")
            except (OSError, ValueError):
                info = {}
            if not isinstance(info, dict) or not info.get("pid"):  # being written: the kernel knows the pid
                info = {"pid": lock_holder(fd)}
            return _who(info)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays (removing it would race a new holder)
            self._fd, self._held = None, False


class S3Lease(WriterLock):
    """A lease object beside the table (PREFIX/.kbingest/locks/KB.lease), created with a conditional
    put (If-None-Match: *) so that one writer wins; it records the holder and an expiry, and a
    thread of the holder renews it (If-Match on its ETag) every third of its life. A lease left to
    expire (its holder died or hangs) may be taken over, conditional on the ETag read. A holder
    that finds its lease taken calls `on_lost`: it must stop writing."""

    def __init__(
        self,
        location,
        kb: str,
        info: dict,
        on_lost: Optional[Callable[[str], None]] = None,
        ttl: Optional[float] = None,
    ) -> None:
        super().__init__(kb, info)
        rest = location.uri[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        self.key = "/".join(p for p in (prefix.strip("/"), LOCATION_DIR, "locks", f"{kb}.lease") if p)
        self.where = f"s3://{self.bucket}/{self.key}"
        self.ttl = ttl if ttl is not None else float(os.environ.get(ENV_LEASE_S) or LEASE_S)
        self._options = location.storage_options()
        self.on_lost = on_lost
        self.lost: Optional[str] = None
        self._etag: Optional[str] = None
        self._seen: dict = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._c = None

    # ---- S3 through boto3 (imported only for s3:// locations) ----
    def _client(self):
        if self._c is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise EngineFailure(
                    "an s3:// location needs boto3 for its writer lease: pip install 'kbingest[s3]'"
                ) from None
            o = self._options
            self._c = boto3.client(
                "s3",
                endpoint_url=o.get("aws_endpoint") or o.get("endpoint") or None,
                region_name=o.get("aws_region") or o.get("region") or None,
                aws_access_key_id=o.get("aws_access_key_id"),
                aws_secret_access_key=o.get("aws_secret_access_key"),
                aws_session_token=o.get("aws_session_token"),
                config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=10),
            )
        return self._c

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({**self.info, "renewed_at": now, "expires_at": now + self.ttl, "token": self._token}).encode()

    def _fail(self, what: str, e: Exception) -> EngineFailure:
        err = getattr(e, "response", {}).get("Error", {})
        why = f"{err.get('Code')}: {err.get('Message')}" if err else str(e).splitlines()[0][:200]
        return EngineFailure(f"cannot {what} the writer lease {self.where}: {why}")

    @staticmethod
    def _refused(e: Exception) -> bool:
        """A condition did not hold (412), or a concurrent conditional write won (409)."""
        status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in (409, 412)

    def _read(self) -> Optional[tuple[dict, str]]:
        c = self._client()
        try:
            r = c.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("read", e) from None
        try:
            info = json.loads(r["Body"].read() or b"{}")
        except ValueError:
            info = {}
        return (info if isinstance(info, dict) else {}), r["ETag"]

    def try_acquire(self) -> bool:
        if self._held:
            return True
        c = self._client()
        self._token = uuid.uuid4().hex  # every body differs: an ETag is never another holder's
        for _ in range(3):
            try:
                r = c.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")
                return self._won(r["ETag"])
            except Exception as e:
                if not self._refused(e):
                    raise self._fail("take", e) from None
            cur = self._read()
            if cur is None:  # released meanwhile: try again
                continue
            self._seen, etag = cur
            if time.time() <= float(self._seen.get("expires_at") or 0):
                return False
            try:  # expired: taken over, provided nobody renewed or took it since it was read
                r = c.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=etag)
                return self._won(r["ETag"])
            except Exception as e:
                if not self._refused(e):
                    raise self._fail("take", e) from None
        return False

    def _won(self, etag: str) -> bool:
        self._etag, self._held, self.lost = etag, True, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="kbingest-lease", daemon=True)
        self._thread.start()
        return True

    def _renew_loop(self) -> None:
        deadline = time.monotonic() + self.ttl
        while not self._stop.wait(self.ttl / 3):
            try:
                r = self._client().put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=self._etag)
                self._etag = r["ETag"]
                deadline = time.monotonic() + self.ttl
                continue
            except Exception as e:
                if self._refused(e):
                    cur = self._read_quietly()
                    return self._lose(
                        f"the writer lease {self.where} of knowledge base {self.kb} was taken by "
                        f"{_who(cur) if cur else 'another writer'}: this job stops writing"
                    )
                log.warning("could not renew the writer lease %s: %s", self.where, self._fail("renew", e))
            if time.monotonic() > deadline:
                return self._lose(
                    f"the writer lease {self.where} of knowledge base {self.kb} could not be renewed "
                    f"for {self.ttl:g} s: this job stops writing"
                )

    def _read_quietly(self) -> Optional[dict]:
        try:
            cur = self._read()
        except EngineFailure:
            return None
        return cur[0] if cur else None

    def _lose(self, why: str) -> None:
        self.lost, self._held = why, False
        log.error("%s", why)
        if self.on_lost is not None:
            self.on_lost(why)

    def holder(self) -> str:
        info = self._seen or self._read_quietly() or {}
        who = _who(info) if info else "another writer"
        left = float(info.get("expires_at") or 0) - time.time()
        return who + (f", lease renewed until {left:.0f} s from now" if left > 0 else "")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)
        self._thread = None
        if not self._held:
            return
        self._held = False
        try:
            self._client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
        except Exception as e:  # taken over meanwhile (412), or gone: not ours to delete
            if not self._refused(e):
                log.warning(
                    "could not release the writer lease %s: %s (it expires in %g s)",
                    self.where,
                    self._fail("release", e),
                    self.ttl,
                )


class HeldLocks:
    """Locks held together (the home's, then the location's), released in reverse order."""

    def __init__(self, *locks) -> None:
        self.locks = [lk for lk in locks if lk is not None]

    @property
    def held(self) -> bool:
        return all(lk.held for lk in self.locks)

    def release(self) -> None:
        for lk in reversed(self.locks):
            lk.release()

    def __enter__(self) -> "HeldLocks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
