"""The job queue: one writer per knowledge base, and the jobs that wait for it (docs/queue.md).

A job that cannot take its knowledge base's lock now is stored `pending`, with the reason and its
place in the queue, and its own process waits (polling) until it is first and the lock is free.
The process that owns a pending job holds a small lock of its own (`Home.queue_lock_file`): when
it dies, the kernel drops that lock, and the job shows as interrupted (resumable), never stuck
pending. The queue is the order jobs started waiting in (`JobRecord.queued_at`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from kbingest.pipeline.errors import KbBusy
from kbingest.pipeline.locking import FileLock, LockHeld, holder_pid, is_locked
from kbingest.pipeline.models import JobRecord
from kbingest.pipeline.paths import Home, HomeError
from kbingest.pipeline.status import JobStatus

POLL_S = 0.25  # how often a waiting job looks whether it may start


def _lock(home: Home, path: Path) -> FileLock:
    return FileLock(path, home.root)  # HOME/locks made, and opened, without following a link


def hold_place(home: Home, job_id: str) -> FileLock:
    """The lock that says this process owns pending job `job_id` (released when it runs or ends)."""
    return _lock(home, home.queue_lock_file(job_id)).acquire()


def drop_place(home: Home, lock: Optional[FileLock], job_id: str) -> None:
    if lock is not None and lock.held:
        lock.release()
        try:
            home.remove_file(home.queue_lock_file(job_id))  # relative to HOME/locks, never through a link
        except (OSError, HomeError):
            pass


def waiter_alive(home: Home, rec: JobRecord) -> bool:
    """A pending job whose owner process still waits for it."""
    return rec.owner_pid is not None and is_locked(home.queue_lock_file(rec.job_id), home.root)


def try_kb_lock(home: Home, kb: str) -> Optional[FileLock]:
    """The knowledge base's writer lock if it is free now, else None (no waiting)."""
    try:
        return _lock(home, home.kb_lock_file(kb)).acquire(grace=0.0)
    except LockHeld:
        return None


def writer_of(home: Home, records: list[JobRecord], kb: str) -> Optional[JobRecord]:
    """The running job that holds knowledge base `kb` now, if it is known."""
    path = home.kb_lock_file(kb)
    if not is_locked(path, home.root):
        return None
    pid = holder_pid(path, home.root)
    for r in records:
        if r.config.kb == kb and r.status.status == JobStatus.RUNNING and r.owner_pid == pid:
            return r
    return None


def queue_of(home: Home, records: list[JobRecord], kb: str) -> list[JobRecord]:
    """The live pending jobs of `kb`, first in line first."""
    live = [
        r
        for r in records
        if r.config.kb == kb
        and r.status.status == JobStatus.PENDING
        and r.queued_at is not None
        and waiter_alive(home, r)
    ]
    return sorted(live, key=lambda r: (r.queued_at or "", r.job_id))


def wait_reason(home: Home, records: list[JobRecord], job_id: str, kb: str) -> Optional[tuple[str, Optional[str], int]]:
    """Why job `job_id` cannot start now: (message, the job it waits for, its queue position),
    or None when it may try the lock (nobody writes `kb`, and no live job queued before it)."""
    writer = writer_of(home, records, kb)
    ahead = [r for r in queue_of(home, records, kb) if r.job_id != job_id]
    me = next((r for r in records if r.job_id == job_id), None)
    if me is not None and me.queued_at is not None:
        ahead = [r for r in ahead if (r.queued_at, r.job_id) < (me.queued_at, me.job_id)]
    locked = is_locked(home.kb_lock_file(kb), home.root)
    if not locked and not ahead:
        return None
    position = len(ahead) + 1
    if writer is not None:
        blocker = writer.job_id
        who = f"job {blocker}"
    elif locked:
        blocker = None
        pid = holder_pid(home.kb_lock_file(kb), home.root)
        who = f"process {pid}" if pid else "another process"
    else:
        blocker = ahead[-1].job_id
        who = f"job {blocker}"
    msg = f"pending: waiting for {who} on knowledge base {kb}"
    if ahead:
        msg += f" ({len(ahead)} job(s) queued before this one, position {position})"
    return msg, blocker, position


def refusal(home: Home, records: list[JobRecord], job_id: str, kb: str) -> Optional[KbBusy]:
    """`--no-wait`: the error that refuses the job, or None when it may start now."""
    why = wait_reason(home, records, job_id, kb)
    if why is None:
        return None
    return KbBusy(
        why[0].removeprefix("pending: ").replace("waiting for", "not started (--no-wait):", 1)
        + "; run without --no-wait to queue it"
    )


def wait_for_kb(
    home: Home,
    kb: str,
    job_id: str,
    records: Callable[[], list[JobRecord]],
    on_wait: Callable[[str, Optional[str], int], None],
    stop: Callable[[], bool],
    sleep: Callable[[float], object],
) -> Optional[FileLock]:
    """Wait until job `job_id` is first in `kb`'s queue and the lock is free; return the lock held.
    None when `stop()` says to stop waiting (a cancel or pause, from this process or the store)."""
    last = None
    while True:
        if stop():
            return None
        recs = records()
        why = wait_reason(home, recs, job_id, kb)
        if why is None:
            lock = try_kb_lock(home, kb)
            if lock is not None:
                return lock
            why = wait_reason(home, recs, job_id, kb) or (f"pending: waiting for knowledge base {kb}", None, 1)
        if why != last:
            on_wait(*why)
            last = why
        sleep(POLL_S)
