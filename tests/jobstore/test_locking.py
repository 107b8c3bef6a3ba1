"""File locks (a knowledge base's writer lock, a waiting job's place): one holder at a time, and probes
of a lock that never get in its way.

flock locks belong to an open file description, so two fds of one process contend as two
processes would: the tests hold "other processes'" locks on fds of their own.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time

import pytest

from kbingest.pipeline.locking import FileLock, LockHeld, is_locked


@pytest.fixture
def lock_path(home):
    return home.root / "a.lock"  # any file: the lock is the same for a writer and a place in the queue


def test_held_lock_is_seen_and_refuses_a_second_engine_naming_the_holder(lock_path):
    assert not is_locked(lock_path)
    with FileLock(lock_path):
        assert is_locked(lock_path)
        with pytest.raises(LockHeld) as e:
            FileLock(lock_path).acquire()
        assert e.value.pid == os.getpid()
        assert str(os.getpid()) in str(e.value)
    assert not is_locked(lock_path)  # released: the next engine may start
    FileLock(lock_path).acquire().release()


def _hold_shared(path, seconds: float) -> threading.Thread:
    """What a probe does (a shared lock), for longer than a real probe, in the background."""
    fd = os.open(str(path), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)

    def release():
        time.sleep(seconds)
        os.close(fd)

    th = threading.Thread(target=release)
    th.start()
    return th


def test_a_probe_in_progress_is_not_an_engine(lock_path):
    FileLock(lock_path).acquire().release()  # the file exists
    th = _hold_shared(lock_path, 0.3)
    try:
        assert not is_locked(lock_path)  # another probe (dashboard, `kbingest status`) holds it for a moment
    finally:
        th.join()


def test_an_engine_starting_during_a_probe_waits_it_out(lock_path):
    FileLock(lock_path).acquire().release()
    th = _hold_shared(lock_path, 0.2)
    try:
        lock = FileLock(lock_path).acquire()  # no LockHeld: the probe is gone within the grace period
        assert lock.held and is_locked(lock_path)
        lock.release()
    finally:
        th.join()


def test_a_lock_wait_is_bounded_and_names_the_holder(lock_path):
    """Issue 18, item 6: no lock is waited on without a bound, and the holder can be named."""
    import subprocess

    from kbingest.pipeline.locking import describe, flock_within, lock_holder

    FileLock(lock_path).acquire().release()
    p = subprocess.Popen(["flock", "-o", str(lock_path), "sleep", "30"], start_new_session=True)
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 10
        while lock_holder(fd) != p.pid:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        assert not flock_within(fd, fcntl.LOCK_EX, 0.3)
        assert 0.3 <= time.monotonic() - t0 < 2
        assert describe(lock_holder(fd)) == f"process {p.pid} (flock)"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        assert flock_within(fd, fcntl.LOCK_EX, 2.0)
    finally:
        os.close(fd)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
